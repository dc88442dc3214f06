#!/bin/bash
# Space goes back to the file system (issue 20, item 5): 1 GiB of unique
# data written into a clone, the clone deleted and collected: the chunk
# file's allocated blocks (du) shrink by at least 90% of what was written
# (segments left empty are punched out, those at the end truncated away),
# the other volume's data is intact before and after a restart, the
# checker is clean, and the punched segments take new data again (read
# back exact).  Fails if store_space_return does nothing: du stays at its
# peak.
. "$(dirname "$0")/functions.sh"
requires nbdcopy jq cmp
used() { du -B1 -c "$image" "$image"-* | tail -1 | cut -f1; }

start_busesnap 3G
# 64 MiB the whole test keeps, in the default volume
head -c 64M /dev/urandom >"$tmp/keep"
nbdcopy "$tmp/keep" "$uri" --flush || fail "write the kept data"
"$top/bsnap" create base >/dev/null || fail "create base"
"$top/bsnap" clone base v >/dev/null || fail "clone base v"
before=$(used)
head -c 1G /dev/urandom >"$tmp/data"
nbdcopy "$tmp/data" "$(uri_of v)" --flush || fail "write 1 GiB into v"
"$top/bsnap" gc >/dev/null || fail "gc"
peak=$(used)
[ $((peak - before)) -ge $((1 << 30)) ] ||
    fail "1 GiB written grew the image by only $((peak - before)) bytes"
"$top/bsnap" delete v --force >/dev/null || fail "delete v"
"$top/bsnap" gc >/dev/null || fail "gc after the delete"
# the collector's last batch returns the space; a second pass finds
# nothing more to do (bounded: the result is checked once, no polling
# loop that a slow machine could outrun)
"$top/bsnap" gc >/dev/null || fail "second gc"
after=$(used)
inf=$("$top/bsnap" info --json) || fail "info"
echo "du: $before before, $peak with 1 GiB in v, $after after delete and gc;" \
    "info: physical $(jq .physical_bytes <<<"$inf"), given back $(jq .punched_bytes <<<"$inf")," \
    "$(jq .return_ms <<<"$inf") ms punching"
# what info counts (physical, plus the space reserved ahead of the files'
# ends) adds up to du, within 1 MiB (the lock file, metadata)
phys=$(jq '.physical_bytes + .reserved_bytes' <<<"$inf")
[ $((phys - after)) -le $((1 << 20)) ] && [ $((after - phys)) -le $((1 << 20)) ] ||
    fail "info says physical + reserved $phys bytes, du $after"
[ $((peak - after)) -ge $(((1 << 30) * 9 / 10)) ] ||
    fail "delete + gc gave back $((peak - after)) bytes of 1 GiB (du $peak -> $after)"
nbdcopy "$uri" "$tmp/back" || fail "read the kept data"
cmp -n $((64 << 20)) "$tmp/keep" "$tmp/back" || fail "kept data changed by the space return"
"$top/bsnap" check >/dev/null || fail "check after the space return"

# the punched segments take new data; a restart keeps all of it
"$top/bsnap" clone base w >/dev/null || fail "clone base w"
head -c 256M /dev/urandom >"$tmp/data2"
nbdcopy "$tmp/data2" "$(uri_of w)" --flush || fail "write into w"
stop_server TERM || fail "clean stop"
start_busesnap
nbdcopy "$(uri_of w)" "$tmp/back2" || fail "read w"
cmp -n $((256 << 20)) "$tmp/data2" "$tmp/back2" || fail "w's data wrong after reusing punched space"
nbdcopy "$uri" "$tmp/back" || fail "read the kept data after the restart"
cmp -n $((64 << 20)) "$tmp/keep" "$tmp/back" || fail "kept data wrong after the restart"
"$top/bsnap" check >/dev/null || fail "check after the restart"
[ $(($(used) - after)) -lt $((512 << 20)) ] || fail "256 MiB written grew du from $after to $(used)"
exit 0
