#!/bin/bash
# tests/run-tests.sh: run the unit tests (tests/unit/test-*) and the shell
# tests (tests/test-*.sh), two at a time, each with a time limit.  Prints one
# line per test and a closing "N passed, N failed, N skipped" line.
# Usage: tests/run-tests.sh [--tier reliability] [PATTERN...]
#   (e.g. tests/run-tests.sh nbd-).  The default tier is tests/test-*.sh and
#   the unit tests; --tier NAME runs tests/NAME/test-*.sh instead (the longer
#   crash-loop, power-loss, fuzzing and soak runs: make check-reliability).
set -u
tier=
if [ "${1:-}" = --tier ]; then tier=$2; shift 2; fi
cd "$(dirname "$0")/.."
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
logdir=tests/logs${tier:+-$tier}   # each tier keeps its own logs
export logdir
rm -rf "$logdir"; mkdir -p "$logdir"
list=()
if [ -n "$tier" ]; then
    for t in tests/"$tier"/test-*.sh; do [ -f "$t" ] && list+=("$t"); done
else
    for t in tests/unit/test-*; do
        [ -x "$t" ] && [[ $t != *.c ]] && list+=("$t")
    done
    for t in tests/test-*.sh; do list+=("$t"); done
fi
if [ $# -gt 0 ]; then
    sel=()
    for t in "${list[@]}"; do for p in "$@"; do [[ $t == *$p* ]] && sel+=("$t") && break; done; done
    list=("${sel[@]}")
fi
run_one() {
    local t=$1 name rc start end
    name=$(basename "$t" .sh)
    start=$(date +%s)
    timeout -k 10 "${TEST_TIMEOUT:-600}" "$t" >"$logdir/$name.log" 2>&1; rc=$?
    end=$(date +%s)
    case $rc in
        0) echo "PASS $name ($((end - start))s)" ;;
        77) echo "SKIP $name: $(grep -m1 '^SKIP' "$logdir/$name.log" || true)" ;;
        *) echo "FAIL $name (rc=$rc, $((end - start))s)"; tail -n 25 "$logdir/$name.log" | sed 's/^/    /' ;;
    esac
}
export -f run_one
printf '%s\n' "${list[@]}" | xargs -P "${TEST_JOBS:-2}" -I{} bash -c 'run_one {}' | tee "$logdir/summary"
pass=$(grep -c '^PASS' "$logdir/summary"); failn=$(grep -c '^FAIL' "$logdir/summary"); skipn=$(grep -c '^SKIP' "$logdir/summary")
echo "$pass passed, $failn failed, $skipn skipped"
[ "$failn" -eq 0 ] && [ "$pass" -gt 0 ]
