#!/bin/bash
# Durability that matches NBD: data acknowledged before a FLUSH reply (and
# FUA writes, and snapshots/clones when bsnap returns) survive kill -9 of
# the server; the image reopens, passes its offline check, and reads back
# byte-exact.
. "$(dirname "$0")/functions.sh"
requires nbdcopy nbdsh qemu-io
bsnap() { "$top/bsnap" "$@"; }

start_busesnap 64M
head -c 48M /dev/urandom >"$tmp/data"
nbdcopy "$tmp/data" "$uri" --flush || fail "import"
bsnap create s1 >/dev/null
bsnap clone s1 c1 >/dev/null
# A FUA write (qemu-io's default writethrough mode sets FUA), no flush.
qemu-io -f raw "$(uri_of c1)" -c "write -P 0x42 1M 64k" >/dev/null || fail "FUA write"
dd if=/dev/urandom of="$tmp/data" bs=64k count=1 seek=16 conv=notrunc status=none
# Flushed overwrite of the volume, then kill -9 straight after the reply.
nbdsh -u "$uri" -c "
data = open('$tmp/data', 'rb').read()
h.pwrite(data[1 << 20:(1 << 20) + 65536], 1 << 20)
h.flush()
" || fail "flushed write"
stop_server KILL || true
"$top/busesnap" check "$image" >"$tmp/check" 2>&1 || fail "check after kill -9: $(tail -3 "$tmp/check")"
start_busesnap
nbdcopy "$uri" "$tmp/back" || fail "read back"
cmp -s "$tmp/data" <(head -c 48M "$tmp/back") || fail "volume differs after kill -9"
qemu-io -f raw "$(uri_of c1)" -c "read -P 0x42 1M 64k" >/dev/null || fail "FUA write lost in clone c1"
bsnap list --json | jq -e 'map(.name) | sort == ["c1", "default", "s1"]' >/dev/null || fail "objects lost: $(bsnap list --json | jq -c 'map(.name)')"
exit 0
