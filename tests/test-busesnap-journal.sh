#!/bin/bash
# The write-ahead journal (IMAGE-journal, src/store/store-journal.c): a
# FLUSH or FUA makes writes durable by an fdatasync of the journal, and the
# next open replays them into the index.  Shown here with kill -9 between
# the flush and any checkpoint:
#   1. flushed writes, an unaligned write, zero, trim and a FUA write come
#      back byte-exact; an offline `busesnap check` replays them first;
#      a big write (512 KiB or more, not journaled) makes the flush commit
#   2. a record damaged on disk ends the replay there: the records before
#      it are applied, it and those after are not
#   3. records of an older epoch left further in the file after a
#      checkpoint are never replayed (they would undo newer writes)
#   4. the journal of another image is refused with a clear error
#   5. snapshots and clones are journaled too (no commit): after kill -9
#      the replay makes the same objects, with their content, and the
#      writes around them land on the right side
#   6. an idle image and a closed one give the journal's work area back
#      (truncated to its header); writes after that are replayed as before
. "$(dirname "$0")/functions.sh"
requires nbdsh nbdcopy jq
MiB=$((1 << 20))

replayed() { grep -c "journal: replayed $1 record" "$tmp/server.log" || true; }

# 1. Everything acknowledged as durable is replayed.
start_busesnap 64M
nbdsh -u "$uri" -c "
import random
r = random.Random(7)
img = bytearray(64 << 20)
def w(off, data, flags=0):
    h.pwrite(data, off, flags)
    img[off:off + len(data)] = data
for i in range(4):
    w(i << 18, r.randbytes(1 << 18))             # 256 KiB: journaled
w(3 * (1 << 20) + 100, r.randbytes(5000))        # unaligned
h.zero(65536, 256 << 10); img[256 << 10:(256 << 10) + 65536] = bytes(65536)
h.trim(65536, 512 << 10); img[512 << 10:(512 << 10) + 65536] = bytes(65536)
h.flush()
w(4 << 20, r.randbytes(65536), nbd.CMD_FLAG_FUA)  # FUA, no flush after
open('$tmp/expect', 'wb').write(img)
" || fail "writes"
stop_server KILL || true
"$top/busesnap" check "$image" >"$tmp/check" 2>&1 || fail "offline check: $(tail -3 "$tmp/check")"
grep -q "journal: replayed 8 records" "$tmp/check" ||
    fail "the offline check did not replay the 8 journal records: $(cat "$tmp/check")"
start_busesnap
nbdcopy "$uri" "$tmp/back" || fail "read back"
cmp "$tmp/expect" "$tmp/back" || fail "volume differs after kill -9 and replay"
nbdsh -u "$uri" -c "
h.pwrite(b'\x44' * (1 << 20), 8 << 20)    # big: not journaled
h.pwrite(b'\x45' * 4096, 9 << 20)
h.flush()
" || fail "big write"
stop_server KILL || true
: >"$tmp/server.log"
start_busesnap
grep -q "journal: replayed" "$tmp/server.log" && fail "a flush after a big write did not commit: $(grep journal "$tmp/server.log")"
nbdsh -u "$uri" -c "
assert h.pread(1 << 20, 8 << 20) == b'\x44' * (1 << 20), 'big write lost'
assert h.pread(4096, 9 << 20) == b'\x45' * 4096, 'small write after it lost'
" || fail "writes around a big one lost after kill -9"

# 2. A damaged record ends the replay.  Records start at 4096 in an epoch
# that the open just began: X1 at 4096, X2 right after (40-byte header +
# 4096 bytes of data).
nbdsh -u "$uri" -c "
h.pwrite(b'\x11' * 4096, 16 << 20); h.flush()
h.pwrite(b'\x22' * 4096, (16 << 20) + 4096); h.flush()
h.pwrite(b'\x33' * 4096, (16 << 20) + 8192); h.flush()
" || fail "writes X1-X3"
stop_server KILL || true
printf '\xff' | dd of="$image-journal" bs=1 seek=$((4096 + 4136 + 40 + 100)) conv=notrunc status=none
start_busesnap
[ "$(replayed 1)" = 1 ] || fail "expected 1 record replayed before the damaged one: $(grep journal "$tmp/server.log")"
nbdsh -u "$uri" -c "
assert h.pread(4096, 16 << 20) == b'\x11' * 4096, 'X1 (before the damage) lost'
assert h.pread(4096, (16 << 20) + 4096) == bytes(4096), 'damaged X2 was applied'
assert h.pread(4096, (16 << 20) + 8192) == bytes(4096), 'X3 (after the damage) was applied'
" || fail "replay did not stop at the damaged record"

# 3. Stale records: Y1-Y3 (Y2 writes block B) are checkpointed by
# `bsnap gc`; right after (well within the idle time that would truncate
# the journal) Z (one record, as long as Y1) writes block B and is flushed;
# the file then holds Z and the old Y2, Y3 after it.
B=$((20 * MiB))
nbdsh -u "$uri" -c "
import subprocess
h.pwrite(b'\x01' * 4096, $B + 4096)
h.pwrite(b'\x02' * 4096, $B)
h.pwrite(b'\x03' * 4096, $B + 8192)
h.flush()
subprocess.run(['$top/bsnap', 'gc'], check=True, stdout=subprocess.DEVNULL)
h.pwrite(b'\x5a' * 4096, $B); h.flush()
" || fail "writes Y1-Y3, checkpoint, write Z"
[ "$(stat -c %s "$image-journal")" -ge $((4096 + 3 * 4136)) ] ||
    fail "the journal no longer holds the stale records Y2, Y3 (size $(stat -c %s "$image-journal"))"
