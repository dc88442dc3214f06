"""bench/fiolib.py: one fio job against an NBD URI, and the prefill, as the
benchmarks run them (bench.py, ab.py): fio's nbd engine, unique data
(--refill_buffers), no random map; figures from fio's JSON."""

import json
import subprocess
import time


def fio(uri, rw, bs, qd, runtime=None, size=1 << 30, offset=0, io_size=None,
        seed=None, randommap=False, numjobs=1, extra=()):
    """Run one fio job against URI and return its figures (IOPS, MB/s, p50/p99
    completion latency in microseconds, ios, runtime in seconds)."""
    argv = ["fio", "--name=bench", "--ioengine=nbd", "--uri=" + uri, "--rw=" + rw,
            "--bs=" + str(bs), "--iodepth=%d" % qd, "--size=%d" % size,
            "--offset=%d" % offset, "--refill_buffers", "--output-format=json",
            "--numjobs=%d" % numjobs, "--group_reporting"]
    if runtime:
        argv += ["--runtime=%g" % runtime]
        if io_size is None:
            argv += ["--time_based"]
    if io_size is not None:
        argv += ["--io_size=%d" % io_size]
    if seed is not None:
        argv += ["--randseed=%d" % seed]
    if not randommap and rw.startswith("rand"):
        argv += ["--norandommap", "--randrepeat=0"]
    argv += list(extra)
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("fio %s bs=%s qd=%d on %s failed: %s"
                           % (rw, bs, qd, uri, (p.stderr or p.stdout).strip()[-300:]))
    out = p.stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    d = "read" if "read" in rw else "write"
    sec = job[d]
    pct = sec.get("clat_ns", {}).get("percentile", {})
    return {"iops": round(sec["iops"], 1), "mbps": round(sec["bw_bytes"] / 1e6, 1),
            "p50_us": round(pct.get("50.000000", 0) / 1000, 1),
            "p99_us": round(pct.get("99.000000", 0) / 1000, 1),
            "ios": sec["total_ios"], "runtime_s": sec["runtime"] / 1000.0}


def prefill(uri, size, offset=0):
    """Write SIZE bytes of unique data sequentially and flush."""
    t = time.monotonic()
    r = fio(uri, "write", "1M", 8, size=size, offset=offset, extra=["--end_fsync=1"])
    r["wall_s"] = round(time.monotonic() - t, 2)
    r["bytes"] = size
    return r
