#!/bin/bash
# test-bsnap-resize: bsnap resize.  Growing is online: a client connected
# before keeps reading its data at its old size, nbdinfo sees the new size
# on its next connection, the new range reads as zeros and takes writes,
# and the first 16 MiB are bit-exact (sha256) before and after; the size
# survives a kill -9 (log replay) and a clean restart.  Shrinking is
# refused without --force, with a client connected, and with data past the
# new end (named by its offset); after a trim it succeeds and changes
# nothing before the new end.  A snapshot is refused; a snapshot taken
# before the grow keeps the old size.
. "$(dirname "$0")/functions.sh"
requires nbdsh nbdinfo nbdcopy jq
bsnap() { "$top/bsnap" "$@"; }
expect_fail() {
    local msg=$1 rc=0; shift
    "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    [ "$rc" = 1 ] || fail "$*: exit $rc, expected 1 ($(head -c 300 "$tmp/err"))"
    grep -q -- "$msg" "$tmp/err" || fail "$*: stderr lacks '$msg': $(cat "$tmp/err")"
}
clients_of() { bsnap list --json | jq -r ".[] | select(.name==\"$1\") | .clients"; }
wait_no_clients() {
    local i
    for ((i = 0; i < 500; i++)); do
        [ "$(clients_of "$1")" = 0 ] && return 0
        sleep 0.02
    done
    fail "'$1' still has clients"
}
sum16() {
    nbdsh -u "$uri" -c 'import hashlib
print(hashlib.sha256(b"".join(h.pread(1 << 20, i << 20) for i in range(16))).hexdigest())'
}
M=$((1 << 20))
start_busesnap 64M
head -c 16M /dev/urandom >"$tmp/data"
nbdcopy "$tmp/data" "$uri" || fail "nbdcopy in failed"
before=$(sum16)
assert_eq "data in" "$(sha256sum <"$tmp/data" | cut -d' ' -f1)" "$before"
assert_eq "size before" $((64 * M)) "$(nbdinfo --size "$uri")"
bsnap snapshot small >/dev/null || fail "snapshot failed"

# Grow while a client is connected: it keeps its size and its data.
nbdsh -u "$uri" -c "
import subprocess
assert h.get_size() == 64 << 20
subprocess.run(['$top/bsnap', 'resize', 'default', '128M'], check=True,
               stdout=subprocess.DEVNULL)
assert h.get_size() == 64 << 20
assert h.pread(1 << 20, 0) == open('$tmp/data', 'rb').read(1 << 20)
" || fail "a connected client during the grow"
assert_eq "size after grow" $((128 * M)) "$(nbdinfo --size "$uri")"
assert_eq "data after grow" "$before" "$(sum16)"
nbdsh -u "$uri" -c "
assert h.pread(1 << 20, 64 << 20) == bytes(1 << 20), 'old end not zeros'
assert h.pread(1 << 20, (128 << 20) - (1 << 20)) == bytes(1 << 20)
h.pwrite(b'tail' * 1024, 100 << 20)
assert h.pread(4096, 100 << 20) == b'tail' * 1024
" || fail "the grown range"
assert_eq "snapshot keeps its size" $((64 * M)) "$(nbdinfo --size "$(uri_of small)")"
expect_fail "snapshots keep their size" bsnap resize small 128M
assert_eq "list shows the size" $((128 * M)) \
    "$(bsnap list --json | jq -r '.[] | select(.name=="default") | .size')"

# The size is in the log: a kill -9 and a restart keep it.
stop_server KILL || true
start_busesnap
assert_eq "size after kill -9" $((128 * M)) "$(nbdinfo --size "$uri")"
assert_eq "data after kill -9" "$before" "$(sum16)"

# Shrink: refused without --force, with a client, with data past the end.
expect_fail "refused without --force" bsnap resize default 96M
nbdsh -u "$uri" -c "
import subprocess
r = subprocess.run(['$top/bsnap', 'resize', 'default', '96M', '--force'],
                   capture_output=True, text=True)
assert r.returncode == 1 and 'disconnect its clients' in r.stderr, r.stderr
" || fail "shrink with a client connected was not refused"
wait_no_clients default
expect_fail "offset $((100 * M)), past the new end" bsnap resize default 96M --force
assert_eq "size after refusals" $((128 * M)) "$(nbdinfo --size "$uri")"
nbdsh -u "$uri" -c "h.trim(4096, 100 << 20)" || fail "trim failed"
wait_no_clients default
out=$(bsnap resize default 96M --force --bytes) || fail "shrink after trim failed"
assert_eq "resize output" "resized default from $((128 * M)) to $((96 * M))" "$out"
assert_eq "size after shrink" $((96 * M)) "$(nbdinfo --size "$uri")"
assert_eq "data after shrink" "$before" "$(sum16)"

stop_server TERM || fail "clean stop failed"
start_busesnap
assert_eq "size after restart" $((96 * M)) "$(nbdinfo --size "$uri")"
assert_eq "data after restart" "$before" "$(sum16)"
bsnap check >/dev/null || fail "bsnap check after resizes: $(bsnap check 2>&1)"
