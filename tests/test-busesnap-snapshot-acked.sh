#!/bin/bash
# A snapshot holds every write acknowledged before it was taken, with no
# FLUSH in between, and nothing written after: one NBD connection writes
# block i (waiting for the reply, never flushing), then bsnap snapshots
# s$i while the connection stays open; every s$i must read blocks 1..i
# and zeros after, while pipelined writes race other snapshots.
. "$(dirname "$0")/functions.sh"
requires nbdsh
export BSNAP=$top/bsnap

start_busesnap 4M
nbdsh -u "$uri" -c "
import os, subprocess
def snap(name):
    subprocess.run([os.environ['BSNAP'], 'create', name], check=True,
                   stdout=subprocess.DEVNULL)
for i in range(1, 31):
    h.pwrite(bytes([i]) * 4096, i * 4096)
    snap('s%d' % i)
# Pipelined: 64 writes in flight while a snapshot is taken; it must hold
# every write completed before it, and whole blocks only.
done = []
def completed(j):
    def cb(err):
        done.append(j)
        return 1  # retire the command
    return cb
for j in range(64):
    buf = nbd.Buffer.from_bytearray(bytearray([100 + j % 100]) * 4096)
    h.aio_pwrite(buf, (64 + j) * 4096, completion=completed(j))
while len(done) < 16:
    h.poll(1)
acked = list(done)
snap('race')
while h.aio_in_flight() > 0:
    h.poll(1)
open('$tmp/acked', 'w').write(' '.join(map(str, acked)))
" || fail "writer/snapshotter failed"
for i in 1 2 15 29 30; do
    nbdsh -u "$(uri_of s$i)" -c "
for b in range(1, 31):
    want = bytes([b if b <= $i else 0]) * 4096
    assert h.pread(4096, b * 4096) == want, 'block %d' % b
" || fail "snapshot s$i does not hold exactly blocks 1..$i"
done
nbdsh -u "$(uri_of race)" -c "
acked = [int(x) for x in open('$tmp/acked').read().split()]
for j in range(64):
    got = h.pread(4096, (64 + j) * 4096)
    assert got in (bytes(4096), bytes([100 + j % 100]) * 4096), 'block %d is torn' % j
    if j in acked:
        assert got != bytes(4096), 'acknowledged write %d missing from the snapshot' % j
" || fail "snapshot 'race' lacks an acknowledged write or holds a torn block"
exit 0
