#!/bin/bash
# bench/profile.sh: where busesnap spends its time under one fio workload,
# for the "profile what misses a target" step of issue 6.  Starts busesnap on
# a private image and socket, pre-fills REGION with unique data, then records
# `perf record -g` of the server while fio runs the workload, and prints the
# top of `perf report` (flat, then by caller).  Not part of `make bench`.
#
#   bench/profile.sh [randwrite|randread|write|read] [QD] [SECONDS] [BS]
#   PROFILE_REGION=1G  PROFILE_KEEP=1 (keep perf.data and the image)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
rw=${1:-randwrite} qd=${2:-16} secs=${3:-10} bs=${4:-4k}
region=${PROFILE_REGION:-1G}
for p in perf fio ./busesnap; do
    command -v "$p" >/dev/null || { echo "bench/profile.sh: $p is missing" >&2; exit 1; }
done
dir=$(mktemp -d "${TMPDIR:-/var/tmp}/busesnap-profile.XXXXXX")
sock=$dir/nbd.sock uri="nbd+unix:///?socket=$dir/nbd.sock"
./busesnap serve "$dir/image.db" --size "$region" --socket "$sock" --control "$dir/ctl.sock" \
    >"$dir/server.log" 2>&1 &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    [ -n "${PROFILE_KEEP:-}" ] && echo "kept $dir" >&2 || rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 500); do [ -S "$sock" ] && break; sleep 0.02; done
[ -S "$sock" ] || { echo "bench/profile.sh: busesnap did not start: $(tail -3 "$dir/server.log")" >&2; exit 1; }
fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 \
    --size="$region" --refill_buffers --end_fsync=1 >/dev/null
# System-wide, then only the server's samples: `perf record -p PID` follows
# only the threads alive when it attaches, and busesnap starts its workers
# per connection (a -p profile showed 99% kernel time of the background
# thread, about 200 samples in 8 s).  Percentages are of every sample of
# the machine (fio and idle included).
perf record -q -a -g -F 2000 -o "$dir/perf.data" -- sleep "$secs" &
perf_pid=$!
fio --name=prof --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" \
    --size="$region" --refill_buffers --norandommap --randrepeat=0 --time_based \
    --runtime="$secs" | grep -E 'IOPS|clat \(' | head -3
wait "$perf_pid" || true
echo "== by library (self time) =="
perf report -i "$dir/perf.data" --stdio --no-children --pid "$pid" --sort dso 2>/dev/null |
    grep -E '^ +[0-9.]+%' | head -8
echo "== flat profile (self time) =="
perf report -i "$dir/perf.data" --stdio --no-children --pid "$pid" --sort dso,symbol 2>/dev/null |
    grep -E '^ +[0-9.]+%' | head -20
echo "== inclusive (children), system calls and the store's own functions =="
perf report -i "$dir/perf.data" --stdio --children --pid "$pid" --sort symbol -g none 2>/dev/null |
    grep -E '^ +[0-9.]+%' | grep -E '__libc_|fdatasync|fsync|sync_file_range|msync|store_|mdb_|XXH|buse_|nbd_' |
    head -25