stop_server KILL || true
start_busesnap
nbdsh -u "$uri" -c "
got = h.pread(4096, $B)
assert got == b'\x5a' * 4096, 'block B reads %r: a stale record was replayed' % got[:1]
" || fail "stale journal records replayed"
stop_server TERM || fail "clean stop"
"$top/busesnap" check "$image" >"$tmp/check" 2>&1 || fail "check: $(tail -3 "$tmp/check")"

# 5. Snapshot and clone records.  s1 holds P; the volume then gets Q; the
# clone c1 of s1 gets R; kill -9 right after, nothing checkpointed.
start_busesnap
nbdsh -u "$uri" -c "h.pwrite(b'P' * 8192, 32 << 20); h.flush()" || fail "write P"
"$top/bsnap" create s1 >"$tmp/s1.out" || fail "bsnap create s1"
nbdsh -u "$uri" -c "h.pwrite(b'Q' * 8192, 32 << 20); h.flush()" || fail "write Q"
"$top/bsnap" clone s1 c1 >/dev/null || fail "bsnap clone s1 c1"
nbdsh -u "$(uri_of c1)" -c "h.pwrite(b'R' * 4096, (32 << 20) + 4096); h.flush()" || fail "write R"
s1uuid=$("$top/bsnap" list --json | jq -r '.[] | select(.name == "s1") | .uuid')
stop_server KILL || true
: >"$tmp/server.log"
start_busesnap
grep -q "journal: replayed 5 records" "$tmp/server.log" ||
    fail "expected 5 records (P, snapshot, Q, clone, R) replayed: $(grep journal "$tmp/server.log")"
"$top/bsnap" list --json | jq -e --arg u "$s1uuid" \
    '(map(.name) | sort == ["c1", "default", "s1"]) and (map(select(.name == "s1"))[0].uuid == $u)' >/dev/null ||
    fail "objects after replay: $("$top/bsnap" list --json | jq -c 'map([.name, .uuid])')"
nbdsh -u "$(uri_of s1)" -c "assert h.pread(8192, 32 << 20) == b'P' * 8192, 's1 content'" || fail "snapshot s1 lost its content"
nbdsh -u "$uri" -c "assert h.pread(8192, 32 << 20) == b'Q' * 8192, 'volume content'" || fail "volume lost Q"
nbdsh -u "$(uri_of c1)" -c "
assert h.pread(4096, 32 << 20) == b'P' * 4096, 'c1 first block'
assert h.pread(4096, (32 << 20) + 4096) == b'R' * 4096, 'c1 second block'
" || fail "clone c1 content after replay"
stop_server TERM || fail "clean stop"
"$top/busesnap" check "$image" >"$tmp/check" 2>&1 || fail "check after tree replay: $(tail -3 "$tmp/check")"

# 6. The work area is given back: an image left idle after a checkpoint,
# and a closed one, keep only the journal's 4 KiB header; records written
# after that are replayed as before.
start_busesnap
nbdsh -u "$uri" -c "
for i in range(64):
    h.pwrite(bytes([i + 1]) * 65536, (40 << 20) + i * 65536)
h.flush()
" || fail "writes for the work area"
jsize() { stat -c %s "$image-journal"; }
[ "$(jsize)" -gt $((4 * MiB)) ] || fail "journal only $(jsize) bytes after 4 MiB of flushed writes"
for _ in $(seq 100); do [ "$(jsize)" = 4096 ] && break; sleep 0.1; done
[ "$(jsize)" = 4096 ] || fail "journal still $(jsize) bytes 10 s after the image went idle"
nbdsh -u "$uri" -c "h.pwrite(b'\x77' * 8192, 44 << 20); h.flush()" || fail "write after release"
stop_server KILL || true
: >"$tmp/server.log"
start_busesnap
[ "$(replayed 1)" = 1 ] || fail "the write after the release was not replayed: $(grep journal "$tmp/server.log")"
nbdsh -u "$uri" -c "
assert h.pread(8192, 44 << 20) == b'\x77' * 8192, 'write after the release'
for i in range(64):
    assert h.pread(65536, (40 << 20) + i * 65536) == bytes([i + 1]) * 65536, 'block %d' % i
" || fail "content after the release and a replay"
nbdsh -u "$uri" -c "h.pwrite(b'\x78' * 65536, 45 << 20); h.flush()" || fail "write before close"
[ "$(jsize)" -gt 4096 ] || fail "journal empty right after a flushed write"
stop_server TERM || fail "clean stop"
[ "$(jsize)" = 4096 ] || fail "journal $(jsize) bytes after a clean stop"

# 4. Another image's journal is refused, and nothing is changed.
"$top/busesnap" create "$tmp/other.db" --size 16M >/dev/null || fail "create other"
cp "$image-journal" "$tmp/other.db-journal"
if "$top/busesnap" check "$tmp/other.db" >"$tmp/check" 2>&1; then
    fail "an image opened with another image's journal"
fi
grep -q "not this image's journal" "$tmp/check" || fail "unclear error: $(cat "$tmp/check")"
exit 0
