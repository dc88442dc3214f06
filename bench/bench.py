#!/usr/bin/python3
"""bench/bench.py: the side-by-side benchmark of issue 6 (run by bench/run.sh).

One run on one machine: every server of servers.py is started on a private
Unix socket and driven by fio's nbd engine (one job = one connection, unique
data from --refill_buffers, the region pre-filled where reads are measured);
then the store-specific measures (first write after a snapshot, snapshot and
clone creation time, deep history, space, memory) run on busesnap and, where
the peer has the feature, on qcow2.  Raw results go to bench/results/latest.json;
bench/report.py turns them into the table, the targets and the chart.  A phase
that fails is recorded under "errors" and the run goes on: this is a
benchmark, it never decides pass/fail.
"""

import collections
import json
import os
import platform
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fiolib  # noqa: E402
import servers  # noqa: E402
from servers import Server, TOP  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
ONLY = [s for s in os.environ.get("BENCH_SERVERS", "").split(",") if s]
PHASES = [s for s in os.environ.get("BENCH_PHASES", "").split(",") if s]
GIB = 1 << 30
MIB = 1 << 20

if QUICK:
    CFG = dict(region="256M", big="512M", many=50, history=20, chain=5, clones=10,
               samples=3, multiconn=False, rounds=1, round_dur=1, snapshots=2000)
else:
    CFG = dict(region="1G", big="8G",
               many=1000, history=100, chain=20, clones=10, samples=7, multiconn=True,
               snapshots=100000,
               rounds=int(os.environ.get("BENCH_ROUNDS", "3")),
               round_dur=int(os.environ.get("BENCH_ROUND_DURATION", "2")))
REGION = servers.parse_size(CFG["region"])
BSNAP = os.path.join(TOP, "bsnap")

results = {"mode": "quick" if QUICK else "full", "config": CFG, "servers": {},
           "points": [], "snapwrite": [], "snaptime": [], "deep": [], "space": [],
           "memory": [], "errors": [], "phase_seconds": {}}


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- fio


def fio(uri, rw, bs, qd, runtime=None, size=None, **kw):
    return fiolib.fio(uri, rw, bs, qd, runtime=runtime, size=size or REGION, **kw)


def prefill(uri, size=None, offset=0):
    return fiolib.prefill(uri, size or REGION, offset)


def flushed(r):
    """A prefill's rates by its wall time (the writes and the final
    flush), instead of fio's, which leaves out the flush."""
    mbps = r["bytes"] / r["wall_s"] / 1e6
    return dict(r, mbps=round(mbps, 1), iops=round(mbps * 1e6 / MIB, 1))


def write_blocks(uri, offsets, seed, depth=16):
    """Write one unique 4 KiB block at each offset over one NBD connection
    (libnbd's Python binding, DEPTH requests in flight: no process per
    batch), then flush.  Blocks differ in their first 16 bytes, so a
    content-addressed store cannot share them."""
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    base = bytearray(os.urandom(4096))
    pending = collections.deque()  # cookies; retiring one raises its error

    def retire(upto):
        while len(pending) > upto:
            if not h.aio_command_completed(pending[0]):
                h.poll(-1)
                continue
            pending.popleft()
    for i, off in enumerate(offsets):
        retire(depth - 1)
        struct.pack_into("<QQ", base, 0, seed, i)
        # each request owns its buffer until it completes
        pending.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(base)), off))
    retire(0)
    h.flush()
    h.shutdown()


