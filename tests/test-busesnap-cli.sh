#!/bin/bash
# busesnap's command line: --help, usage errors (exit 2, one line), a
# missing image without --size, a size mismatch, create/info/check offline,
# an image that is in use, a clean SIGTERM that removes both sockets, and
# a damaged chunk found by busesnap check and bsnap check (exit 1).
. "$(dirname "$0")/functions.sh"
requires nbdinfo nbdcopy jq
bs=$top/busesnap

# expect_rc RC MSG CMD...: run CMD, want exit code RC and (for 1 and 2)
# exactly one stderr line containing MSG.
expect_rc() {
    local want=$1 msg=$2 rc=0; shift 2
    "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    [ "$rc" = "$want" ] || fail "$*: exit $rc, expected $want ($(head -c 300 "$tmp/err"))"
    if [ "$want" != 0 ]; then
        [ "$(wc -l <"$tmp/err")" = 1 ] || fail "$*: expected one line on stderr, got: $(cat "$tmp/err")"
        grep -q -- "$msg" "$tmp/err" || fail "$*: stderr lacks '$msg': $(cat "$tmp/err")"
    fi
}

expect_rc 0 "" "$bs" --help
grep -q "serve IMAGE" "$tmp/out" || fail "busesnap --help does not mention serve"
for c in serve create check info; do
    expect_rc 0 "" "$bs" $c --help
    grep -q "Usage: busesnap $c" "$tmp/out" || fail "busesnap $c --help lacks its usage line"
done
expect_rc 2 "missing COMMAND" "$bs"
expect_rc 2 "unknown command" "$bs" frobnicate
expect_rc 2 "missing IMAGE" "$bs" serve
expect_rc 2 "nothing to serve" "$bs" serve "$tmp/x.db"
expect_rc 2 "bad option" "$bs" serve "$tmp/x.db" --socket "$tmp/s" --bogus
expect_rc 2 "bad size" "$bs" serve "$tmp/x.db" --socket "$tmp/s" --size 12Q
expect_rc 2 "multiple of 4096" "$bs" serve "$tmp/x.db" --socket "$tmp/s" --size 1000
expect_rc 2 "unexpected argument" "$bs" serve "$tmp/x.db" /dev/nbd0 extra --socket "$tmp/s"
expect_rc 2 "--attach wants" "$bs" serve "$tmp/x.db" --attach nbd0 --socket "$tmp/s"
expect_rc 2 "--connections wants a whole number" "$bs" serve "$tmp/x.db" --socket "$tmp/s" --connections abc
expect_rc 2 "--timeout wants a whole number" "$bs" serve "$tmp/x.db" --socket "$tmp/s" --timeout 5x
expect_rc 2 "--queue-depth wants a whole number" "$bs" serve "$tmp/x.db" --socket "$tmp/s" --queue-depth -1
expect_rc 2 "size is required" "$bs" create "$tmp/x.db"
expect_rc 1 "no such image" "$bs" serve "$tmp/x.db" --socket "$tmp/s" --control "$tmp/c"
[ ! -e "$tmp/x.db" ] || fail "a failed serve created the image"
expect_rc 1 "no such image" "$bs" info "$tmp/x.db"

# Offline create, info, check.
img=$tmp/image.db
expect_rc 0 "" "$bs" create "$img" --size 64M
expect_rc 1 "" "$bs" create "$img" --size 64M
expect_rc 0 "" "$bs" info "$img" --json
assert_eq "info size" 67108864 "$(jq -r .size "$tmp/out")"
assert_eq "info volumes" 1 "$(jq -r .volumes "$tmp/out")"
uuid=$(jq -r .uuid "$tmp/out")
[[ $uuid =~ ^[0-9a-f-]{36}$ ]] || fail "info uuid '$uuid' is not a UUID"
expect_rc 0 "" "$bs" info "$img"
grep -q "logical size: *64M (67108864 bytes)" "$tmp/out" || fail "human info: $(cat "$tmp/out")"
expect_rc 0 "" "$bs" check "$img"
grep -q "no problems" "$tmp/out" || fail "check did not say 'no problems'"

