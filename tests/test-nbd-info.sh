#!/bin/bash
# test-nbd-info: what nbdinfo sees: size, block sizes and every advertised
# transmission flag (--json), the export list with descriptions (--list,
# several exports by name), holes and data (--map), and an unknown export
# refused with the handshake's error rather than a dropped connection.
. "$(dirname "$0")/functions.sh"
requires nbdinfo jq qemu-io
start_busexmp 64M --exports one,two

json=$(nbdinfo --json "nbd+unix:///one?socket=$sock")
j() { jq -r ".exports[0].$1" <<<"$json"; }
assert_eq size 67108864 "$(j '"export-size"')"
assert_eq block_size_minimum 1 "$(j block_size_minimum)"
assert_eq block_size_preferred 4096 "$(j block_size_preferred)"
assert_eq block_size_maximum 33554432 "$(j block_size_maximum)"
assert_eq description "busexmp memory disk one" "$(j description)"
for f in can_cache can_df can_fast_zero can_flush can_fua can_multi_conn can_trim can_zero; do
    assert_eq "$f" true "$(j $f)"
done
for f in is_read_only is_rotational; do
    assert_eq "$f" false "$(j $f)"
done
assert_eq contexts base:allocation "$(j 'contexts[0]')"
assert_eq structured true "$(jq -r .structured <<<"$json")"

list=$(nbdinfo --list --json "nbd+unix:///?socket=$sock" | jq -r '.exports[] | ."export-name" + "=" + .description' | sort | tr '\n' ' ')
assert_eq "export list" "one=busexmp memory disk one two=busexmp memory disk two " "$list"

if nbdinfo "nbd+unix:///three?socket=$sock" >"$tmp/err" 2>&1; then
    fail "unknown export 'three' was accepted"
fi
grep -q "No such file or directory" "$tmp/err" || fail "unknown export: expected NBD_REP_ERR_UNKNOWN, got: $(cat "$tmp/err")"

# Holes: an untouched disk is one hole; written ranges become data, and
# the two exports are separate disks.
assert_eq "map of a new disk" "0 67108864 3" "$(nbdinfo --map "nbd+unix:///one?socket=$sock" | awk '{print $1, $2, $3}')"
qemu-io -f raw -c 'write -P 1 1M 64k' -c 'write -P 2 10M 4k' "nbd+unix:///one?socket=$sock" >/dev/null
map=$(nbdinfo --map "nbd+unix:///one?socket=$sock" | awk '{print $1, $2, $3}' | tr '\n' ',')
assert_eq "map after writes" "0 1048576 3,1048576 65536 0,1114112 9371648 3,10485760 4096 0,10489856 56619008 3," "$map"
assert_eq "map of the other export" "0 67108864 3" "$(nbdinfo --map "nbd+unix:///two?socket=$sock" | awk '{print $1, $2, $3}')"
# Zeroing a written range punches the hole back.
qemu-io -f raw -c 'write -z 1M 64k' "nbd+unix:///one?socket=$sock" >/dev/null
map=$(nbdinfo --map "nbd+unix:///one?socket=$sock" | awk '{print $1, $2, $3}' | tr '\n' ',')
assert_eq "map after write -z" "0 10485760 3,10485760 4096 0,10489856 56619008 3," "$map"
