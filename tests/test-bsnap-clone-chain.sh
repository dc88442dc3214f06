#!/bin/bash
# A chain of 50 clones of clones through bsnap: level i writes pattern i
# into its own block i, is snapshotted and cloned into level i+1.  The last
# clone reads every level's block; every level's snapshot reads only what
# existed then; writes at the end of the chain leave the rest untouched.
. "$(dirname "$0")/functions.sh"
requires nbdsh qemu-io jq
bsnap() { "$top/bsnap" "$@"; }

start_busesnap 1M
vol=default
for i in $(seq 1 50); do
    qemu-io -f raw "$(uri_of "$([ $vol = default ] && echo "" || echo $vol)")" \
        -c "write -P $i $((i * 4096)) 4k" >/dev/null || fail "write at level $i"
    bsnap create "snap$i" --volume "$vol" >/dev/null || fail "snapshot at level $i"
    bsnap clone "snap$i" "clone$i" >/dev/null || fail "clone at level $i"
    vol=clone$i
done
check_levels() { # EXPORT N: blocks 1..N hold their level, N+1..50 zeros
    nbdsh -u "$(uri_of "$1")" -c "
for i in range(1, 51):
    want = bytes([i if i <= $2 else 0]) * 4096
    got = h.pread(4096, i * 4096)
    assert got == want, 'block %d of $1: got %d' % (i, got[0])
" || fail "export $1 does not hold levels 1..$2"
}
check_levels clone50 50
check_levels snap25 25
check_levels clone10 11
qemu-io -f raw "$(uri_of clone50)" -c "write -P 0xee 4096 4k" >/dev/null
check_levels clone49 50
check_levels snap1 1
assert_eq "depth in list" 101 "$(bsnap list --json | jq length)"
# (into a file: grep -q would leave bsnap writing into a closed pipe)
bsnap list >"$tmp/list.txt"
grep -q "^ \{196\}clone49 " "$tmp/list.txt" || fail "list tree: clone49 not at depth 98"
bsnap check >/dev/null || fail "check"
exit 0
