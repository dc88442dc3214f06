#!/bin/bash
# Case: no nbd module.  `busexmp SIZE /dev/nbd0` must fail at once with a
# clear message (modprobe nbd, or serve over a socket) and leave nothing
# behind; after loading the module the same command attaches.
. /test/guest.sh
[ -x /test/bin/busexmp ] || fail "busexmp was not built"
[ ! -e /sys/module/nbd ] || fail "nbd is already loaded before the case"

rc=0
timeout 20 busexmp 64M /dev/nbd0 >/tmp/nomod.err 2>&1 || rc=$?
note "without the module: exit $rc: $(head -n 3 /tmp/nomod.err)"
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "busexmp exited $rc without an nbd module (expected a failure, at once)"
grep -q 'modprobe nbd' /tmp/nomod.err || fail "no 'modprobe nbd' hint in: $(cat /tmp/nomod.err)"
grep -q -- '--socket' /tmp/nomod.err || fail "no '--socket' hint in: $(cat /tmp/nomod.err)"

load_nbd
start srv busexmp 64M /dev/nbd0
wait_nbd /dev/nbd0 15 $pid
term_released $pid /dev/nbd0 15 "busexmp"
note "after insmod nbd: attached, SIGTERM, released"
