#!/bin/bash
# The log (src/store/store-log.c): a FLUSH or FUA makes writes durable by
# one fdatasync of the chunk file, which holds both the chunks and the
# log's summary blocks, and the next open replays the log into the index.
# Shown here with kill -9 between the flush and any checkpoint:
#   1. flushed writes (1 MiB, 256 KiB, unaligned), zero, trim and a FUA
#      write come back byte-exact; an offline `busesnap check` replays them
#      first
#   2. a damaged summary block ends the replay there: the entries before it
#      are applied, it and those after are not (the blocks were synced, so
#      a plain start refuses: test-busesnap-unclean; --accept-data-loss)
#   3. torn data: a chunk whose bytes do not hash to what its entry says
#      ends the replay at that entry (the same)
#   4. snapshots and clones are logged too (no index commit): after kill -9
#      the replay makes the same objects, with their content, and the
#      writes around them land on the right side
#   5. blocks written before the last checkpoint are never replayed (they
#      would undo newer writes), and the log's segments stay a bounded work
#      area however much is flushed
#   6. another image's chunk file is refused with a clear error
. "$(dirname "$0")/functions.sh"
requires nbdsh nbdcopy jq python3
MiB=$((1 << 20))

replayed() { # the entries the last start replayed (0 if none)
    sed -n 's/.*log: replayed \([0-9]*\) entries.*/\1/p' "$1" | tail -1 | grep . || echo 0
}
blocks() { python3 "$top/tests/logblocks.py" "$image-chunks"; }

# 1. Everything acknowledged as durable is replayed.
start_busesnap 64M
nbdsh -u "$uri" -c "
import random
r = random.Random(7)
img = bytearray(64 << 20)
def w(off, data, flags=0):
    h.pwrite(data, off, flags)
    img[off:off + len(data)] = data
w(8 << 20, r.randbytes(1 << 20))                 # 1 MiB
for i in range(4):
    w(i << 18, r.randbytes(1 << 18))             # 256 KiB
w(3 * (1 << 20) + 100, r.randbytes(5000))        # unaligned
h.zero(65536, 256 << 10); img[256 << 10:(256 << 10) + 65536] = bytes(65536)
h.trim(65536, 512 << 10); img[512 << 10:(512 << 10) + 65536] = bytes(65536)
h.flush()
w(4 << 20, r.randbytes(65536), nbd.CMD_FLAG_FUA)  # FUA, no flush after
open('$tmp/expect', 'wb').write(img)
" || fail "writes"
stop_server KILL || true
"$top/busesnap" check "$image" >"$tmp/check" 2>&1 || fail "offline check: $(tail -3 "$tmp/check")"
n=$(replayed "$tmp/check")
[ "$n" -ge 530 ] || fail "the offline check replayed $n entries, not the 530 or more written: $(cat "$tmp/check")"
start_busesnap
nbdcopy "$uri" "$tmp/back" || fail "read back"
cmp "$tmp/expect" "$tmp/back" || fail "volume differs after kill -9 and replay"

# 2. A damaged summary block ends the replay.  Each flush seals the block
# it filled: X1, X2, X3 are the log's last three blocks.
nbdsh -u "$uri" -c "
h.pwrite(b'\x11' * 4096, 16 << 20); h.flush()
h.pwrite(b'\x22' * 4096, (16 << 20) + 4096); h.flush()
h.pwrite(b'\x33' * 4096, (16 << 20) + 8192); h.flush()
" || fail "writes X1-X3"
stop_server KILL || true
x2=$(blocks | tail -2 | head -1 | cut -d' ' -f1)
printf '\xff' | dd of="$image-chunks" bs=1 seek=$((x2 + 100)) conv=notrunc status=none
refused() { # a plain start must refuse: the damaged blocks were synced
    local rc=0
    "$top/busesnap" serve "$image" --socket "$sock" --control "$ctl" >"$tmp/refused" 2>&1 || rc=$?
    [ $rc = 1 ] && grep -q "log does not reach what was made durable" "$tmp/refused" ||
        fail "a start over a damaged log did not refuse (rc $rc): $(cat "$tmp/refused")"
}
refused
: >"$tmp/server.log"
start_busesnap "" --accept-data-loss
[ "$(replayed "$tmp/server.log")" = 1 ] ||
    fail "expected 1 entry replayed before the damaged block: $(grep 'log:' "$tmp/server.log")"
nbdsh -u "$uri" -c "
assert h.pread(4096, 16 << 20) == b'\x11' * 4096, 'X1 (before the damage) lost'
assert h.pread(4096, (16 << 20) + 4096) == bytes(4096), 'damaged X2 was applied'
assert h.pread(4096, (16 << 20) + 8192) == bytes(4096), 'X3 (after the damage) was applied'
" || fail "replay did not stop at the damaged block"

