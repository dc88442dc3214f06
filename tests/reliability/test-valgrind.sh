#!/usr/bin/env bash
# test-valgrind.sh: the store and libbuse unit tests (tests/unit/test-*), a
# short busesnap session (nbdsh + bsnap) and a busexmp one under memcheck: no
# invalid access, no use of uninitialised memory in a branch or a syscall,
# no definite leak, and a clean exit on SIGTERM.
#
# The store maps a 1 TiB LMDB index; valgrind's address space is smaller, so
# lmdb-mapsize.so clamps the map to 4 GiB (the images here are a few MB).
# The slowest unit test runs beside the others (two streams, two cores),
# without its 1.75 GiB full-index case (TEST_QUICK: the plain and sanitizer
# runs of make check cover it; under memcheck it took most of 256-600 s).
. "$(dirname "$0")/../functions.sh"
# a sanitizer build has its own allocator: neither an LD_PRELOAD allocator
# nor valgrind can run under it (make check SANITIZER=... covers that build)
if ldd "$top/busesnap" 2>/dev/null | grep -qE 'lib(a|ub|t)san'; then
    skip "busesnap is built with a sanitizer"
fi
requires valgrind nbdsh python3 socat
shim=$top/tests/reliability/lmdb-mapsize.so
[ -f "$shim" ] || make -C "$top" -s tests/reliability/lmdb-mapsize.so ||
    fail "cannot build $shim"

# vg LOG CMD...: exec CMD under memcheck (run it in a subshell or with &,
# so that $! is valgrind itself and signals reach the program).
vg() {
    local log=$1; shift
    LD_PRELOAD=$shim exec valgrind -q --leak-check=full \
        --errors-for-leak-kinds=definite --show-leak-kinds=definite \
        --error-exitcode=99 --track-fds=no --log-file="$log" "$@"
}

# private copies: a rebuild in the tree meanwhile does not disturb the run
mkdir "$tmp/bin"
units=()
for t in "$top"/tests/unit/test-*; do
    [ -x "$t" ] && [[ $t != *.c ]] || continue
    cp "$t" "$tmp/bin/" && units+=("$(basename "$t")")
done
cp "$top/busesnap" "$top/bsnap" "$top/busexmp" "$tmp/bin/" || fail "make first"
[ ${#units[@]} -gt 0 ] || fail "no unit tests built (make first)"

# run_unit NAME: one unit test under memcheck; prints "NAME rc=RC Ns".
run_unit() {
    local t=$1 rc=0 s=$SECONDS
    (cd "$tmp" && TEST_NO_TIMING=1 TEST_QUICK=1 FIXTURES="$top/tests/fixtures" vg "$tmp/vg-$t.log" "$tmp/bin/$t") >"$tmp/out-$t.log" 2>&1 ||
        rc=$?
    echo "$t rc=$rc $((SECONDS - s))s"
}

# stream 1: test-store-dedup (the slowest); stream 2: the rest, then busesnap
slow=test-store-dedup
if [[ " ${units[*]} " == *" $slow "* ]]; then
    run_unit "$slow" >"$tmp/slow.result" &
    slow_pid=$!
fi
for t in "${units[@]}"; do
    [ "$t" = "$slow" ] || run_unit "$t" | tee -a "$tmp/units.result"
done

# ---- busesnap serve under memcheck: a short session ----
image=$tmp/image.db
sock=$tmp/sock
ctl=$tmp/ctl
export BSNAP_CONTROL=$ctl
PATH=$tmp/bin:$PATH
(vg "$tmp/vg-busesnap.log" "$tmp/bin/busesnap" serve "$image" --size 16M \
    --socket "$sock" --control "$ctl") >"$tmp/server.log" 2>&1 &
server_pid=$!
on_exit "kill $server_pid"
for ((i = 0; i < 3000; i++)); do
    bsnap info >/dev/null 2>&1 && break
    kill -0 $server_pid 2>/dev/null ||
        fail "busesnap under valgrind died at start: $(tail -3 "$tmp/server.log" "$tmp/vg-busesnap.log")"
    sleep 0.02
done
bsnap info >/dev/null || fail "busesnap under valgrind did not answer"

nbdsh --base-allocation -u "nbd+unix:///?socket=$sock" -c '
import os
a = os.urandom(65536)
h.pwrite(a, 0)
h.pwrite(a, 1 << 20)                    # a deduplicated copy
h.pwrite(b"x" * 100, 4096 * 40 + 7)     # a partial block
h.flush()
assert h.pread(65536, 0) == a
h.trim(8192, 0)
h.zero(4096, 16384)
h.block_status(1 << 20, 0, lambda *args: 0)
assert h.pread(4096, 0) == bytes(4096)
h.flush()
' || fail "nbdsh session failed"
bsnap create s1 >/dev/null || fail "bsnap create"
bsnap clone s1 c1 >/dev/null || fail "bsnap clone"
nbdsh -u "nbd+unix:///c1?socket=$sock" -c '
h.pwrite(b"c" * 4096, 0)
h.flush()
assert h.pread(4096, 1 << 20)[:1] != b""
' || fail "nbdsh on the clone failed"
# a client that vanishes without NBD_CMD_DISC, mid-session
python3 -c '
import nbd, os, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1]); h.pwrite(b"v" * 4096, 8192)
os._exit(0)' "$sock" || fail "python client"
bsnap list >/dev/null || fail "bsnap list"
bsnap diff s1 c1 >/dev/null 2>&1 || fail "bsnap diff"
bsnap create s2 --volume c1 >/dev/null || fail "bsnap create on the clone"
bsnap rollback s2 --volume c1 --force >/dev/null || fail "bsnap rollback"
bsnap delete c1 --force >/dev/null || fail "bsnap delete c1"
bsnap delete s1 --force >/dev/null || fail "bsnap delete s1"
bsnap gc >/dev/null || fail "bsnap gc"
bsnap check >/dev/null || fail "bsnap check"
bsnap info >/dev/null || fail "bsnap info"
# a protocol error on the control socket
printf '%s\n' '{"op":"hello","version":1}' 'not json' '{"op":"nosuch"}' |
    socat -t 2 - "UNIX-CONNECT:$ctl" >/dev/null 2>&1 || true
