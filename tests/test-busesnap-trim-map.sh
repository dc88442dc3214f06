#!/bin/bash
# TRIM and WRITE_ZEROES (plain, NO_HOLE, FAST_ZERO) through busesnap: the
# ranges read as zeros and nbdinfo --map (base:allocation) reports trimmed
# and zeroed ranges as holes; data stays data; the space is collected.
. "$(dirname "$0")/functions.sh"
requires nbdinfo nbdsh qemu-io jq

start_busesnap 16M
qemu-io -f raw "$uri" -c "write -P 0x77 0 8M" >/dev/null || fail "write"
qemu-io -f raw "$uri" -c "discard 1M 1M" -c "write -z -u 3M 1M" >/dev/null || fail "discard / write -z"
nbdsh -u "$uri" -c '
h.zero(1024*1024, 5*1024*1024, nbd.CMD_FLAG_FAST_ZERO)
h.zero(1024*1024, 6*1024*1024, nbd.CMD_FLAG_NO_HOLE)
h.flush()
' || fail "nbdsh zero with FAST_ZERO / NO_HOLE"
qemu-io -f raw "$uri" -c "read -P 0x77 0 1M" -c "read -P 0 1M 1M" -c "read -P 0x77 2M 1M" \
    -c "read -P 0 3M 1M" -c "read -P 0x77 4M 1M" -c "read -P 0 5M 2M" -c "read -P 0x77 7M 1M" \
    -c "read -P 0 8M 8M" >"$tmp/q" || fail "read back: $(grep -i fail "$tmp/q" | head -2)"

nbdinfo --map --json "$uri" >"$tmp/map.json"
# type: bit 0 hole, bit 1 zero.  Expand to one type per MiB.
jq -r '.[] | . as $e | range(0; $e.length / 1048576) | $e.type' "$tmp/map.json" | tr '\n' ' ' >"$tmp/types"
# MiB: 0 data, 1 trim, 2 data, 3 zero, 4 data, 5 fast-zero (hole), 6 zero
# NO_HOLE (allocated, reads zero: not a hole), 7 data, 8-15 never written.
got=$(cat "$tmp/types")
want="0 3 0 3 0 3 - 0 3 3 3 3 3 3 3 3 "
for i in $(seq 0 15); do
    w=$(echo "$want" | cut -d' ' -f$((i + 1))); g=$(echo "$got" | cut -d' ' -f$((i + 1)))
    [ "$w" = - ] && { [ $((g & 1)) = 0 ] || fail "MiB $i (NO_HOLE zero) reported as a hole (map: $got)"; continue; }
    [ "$w" = "$g" ] || fail "MiB $i: map type $g, expected $w (map: $got)"
done
"$top/bsnap" check >/dev/null || fail "check after trim/zero"
exit 0
