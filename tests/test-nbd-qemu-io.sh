#!/bin/bash
# test-nbd-qemu-io: qemu's block layer writes patterns at many offsets and
# lengths (unaligned ones, the first and the last byte of the device), with
# and without FUA, pipelined with aio, then a new connection read-verifies
# every one of them and the untouched gaps; discard and write -z read back
# as zeros; requests past the end fail and the server lives on.
. "$(dirname "$0")/functions.sh"
requires qemu-io
start_busexmp 64M
size=$((64 << 20))
qio() { qemu-io -f raw -t none "$@" "$uri"; }

# (offset length) pairs, each in its own 2 MiB slot so they never overlap.
pairs=(0 1  2097153 511  4194815 513  6291456 4096  8388607 4097
       10485761 65535  12582912 1048577  14680063 3  16777216 131072
       18874367 777777  20971520 1  23068671 12345  25165825 2097151
       $((size - 4096)) 4095  $((size - 1)) 1)
w=() v=() gaps=()
for ((i = 0; i < ${#pairs[@]}; i += 2)); do
    off=${pairs[i]} len=${pairs[i + 1]} p=$((i / 2 + 1))
    flag=; [ $((p % 3)) = 0 ] && flag=-f    # every third write with FUA
    [ $((p % 4)) = 1 ] && w+=(-c "aio_write -P $p $off $len") || w+=(-c "write $flag -P $p $off $len")
    v+=(-c "read -P $p $off $len")
done
w+=(-c "aio_flush")
qio "${w[@]}" >"$tmp/w.log" || fail "writes failed: $(tail -3 "$tmp/w.log")"
qio "${v[@]}" -c "read -P 0 2 2097151" -c "read -P 0 30M 1M" >"$tmp/v.log" ||
    fail "verify failed: $(grep -m1 -i -B1 'pattern\|fail' "$tmp/v.log")"
grep -qi "pattern verification failed" "$tmp/v.log" &&
    fail "pattern mismatch: $(grep -m1 -B1 -i 'pattern verification failed' "$tmp/v.log")"

# Discard and write -z read back as zeros (busexmp trims to zeros).
qio -c "write -P 9 40M 3M" -c "discard 40M 1M" -c "write -z 41M 1M" -c "write -z -u 42M 4096" >/dev/null
out=$(qio -c "read -P 0 40M 2M" -c "read -P 0 42M 4096" -c "read -P 9 $((42 * 1048576 + 4096)) $((1048576 - 4096))")
grep -qi "verification failed" <<<"$out" && fail "discard/zero: $out"

# Past the end: an error, and the server keeps serving.
if out=$(qio -c "read $((size - 512)) 1024" 2>&1) && ! grep -qi "error\|out of range\|Input/output" <<<"$out"; then
    fail "read past the end succeeded: $out"
fi
if out=$(qio -c "write -P 1 $size 512" 2>&1) && ! grep -qi "error\|out of range\|Input/output" <<<"$out"; then
    fail "write past the end succeeded: $out"
fi
out=$(qio -c "read -P $((${#pairs[@]} / 2)) $((size - 1)) 1") || fail "server gone after range errors: $out"
grep -qi "verification failed" <<<"$out" && fail "last byte changed: $out"
kill -0 "$server_pid" || fail "server died"
