#!/bin/bash
# bench/run.sh: the `make bench` entry point (issue 6).  Installs the peers it
# compares against (Debian packages, with apt-get when root), runs the
# side-by-side benchmark (bench/bench.py) and writes bench/results/latest.json,
# doc/performance.md and doc/performance.png (bench/report.py).
#
#   BENCH_QUICK=1      about two minutes, smaller region and fewer points
#   BENCH_ROUNDS=N     rounds of every point, servers (or cases) taking turns
#                      (default 3; the median sample is kept)
#   BENCH_ROUND_DURATION=N  seconds per point per round (default 2)
#   BENCH_SERVERS=a,b  only these servers (busesnap, nbdkit-memory, nbdkit-cow,
#                      nbdkit-file, qemu-qcow2, busexmp)
#   BENCH_PHASES=a,b   only these phases (standard, snapwrite, snaptime,
#                      clonespace, deep)
#   BENCH_OUT=FILE     results JSON elsewhere (then doc/ is left alone unless
#                      BENCH_DOC names a folder); BENCH_KEEP=1 keeps the images
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"   # Debian's python3 and tools

tests/deps.sh fio nbdkit qemu-utils libnbd-bin gnuplot-nox python3

out=${BENCH_OUT:-bench/results/latest.json}
if [ -n "${BENCH_OUT:-}" ] && [ -z "${BENCH_DOC:-}" ]; then
    BENCH_DOC=$(dirname "$out")
    export BENCH_DOC
fi
export BENCH_OUT=$out
start=$(date +%s)
python3 bench/bench.py
python3 bench/report.py "$out"
echo "bench/run.sh: done in $(( $(date +%s) - start )) s"