# 3. Torn data: Y2's summary block is intact but its chunk is not.
nbdsh -u "$uri" -c "
h.pwrite(b'\x41' * 4096, 18 << 20); h.flush()
h.pwrite(b'\x42' * 4096, (18 << 20) + 4096); h.flush()
h.pwrite(b'\x43' * 4096, (18 << 20) + 8192); h.flush()
" || fail "writes Y1-Y3"
stop_server KILL || true
at=$(python3 -c "
f = open('$image-chunks', 'rb'); i = 0
while True:
    b = f.read(4096)
    if not b: break
    if b == b'\x42' * 4096: print(i * 4096); break
    i += 1
")
[ -n "$at" ] || fail "Y2's chunk is not in the chunk file"
printf 'torn' | dd of="$image-chunks" bs=1 seek=$((at + 2000)) conv=notrunc status=none
refused
: >"$tmp/server.log"
start_busesnap "" --accept-data-loss
[ "$(replayed "$tmp/server.log")" = 1 ] ||
    fail "expected 1 entry replayed before the torn chunk: $(grep 'log:' "$tmp/server.log")"
nbdsh -u "$uri" -c "
assert h.pread(4096, 18 << 20) == b'\x41' * 4096, 'Y1 lost'
assert h.pread(4096, (18 << 20) + 4096) == bytes(4096), 'torn Y2 was applied'
assert h.pread(4096, (18 << 20) + 8192) == bytes(4096), 'Y3 (after it) was applied'
" || fail "replay did not stop at the torn chunk"
stop_server TERM || fail "clean stop"
"$top/busesnap" check "$image" >"$tmp/check" 2>&1 || fail "check: $(tail -3 "$tmp/check")"

# 4. Snapshot and clone records.  s1 holds P; the volume then gets Q; the
# clone c1 of s1 gets R; kill -9 right after, nothing checkpointed.
start_busesnap
nbdsh -u "$uri" -c "h.pwrite(b'P' * 8192, 32 << 20); h.flush()" || fail "write P"
"$top/bsnap" create s1 >"$tmp/s1.out" || fail "bsnap create s1"
nbdsh -u "$uri" -c "h.pwrite(b'Q' * 8192, 32 << 20); h.flush()" || fail "write Q"
"$top/bsnap" clone s1 c1 >/dev/null || fail "bsnap clone s1 c1"
nbdsh -u "$(uri_of c1)" -c "h.pwrite(b'R' * 4096, (32 << 20) + 4096); h.flush()" || fail "write R"
stop_server KILL || true
: >"$tmp/server.log"
start_busesnap
grep -q "log: replayed 5 entries and 2 tree records" "$tmp/server.log" ||
    fail "expected P, Q, R and 2 tree records replayed: $(grep 'log:' "$tmp/server.log")"
"$top/bsnap" list --json | jq -e 'map(.name) | sort == ["c1", "default", "s1"]' >/dev/null ||
    fail "objects after replay: $("$top/bsnap" list --json | jq -c 'map(.name)')"
nbdsh -u "$(uri_of s1)" -c "assert h.pread(8192, 32 << 20) == b'P' * 8192, 's1 content'" || fail "snapshot s1 lost its content"
nbdsh -u "$uri" -c "assert h.pread(8192, 32 << 20) == b'Q' * 8192, 'volume content'" || fail "volume lost Q"
nbdsh -u "$(uri_of c1)" -c "
assert h.pread(4096, 32 << 20) == b'P' * 4096, 'c1 first block'
assert h.pread(4096, (32 << 20) + 4096) == b'R' * 4096, 'c1 second block'
" || fail "clone c1 content after replay"

# 5. Stale blocks: Z1-Z3 (Z2 writes block B) are checkpointed by `bsnap gc`;
# then W writes block B and is flushed; after kill -9 only W is replayed.
# Then 64 MiB flushed in small writes: the log's segments stay few.
B=$((20 * MiB))
nbdsh -u "$uri" -c "
import subprocess
h.pwrite(b'\x01' * 4096, $B + 4096)
h.pwrite(b'\x02' * 4096, $B)
h.pwrite(b'\x03' * 4096, $B + 8192)
h.flush()
subprocess.run(['$top/bsnap', 'gc'], check=True, stdout=subprocess.DEVNULL)
h.pwrite(b'\x5a' * 4096, $B); h.flush()
" || fail "writes Z1-Z3, checkpoint, write W"
stop_server KILL || true
: >"$tmp/server.log"
start_busesnap
[ "$(replayed "$tmp/server.log")" = 1 ] ||
    fail "expected only W replayed: $(grep 'log:' "$tmp/server.log")"
nbdsh -u "$uri" -c "
got = h.pread(4096, $B)
assert got == b'\x5a' * 4096, 'block B reads %r: a stale block was replayed' % got[:1]
for i in range(2048):
    h.pwrite(bytes([i % 250 + 1]) * 32768, (i % 64) * 32768)
    if i % 8 == 7:
        h.flush()
" || fail "stale log blocks replayed, or the flushed writes failed"
lb=$("$top/bsnap" info --json | jq .journal_bytes)
[ "$lb" -le $((3 * 4 * MiB)) ] || fail "the log holds $lb bytes of segments after 64 MiB of flushed writes"
stop_server TERM || fail "clean stop"
"$top/busesnap" check "$image" >"$tmp/check" 2>&1 || fail "check after tree replay: $(tail -3 "$tmp/check")"

# 6. Another image's chunk file is refused, and nothing is changed.
"$top/busesnap" create "$tmp/other.db" --size 16M >/dev/null || fail "create other"
cp "$image-chunks" "$tmp/other.db-chunks"
if "$top/busesnap" check "$tmp/other.db" >"$tmp/check" 2>&1; then
    fail "an image opened with another image's chunk file"
fi
grep -q "belongs to another image" "$tmp/check" || fail "unclear error: $(cat "$tmp/check")"
exit 0