kill -TERM $server_pid
rc=0
wait $server_pid || rc=$?
echo "busesnap serve under memcheck: exit $rc"
[ $rc = 0 ] || fail "busesnap under valgrind exited $rc on SIGTERM (99: memcheck errors): $(head -40 "$tmp/vg-busesnap.log")"
"$tmp/bin/busesnap" check "$image" >/dev/null || fail "busesnap check after the session"

# ---- busexmp (libbuse's example) under memcheck: a short session ----
(vg "$tmp/vg-busexmp.log" "$tmp/bin/busexmp" 8M --socket "$tmp/xsock") \
    >"$tmp/busexmp.log" 2>&1 &
xmp_pid=$!
on_exit "kill $xmp_pid"
for ((i = 0; i < 1500; i++)); do
    [ -S "$tmp/xsock" ] && break
    sleep 0.02
done
nbdsh --base-allocation -u "nbd+unix:///?socket=$tmp/xsock" -c '
import os
a = os.urandom(65536)
h.pwrite(a, 4096)
h.flush()
assert h.pread(65536, 4096) == a
h.trim(8192, 4096)
h.zero(4096, 16384)
h.block_status(1 << 20, 0, lambda *args: 0)
assert h.pread(8192, 4096) == bytes(8192)
' || fail "nbdsh session on busexmp failed"
kill -TERM $xmp_pid
rc=0
wait $xmp_pid || rc=$?
echo "busexmp under memcheck: exit $rc"
[ $rc = 0 ] || fail "busexmp under valgrind exited $rc on SIGTERM (99: memcheck errors): $(head -40 "$tmp/vg-busexmp.log")"

if [ -n "${slow_pid:-}" ]; then
    wait $slow_pid
    cat "$tmp/slow.result" | tee -a "$tmp/units.result"
fi
bad=$(grep -v ' rc=0 ' "$tmp/units.result" || true)
if [ -n "$bad" ]; then
    t=$(echo "$bad" | head -1 | cut -d' ' -f1)
    fail "under memcheck: $bad; $(head -40 "$tmp/vg-$t.log" "$tmp/out-$t.log")"
fi
echo "$(wc -l <"$tmp/units.result") unit tests, a busesnap and a busexmp session clean under memcheck ($SECONDS s)"
