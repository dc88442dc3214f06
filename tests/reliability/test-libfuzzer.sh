#!/bin/bash
# test-libfuzzer.sh: the libFuzzer targets of tests/fuzz (issue 7 item 4):
# libbuse's NBD handshake and transmission parser (fuzz-nbd) and busesnap's
# control protocol against a real store (fuzz-control), both built with
# ASan, UBSan and LeakSanitizer.
#
# First every committed corpus file (seeds and crash-* reproducers of
# fixed bugs) is replayed, then each target fuzzes a COPY of its corpus
# for FUZZ_SECONDS (default 45 s each; the whole test stays under 150 s on
# a loaded 2-core machine).  Any crash, sanitizer report, leak or input
# slower than 10 s fails the test; the reproducer is kept in the log
# directory.  Prints the execution counts ("fuzz executions").
. "$(dirname "$0")/../functions.sh"
requires clang

secs=${FUZZ_SECONDS:-45}
fuzz=$top/tests/fuzz
make -C "$top" -s tests/fuzz/fuzz-nbd tests/fuzz/fuzz-control >"$tmp/build.log" 2>&1 ||
    fail "cannot build the fuzz targets: $(grep -m3 -E 'error|cannot find' "$tmp/build.log")"

# The control target's store lives on tmpfs (fsync is free there).
store_base=/dev/shm
[ -w "$store_base" ] || store_base=$tmp
store_dir=$(mktemp -d "$store_base/busesnap-fuzz.XXXXXX")
on_exit "rm -rf '$store_dir'"
export FUZZ_STORE_DIR=$store_dir

# replay TARGET CORPUS: run every file of the committed corpus once.
replay() {
    local t=$1 dir=$2 n
    n=$(find "$dir" -type f | wc -l)
    [ "$n" -gt 0 ] || fail "$dir is empty"
    # FUZZ_CONTROL_RESET=1: a fresh store per input, as a reproducer needs.
    if ! FUZZ_CONTROL_RESET=1 "$fuzz/$t" -close_fd_mask=2 -timeout=10 \
        "$dir"/* >"$tmp/replay-$t.log" 2>&1; then
        tail -n 30 "$tmp/replay-$t.log" >&2
        fail "$t: a committed corpus file fails (log $tmp/replay-$t.log)"
    fi
    grep -q "Executed .* in" "$tmp/replay-$t.log" ||
        fail "$t: replay ran nothing"
    echo "$t: replayed $n corpus files"
}

# run TARGET CORPUS MAXLEN DICT: fuzz a copy of the corpus for $secs s.
declare -A execs
run() {
    local t=$1 corpus=$2 maxlen=$3 dict=$4 rc=0 n
    mkdir -p "$tmp/$t-corpus"
    cp "$corpus"/* "$tmp/$t-corpus/"
    timeout -k 5 $((secs + 60)) "$fuzz/$t" -max_total_time="$secs" \
        -max_len="$maxlen" -timeout=10 -rss_limit_mb=2048 -close_fd_mask=2 \
        -print_final_stats=1 -dict="$dict" -artifact_prefix="$tmp/$t-" \
        "$tmp/$t-corpus" >"$tmp/$t.log" 2>&1 || rc=$?
    if [ $rc -ne 0 ]; then
        { grep -E -A20 'ERROR|runtime error|Timeout|deadly signal' \
            "$tmp/$t.log" || tail -n 20 "$tmp/$t.log"; } | head -40 >&2
        fail "$t: exit $rc after fuzzing (reproducer: $(ls "$tmp/$t-"* 2>/dev/null | head -1); log $tmp/$t.log)"
    fi
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$tmp/$t.log")
    [ -n "$n" ] && [ "$n" -gt 0 ] || fail "$t: no executions counted"
    execs[$t]=$n
    echo "$t: $n executions in ${secs} s, $(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' "$tmp/$t.log" | tail -1) edges, corpus $(find "$tmp/$t-corpus" -type f | wc -l) files"
}

replay fuzz-nbd "$fuzz/corpus-nbd"
replay fuzz-control "$fuzz/corpus-control"
run fuzz-nbd "$fuzz/corpus-nbd" 8192 "$fuzz/nbd.dict"
run fuzz-control "$fuzz/corpus-control" 4096 "$fuzz/control.dict"
echo "fuzz executions: $((execs[fuzz-nbd] + execs[fuzz-control])) (fuzz-nbd ${execs[fuzz-nbd]}, fuzz-control ${execs[fuzz-control]}, ${secs} s each)"
