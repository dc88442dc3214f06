#!/bin/bash
# Verified reads (issue 20): every chunk read is checked against the hash
# tag its map entry expects (src/store/store-io.c), so damaged chunk bytes
# or a damaged map entry give the client EIO, never wrong bytes:
#   1. 4 bytes flipped in a chunk: nbdsh, qemu-io and nbdcopy get an
#      error for that block, the blocks around it read back right, the
#      server logs the volume and offset, `bsnap info` counts it, and
#      `busesnap check` names the volume, snapshot and offset that read it
#   2. a map entry changed to name another valid chunk (the tag kept): the
#      read is refused too, not served with the other block's bytes
. "$(dirname "$0")/functions.sh"
requires nbdsh nbdcopy qemu-io jq python3
MiB=$((1 << 20))

start_busesnap 16M
nbdsh -u "$uri" -c "
import random
r = random.Random(20)
data = r.randbytes(1 << 20)
h.pwrite(data, 0)
h.flush()
open('$tmp/expect', 'wb').write(data)
" || fail "writes"
"$top/bsnap" create s1 >/dev/null || fail "snapshot"
stop_server || fail "clean stop"

# Block 5's chunk: find its bytes in the chunk file (random data: unique).
slot_of() { # BLOCK: the slot holding block BLOCK of $tmp/expect
    python3 - "$image-chunks" "$tmp/expect" "$1" <<'EOF'
import sys
f = open(sys.argv[1], 'rb').read()
blk = open(sys.argv[2], 'rb').read()[int(sys.argv[3]) * 4096:][:4096]
i = f.find(blk)
assert i >= 0 and i % 4096 == 0, "block not found in the chunk file"
print(i // 4096)
EOF
}
s5=$(slot_of 5) || fail "block 5 not in the chunk file"
python3 - "$image-chunks" "$s5" <<'EOF' || fail "flip"
import sys
with open(sys.argv[1], 'r+b') as f:
    off = int(sys.argv[2]) * 4096 + 100
    f.seek(off); b = f.read(4)
    f.seek(off); f.write(bytes(x ^ 0xff for x in b))
EOF

start_busesnap
# nbdsh: block 5 is EIO, blocks 4 and 6 are right
nbdsh -u "$uri" -c "
exp = open('$tmp/expect', 'rb').read()
assert h.pread(4096, 4 * 4096) == exp[4 * 4096:5 * 4096]
assert h.pread(4096, 6 * 4096) == exp[6 * 4096:7 * 4096]
for off, n in ((5 * 4096, 4096), (0, 1 << 20), (5 * 4096 + 10, 100)):
    try:
        h.pread(n, off)
    except nbd.Error as e:
        assert 'Input/output error' in str(e), e
    else:
        raise AssertionError('damaged block %d+%d read without an error' % (off, n))
" || fail "nbdsh read of the damaged block did not give EIO"
qemu-io -f raw -c "read -P 0 $((5 * 4096)) 4096" "$uri" >"$tmp/qio" 2>&1 || true
grep -qi "input/output error" "$tmp/qio" || fail "qemu-io read of the damaged block: $(cat "$tmp/qio")"
if nbdcopy "$uri" "$tmp/back" 2>"$tmp/copy.err"; then
    fail "nbdcopy copied a volume with a damaged chunk without an error"
fi
grep -qi "input/output error" "$tmp/copy.err" || fail "nbdcopy: $(cat "$tmp/copy.err")"
"$top/bsnap" info --json >"$tmp/info.json" || fail "bsnap info"
bad=$(jq .bad_reads "$tmp/info.json")
[ "$bad" -ge 3 ] || fail "bsnap info counts $bad bad reads, expected 3 or more"
grep -q "volume \"default\" offset $((5 * 4096)): chunk slot $s5 does not match" "$tmp/server.log" ||
    fail "the server did not log the damaged chunk: $(tail -3 "$tmp/server.log")"
stop_server || fail "clean stop"
if "$top/busesnap" check "$image" >"$tmp/check" 2>&1; then
    fail "check found nothing"
fi
for who in 'volume "default"' 'snapshot "s1"'; do
    grep -q "slot $s5 is read by $who at offset $((5 * 4096))" "$tmp/check" ||
        fail "check does not name $who at offset $((5 * 4096)): $(cat "$tmp/check")"
done

# 2. Block 7's map entry made to name block 8's chunk (its own tag kept):
# in every leaf copy of the entry in the index.
s7=$(slot_of 7) && s8=$(slot_of 8) || fail "blocks 7, 8 not in the chunk file"
python3 - "$image" "$s7" "$s8" <<'EOF' || fail "map edit"
import re, sys
p, s7, s8 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
f = bytearray(open(p, 'rb').read())
key = (7).to_bytes(5, 'big')
pat = re.compile(re.escape(key) + b'....' + re.escape(s7.to_bytes(5, 'big')) + b'..', re.S)
n = 0
for m in pat.finditer(bytes(f)):
    f[m.start() + 9:m.start() + 14] = s8.to_bytes(5, 'big')
    n += 1
assert n > 0, "map entry not found"
open(p, 'wb').write(f)
EOF
start_busesnap
nbdsh -u "$uri" -c "
exp = open('$tmp/expect', 'rb').read()
assert h.pread(4096, 8 * 4096) == exp[8 * 4096:9 * 4096]
try:
    got = h.pread(4096, 7 * 4096)
except nbd.Error as e:
    assert 'Input/output error' in str(e), e
else:
    raise AssertionError('block 7 read as %s' % ('block 8' if got == exp[8 * 4096:9 * 4096] else 'something'))
" || fail "a map entry naming another chunk was not refused"
stop_server || fail "clean stop"
if "$top/busesnap" check "$image" >"$tmp/check2" 2>&1; then
    fail "check found nothing after the map edit"
fi
grep -q "slot $s8: map entries expect another chunk" "$tmp/check2" ||
    fail "check does not report the map entry: $(cat "$tmp/check2")"
exit 0
