#!/bin/bash
# test-busexmp-args: bad command lines get one clear line, the usage, and
# exit code 2; sizes accept K/M/G/T suffixes (and iB, B, lowercase,
# fractions that come to whole bytes).
. "$(dirname "$0")/functions.sh"
requires nbdinfo
x=$top/busexmp
check_bad() {
    local want=$1 rc=0; shift
    "$x" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null || rc=$?
    assert_eq "exit code of busexmp $*" 2 "$rc"
    grep -q "$want" "$tmp/err" || fail "busexmp $*: expected '$want' in: $(head -1 "$tmp/err")"
    grep -q "^usage:" "$tmp/err" || fail "busexmp $*: no usage printed"
}
check_bad "missing SIZE"
check_bad 'bad size "12Q"' 12Q --socket "$tmp/s"
check_bad "SIZE must not be 0" 0 --socket "$tmp/s"
check_bad 'bad size "-5"' -- -5 --socket "$tmp/s"
check_bad "b would be bits" 1Mb --socket "$tmp/s"
check_bad "nothing to serve" 1M
check_bad "not both" 1M /dev/nbd0 --socket "$tmp/s"
check_bad "unexpected argument" 1M /dev/nbd0 extra
check_bad "unrecognized option" 1M --frobnicate
"$x" --help | grep -q "^usage:" || fail "--help prints no usage"
for s in 512K:524288 3M:3145728 1G:1073741824 2T:2199023255552 1.5M:1572864 64MiB:67108864 2g:2147483648; do
    got=$(nbdinfo --size -- [ "$x" "${s%%:*}" ]) || fail "size ${s%%:*} refused"
    assert_eq "size ${s%%:*}" "${s#*:}" "$got"
done
