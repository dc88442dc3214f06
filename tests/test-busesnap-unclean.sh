#!/bin/bash
# An unclean shutdown is known (issue 20): FUA writes (nbdsh and qemu-io),
# kill -9, then the log is damaged the way a bad disk or a slip of the hand
# would.  Each case starts again from the same killed image:
#   1. log intact: every acknowledged write comes back, without a word
#   2. log erased, 3. chunk file truncated inside the log, 4. another
#      image's log blocks in its place, 5. the tail record (how far the log
#      was made durable) erased: serve, check and info refuse (exit 1, not a
#      signal) with a message naming the file and --accept-data-loss; serve
#      --accept-data-loss opens and says what was lost; after a clean stop
#      the image opens plainly
#   6. a clean shutdown, then the log erased: opens, nothing lost
# SHOW=1 prints the messages.  BUSESNAP_CKPT_MS keeps the writes in the log (no timed checkpoint between
# the writes and the kill, however slow the machine).
. "$(dirname "$0")/functions.sh"
requires nbdsh qemu-io python3
export BUSESNAP_CKPT_MS=3600000
N=150 # FUA writes: each seals a log block of its own

blocks() { python3 "$top/tests/logblocks.py" "$1-chunks"; }

# fua_writes: N unique 4 KiB FUA writes from nbdsh and one 64 KiB from
# qemu-io (writethrough: FUA); $tmp/expect.$1 gets the first 2 MiB.
fua_writes() {
    nbdsh -u "$uri" -c "
import random
r = random.Random($2)
img = bytearray(2 << 20)
for i in range($N):
    d = r.randbytes(4096)
    h.pwrite(d, i * 4096, nbd.CMD_FLAG_FUA)
    img[i * 4096:(i + 1) * 4096] = d
img[1 << 20:(1 << 20) + 65536] = b'\x5a' * 65536
open('$tmp/expect.$1', 'wb').write(img)
" || fail "FUA writes ($1)"
    qemu-io -f raw "$uri" -c "write -P 0x5a 1M 64k" >/dev/null || fail "qemu-io FUA write ($1)"
}

# Image A, and image B (for its log), each killed after its writes.
image=$tmp/b.db
start_busesnap 16M
fua_writes b 2
stop_server KILL || true
image=$tmp/a.db
start_busesnap 16M
fua_writes a 1
stop_server KILL || true
nblk=$(blocks "$image" | wc -l)
[ "$nblk" -ge "$N" ] || fail "expected $N or more log blocks in a.db-chunks, found $nblk"
for f in a.db a.db-chunks; do cp --sparse=always "$tmp/$f" "$tmp/saved-$f"; done
restore() { for f in a.db a.db-chunks; do cp --sparse=always "$tmp/saved-$f" "$tmp/$f"; done; }

# refuse CASE WHY: serve, check and info exit 1 with a message that names the
# chunk file, says WHY and what to do.
refuse() {
    local cmd rc
    for cmd in serve check info; do
        rc=0
        if [ $cmd = serve ]; then
            # a serve that does not refuse would serve forever: watch for
            # its socket
            rm -f "$sock"
            "$top/busesnap" serve "$image" --socket "$sock" --control "$ctl" >"$tmp/out" 2>&1 &
            local pid=$!
            while kill -0 $pid 2>/dev/null && ! [ -S "$sock" ]; do sleep 0.02; done
            if [ -S "$sock" ]; then
                kill -9 $pid; wait $pid || true
                fail "$1: busesnap serve did not refuse: $(cat "$tmp/out")"
            fi
            wait $pid || rc=$?
        else
            "$top/busesnap" $cmd "$image" >"$tmp/out" 2>&1 || rc=$?
        fi
        [ -z "${SHOW:-}" ] || { echo "== $1: $cmd"; cat "$tmp/out"; }
        [ $rc = 1 ] || fail "$1: busesnap $cmd exited $rc, not 1: $(cat "$tmp/out")"
        grep -q "not closed cleanly" "$tmp/out" && grep -q "a.db-chunks" "$tmp/out" &&
            grep -q -- "--accept-data-loss" "$tmp/out" && grep -q "$2" "$tmp/out" ||
            fail "$1: busesnap $cmd: the message does not say what and what to do ($2): $(cat "$tmp/out")"
    done
    cmp -s "$tmp/a.db-chunks" "$tmp/damaged" || fail "$1: a refused open changed the chunk file"
}

