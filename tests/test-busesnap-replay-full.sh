#!/bin/bash
# A log that cannot be replayed because the disk is full loses nothing.
# busesnap takes flushed 4 KiB writes and a snapshot (in the log, not yet in
# the index), is killed with SIGKILL, and the file system is then filled to
# the last block.  The next start must fail with a message that says the
# log could not be replayed, is kept and nothing is lost, and leave the
# log's blocks as they were.  Once space is freed, a start replays them:
# the volume and the snapshot read exactly as acknowledged, `bsnap check` is
# clean.
. "$(dirname "$0")/functions.sh"
requires nbdsh mkfs.ext4 losetup python3
requires_root

small_fs 320M # more than the 128 MiB of room that lets the txn grow
image=$tmp/mnt/img.db

# disk.py URI SEED OUT: with SEED > 0, 1,000 unique blocks at scattered
# offsets, flushed; then the whole disk is read into OUT.
cat >"$tmp/disk.py" <<'EOF'
import nbd, random, sys
uri, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
h = nbd.NBD(); h.connect_uri(uri)
size = h.get_size()
if seed:
    rng = random.Random(seed)
    for b in rng.sample(range(size // 4096), 1000):
        h.pwrite(rng.randbytes(4096), b * 4096)
    h.flush()
with open(out, "wb") as f:
    for off in range(0, size, 1 << 22):
        f.write(h.pread(min(1 << 22, size - off), off))
EOF

start_busesnap 48M
python3 "$tmp/disk.py" "$uri" 1 "$tmp/at-snap" || fail "first writes"
"$top/bsnap" create s1 >/dev/null || fail "bsnap create"
python3 "$tmp/disk.py" "$uri" 2 "$tmp/at-kill" || fail "second writes"
stop_server KILL || true
logblocks() { python3 "$top/tests/logblocks.py" "$image-chunks" | while read -r off _; do
    dd if="$image-chunks" bs=4096 skip=$((off / 4096)) count=1 status=none | sha1sum; done; }
logblocks >"$tmp/log.before"

# The index's room reserved ahead of its end (store-space.c) would let the
# replay's checkpoint through: give it back first, so that the index can
# grow no more.  Then fill the file system to its last block (root may use
# the reserved ones).
truncate -s "$(stat -c %s "$image")" "$image"
dd if=/dev/zero of="$tmp/mnt/filler" bs=1M status=none 2>/dev/null || true
dd if=/dev/zero of="$tmp/mnt/filler2" bs=4k status=none 2>/dev/null || true
df -k "$tmp/mnt" | tail -1

rc=0
timeout 30 "$top/busesnap" serve "$image" --socket "$tmp/sock" --control "$tmp/ctl" \
    >"$tmp/full.log" 2>&1 || rc=$?
cat "$tmp/full.log"
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] ||
    fail "busesnap on a full disk with a journal to replay: exit status $rc (expected a failure)"
grep -q "cannot replay the log" "$tmp/full.log" &&
    grep -q "nothing is lost" "$tmp/full.log" ||
    fail "the failure does not say the log is kept: $(cat "$tmp/full.log")"
logblocks >"$tmp/log.after"
# the log's blocks are all there (a failed start may have zeroed a free
# segment for a new log, which holds none of them)
[ -z "$(comm -23 <(sort "$tmp/log.before") <(sort "$tmp/log.after"))" ] ||
    fail "log blocks changed although the replay failed"

rm -f "$tmp/mnt/filler" "$tmp/mnt/filler2"
start_busesnap
n=$(sed -n 's/.*log: replayed \([0-9]*\) entries.*/\1/p' "$tmp/server.log")
[ "${n:-0}" -ge 2000 ] || fail "replayed ${n:-no} entries after space was freed, not the 2,000 written"
python3 "$tmp/disk.py" "$uri" 0 "$tmp/back" || fail "read back"
cmp -s "$tmp/at-kill" "$tmp/back" || fail "the volume differs after the replay"
"$top/bsnap" clone s1 c1 >/dev/null || fail "bsnap clone s1"
python3 "$tmp/disk.py" "$(uri_of c1)" 0 "$tmp/back" || fail "read back c1"
cmp -s "$tmp/at-snap" "$tmp/back" || fail "snapshot s1 differs after the replay"
"$top/bsnap" check >"$tmp/check.out" || fail "bsnap check: $(tail -3 "$tmp/check.out")"
stop_server TERM || fail "exit status after SIGTERM"
exit 0
