"""bench/ab.py: one busesnap build against another (and the peers), side by
side in the same minutes: how a redesign step is shown (bench/notes.md).

    python3 bench/ab.py OLD_BUSESNAP [--peers nbdkit-memory,qemu-qcow2]
        [--points randwrite-4k-qd16,...] [--region 1G] [--rounds 3] [--dur 3]

"A" is OLD_BUSESNAP, "B" this tree's busesnap.  Every server is prefilled
with unique data over the region, then each point runs --rounds times for
--dur seconds, the servers taking turns in an order rotated every round,
each sample after a sync; the median sample is printed, with B/A and
B/peer ratios.  Points are bench.py's standard names, or NAME=rw:bs:qd
[:fsync=N][:jobs=N].
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fiolib  # noqa: E402
import servers  # noqa: E402
from servers import Server  # noqa: E402

KNOWN = {
    "randread-4k-qd16": ("randread", "4k", 16, 0, 1),
    "randread-4k-qd1": ("randread", "4k", 1, 0, 1),
    "randwrite-4k-qd1": ("randwrite", "4k", 1, 0, 1),
    "randwrite-4k-qd16": ("randwrite", "4k", 16, 0, 1),
    "randwrite-4k-qd16-fsync32": ("randwrite", "4k", 16, 32, 1),
    "randwrite-4k-qd16-2conn": ("randwrite", "4k", 16, 0, 2),
    "seqwrite-1m-qd8": ("write", "1M", 8, 0, 1),
    "seqread-1m-qd8": ("read", "1M", 8, 0, 1),
}


def parse_point(p):
    if p in KNOWN:
        return p, KNOWN[p]
    name, spec = p.split("=")
    f = spec.split(":")
    fsync = jobs = 0
    for x in f[3:]:
        k, v = x.split("=")
        fsync, jobs = (int(v), jobs) if k == "fsync" else (fsync, int(v))
    return name, (f[0], f[1], int(f[2]), fsync, jobs or 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("--peers", default="nbdkit-memory,qemu-qcow2")
    ap.add_argument("--points", default="randwrite-4k-qd16,randread-4k-qd16")
    ap.add_argument("--region", default="1G")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dur", type=float, default=3)
    a = ap.parse_args()
    region = servers.parse_size(a.region)
    work = tempfile.mkdtemp(prefix="busesnap-ab.", dir="/var/tmp")
    size = "%dM" % max(1024, region >> 20)
    srvs = {"A": Server("busesnap", work, work, size=size, tag="A",
                        prog=os.path.abspath(a.old)),
            "B": Server("busesnap", work, work, size=size, tag="B")}
    for p in [x for x in a.peers.split(",") if x]:
        srvs[p] = Server(p, work, work, size=size)
    try:
        for k, s in srvs.items():
            s.start()
            r = fiolib.prefill(s.uri(), region)
            print("%-14s prefill %7.0f MB/s" % (k, r["mbps"]), flush=True)
        names = list(srvs)
        for p in a.points.split(","):
            name, (rw, bs, qd, fsync, jobs) = parse_point(p)
            samples = {k: [] for k in names}
            for rnd in range(a.rounds):
                for k in names[rnd % len(names):] + names[:rnd % len(names)]:
                    os.sync()
                    extra = ["--fsync=%d" % fsync] if fsync else []
                    samples[k].append(fiolib.fio(srvs[k].uri(), rw, bs, qd,
                                                 runtime=a.dur, size=region,
                                                 numjobs=jobs, extra=extra))
            med = {k: sorted(v, key=lambda r: r["iops"])[(len(v) - 1) // 2]
                   for k, v in samples.items()}
            for k in names:
                ratio = ""
                if k != "B":
                    ratio = "B/%s %.2f" % (k, med["B"]["iops"] / max(med[k]["iops"], 1))
                print("%-26s %-14s %9.0f IOPS  p99 %8.0f us  [%s]  %s"
                      % (name, k, med[k]["iops"], med[k]["p99_us"],
                         " ".join("%.0f" % r["iops"] for r in samples[k]), ratio),
                      flush=True)
    finally:
        for s in srvs.values():
            s.stop()
        os.system("rm -rf '%s'" % work)


if __name__ == "__main__":
    main()
