#!/bin/bash
# test-busesnap-damage: damaged files never crash anything (issue 20).  A
# small image (a volume with 4 MiB of data, a snapshot of it, 1 MiB more
# written after) is damaged one way at a time, on a fresh copy each time:
#   - 40 random bytes at a random place in its index (DAMAGE_PLACEMENTS,
#     default 200, spread over every page);
#   - the index truncated at 10 sizes;
#   - the index's meta pages replaced by another image's;
#   - the chunk file truncated at 4 sizes; its bytes flipped in 8 places;
#   - the index of another image beside this chunk file.
# For each, `busesnap check`, `busesnap info` and `busesnap serve` must end
# with status 0 or 1, never a signal; when serve serves, every block of
# the volume's and the snapshot's first 5 MiB is read: each either holds
# the bytes written or fails with EIO, and the server stops cleanly on
# SIGTERM.  The counts go to the log (placements, refusals, blocks read,
# EIOs, crashes: 0, wrong blocks: 0).  Fails with store-validate.c's walk
# disabled (check crashes on about a third of the placements).
. "$(dirname "$0")/../functions.sh"
requires nbdsh nbdcopy
: "${DAMAGE_PLACEMENTS:=200}" "${SEED:=$RANDOM}"
export DAMAGE_PLACEMENTS SEED

# the pristine image, and another one (for the mixed cases)
start_busesnap 64M
head -c 5M /dev/urandom >"$tmp/v0"
nbdcopy "$tmp/v0" "$uri" --flush || fail "write"
"$top/bsnap" create s1 >/dev/null || fail "snapshot"
head -c 1M /dev/urandom >"$tmp/v1"
nbdsh -u "$uri" -c "h.pwrite(open('$tmp/v1','rb').read(), 1 << 20); h.flush()" ||
    fail "write after the snapshot"
stop_server TERM || fail "stop"
mv "$image" "$tmp/a.db"
mv "$image-chunks" "$tmp/a.db-chunks"
rm -f "$image-lock"
"$top/busesnap" create "$tmp/b.db" --size 64M >/dev/null || fail "create b"

python3 - "$top" "$tmp" <<'PY' || fail "damage table failed (see above)"
import os, random, shutil, signal, subprocess, sys, time
import nbd
top, tmp = sys.argv[1:3]
B = 4096
NB = (5 << 20) // B
rng = random.Random(int(os.environ["SEED"]))
print("seed", os.environ["SEED"])
v0 = open(tmp + "/v0", "rb").read()
v1 = open(tmp + "/v1", "rb").read()
snap = v0
vol = v0[:1 << 20] + v1 + v0[2 << 20:]
work = tmp + "/w.db"
sock = tmp + "/w.sock"
stats = dict(cases=0, refused_check=0, refused_info=0, refused_serve=0,
             served=0, blocks=0, eio=0, crashes=0, wrong=0)

def fail(msg):
    print("FAIL:", msg, stats)
    sys.exit(1)

def fresh(index=tmp + "/a.db", chunks=tmp + "/a.db-chunks"):
    for suf in ("", "-chunks", "-lock"):
        try:
            os.unlink(work + suf)
        except FileNotFoundError:
            pass
    shutil.copy(index, work)
    shutil.copy(chunks, work + "-chunks")

def run(what, case):
    p = subprocess.run([top + "/busesnap", what, work], capture_output=True,
                       text=True, errors="replace", timeout=120)
    if p.returncode < 0 or p.returncode > 1:
        stats["crashes"] += 1
        fail("%s: busesnap %s ended with %d: %s" % (case, what, p.returncode,
                                                     p.stderr[-400:]))
    if p.returncode == 1:
        stats["refused_" + what] += 1
        if "w.db" not in p.stderr:
            fail("%s: %s's message does not name the file: %s" %
                 (case, what, p.stderr[-300:]))

def read_all(h, expect, case, name):
    for b in range(NB):
        stats["blocks"] += 1
        try:
            got = h.pread(B, b * B)
        except nbd.Error as e:
            if e.errno not in (None, 5, "EIO"):
                fail("%s: %s block %d: %s" % (case, name, b, e))
            stats["eio"] += 1
            continue
        if got != expect[b * B:(b + 1) * B]:
            stats["wrong"] += 1
            fail("%s: %s block %d: wrong bytes served" % (case, name, b))

def serve(case):
    try:
        os.unlink(sock)
    except FileNotFoundError:
        pass
    log = open(tmp + "/serve.log", "w")
    p = subprocess.Popen([top + "/busesnap", "serve", work, "--socket", sock,
                          "--control", tmp + "/w.ctl"], stdout=log,
                         stderr=subprocess.STDOUT)
    t0 = time.time()
    while not os.path.exists(sock) and p.poll() is None:
        time.sleep(0.02)
    if p.poll() is not None:
        rc = p.returncode
        if rc < 0 or rc > 1:
            stats["crashes"] += 1
            fail("%s: serve ended with %d: %s" %
                 (case, rc, open(tmp + "/serve.log", errors="replace").read()[-400:]))
        stats["refused_serve"] += 1
        return
    stats["served"] += 1
    try:
        for name, exp, expect in (("volume", "", vol), ("snapshot", "s1", snap)):
            h = nbd.NBD()
            try:
                h.set_export_name(exp)
                h.connect_unix(sock)
            except nbd.Error as e:
                continue  # the export is refused: nothing served
            read_all(h, expect, case, name)
            h.shutdown()
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            fail("%s: serve did not stop on SIGTERM" % case)
    if rc < 0 or rc > 1:
        stats["crashes"] += 1
        fail("%s: serve ended with %d on SIGTERM: %s" %
             (case, rc, open(tmp + "/serve.log", errors="replace").read()[-400:]))

def case(name, damage, **kw):
    fresh(**kw)
    damage()
    stats["cases"] += 1
    for what in ("check", "info"):
        run(what, name)
    serve(name)

size = os.path.getsize(tmp + "/a.db")
pages = size // B
n = int(os.environ["DAMAGE_PLACEMENTS"])
for i in range(n):
    pg = i % pages  # every page, then again
    off = pg * B + rng.randrange(B - 40)
    def hit(off=off):
        with open(work, "r+b") as f:
            f.seek(off)
            f.write(os.urandom(40))
    case("random bytes at %d (page %d)" % (off, pg), hit)
for i in range(10):
    cut = rng.randrange(1, size) if i else 8192
    case("index truncated to %d" % cut, lambda cut=cut: os.truncate(work, cut))
def swap_meta():
    other = open(tmp + "/b.db", "rb").read(2 * B)
    with open(work, "r+b") as f:
        f.write(other)
case("meta pages of another image", swap_meta)
csize = os.path.getsize(tmp + "/a.db-chunks")
for cut in (0, 4096, csize // 3, csize - 4096):
    case("chunk file truncated to %d" % cut,
         lambda cut=cut: os.truncate(work + "-chunks", cut))
for i in range(8):
    off = rng.randrange(B, csize - 4)
    def flip(off=off):
        with open(work + "-chunks", "r+b") as f:
            f.seek(off)
            b = f.read(4)
            f.seek(off)
            f.write(bytes(x ^ 0xff for x in b))
    case("chunk bytes flipped at %d" % off, flip)
case("another image's index", lambda: None, index=tmp + "/b.db")
print("damage table:", stats)
if stats["crashes"] or stats["wrong"]:
    fail("crashes or wrong bytes")
PY
exit 0
