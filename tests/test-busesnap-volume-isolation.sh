#!/bin/bash
# test-busesnap-volume-isolation: whatever one volume's writer does, the
# other volumes do not change.  Three volumes share one image: the default
# volume, a clone of its snapshot "base", and an unrelated volume "other"
# (a clone of the empty image).  In turn each one's writer copies the other
# volumes' blocks (so they dedup), writes the same block pattern at many
# offsets, overwrites, trims and write-zeroes those copies, writes random
# data, snapshots its own volume and rolls back to it.  Meanwhile a reader
# keeps reading the two others against what they hold; after each round
# every volume and the snapshot "base" match a local model byte for byte
# (nbdcopy + cmp at the end), and `bsnap check` stays clean.
. "$(dirname "$0")/functions.sh"
requires nbdsh nbdcopy cmp
bsnap() { "$top/bsnap" "$@"; }

start_busesnap 32M
bsnap create empty >/dev/null
bsnap clone empty other >/dev/null
head -c 32M /dev/urandom >"$tmp/vol.img"
nbdcopy "$tmp/vol.img" "$uri" --flush || fail "import into the default volume"
bsnap create base >/dev/null
bsnap clone base clone >/dev/null
cp "$tmp/vol.img" "$tmp/base.img"
cp "$tmp/vol.img" "$tmp/clone.img"
head -c 32M /dev/zero >"$tmp/other.img"

cat >"$tmp/t.py" <<'PY'
import hashlib, os, random, subprocess, sys, threading, time
import nbd
sock, tmp, bsnap = sys.argv[1:4]
ROUNDS = int(os.environ.get("ISOLATION_ROUNDS", "2"))
B, M = 4096, 1 << 20
EXPORT = {"vol": "", "clone": "clone", "other": "other", "base": "base"}
SNAPVOL = {"vol": "default", "clone": "clone", "other": "other"}
model = {v: bytearray(open("%s/%s.img" % (tmp, v), "rb").read())
         for v in EXPORT}
SIZE = len(model["vol"])
NB = SIZE // B
stats = {"writes": 0, "trims": 0, "zeroes": 0, "observed": 0}

def connect(v):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///%s?socket=%s" % (EXPORT[v], sock))
    return h

def whole(h):
    return b"".join(h.pread(4 * M, o) for o in range(0, SIZE, 4 * M))

def verify(v, what):
    h = connect(v)
    got = whole(h)
    h.shutdown()
    if got != model[v]:
        bad = next(i for i in range(0, SIZE, B)
                   if got[i:i + B] != model[v][i:i + B])
        sys.exit("%s: volume %s differs from its model at offset %d"
                 % (what, v, bad))

class Observer(threading.Thread):
    """Reads random 1 MiB pieces of the non-writing volumes all along."""
    def __init__(self, vols):
        super().__init__(daemon=True)
        self.vols, self.stop, self.error = vols, False, None
    def run(self):
        hs = {v: connect(v) for v in self.vols}
        rnd = random.Random()
        while not self.stop:
            v = rnd.choice(self.vols)
            o = rnd.randrange(SIZE // M) * M
            if hs[v].pread(M, o) != model[v][o:o + M]:
                self.error = "volume %s changed at %d..+1M while another " \
                             "volume was written" % (v, o)
                return
            stats["observed"] += 1

def write(h, v, blk, data):
    h.pwrite(data, blk * B)
    model[v][blk * B:blk * B + len(data)] = data
    stats["writes"] += 1

def zero(h, v, blk, n, trim):
    (h.trim if trim else h.zero)(n * B, blk * B)
    model[v][blk * B:(blk + n) * B] = bytes(n * B)
    stats["trims" if trim else "zeroes"] += 1

def writer_round(w, r):
    rnd = random.Random(r * 10 + len(w))
    others = [v for v in EXPORT if v != w]
    h = connect(w)
    copied = []
    # Copies of the other objects' blocks (dedup against them).
    for _ in range(300):
        src = rnd.choice(others)
        sb, db = rnd.randrange(NB - 4), rnd.randrange(NB - 4)
        n = rnd.randint(1, 4)
        write(h, w, db, bytes(model[src][sb * B:(sb + n) * B]))
        copied.append((db, n))
    # One block pattern at many offsets.
    pat = os.urandom(B)
    for _ in range(200):
        b = rnd.randrange(NB)
        write(h, w, b, pat)
        copied.append((b, 1))
    # Overwrite, trim and zero the copies.
    for db, n in rnd.sample(copied, 300):
        k = rnd.randrange(3)
        if k == 0:
            write(h, w, db, os.urandom(n * B))
        else:
            zero(h, w, db, n, trim=k == 1)
    # Random data, also in runs.
    for _ in range(100):
        write(h, w, rnd.randrange(NB - 16), os.urandom(B * rnd.randint(1, 16)))
    h.flush()
    # Snapshot, more writes, rollback of the writer's own volume.
    snap = "s-%s-%d" % (w, r)
    subprocess.run([bsnap, "create", snap, "--volume", SNAPVOL[w]],
                   check=True, stdout=subprocess.DEVNULL)
    at_snap = bytes(model[w])
    for _ in range(100):
        write(h, w, rnd.randrange(NB), bytes(model[rnd.choice(others)][:B]))
    zero(h, w, 0, NB // 2, trim=True)
    h.flush()
    subprocess.run([bsnap, "rollback", snap, "--volume", SNAPVOL[w],
                    "--force"], check=True, stdout=subprocess.DEVNULL)
    model[w][:] = at_snap
    try:
        h.shutdown()
    except nbd.Error:
        pass  # rollback --force disconnected it

t0 = time.monotonic()
for r in range(ROUNDS):
    for w in ("vol", "clone", "other"):
        obs = Observer([v for v in EXPORT if v != w])
        obs.start()
        writer_round(w, r)
        obs.stop = True
        obs.join()
        if obs.error:
            sys.exit("round %d, writer %s: %s" % (r, w, obs.error))
        for v in EXPORT:
            verify(v, "round %d, after writer %s" % (r, w))
        c = subprocess.run([bsnap, "check"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if c.returncode != 0:
            sys.exit("bsnap check after writer %s: %s" % (w, c.stdout[-500:]))
for v in EXPORT:
    with open("%s/%s.model" % (tmp, v), "wb") as f:
        f.write(model[v])
print("isolation: %d rounds x 3 writers, %d writes, %d trims, %d zeroes, "
      "%d observer reads of 1 MiB, %.1f s" % (ROUNDS, stats["writes"],
      stats["trims"], stats["zeroes"], stats["observed"],
      time.monotonic() - t0))
PY
PATH=/usr/bin:$PATH python3 "$tmp/t.py" "$sock" "$tmp" "$top/bsnap" ||
    fail "isolation checks failed (see above)"
# The same through a second client: nbdcopy each export and cmp.
for v in vol clone other base; do
    e=$v; [ $v = vol ] && e=""
    nbdcopy "$(uri_of "$e")" "$tmp/$v.out" || fail "nbdcopy $v"
    cmp "$tmp/$v.model" "$tmp/$v.out" || fail "volume $v differs from its model (nbdcopy)"
done
bsnap check >/dev/null || fail "bsnap check"
exit 0
