#!/bin/bash
# Dedup while the hash index grows a lot in one session: 768 MiB of random
# data (196,608 chunks) grows the Bloom filter over the hash index past its
# first layer (a layer takes a key per 10 bits; the first, 128 KiB, is full
# at 104,857 keys; keys reach the filter when staged hashes are merged,
# once 65,536 are staged at a commit, so two merges, at most 163,840
# chunks, are needed), then the same data written into a clone must find every
# chunk again (a lookup asks every layer; a filter that forgot the keys of
# an older layer would store them twice), and the filter is back to one
# layer after a restart.
. "$(dirname "$0")/functions.sh"
requires nbdcopy jq
info() { "$top/bsnap" info --json | jq -r ".$1"; }

start_busesnap 1G
head -c 768M /dev/urandom >"$tmp/data"
nbdcopy "$tmp/data" "$uri" --flush || fail "first write"
"$top/bsnap" gc >/dev/null || fail "gc"
layers=$(info filter_layers); chunks=$(info chunks)
[ "$layers" -ge 2 ] || fail "the filter did not grow a layer: $layers layer(s), $(info filter_bytes) bytes, $chunks chunks"
[ "$chunks" -ge 196608 ] || fail "only $chunks chunks after 768 MiB of random data"
echo "after the first write: $chunks chunks, filter $layers layers, $(info filter_bytes) bytes"
"$top/bsnap" create s >/dev/null || fail "create s"
"$top/bsnap" clone s c >/dev/null || fail "clone s c"
# the same blocks one block further on, so that every map entry is new
nbdsh -u "$(uri_of c)" -c "
data = open('$tmp/data', 'rb').read()
for i in range(0, len(data), 4 << 20):
    h.pwrite(data[i:i + (4 << 20)], 4096 + i)
h.flush()
" || fail "duplicate writes into the clone"
after=$(info chunks)
[ "$after" = "$chunks" ] ||
    fail "$((after - chunks)) chunks stored again of 196,608 duplicates (filter $(info filter_layers) layers)"
stop_server TERM || fail "clean stop"
start_busesnap
[ "$(info filter_layers)" = 1 ] || fail "after a restart the filter has $(info filter_layers) layers, not one"
[ "$(info chunks)" = "$after" ] || fail "chunk count moved across the restart"
exit 0
