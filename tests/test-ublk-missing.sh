#!/bin/bash
# test-ublk-missing: on a kernel without ublk_drv (this host), attaching
# /dev/ublkbN fails at once with exit 1 and one line that names
# `modprobe ublk_drv` and the alternatives (/dev/nbdN, --socket), from
# busexmp (buse_main) and from busesnap serve (which then leaves no control
# socket).  A malformed ublk name gets its own line.  The VM tier
# (tests/kernel/case-ublk-*.sh) tests the driver itself.
. "$(dirname "$0")/functions.sh"
[ ! -e /dev/ublk-control ] || skip "this kernel has ublk (/dev/ublk-control): the VM cases cover it"
x=$top/busexmp bs=$top/busesnap

one_line() { # one_line WANT CMD...: exit 1 within 20 s, one line with WANT
    local want=$1 rc=0; shift
    timeout 20 "$@" >"$tmp/out" 2>"$tmp/err" </dev/null || rc=$?
    assert_eq "exit code of $*" 1 "$rc"
    [ "$(wc -l <"$tmp/err")" = 1 ] || fail "$*: expected one line on stderr, got: $(cat "$tmp/err")"
    grep -q -- "$want" "$tmp/err" || fail "$*: stderr lacks '$want': $(cat "$tmp/err")"
}
for dev in /dev/ublkb0 /dev/ublkb ublkb3; do
    one_line "modprobe ublk_drv" "$x" 64M "$dev"
    grep -q "/dev/nbdN" "$tmp/err" || fail "busexmp 64M $dev: no /dev/nbdN alternative: $(cat "$tmp/err")"
    grep -q -- "--socket" "$tmp/err" || fail "busexmp 64M $dev: no --socket alternative: $(cat "$tmp/err")"
done
one_line "modprobe ublk_drv" "$x" 64M /dev/ublkb0 --queues 2 --queue-depth 64
one_line "not a ublk device" "$x" 64M /dev/ublkbx
one_line "modprobe ublk_drv" "$bs" serve "$tmp/img.db" /dev/ublkb0 --size 64M --control "$tmp/ctl"
[ ! -e "$tmp/ctl" ] || fail "control socket left after a failed ublk attach"
