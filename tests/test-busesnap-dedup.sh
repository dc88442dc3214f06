#!/bin/bash
# Dedup through the server: 32 MiB of random data written once, then the
# same data written at 7 other offsets and into 4 clones (352 MiB of
# duplicate writes): the chunk count does not move, the chunk file grows
# by less than 1% of the duplicate bytes (no chunk data is stored again),
# and so does the whole image but for the log's segments, a bounded work
# area inside the chunk file, and 1 MiB: the index holds one map entry per
# written 4 KiB block, 24 bytes of leaf page (0.59% of the bytes), and
# LMDB's copy-on-write keeps the old pages of the last group commit until
# the next one (a constant, which with commits at every flush measured
# 0.92-0.94% in all, with the journal's larger commits 1.12%).
. "$(dirname "$0")/functions.sh"
requires nbdcopy jq
bsnap() { "$top/bsnap" "$@"; }
info() { bsnap info --json | jq -r ".$1"; }

start_busesnap 256M
head -c 32M /dev/urandom >"$tmp/data"
nbdcopy "$tmp/data" "$uri" --flush || fail "first write"
bsnap gc >/dev/null
alloc() { echo $(($(stat -c '%b * %B' "$1"))); }
chunks0=$(info chunks); phys0=$(($(info physical_bytes) - $(info journal_bytes))); cf0=$(($(alloc "$image-chunks") - $(info journal_bytes)))
[ "$chunks0" -ge 8192 ] || fail "only $chunks0 chunks after 32 MiB of random data"
# Same data at other offsets: nbdsh with pwrite.
nbdsh -u "$uri" -c "
data = open('$tmp/data', 'rb').read()
for off in range(32, 256, 32):
    for i in range(0, len(data), 4 << 20):
        h.pwrite(data[i:i + (4 << 20)], off * 1024 * 1024 + i)
h.flush()
" || fail "duplicate writes"
dup=$((224 * 1024 * 1024))
bsnap create s >/dev/null
for c in 1 2 3 4; do
    bsnap clone s c$c >/dev/null
    nbdsh -u "$(uri_of c$c)" -c "
data = open('$tmp/data', 'rb').read()
for i in range(0, len(data), 4 << 20):
    h.pwrite(data[i:i + (4 << 20)], ($c * 16 << 20) + i)
h.flush()
" || fail "writes into clone c$c"
    dup=$((dup + 32 * 1024 * 1024))
done
bsnap gc >/dev/null
chunks1=$(info chunks); phys1=$(($(info physical_bytes) - $(info journal_bytes))); cf1=$(($(alloc "$image-chunks") - $(info journal_bytes)))
assert_eq "chunk count after duplicate writes" "$chunks0" "$chunks1"
growth=$((phys1 - phys0)) cfgrowth=$((cf1 - cf0))
echo "image: $phys0 -> $phys1 (+$growth bytes), chunk file +$cfgrowth bytes, for $dup duplicate bytes; dedup ratio $(info dedup_ratio)"
[ $((cfgrowth * 100)) -lt "$dup" ] || fail "chunk file grew by $cfgrowth bytes for $dup duplicate bytes (>= 1%)"
[ $(((growth - 1048576) * 100)) -lt "$dup" ] ||
    fail "image grew by $growth bytes for $dup duplicate bytes (>= 1% + 1 MiB)"
bsnap check >/dev/null || fail "check"
exit 0
