#!/bin/bash
# test-soak: a bounded soak of the whole server.  8 connections (2 per
# volume, each owning half of it) across 4 volumes that share one image
# write random, deduplicating and zeroed blocks and read their own back;
# every few seconds a snapshot of one volume is taken, and old ones are
# deleted (the collector runs underneath).  At the end every volume and a
# sample of the surviving snapshots are read back against what was
# written: a block of a snapshot must hold a version that was acknowledged
# before the snapshot was requested, or one in flight while it was taken.
# `bsnap check` (online) and `busesnap check` (offline) must be clean, and
# the server's anonymous memory must stay flat: the second half's peak
# may not exceed the first half's by more than 20% + 8 MiB.
# SOAK_SECONDS (default 80) bounds the write phase.
. "$(dirname "$0")/../functions.sh"
requires nbdsh nbdcopy
# Sanitizer builds keep freed memory in quarantine: memory is not judged.
if [[ $(ldd "$top/busesnap") == *libasan* ]]; then export SOAK_CHECK_MEMORY=0; fi
bsnap() { "$top/bsnap" "$@"; }

start_busesnap 64M
head -c 64M /dev/urandom >"$tmp/base.img"
nbdcopy "$tmp/base.img" "$uri" --flush || fail "import"
bsnap create base >/dev/null
for v in v1 v2 v3; do bsnap clone base $v >/dev/null; done

cat >"$tmp/soak.py" <<'PY'
import hashlib, multiprocessing as mp, os, pickle, random, subprocess, sys
import time
import nbd
sock, tmp, bsnap, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
SECS = float(os.environ.get("SOAK_SECONDS", "80"))
B, M = 4096, 1 << 20
VOLS = ["default", "v1", "v2", "v3"]
EXPORT = {"default": ""}
base = open(tmp + "/base.img", "rb").read()
SIZE = len(base)
NB = SIZE // B
ZERO = hashlib.blake2b(bytes(B), digest_size=8).digest()

def hb(b):
    return hashlib.blake2b(b, digest_size=8).digest()

def connect(name):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///%s?socket=%s" % (EXPORT.get(name, name), sock))
    return h

def writer(vol, half, seed, end, out):
    """Owns blocks [lo, hi) of vol; logs (block, issued, acked, hash)."""
    rnd = random.Random(seed)
    h = connect(vol)
    lo, hi = half * NB // 2, (half + 1) * NB // 2
    pool = [os.urandom(B) for _ in range(32)]  # repeated: dedup
    cur = {}  # block -> data hash, for live read-back
    log = []
    written = verified = 0
    while time.monotonic() < end:
        n = rnd.choice((1, 1, 2, 4, 8, 16))
        b = rnd.randrange(lo, hi - n + 1)
        k = rnd.random()
        t0 = time.monotonic()
        if k < 0.1:
            (h.trim if k < 0.05 else h.zero)(n * B, b * B)
            hs = [ZERO] * n
        elif k < 0.25:
            got = h.pread(n * B, b * B)
            for i in range(n):
                want = cur.get(b + i, hb(base[(b + i) * B:(b + i + 1) * B]))
                if hb(got[i * B:(i + 1) * B]) != want:
                    sys.exit("%s: live read-back of block %d is wrong"
                             % (vol, b + i))
            verified += n * B
            continue
        else:
            data = b"".join(rnd.choice(pool) if rnd.random() < 0.4
                            else os.urandom(B) for _ in range(n))
            h.pwrite(data, b * B)
            hs = [hb(data[i * B:(i + 1) * B]) for i in range(n)]
            written += n * B
        t1 = time.monotonic()
        for i in range(n):
            log.append((b + i, t0, t1, hs[i]))
            cur[b + i] = hs[i]
        if rnd.random() < 0.01:
            h.flush()
    h.shutdown()
    with open(out, "wb") as f:
        pickle.dump((log, written, verified), f)

def rss():
    r = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k = line.split(":")[0]
            if k in ("VmRSS", "RssAnon"):
                r[k] = int(line.split()[1]) / 1024
    return r

def run(*args):
    return subprocess.run([bsnap] + list(args), check=True,
                          stdout=subprocess.DEVNULL)

t_start = time.monotonic()
end = t_start + SECS
procs = []
for i, vol in enumerate(VOLS):
    for half in (0, 1):
        out = "%s/log-%s-%d" % (tmp, vol, half)
        p = mp.Process(target=writer, args=(vol, half, i * 2 + half, end, out))
        p.start()
        procs.append((p, vol, half, out))
