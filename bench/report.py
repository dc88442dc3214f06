#!/usr/bin/python3
"""bench/report.py: turn bench/results/latest.json into the table, the targets
of issue 6 with their ratios, doc/performance.md and doc/performance.png.

It only reads the JSON written by bench.py (so it can be re-run alone:
`bench/report.py [RESULTS.json]`), adds the computed "targets" back into that
file, prints the table and the targets, and draws the chart with gnuplot
(bench/chart.gp).  A target whose inputs are missing (server skipped, phase
failed) is listed as "not measured", never as met.
"""

import json
import os
import subprocess
import sys
import tempfile

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1 << 30
MIB = 1 << 20
PEERS = ["nbdkit-memory", "nbdkit-cow", "nbdkit-file", "qemu-qcow2", "busexmp"]


def point(res, server, workload):
    for p in res["points"]:
        if p["server"] == server and p["workload"] == workload:
            return p
    return None


def ratio_of(res, workload, peer, key="iops"):
    a, b = point(res, "busesnap", workload), point(res, peer, workload)
    if not a or not b or not b[key]:
        return None
    return a[key] / b[key]


def targets(res):
    """Each target: name, ratio (measured), rule, met (True/False/None)."""
    out = []

    def add(name, ratio, limit, higher=True, detail=""):
        met = None if ratio is None else (ratio >= limit if higher else ratio <= limit)
        out.append({"target": name, "ratio": None if ratio is None else round(ratio, 3),
                    "rule": ("%s %g" % (">=" if higher else "<=", limit)), "met": met,
                    "detail": detail})

    add("4K randwrite QD16 vs nbdkit memory", ratio_of(res, "randwrite-4k-qd16", "nbdkit-memory"), 0.8)
    add("4K randwrite QD16 vs qemu-nbd qcow2", ratio_of(res, "randwrite-4k-qd16", "qemu-qcow2"), 3)
    big = res["config"].get("big", "8G")
    add("4K randwrite QD16 over %s vs nbdkit memory" % big,
        ratio_of(res, "randwrite-4k-qd16-%s" % big, "nbdkit-memory"), 0.8)
    add("4K randwrite QD16 over %s vs qemu-nbd qcow2" % big,
        ratio_of(res, "randwrite-4k-qd16-%s" % big, "qemu-qcow2"), 3)
    add("4K randwrite QD16, two connections, vs nbdkit memory",
        ratio_of(res, "randwrite-4k-qd16-2conn", "nbdkit-memory"), 0.8)
    add("4K randwrite QD16 fsync=32 vs qemu-nbd qcow2",
        ratio_of(res, "randwrite-4k-qd16-fsync32", "qemu-qcow2"), 2)
    add("4K randread QD16 vs nbdkit memory", ratio_of(res, "randread-4k-qd16", "nbdkit-memory"), 0.9)
    add("4K randread QD1 p50 latency vs nbdkit memory",
        ratio_of(res, "randread-4k-qd1", "nbdkit-memory", "p50_us"), 1.3, higher=False)
    fl = ratio_of(res, "seqwrite-1m-qd8-flushed", "nbdkit-file", "mbps")
    add("1M seq write vs nbdkit file", ratio_of(res, "seqwrite-1m-qd8", "nbdkit-file", "mbps"), 0.8,
        detail="" if fl is None else "%s written then flushed, by the wall clock: %.2f"
        % (res["config"]["region"], fl))
    add("1M seq read vs nbdkit file", ratio_of(res, "seqread-1m-qd8", "nbdkit-file", "mbps"), 0.8)

    sw = {(r["server"], r["qd"], r["phase"]): r["iops"] for r in res["snapwrite"]}
    for qd in (16, 1):
        o, f = sw.get(("busesnap", qd, "overwrite")), sw.get(("busesnap", qd, "first-after-snapshot"))
        q = ""
        qo, qf = sw.get(("qemu-qcow2", qd, "overwrite")), sw.get(("qemu-qcow2", qd, "first-after-snapshot"))
        if qo and qf:
            q = "qcow2: %.3f" % (qf / qo)
        add("first write after snapshot vs overwrite, QD%d" % qd, f / o if o and f else None, 0.95,
            detail=q)

    st = [r for r in res["snaptime"] if r["server"] == "busesnap" and r["op"] in ("create", "clone")]
    for op in ("create", "clone"):
        rows = [r for r in st if r["op"] == op]
        # server-reported time when the server gives it, else the socket round trip
        meds = [r.get("median_server_ms", r["median_ms"]) for r in rows]
        if len(meds) >= 4 and min(meds) >= 0:
            worst = max(meds)
            spread = max(meds) - min(meds)
            # "the same within noise": medians within 2 ms or 2x of each other
            ok = worst < 5 and (spread < 2 or max(meds) / max(min(meds), 1e-3) <= 2)
            out.append({"target": "%s time < 5 ms, flat over size and count" % op,
                        "ratio": round(worst / 5, 3),
                        "rule": "worst median / 5 ms < 1; medians within 2 ms or 2x", "met": ok,
                        "detail": "server median ms (written/existing) %s; socket round trip %s" % (
                            ", ".join("%s/%s: %.2f" % (human(r["written"]), r["existing"], m)
                                      for r, m in zip(rows, meds)),
                            ", ".join("%.2f" % r["median_ms"] for r in rows))})
        else:
            add("%s time < 5 ms, flat over size and count" % op, None, 1)

    deep = {(r["case"], r["qd"]): r["iops"] for r in res["deep"] if r["server"] == "busesnap"}
    for case in sorted({c for c, _ in deep if c != "none"}):
        for qd in (16, 1):
            a, b = deep.get((case, qd)), deep.get(("none", qd))
            add("deep history %s randread QD%d vs none" % (case, qd), a / b if a and b else None, 0.8)

    sp = {(r["server"], r["case"]): r for r in res["space"]}
    r = sp.get(("busesnap", "random-once"))
    add("space: 1 GiB random once, growth / written", r["growth"] / r["written"] if r else None, 1.10,
        higher=False)
    r = sp.get(("busesnap", "ten-clones-1pct"))
    add("space: ten clones x 1%, growth / written", r["growth"] / r["written"] if r else None, 1.15,
        higher=False,
        detail="measured once idle; right after the writes %.2f, of it the journal's work area "
        "(at most ~64 MiB, given back when idle) %.1f MiB"
        % (r["busy_growth"] / r["written"], r["busy_journal"] / MIB) if r and "busy_journal" in r else "")
    sa = {(r["mode"], r["size"], r["threads"]): r for r in res.get("storeapi", [])}
    sn = sa.get(("snaps", "64M", 1))
    if sn:
        last = sn.get("create_us_last", 1e9)
        flat = last <= max(2 * sn.get("create_us_first", 0), 1000)
        out.append({"target": "snapshot, clone, delete < 1 ms at %d snapshots, flat"
                    % sn.get("snapshots", 0),
                    "ratio": round(max(last, sn.get("clone_us", 0), sn.get("delete_us", 0)) / 1000, 3),
                    "rule": "worst us / 1000 < 1; last thousand within 2x of the first",
                    "met": flat and max(last, sn.get("clone_us", 0), sn.get("delete_us", 0)) < 1000,
                    "detail": "store API: create %.0f us first thousand, %.0f us last; clone %.0f us, "
                    "delete %.0f us" % (sn.get("create_us_first", 0), last, sn.get("clone_us", 0),
                                        sn.get("delete_us", 0))})
    r1, r2 = sa.get(("rand", "1G", 1)), sa.get(("rand", "1G", 2))
    if r1 and r2:
        add("store API: 2 threads vs 1, random 4K overwrites of 1G", r2["iops"] / r1["iops"], 1.7)
    if r1:
        add("store API: CPU us per random 4K write (background work included) / 5",
            r1["cpu_us_per_write"] / 5, 1, higher=False, detail="%.1f us" % r1["cpu_us_per_write"])
        add("store API: device bytes per data byte, random 4K overwrites of 1G",
            r1["dev_per_data"], 1.2, higher=False)
    rb = sa.get(("rand", big, 1))
    if rb:
        add("store API: image / live data after random 4K overwrites of %s" % big,
            rb["files_per_live"], 1.10, higher=False,
            detail="%.0f s of overwrites; with the index's reserved room (du): %.2f"
            % (rb.get("seconds", 0), rb.get("image_per_live", 0)))
    mem = [m for m in res["memory"] if m["server"] == "busesnap" and "case" not in m]
    big = max(mem, key=lambda m: (m["written"], m["rss_anon_kib"] or 0)) if mem else None
    add("memory: RssAnon at %s written / 64 MiB" % (human(big["written"]) if big else "8G"),
        big["rss_anon_kib"] / 65536 if big and big["rss_anon_kib"] is not None else None, 1,
        higher=False, detail="%.1f MiB" % (big["rss_anon_kib"] / 1024) if big else "")
    return out


