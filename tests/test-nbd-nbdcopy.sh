#!/bin/bash
# test-nbd-nbdcopy: a 1 GiB random file copied into a 1 GiB busexmp and back
# out with nbdcopy over four connections each (many requests in flight, out
# of order replies, CAN_MULTI_CONN), bit-exact.  A hole in the middle of the
# file checks that nbdcopy's zero detection (WRITE_ZEROES / holes) works too.
. "$(dirname "$0")/functions.sh"
requires nbdcopy cmp
start_busexmp 1G

# 1 GiB: 448 MiB random, 128 MiB of zeros, 448 MiB random.
head -c 448M /dev/urandom >"$tmp/in"
truncate -s 576M "$tmp/in"
head -c 448M /dev/urandom >>"$tmp/in"
[ "$(stat -c %s "$tmp/in")" = $((1 << 30)) ] || fail "test file is not 1 GiB"

nbdcopy --connections=4 --requests=16 --flush "$tmp/in" "$uri" || fail "nbdcopy in failed"
nbdcopy --connections=4 --requests=16 "$uri" "$tmp/out" || fail "nbdcopy out failed"
cmp "$tmp/in" "$tmp/out" || fail "copied data differs"
rm -f "$tmp/in" "$tmp/out"