snaps = []   # (name, vol, t_request, t_answer)
deleted = 0
samples = []
rnd = random.Random(7)
next_snap = time.monotonic() + 2
while time.monotonic() < end:
    samples.append(rss())
    if time.monotonic() >= next_snap:
        vol = rnd.choice(VOLS)
        name = "soak-%d" % len(snaps)
        t0 = time.monotonic()
        run("create", name, "--volume", vol)
        snaps.append((name, vol, t0, time.monotonic()))
        live = [s for s in snaps if s[0] is not None]
        if len(live) > 6:
            victim = rnd.choice(live[:-2])
            run("delete", victim[0])
            snaps[snaps.index(victim)] = (None,) + victim[1:]
            deleted += 1
        next_snap = time.monotonic() + rnd.uniform(1.5, 4)
    for p, *_ in procs:
        if p.exitcode not in (None, 0):
            sys.exit("a writer failed (exit %d)" % p.exitcode)
    time.sleep(1)
for p, vol, half, _ in procs:
    p.join()
    if p.exitcode != 0:
        sys.exit("writer %s/%d failed (exit %d)" % (vol, half, p.exitcode))
samples.append(rss())

# Every block's versions, in order: (issued, acked, hash).
hist = {v: {} for v in VOLS}
written = verified = nops = 0
for _, vol, _, out in procs:
    with open(out, "rb") as f:
        log, w, r = pickle.load(f)
    written += w
    verified += r
    nops += len(log)
    for b, t0, t1, hs in log:
        hist[vol].setdefault(b, []).append((t0, t1, hs))

def read_all(name):
    h = connect(name)
    d = b"".join(h.pread(4 * M, o) for o in range(0, SIZE, 4 * M))
    h.shutdown()
    return d

def check_volume(vol):
    d = read_all(vol)
    for b in range(NB):
        vs = hist[vol].get(b)
        want = vs[-1][2] if vs else hb(base[b * B:(b + 1) * B])
        if hb(d[b * B:(b + 1) * B]) != want:
            sys.exit("volume %s: block %d is not the last write" % (vol, b))
    return len(d)

def check_snapshot(name, vol, ts0, ts1):
    d = read_all(name)
    for b in range(NB):
        ok = {hb(base[b * B:(b + 1) * B])}
        for t0, t1, hs in hist[vol].get(b, ()):
            if t1 < ts0:        # acked before the request: the floor
                ok = {hs}
            elif t0 < ts1:      # in flight while the snapshot was taken
                ok.add(hs)
        if hb(d[b * B:(b + 1) * B]) not in ok:
            sys.exit("snapshot %s of %s: block %d holds no version written "
                     "around its creation" % (name, vol, b))
    return len(d)

for vol in VOLS:
    verified += check_volume(vol)
live = [s for s in snaps if s[0] is not None]
sample = rnd.sample(live, min(6, len(live)))
for s in sample:
    verified += check_snapshot(*s)

half = len(samples) // 2
first = max(s["RssAnon"] for s in samples[:half])
second = max(s["RssAnon"] for s in samples[half:])
print("soak: %.0f s, 8 connections on 4 volumes, %d ops, %.0f MiB written, "
      "%.0f MiB verified (live read-back, 4 volumes, %d of %d live "
      "snapshots), %d snapshots taken, %d deleted"
      % (SECS, nops, written / M, verified / M, len(sample), len(live),
         len(snaps), deleted))
print("server memory, %d samples: RssAnon first half max %.1f MiB, second "
      "half max %.1f MiB; VmRSS %.1f -> %.1f MiB (max %.1f)"
      % (len(samples), first, second, samples[0]["VmRSS"],
         samples[-1]["VmRSS"], max(s["VmRSS"] for s in samples)))
if os.environ.get("SOAK_CHECK_MEMORY", "1") == "0":
    print("memory not judged: sanitizer build (freed memory is quarantined)")
elif second > first * 1.2 + 8:
    sys.exit("server anonymous memory grew: %.1f MiB in the first half, "
             "%.1f MiB in the second" % (first, second))
PY
PATH=/usr/bin:$PATH python3 "$tmp/soak.py" "$sock" "$tmp" "$top/bsnap" "$server_pid" ||
    fail "soak failed (see above)"
bsnap check >/dev/null || fail "bsnap check after the soak: $(bsnap check 2>&1 | tail -3)"
stop_server TERM || fail "server exit status $?"
"$top/busesnap" check "$image" >/dev/null || fail "offline check after the soak"
exit 0
