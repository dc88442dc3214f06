#!/bin/bash
# test-nbd-fio: fio's nbd engine writes random 4k-64k blocks at queue depth
# 16 with crc32c verification headers, then reads them all back and
# verifies (pipelined requests, replies out of order).  Any mismatch or I/O
# error fails the test.
. "$(dirname "$0")/functions.sh"
requires fio
start_busexmp 128M
cd "$tmp"
fio --name=verify --ioengine=nbd --uri="$uri" --rw=randwrite \
    --bsrange=4k-64k --iodepth=16 --size=128m --verify=crc32c \
    --verify_fatal=1 --do_verify=1 --refill_buffers --verify_state_save=0 \
    --output="$tmp/fio.log" || fail "fio failed: $(grep -m3 -i 'verify\|error' "$tmp/fio.log")"
grep -qi "verify: bad\|crc32c: verify failed" "$tmp/fio.log" && fail "fio verify mismatch"
grep -q "err= 0" "$tmp/fio.log" || fail "fio reported errors: $(grep -m1 'err=' "$tmp/fio.log")"