# accept CASE: serve --accept-data-loss opens and reports; nothing of what
# the log lost is served; a clean stop, then a plain start works.
accept() {
    : >"$tmp/server.log"
    start_busesnap "" --accept-data-loss
    [ -z "${SHOW:-}" ] || grep accepting "$tmp/server.log"
    grep -q "accepting .*data loss" "$tmp/server.log" ||
        fail "$1: --accept-data-loss did not say what was lost: $(cat "$tmp/server.log")"
    nbdsh -u "$uri" -c "
got = h.pread(2 << 20, 0)
exp = open('$tmp/expect.a', 'rb').read()
bad = lost = 0
for i in range(0, 2 << 20, 4096):
    if got[i:i + 4096] != exp[i:i + 4096]:
        lost += 1
        bad += got[i:i + 4096] != bytes(4096)
assert bad == 0, f'{bad} blocks neither as written nor zero'
assert lost > 0, 'nothing was lost?'
" || fail "$1: what --accept-data-loss serves"
    stop_server TERM || fail "$1: clean stop after --accept-data-loss"
    : >"$tmp/server.log"
    start_busesnap
    stop_server TERM || fail "$1: clean stop"
    "$top/busesnap" check "$image" >"$tmp/check" 2>&1 || fail "$1: check: $(tail -3 "$tmp/check")"
}

# 1. The log intact: everything back, no refusal, no word of loss.
restore
"$top/busesnap" check "$image" >"$tmp/check" 2>&1 || fail "check after kill -9: $(tail -3 "$tmp/check")"
: >"$tmp/server.log"
start_busesnap
nbdsh -u "$uri" -c "
assert h.pread(2 << 20, 0) == open('$tmp/expect.a', 'rb').read(), 'acknowledged writes lost'
" || fail "intact log: acknowledged writes lost"
! grep -qi "accepting\|not closed cleanly" "$tmp/server.log" || fail "intact log: $(cat "$tmp/server.log")"
stop_server TERM || fail "clean stop"

# 2. The log erased (its blocks zeroed).
restore
blocks "$image" | while read -r off _; do
    dd if=/dev/zero of="$image-chunks" bs=4096 count=1 seek=$((off / 4096)) conv=notrunc status=none
done
cp "$image-chunks" "$tmp/damaged"
refuse "erased log" "zeros"
accept "erased log"

# 3. The chunk file truncated in the middle of the log.
restore
cut=$(blocks "$image" | sed -n "$((N / 2))p" | cut -d' ' -f1)
truncate -s "$cut" "$image-chunks"
cp "$image-chunks" "$tmp/damaged"
refuse "truncated log" "end of the file\|do not match"
accept "truncated log"

# 4. Another image's log blocks where a.db's were.
restore
paste -d' ' <(blocks "$image" | cut -d' ' -f1) <(blocks "$tmp/b.db" | cut -d' ' -f1) |
    while read -r to from; do
        [ -n "$to" ] && [ -n "$from" ] || continue
        dd if="$tmp/b.db-chunks" of="$image-chunks" bs=4096 count=1 skip=$((from / 4096)) \
            seek=$((to / 4096)) conv=notrunc status=none
    done
cp "$image-chunks" "$tmp/damaged"
refuse "another image's log" "another image"
accept "another image's log"

# 5. The tail record erased: how far the log must reach is unknown.
restore
dd if=/dev/zero of="$image-chunks" bs=4096 count=1 seek=1 conv=notrunc status=none
cp "$image-chunks" "$tmp/damaged"
refuse "tail record erased" "missing or damaged"

# 6. A clean shutdown, then the log erased: nothing was pending.
restore
start_busesnap
stop_server TERM || fail "clean stop"
blocks "$image" | while read -r off _; do
    dd if=/dev/zero of="$image-chunks" bs=4096 count=1 seek=$((off / 4096)) conv=notrunc status=none
done
: >"$tmp/server.log"
start_busesnap
! grep -qi "accepting\|not closed cleanly" "$tmp/server.log" || fail "clean stop, erased log: $(cat "$tmp/server.log")"
nbdsh -u "$uri" -c "
assert h.pread(2 << 20, 0) == open('$tmp/expect.a', 'rb').read(), 'data lost'
" || fail "clean stop, then log erased: data lost"
stop_server TERM || fail "clean stop"
"$top/busesnap" check "$image" >"$tmp/check" 2>&1 || fail "check: $(tail -3 "$tmp/check")"
exit 0