# A different --size is refused; the same one is fine.
expect_rc 1 "exists with size 64M (67108864 bytes)" "$bs" serve "$img" --size 128M --socket "$tmp/s" --control "$tmp/c"
image=$img
start_busesnap 64M
[ -S "$sock" ] || fail "NBD socket missing"
assert_eq "served size" 67108864 "$(nbdinfo --json "$uri" | jq -r '.exports[0]."export-size"')"
nbdinfo --list --json "$uri" >"$tmp/list"
assert_eq "export names" ',default' "$(jq -r '[.exports[]."export-name"] | join(",")' "$tmp/list")"
# Served images are locked against offline tools.
expect_rc 1 "in use" "$bs" check "$img"
# A second server on the same control socket refuses to start.
expect_rc 1 "another server is listening" "$bs" serve "$tmp/other.db" --size 4M --socket "$tmp/s2" --control "$ctl"
[ ! -e "$tmp/other.db" ] || fail "a server that refused to start created its image"

# TCP beside the Unix socket, and systemd socket activation (nbdinfo runs
# the server with LISTEN_FDS).
stop_server TERM || fail "busesnap exited $? on SIGTERM"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_busesnap "" --tcp "127.0.0.1:$port"
assert_eq "size over TCP" 67108864 "$(nbdinfo --size "nbd://127.0.0.1:$port/default")"
stop_server TERM || fail "busesnap exited $? on SIGTERM"
assert_eq "size with socket activation" 67108864 \
    "$(nbdinfo --size -- [ "$bs" serve "$img" --control "$tmp/ctl-sd" ])"
start_busesnap

# Without the nbd module (this host), DEVICE is a clear error and exit 1.
if [ ! -e /sys/module/nbd ] && [ ! -e /dev/nbd0 ]; then
    stop_server TERM || fail "busesnap exited $? on SIGTERM"
    expect_rc 1 "modprobe nbd" "$bs" serve "$img" /dev/nbd0 --control "$tmp/ctl-k"
    [ ! -e "$tmp/ctl-k" ] || fail "control socket left after a failed attach"
    start_busesnap
fi

# Clean stop: exit 0, both sockets gone.
stop_server TERM || fail "busesnap exited $? on SIGTERM"
[ ! -e "$ctl" ] || fail "control socket left behind"
[ ! -e "$sock" ] || fail "NBD socket left behind"
expect_rc 0 "" "$bs" check "$img"

# A damaged chunk is found, offline (exit 1) and through bsnap (exit 1).
start_busesnap
head -c 1M /dev/urandom >"$tmp/1m"
nbdcopy "$tmp/1m" "$uri" || fail "write 1M"
stop_server TERM || fail "busesnap exited $? on SIGTERM"
# the chunk of the data's 101st block: where the chunk file holds its bytes
at=$(python3 -c "
d = open('$tmp/1m', 'rb').read()[100 * 4096:101 * 4096]
f = open('$img-chunks', 'rb')
i = 0
while True:
    b = f.read(4096)
    if not b:
        break
    if b == d:
        print(i * 4096)
        break
    i += 1
")
[ -n "$at" ] || fail "the written data's chunk is not in the chunk file"
printf 'garbage' | dd of="$img-chunks" bs=1 seek=$((at + 7)) conv=notrunc status=none
rc=0; "$bs" check "$img" >"$tmp/out" 2>"$tmp/err" || rc=$?
assert_eq "check of a damaged image: exit" 1 "$rc"
grep -q "problem" "$tmp/err" || fail "check named no problem: $(cat "$tmp/err")"
start_busesnap
rc=0; "$top/bsnap" check >"$tmp/out" 2>"$tmp/err" || rc=$?
assert_eq "bsnap check of a damaged image: exit" 1 "$rc"
grep -q "problem" "$tmp/err" || fail "bsnap check named no problem: $(cat "$tmp/err")"
exit 0