def pct_offsets(seed, start=0, length=REGION, count=None):
    """COUNT distinct random 4 KiB offsets in [start, start+length), by
    default 1% of the region."""
    count = count or REGION // 100 // 4096
    blocks = random.Random(seed).sample(range(length // 4096), count)
    return [start + b * 4096 for b in blocks]


STANDARD = [
    # name, rw, bs, qd, extra
    ("randread-4k-qd1", "randread", "4k", 1, []),
    ("randread-4k-qd16", "randread", "4k", 16, []),
    ("seqread-1m-qd8", "read", "1M", 8, []),
    ("randwrite-4k-qd1", "randwrite", "4k", 1, []),
    ("randwrite-4k-qd16", "randwrite", "4k", 16, []),
    ("randwrite-4k-qd1-fsync32", "randwrite", "4k", 1, ["--fsync=32"]),
    ("randwrite-4k-qd16-fsync32", "randwrite", "4k", 16, ["--fsync=32"]),
    ("seqwrite-1m-qd8", "write", "1M", 8, []),
]
MULTICONN = [
    ("randread-4k-qd16-2conn", "randread", "4k", 16, 2),
    ("randwrite-4k-qd16-2conn", "randwrite", "4k", 16, 2),
]


def add_point(server, workload, r):
    r = dict(r, server=server, workload=workload)
    results["points"].append(r)
    log("%-14s %-26s %10.0f IOPS %8.1f MB/s p50 %7.1f us p99 %8.1f us"
        % (server, workload, r["iops"], r["mbps"], r["p50_us"], r["p99_us"]))


# ---------------------------------------------------------------- phases


def median_sample(samples):
    """The sample with the median IOPS (the lower middle of an even count),
    with every sample's IOPS beside it."""
    m = sorted(samples, key=lambda r: r["iops"])[(len(samples) - 1) // 2]
    return dict(m, iops_samples=[r["iops"] for r in samples])


def side_by_side(cases, sample, before=None):
    """Run sample(case, rnd) CFG['rounds'] times for each case, the cases
    taking turns in an order rotated every round, each sample after a
    sync() (no case pays for the writeback of another's page cache);
    before(case, rnd), if given, runs ahead of that sync.  Returns
    {case: median_sample}, so that a ratio compares figures taken in the
    same minutes rather than minutes apart on a machine whose speed
    drifts."""
    samples = {c: [] for c in cases}
    for rnd in range(CFG["rounds"]):
        for c in cases[rnd % len(cases):] + cases[:rnd % len(cases)]:
            if before:
                before(c, rnd)
            os.sync()
            samples[c].append(sample(c, rnd))
    return {c: median_sample(samples[c]) for c in cases}


def fmt_samples(r):
    return " ".join("%.0f" % x for x in r["iops_samples"])


def phase_standard(kinds, work, logs):
    """All servers up at once, each pre-filled, then every standard point
    with the servers taking turns (side_by_side), the median sample kept.
    Then space and RSS."""
    srvs = {}
    try:
        for kind in kinds:
            try:
                srvs[kind] = Server(kind, work, logs, size="1G").start()
            except Exception as e:  # the others still run
                msg = "standard %s: %s" % (kind, e)
                log("ERROR " + msg)
                results["errors"].append(msg)
        kinds = [k for k in kinds if k in srvs]
        for kind in kinds:
            srv = srvs[kind]
            base = srv.allocated_bytes()
            add_point(kind, "prefill-seqwrite-1m-qd8", prefill(srv.uri()))
            if kind not in ("nbdkit-memory", "busexmp", "nbdkit-file"):
                results["space"].append({"server": kind, "case": "random-once",
                                         "written": REGION,
                                         "growth": srv.allocated_bytes() - base})
        points = [(name, rw, bs, qd, extra, 1) for name, rw, bs, qd, extra in STANDARD]
        if CFG["multiconn"]:
            points += [(name, rw, bs, qd, [], jobs) for name, rw, bs, qd, jobs in MULTICONN]
        for name, rw, bs, qd, extra, jobs in points:
            # the plain file is the reference for sequential I/O only; two
            # connections against the transport ceiling and qcow2 only
            # (the other two would cost 30 s of the 15-minute budget)
            who = [k for k in kinds if (bs == "1M" or k != "nbdkit-file") and
                   (jobs == 1 or k in ("busesnap", "nbdkit-memory", "qemu-qcow2"))]
            meds = side_by_side(who, lambda k, rnd: fio(
                srvs[k].uri(), rw, bs, qd, runtime=CFG["round_dur"], numjobs=jobs, extra=extra))
            for k in who:
                add_point(k, name, meds[k])
        # The sequential write made durable: the region written and then
        # flushed, timed by the wall clock.  The point above stops after
        # its seconds with the data wherever the server left it (in the
        # page cache, for a plain file); here each server also pays for
        # getting it to the disk.  Only the servers that store on disk (the
        # memory ones flush nothing): 30 s of the 15-minute budget.
        disk = [k for k in kinds if k in ("busesnap", "nbdkit-file", "qemu-qcow2")]
        meds = side_by_side(disk, lambda k, rnd: flushed(prefill(srvs[k].uri())))
        for k in disk:
            add_point(k, "seqwrite-1m-qd8-flushed", meds[k])
        for kind in kinds:
            results["memory"].append({"server": kind, "written": REGION,
                                      "rss_anon_kib": srvs[kind].rss_anon_kib()})
    finally:
        for srv in srvs.values():
            srv.stop()


def bsnap(srv, *args):
    """Run the bsnap program against SRV; return its wall time in ms
    (process start, hello, the operation, the reply)."""
    t = time.perf_counter()
    p = subprocess.run([BSNAP, "--control", srv.control] + list(args),
                       capture_output=True, text=True)
    ms = (time.perf_counter() - t) * 1000
    if p.returncode != 0:
        raise RuntimeError("bsnap %s: %s" % (" ".join(args), p.stderr.strip()))
    return ms


def ctl(srv):
    """The server's control connection, opened on first use."""
    if getattr(srv, "ctl_conn", None) is None:
        srv.ctl_conn = Control(srv.control)
    return srv.ctl_conn


class Control:
    """busesnap's control protocol (doc/control.md: newline-framed JSON, a
    greeting, then hello) spoken directly, so that timing an operation does
    not include starting a process.  call() returns (round-trip ms, answer)."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.f = self.sock.makefile("rwb")
        greet = self._read()
        if greet.get("ok") is False:
            raise RuntimeError("%s: %s" % (path, greet.get("message")))
        self.call({"op": "hello", "version": 1})

    def _read(self):
        line = self.f.readline()
        if not line:
            raise RuntimeError("%s: the server closed the control connection" % self.path)
        return json.loads(line)

    def call(self, req):
        t = time.perf_counter()
        self.f.write(json.dumps(req).encode() + b"\n")
        self.f.flush()
        while True:
            r = self._read()
            if "progress" not in r:
                break
        ms = (time.perf_counter() - t) * 1000
        if not r.get("ok"):
            raise RuntimeError("%s: %s: %s" % (self.path, req, r.get("message") or r.get("error")))
        return ms, r

    def create(self, name, volume=None):
        req = {"op": "create", "name": name}
        if volume:
            req["volume"] = volume
        return self.call(req)

    def clone(self, snap, name):
        return self.call({"op": "clone", "snapshot": snap, "name": name})

    def close(self):
        self.f.close()
        self.sock.close()


def qemu_img(*args):
    t = time.perf_counter()
    subprocess.run(["qemu-img"] + list(args), check=True, capture_output=True)
    return (time.perf_counter() - t) * 1000


class Snapshotter:
    """Takes snapshots of a server the way its tool allows: bsnap over the
    control socket while busesnap serves; for qcow2 the image must not be in
    use, so qemu-nbd is stopped, `qemu-img snapshot -c` run, and restarted."""

    def __init__(self, srv):
        self.srv = srv
        self.n = 0

    def snapshot(self, name=None):
        self.n += 1
        name = name or "s%d" % self.n
        if self.srv.kind == "busesnap":
            return ctl(self.srv).create(name)[0]
        self.srv.stop()
        ms = qemu_img("snapshot", "-c", name, self.srv.image)
        self.srv.start()
        return ms


def phase_snapwrite(kind, work, logs):
    """First write after a snapshot against an ordinary overwrite, side by
    side: two images of the same size, both pre-filled; one is only ever
    overwritten, the other gets a new snapshot before each of its passes, so
    every write of such a pass is the first to its block since a snapshot.
    A pass is 4K random writes touching each block at most once (fio's
    random map), the same offsets on both images.  Per QD, CFG['rounds']
    rounds, the two taking turns (alternating who starts), a sync before
    each pass; the median-IOPS pass is kept."""
    srvs = []
    try:
        for tag in ("overwrite", "snapwrite"):
            srvs.append(Server(kind, work, logs, size="1G", tag=kind + "-" + tag).start())
        plain, snapped = srvs
        for srv in srvs:
            prefill(srv.uri())
        snap = Snapshotter(snapped)
        on = {"overwrite": plain, "first-after-snapshot": snapped}
        for qd in (16, 1):
            def before(phase, rnd):
                if on[phase] is snapped:
                    snap.snapshot("first%d-%d" % (qd, rnd))
            meds = side_by_side(list(on), lambda phase, rnd: fio(
                on[phase].uri(), "randwrite", "4k", qd, runtime=CFG["round_dur"],
                io_size=REGION, seed=1000 * qd + rnd, randommap=True), before)
            for phase, r in meds.items():
                results["snapwrite"].append(dict(r, server=kind, qd=qd, phase=phase))
                log("%s QD%d %s: %.0f IOPS (samples %s)" % (kind, qd, phase, r["iops"],
                                                          fmt_samples(r)))
    finally:
        for srv in srvs:
            srv.stop()


def time_ops(srv, written, label, tag):
    """Time CFG['samples'] snapshot and clone creations: the round trip on the
    control socket, the server's own elapsed_us, and a few whole bsnap runs."""
    creates, clones, s_creates, s_clones, cli = [], [], [], [], []
    for i in range(CFG["samples"]):
        name = "t%s-%d" % (tag, i)
        if srv.kind == "busesnap":
            ms, r = ctl(srv).create(name)
            creates.append(ms)
            s_creates.append(r.get("elapsed_us", -1000) / 1000)
            ms, r = ctl(srv).clone(name, "v" + name)
            clones.append(ms)
            s_clones.append(r.get("elapsed_us", -1000) / 1000)
        else:
            creates.append(qemu_img("snapshot", "-c", name, srv.image))
            ov = os.path.join(srv.dir, "ov-%s.qcow2" % name)
            clones.append(qemu_img("create", "-q", "-f", "qcow2", "-b", srv.image,
                                   "-F", "qcow2", ov))
    if srv.kind == "busesnap":
        cli = [bsnap(srv, "create", "t%s-cli%d" % (tag, i)) for i in range(3)]
    for op, ms, sv in (("create", creates, s_creates), ("clone", clones, s_clones)):
        e = {"server": srv.kind, "op": op, "written": written, "existing": label,
             "ms": [round(x, 2) for x in ms], "median_ms": round(statistics.median(ms), 2)}
        if sv:
            e["server_ms"] = [round(x, 3) for x in sv]
            e["median_server_ms"] = round(statistics.median(sv), 3)
        if cli and op == "create":
            e["bsnap_cli_ms"] = [round(x, 2) for x in cli]
        results["snaptime"].append(e)
        log("%s %s at %.1f GiB written, %s snapshots: median %.2f ms (server %s ms)"
            % (srv.kind, op, written / GIB, label, statistics.median(ms),
               e.get("median_server_ms", "-")))


def time_after_writes(srv, written, tag, samples=5, nblocks=12000):
    """busesnap: snapshot creation right after NBLOCKS random 4 KiB writes
    and a flush, when those writes are still pending in the store's index
    (what a VM's "sync, then snapshot" meets)."""
    ms, sv = [], []
    for i in range(samples):
        write_blocks(srv.uri(), pct_offsets(9000 + i, count=nblocks), 9000 + i)
        m, r = ctl(srv).create("w%s-%d" % (tag, i))
        ms.append(m)
        sv.append(r.get("elapsed_us", -1000) / 1000)
    e = {"server": srv.kind, "op": "create-after-writes", "written": written,
         "existing": "after %d random 4K writes + flush" % nblocks,
         "ms": [round(x, 2) for x in ms], "median_ms": round(statistics.median(ms), 2),
         "server_ms": [round(x, 3) for x in sv], "median_server_ms": round(statistics.median(sv), 3)}
    results["snaptime"].append(e)
    log("%s create after %d random writes + flush: median %.2f ms (server %.3f ms)"
        % (srv.kind, nblocks, e["median_ms"], e["median_server_ms"]))


def make_many(srv, n, tag, cap_s=8):
    """Create N more snapshots (stopping early after CAP_S seconds, so that a
    slow tool cannot blow the run's time budget); returns the creation times."""
    ms = []
    t = time.monotonic()
    for i in range(n):
        name = "m%s-%d" % (tag, i)
        if srv.kind == "busesnap":
            ms.append(ctl(srv).create(name)[0])
        else:
            ms.append(qemu_img("snapshot", "-c", name, srv.image))
        if time.monotonic() - t > cap_s:
            log("%s: stopped at %d snapshots after %d s" % (srv.kind, i + 1, cap_s))
            break
    return ms


def phase_snaptime(kind, work, logs):
    """Snapshot/clone creation at REGION and at CFG['big'] written, with 1 and
    CFG['many'] existing snapshots; RSS and space at CFG['big'] written."""
    for size in (CFG["region"], CFG["big"]):
        nbytes = servers.parse_size(size)
        srv = Server(kind, work, logs, size=size, tag="%s-snaptime-%s" % (kind, size)).start()
        try:
            base = srv.allocated_bytes()
            r = prefill(srv.uri(), size=nbytes)
            add_point(kind, "prefill-%s-seqwrite-1m-qd8" % size, r)
            results["memory"].append({"server": kind, "written": nbytes,
                                      "rss_anon_kib": srv.rss_anon_kib()})
            results["space"].append({"server": kind, "case": "random-once-%s" % size,
                                      "written": nbytes, "growth": srv.allocated_bytes() - base})
            if kind == "qemu-qcow2":
                srv.stop()  # qemu-img needs the image to itself
            make_many(srv, 1, size + "first")
            time_ops(srv, nbytes, "1", size + "a")  # then 1 + samples exist
            ms = make_many(srv, CFG["many"], size)
            results["snaptime"].append({"server": kind, "op": "create-series",
                                        "written": nbytes, "existing": "1..%d" % (len(ms) + 1),
                                        "median_ms": round(statistics.median(ms), 2),
                                        "first10_median_ms": round(statistics.median(ms[:10]), 2),
                                        "last10_median_ms": round(statistics.median(ms[-10:]), 2),
                                        "max_ms": round(max(ms), 2)})
            time_ops(srv, nbytes, str(len(ms) + 1 + CFG["samples"]), size + "b")
            if kind == "busesnap" and size == CFG["region"]:
                time_after_writes(srv, nbytes, size)
            if kind == "busesnap":
                results["memory"].append({"server": kind, "written": nbytes,
                                          "after": "%d snapshots" % CFG["many"],
                                          "rss_anon_kib": srv.rss_anon_kib()})
        finally:
            srv.stop()


def phase_deep(kind, work, logs):
    """Random reads with no history against reads after CFG['history']
    snapshots each followed by 1% of the blocks overwritten, and from a clone
    CFG['chain'] levels deep (each level overwriting another 1%), side by
    side: the no-history case is a second image pre-filled the same way.
    Per QD, CFG['rounds'] rounds, the cases taking turns in a rotating
    order, a sync before each; the median-IOPS sample is kept."""
    srvs = []
    try:
        for tag in ("flat", "deep"):
            srvs.append(Server(kind, work, logs, size="1G", tag=kind + "-" + tag).start())
        flat, deep = srvs
        for srv in srvs:
            prefill(srv.uri())
        for i in range(CFG["history"]):
            ctl(deep).create("h%d" % i)
            write_blocks(deep.uri(), pct_offsets(1000 + i), 1000 + i)
        parent = "h%d" % (CFG["history"] - 1)
        for level in range(1, CFG["chain"] + 1):
            vol = "c%d" % level
            ctl(deep).clone(parent, vol)
            write_blocks(deep.uri(vol), pct_offsets(5000 + level), 5000 + level)
            parent = vol + "-s"
            ctl(deep).create(parent, vol)
        cases = {"none": (flat, ""), "%d-snapshots" % CFG["history"]: (deep, ""),
                 "clone-depth-%d" % CFG["chain"]: (deep, "c%d" % CFG["chain"])}
        for qd in (1, 16):
            meds = side_by_side(list(cases), lambda case, rnd: fio(
                cases[case][0].uri(cases[case][1]), "randread", "4k", qd,
                runtime=CFG["round_dur"]))
            for case, r in meds.items():
                results["deep"].append(dict(r, server=kind, case=case, qd=qd))
                log("%s deep history %s QD%d: %.0f IOPS (samples %s)"
                    % (kind, case, qd, r["iops"], fmt_samples(r)))
    finally:
        for srv in srvs:
            srv.stop()


def phase_clonespace(kind, work, logs):
    """Ten clones of a pre-filled image, each overwriting a different 1% with
    unique data: how much the image grows.  qcow2 does it with overlays
    (qemu-img create -b) each served by its own qemu-nbd."""
    srv = Server(kind, work, logs, size="1G", tag=kind + "-clonespace").start()
    pct = REGION // 100 // 4096 * 4096
    journal = None
    try:
        prefill(srv.uri())
        if kind == "busesnap":
            ctl(srv).create("golden")
            before = srv.allocated_bytes()
            for i in range(CFG["clones"]):
                ctl(srv).clone("golden", "vm%d" % i)
                write_blocks(srv.uri("vm%d" % i), range(i * pct, (i + 1) * pct, 4096), 7000 + i)
            def journal_bytes():
                return ctl(srv).call({"op": "info"})[1].get("info", {}).get("journal_bytes", 0)
            busy = srv.allocated_bytes() - before
            journal = journal_bytes()
            # qcow2's overlays are measured once their server stopped; busesnap
            # once idle (it gives the journal's work area back after ~2 s)
            for _ in range(100):
                time.sleep(0.1)
                if journal_bytes() <= 4096:
                    break
            growth = srv.allocated_bytes() - before
        else:
            srv.stop()
            growth = 0
            for i in range(CFG["clones"]):
                ov = os.path.join(srv.dir, "vm%d.qcow2" % i)
                qemu_img("create", "-q", "-f", "qcow2", "-b", srv.image, "-F", "qcow2", ov)
                o = Server(kind, work, logs, size="1G", tag=kind + "-clonespace", image=ov)
                o.start()
                write_blocks(o.uri(), range(i * pct, (i + 1) * pct, 4096), 7000 + i)
                o.stop()
                growth += os.stat(ov).st_blocks * 512
        e = {"server": kind, "case": "ten-clones-1pct", "written": CFG["clones"] * pct,
             "growth": growth}
        if journal is not None:  # busesnap right after the writes, and the journal's share
            e["busy_growth"], e["busy_journal"] = busy, journal
        results["space"].append(e)
        log("%s ten clones 1%% each: grew %.1f MiB for %.1f MiB written"
            % (kind, growth / MIB, CFG["clones"] * pct / MIB))
    finally:
        srv.stop()


# ---------------------------------------------------------------- machine


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def machine(work):
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    src = sh("findmnt -no SOURCE,FSTYPE -T %s" % work)
    dev = os.path.basename(src.split()[0]) if src else ""
    rot = sh("cat /sys/block/%s/queue/rotational 2>/dev/null" % dev)
    return {
        "nproc": os.cpu_count(), "cpu": sh("awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo"),
        "memory": mem, "kernel": platform.release(), "os": sh(". /etc/os-release; echo $PRETTY_NAME"),
        "disk": "%s (%s, %s)" % (src, "rotational" if rot == "1" else "non-rotational",
                                 sh("df -h --output=size %s | tail -1" % work).strip() + " total"),
        "fio": sh("fio --version"), "nbdkit": sh("nbdkit --version"),
        "qemu": sh("qemu-nbd --version | head -1"),
        "git": os.environ.get("BENCH_GIT") or sh("git -C %s describe --always --dirty" % TOP),
        "load_before": sh("cut -d' ' -f1-3 /proc/loadavg"),
    }


def phase_big(kinds, work, logs):
    """4K random writes at QD16 over an 8 GiB region (CFG['big']): busesnap,
    nbdkit memory and qcow2 up at once, each pre-filled over the whole
    region, the points side by side as in the standard phase; then
    busesnap's anonymous memory."""
    big = servers.parse_size(CFG["big"])
    who = [k for k in kinds if k in ("busesnap", "nbdkit-memory", "qemu-qcow2")]
    srvs = {}
    try:
        for k in who:
            srvs[k] = Server(k, work, logs, size=CFG["big"], tag=k + "-big").start()
            add_point(k, "prefill-big-seqwrite-1m-qd8", prefill(srvs[k].uri(), size=big))
        name = "randwrite-4k-qd16-%s" % CFG["big"]
        meds = side_by_side(who, lambda k, rnd: fio(
            srvs[k].uri(), "randwrite", "4k", 16, runtime=CFG["round_dur"], size=big))
        for k in who:
            add_point(k, name, meds[k])
        if "busesnap" in srvs:
            with open("/proc/%d/status" % srvs["busesnap"].pid) as f:
                anon = [int(l.split()[1]) for l in f if l.startswith("RssAnon:")][0]
            results["memory"].append({"server": "busesnap", "written": big,
                                      "case": "after random writes",
                                      "rss_anon_kib": anon})
    finally:
        for s in srvs.values():
            s.stop()


def phase_storeapi(kind, work, logs):
    """The store through its C API (bench/store-api, no transport): random
    4 KiB overwrites of a 1 GiB volume from 1 and 2 threads and of an 8 GiB
    one from 1, CPU per write with the background work included, device
    bytes per data byte and the image over its live data; then 100,000
    snapshots of one volume (creation time first and last, clone and
    delete at the end)."""
    prog = os.path.join(TOP, "bench", "store-api")
    runs = [("1G", 1, "rand"), ("1G", 2, "rand"), (CFG["big"], 1, "rand"),
            ("1G", 1, "flush32"), ("1G", 1, "seq")]
    runs += [("64M", 1, "snaps")]
    for size, threads, mode in runs:
        argv = [prog, "-d", work, "-s", str(servers.parse_size(size) >> 20),
                "-t", str(threads), "-T", str(CFG["round_dur"] * 5), "-m", mode]
        if mode == "snaps":
            argv += ["-n", str(CFG["snapshots"])]
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError("store-api %s: %s" % (" ".join(argv[1:]), p.stderr[-300:]))
        r = {"size": size, "threads": threads, "mode": mode}
        for line in p.stdout.splitlines():
            k, _, v = line.partition(" ")
            try:
                r[k] = float(v)
            except ValueError:
                r[k] = v
        results.setdefault("storeapi", []).append(r)
        log("store-api %s %s t=%d: %s" % (mode, size, threads, " ".join(
            "%s=%s" % (k, r[k]) for k in ("iops", "cpu_us_per_write", "dev_per_data",
                                          "files_per_live", "create_us_first",
                                          "create_us_last", "clone_us", "delete_us")
            if k in r)))


def run_phase(name, fn, *args):
    if PHASES and name not in PHASES:
        return
    t = time.monotonic()
    try:
        fn(*args)
    except Exception as e:  # a benchmark records and goes on
        msg = "%s %s: %s" % (name, args[0] if isinstance(args[0], str) else "", e)
        log("ERROR " + msg)
        results["errors"].append(msg)
    key = "%s/%s" % (name, args[0] if isinstance(args[0], str) else "all")
    results["phase_seconds"][key] = round(time.monotonic() - t, 1)


def main():
    out = os.environ.get("BENCH_OUT", os.path.join(TOP, "bench", "results", "latest.json"))
    work = tempfile.mkdtemp(prefix="busesnap-bench.", dir=os.environ.get("TMPDIR", "/var/tmp"))
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    t0 = time.monotonic()
    results["machine"] = machine(work)
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    kinds = ONLY or list(servers.KINDS)
    for k in kinds:
        why = servers.available(k)
        results["servers"][k] = {"description": servers.KINDS[k][0],
                                 "available": why is None, "skipped": why}
        if why:
            log("skipping %s: %s" % (k, why))
    ok = [k for k in kinds if results["servers"][k]["available"]]
    have_bsnap = os.access(BSNAP, os.X_OK)
    run_phase("standard", phase_standard, ok, work, logs)
    run_phase("big", phase_big, ok, work, logs)
    if "busesnap" in ok:
        run_phase("storeapi", phase_storeapi, "busesnap", work, logs)
    for k in [k for k in ok if k in ("busesnap", "qemu-qcow2")]:
        if k == "busesnap" and not have_bsnap:
            results["errors"].append("busesnap store phases skipped: bsnap is not built")
            continue
        run_phase("snapwrite", phase_snapwrite, k, work, logs)
        run_phase("snaptime", phase_snaptime, k, work, logs)
        run_phase("clonespace", phase_clonespace, k, work, logs)
        if k == "busesnap":
            run_phase("deep", phase_deep, k, work, logs)
    results["total_seconds"] = round(time.monotonic() - t0, 1)
    results["machine"]["load_after"] = sh("cut -d' ' -f1-3 /proc/loadavg")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    log("results in %s (%.0f s); logs in %s" % (out, results["total_seconds"], logs))
    if os.environ.get("BENCH_KEEP"):
        return
    if results["errors"]:  # keep the servers' logs, drop the images
        for d in os.listdir(work):
            if d != "logs":
                subprocess.run(["rm", "-rf", os.path.join(work, d)])
        log("%d error(s); server logs kept in %s" % (len(results["errors"]), logs))
    else:
        subprocess.run(["rm", "-rf", work])
        log("(temp dir removed; BENCH_KEEP=1 keeps it)")


if __name__ == "__main__":
    main()