def human(n):
    """1073741824 -> 1G, 268435456 -> 256M."""
    return "%gG" % (n / GIB) if n >= GIB else "%gM" % (n / MIB)


def fmt_ratio(x):
    return "n/a" if x is None else "%.2f" % x


def verdict(t):
    return {True: "**met**", False: "**missed**", None: "not measured"}[t["met"]]


def points_table(res):
    servers = [s for s in ["busesnap"] + PEERS if any(p["server"] == s for p in res["points"])]
    workloads = []
    for p in res["points"]:
        if p["workload"] not in workloads and not p["workload"].startswith("prefill"):
            workloads.append(p["workload"])
    lines = ["| workload | server | IOPS | MB/s | p50 us | p99 us | busesnap / server (IOPS) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for w in workloads:
        for s in servers:
            p = point(res, s, w)
            if not p:
                continue
            r = "" if s == "busesnap" else fmt_ratio(ratio_of(res, w, s))
            lines.append("| %s | %s | %.0f | %.1f | %.1f | %.1f | %s |"
                         % (w, s, p["iops"], p["mbps"], p["p50_us"], p["p99_us"], r))
    return lines, servers, workloads


def chart(res, servers, workloads, png):
    """Two panels: 4K IOPS and 1M MB/s per workload, one bar per server."""
    small = [w for w in workloads if "-4k-" in w]
    large = [w for w in workloads if "-1m-" in w]
    tmp = tempfile.mkdtemp(prefix="bench-chart.")
    colors = {}
    for name, ws, key in (("small", small, "iops"), ("large", large, "mbps")):
        have = [s for s in servers if any(point(res, s, w) for w in ws)]
        colors[name] = " ".join(str(servers.index(s) + 1) for s in have)
        with open(os.path.join(tmp, name + ".dat"), "w") as f:
            f.write("workload " + " ".join(have) + "\n")
            for w in ws:
                vals = []
                for s in have:
                    p = point(res, s, w)
                    vals.append("%.1f" % (p[key] / (1000 if key == "iops" else 1)) if p else "-")
                f.write(w.replace("randwrite", "rw").replace("randread", "rr") + " "
                        + " ".join(vals) + "\n")
    title = "busesnap benchmark, %s (%s, %s cores), %s" % (
        res.get("date", ""), res["machine"].get("kernel", ""), res["machine"].get("nproc", ""),
        res["mode"])
    subprocess.run(["gnuplot", "-e", "dir='%s'; out='%s'; ttl='%s'; sc='%s'; lc='%s'"
                    % (tmp, png, title, colors["small"], colors["large"]),
                    os.path.join(TOP, "bench", "chart.gp")], check=True)
    subprocess.run(["rm", "-rf", tmp])


def store_sections(res):
    L = []
    if res["snapwrite"]:
        L += ["", "### First write after a snapshot (4K random, unique data, each block once per pass)", "",
              "| server | QD | phase | IOPS | p50 us | p99 us |", "|---|---:|---|---:|---:|---:|"]
        for r in res["snapwrite"]:
            L.append("| %s | %d | %s | %.0f | %.1f | %.1f |"
                     % (r["server"], r["qd"], r["phase"], r["iops"], r["p50_us"], r["p99_us"]))
    if res["snaptime"]:
        L += ["", "### Snapshot and clone creation", "",
              "busesnap: *server ms* is the `elapsed_us` the server reports, *round trip ms* the "
              "request/answer time on the control socket, *bsnap ms* whole `bsnap create` runs. "
              "qcow2: one `qemu-img snapshot -c` (or `qemu-img create -b`) run each.", "",
              "| server | op | written | existing snapshots | server ms (median) | round trip ms (median) | samples (round trip ms) | bsnap ms |",
              "|---|---|---:|---:|---:|---:|---|---|"]
        for r in res["snaptime"]:
            if "ms" in r:
                L.append("| %s | %s | %.2f GiB | %s | %s | %.2f | %s | %s |"
                         % (r["server"], r["op"], r["written"] / GIB, r["existing"],
                            "%.3f" % r["median_server_ms"] if "median_server_ms" in r else "",
                            r["median_ms"], " ".join("%.1f" % x for x in r["ms"]),
                            " ".join("%.1f" % x for x in r.get("bsnap_cli_ms", []))))
            else:
                L.append("| %s | %s | %.2f GiB | %s | | %.2f | first 10 / last 10 / max: %.2f / %.2f / %.2f | |"
                         % (r["server"], r["op"], r["written"] / GIB, r["existing"], r["median_ms"],
                            r["first10_median_ms"], r["last10_median_ms"], r["max_ms"]))
    if res["deep"]:
        L += ["", "### Deep history (busesnap, 4K random read)", "",
              "| case | QD | IOPS | p50 us | p99 us |", "|---|---:|---:|---:|---:|"]
        for r in res["deep"]:
            L.append("| %s | %d | %.0f | %.1f | %.1f |" % (r["case"], r["qd"], r["iops"], r["p50_us"], r["p99_us"]))
    if res["space"]:
        L += ["", "### Space (allocated bytes of the server's files, after a flush)", "",
              "| server | case | written MiB | growth MiB | growth / written |", "|---|---|---:|---:|---:|"]
        for r in res["space"]:
            L.append("| %s | %s | %.1f | %.1f | %.3f |" % (r["server"], r["case"], r["written"] / MIB,
                                                       r["growth"] / MIB, r["growth"] / r["written"]))
    if res["memory"]:
        L += ["", "### Memory (server RssAnon: heap and anonymous maps, not the mapped image)", "",
              "| server | written GiB | when | RssAnon MiB |", "|---|---:|---|---:|"]
        for r in res["memory"]:
            L.append("| %s | %.2f | %s | %s |" % (r["server"], r["written"] / GIB, r.get("after", "after the writes"),
                                                 "n/a" if r["rss_anon_kib"] is None else "%.1f" % (r["rss_anon_kib"] / 1024)))
    return L


def markdown(res, table, tg, servers):
    m = res["machine"]
    L = ["# Performance: busesnap side by side with its peers", "",
         "<!-- generated by bench/report.py from bench/results/latest.json by `make bench`; do not edit -->", "",
         "`make bench` installs the peers (Debian packages), builds the tree and runs "
         "`bench/run.sh`: every server is started on a private Unix socket and driven by "
         "`fio --ioengine=nbd` with one job = one NBD connection, unique data "
         "(`--refill_buffers`), a %s region pre-filled with unique data before reads are "
         "measured. Every ratio compares figures taken in the same minutes: the standard "
         "points (the table) run with every server up at once, and the store phases "
         "(first write after a snapshot, deep history) with the cases they compare on "
         "images of their own up at once; each point %s times, %s s each, the servers "
         "or cases taking turns in a different order every round, each sample after a "
         "`sync` (no server pays for another's writeback), and the sample with the "
         "median IOPS kept (all samples are in the JSON). `BENCH_QUICK=1 make bench` is a two-minute "
         "version for development. Figures are from **one run on one machine**: only "
         "the ratios inside this run mean anything." % (
             res["config"]["region"], res["config"].get("rounds", 1),
             res["config"].get("round_dur", res["config"].get("dur"))), "",
         "## The run", "",
         "- date: %s, mode: %s, total time %.0f s, tree `%s`" % (res.get("date"), res["mode"],
                                                               res.get("total_seconds", 0), m.get("git")),
         "- machine: %s cores (%s), %s RAM, kernel %s, %s" % (m.get("nproc"), m.get("cpu"), m.get("memory"),
                                                            m.get("kernel"), m.get("os")),
         "- disk under the images: %s; load average (1, 5, 15 min) before the run: %s, after: %s"
         % (m.get("disk"), m.get("load_before"), m.get("load_after", "?")),
         "- tools: %s, %s, %s" % (m.get("fio"), m.get("nbdkit"), m.get("qemu")),
         "- servers:"]
    for k, s in res["servers"].items():
        L.append("  - `%s`: %s%s" % (k, s["description"], "" if s["available"] else " — **skipped: %s**" % s["skipped"]))
    L += ["", "![chart](performance.png)", "", "## Targets (issues 6 and 17)", "",
          "| target | busesnap ratio | rule | verdict | detail |", "|---|---:|---|---|---|"]
    for t in tg:
        L.append("| %s | %s | %s | %s | %s |" % (t["target"], fmt_ratio(t["ratio"]), t["rule"], verdict(t), t["detail"]))
    L += ["", "## Table", "", "IOPS, MB/s and completion-latency percentiles from fio; the last column is "
          "busesnap's IOPS divided by that server's.", ""] + table
    L += ["", "## Store-specific measures"] + store_sections(res)
    sa = res.get("storeapi", [])
    if sa:
        L += ["", "### The store through its C API (bench/store-api, no transport)", "",
              "| mode | size | threads | IOPS | CPU us / write | device bytes / data byte | "
              "image / live | without reservations |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in sa:
            if r["mode"] == "snaps":
                continue
            L.append("| %s | %s | %d | %.0f | %.1f | %.2f | %.2f | %.2f |" % (
                r["mode"], r["size"], r["threads"], r.get("iops", 0), r.get("cpu_us_per_write", 0),
                r.get("dev_per_data", 0), r.get("image_per_live", 0), r.get("files_per_live", 0)))
    L += ["", "## Running it", "",
          "```sh",
          "make bench                      # full run, about 12 min; rewrites this page and the chart",
          "BENCH_QUICK=1 make bench        # about two minutes, 256 MiB region, 1 s points",
          "BENCH_SERVERS=busesnap,nbdkit-memory BENCH_PHASES=standard bench/run.sh",
          "BENCH_OUT=/tmp/r.json bench/run.sh   # results and page in /tmp, doc/ untouched",
          "bench/report.py [RESULTS.json]  # redo the table, targets and chart from a JSON",
          "bench/profile.sh randwrite 16 10    # perf profile of busesnap under one fio workload",
          "```", "",
          "Phases: `standard` (every server), `snapwrite`, `snaptime`, `clonespace` (busesnap and "
          "qcow2), `deep` (busesnap). Raw figures: `bench/results/latest.json`."]
    L += ["", "## How each measure is taken, and what is not like for like", "",
          "- **First write after a snapshot**: two images pre-filled alike; passes of 4K random writes "
          "(every block at most once per pass: fio's random map, the same offsets on both), on one image "
          "as plain overwrites, on the other with a new snapshot before each pass. busesnap takes the "
          "snapshot with `bsnap create` while serving. qcow2 internal snapshots need the image to itself, so "
          "qemu-nbd is stopped, `qemu-img snapshot -c` run and qemu-nbd restarted between passes (qemu's "
          "metadata cache starts cold; the page cache stays).",
          "- **Snapshot and clone time**: the target uses the time busesnap reports for the operation "
          "(`elapsed_us` in the control answer); the round trip on the control socket and whole `bsnap` runs "
          "(process start included) are shown beside it. For qcow2 it is one `qemu-img snapshot -c` run on "
          "the stopped image (process start and image open included), and "
          "for the clone one `qemu-img create -b` overlay (qcow2 cannot clone from an internal snapshot "
          "without copying it).",
          "- **Deep history**: random reads on a pre-filled image with no history (the case *none*), "
          "and on a second one pre-filled alike, after %d snapshots each followed by 1%% of the blocks overwritten, and on a clone %d levels deep (each "
          "level a clone of a snapshot of the level above, with 1%% overwritten)."
          % (res["config"]["history"], res["config"]["chain"]),
          "- **Space**: allocated bytes (`st_blocks`) of every file in the server's folder and every "
          "regular file it holds open (nbdkit's cow overlay is an unlinked temp file). Ten clones: "
          "busesnap clones of one snapshot, qcow2 overlays with the pre-filled image as backing file.",
          "- **Memory**: `RssAnon` from `/proc/PID/status` (heap and anonymous maps; LMDB's mapped "
          "file is file-backed and not counted). nbdkit memory and busexmp hold the disk in RAM by design.",
          "- `nbdkit-file` (plain `nbdkit file`) runs only the 1M points: it is the reference of the "
          "sequential targets."]
    notes = os.path.join(TOP, "bench", "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            L += ["", f.read().rstrip()]
    if res["errors"]:
        L += ["", "## Errors in this run", ""] + ["- %s" % e for e in res["errors"]]
    return "\n".join(L) + "\n"


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(TOP, "bench", "results", "latest.json")
    with open(path) as f:
        res = json.load(f)
    tg = targets(res)
    res["targets"] = tg
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    table, servers, workloads = points_table(res)
    print("\n".join(table))
    print()
    for t in tg:
        print("%-58s ratio %-6s %-22s %s %s" % (t["target"], fmt_ratio(t["ratio"]), t["rule"],
                                                {True: "MET", False: "MISSED", None: "not measured"}[t["met"]],
                                                t["detail"]))
    for e in res["errors"]:
        print("error: " + e)
    default = os.path.join(TOP, "bench", "results", "latest.json")
    # doc/ is only rewritten from the tree's own results file
    docdir = os.environ.get("BENCH_DOC") or (
        os.path.join(TOP, "doc") if os.path.abspath(path) == default else os.path.dirname(path))
    if servers:
        chart(res, servers, workloads, os.path.join(docdir, "performance.png"))
    with open(os.path.join(docdir, "performance.md"), "w") as f:
        f.write(markdown(res, table, tg, servers))
    print("\nwrote %s and %s" % (os.path.join(docdir, "performance.md"), os.path.join(docdir, "performance.png")))


if __name__ == "__main__":
    main()
