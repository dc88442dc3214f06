#!/bin/bash
# Clone-then-write-both-sides isolation: a volume, its snapshot and two
# clones are written in different places; each reads exactly what was
# written to it (sha256 of the whole export against a locally built
# expectation), and the snapshot stays the original.
. "$(dirname "$0")/functions.sh"
requires nbdcopy qemu-io
bsnap() { "$top/bsnap" "$@"; }
sum() { nbdcopy "$(uri_of "$1")" - | sha256sum | cut -d' ' -f1; }
# patch FILE OFFSET_MIB BYTE: expected content after qemu-io write -P BYTE OFF 1M
patch() { head -c 1M /dev/zero | tr '\0' "\\$(printf %03o "$3")" | dd of="$1" bs=1M seek="$2" conv=notrunc status=none; }

start_busesnap 32M
head -c 32M /dev/urandom >"$tmp/base"
nbdcopy "$tmp/base" "$uri" --flush || fail "import"
bsnap create base >/dev/null
bsnap clone base c1 >/dev/null
bsnap clone base c2 >/dev/null
qemu-io -f raw "$uri" -c "write -P 0x11 0 1M" >/dev/null
qemu-io -f raw "$(uri_of c1)" -c "write -P 0x22 4M 1M" >/dev/null
qemu-io -f raw "$(uri_of c2)" -c "write -P 0x33 8M 1M" -c "write -P 0x34 31M 1M" >/dev/null
bsnap create c1snap --volume c1 >/dev/null
qemu-io -f raw "$(uri_of c1)" -c "write -P 0x23 5M 1M" >/dev/null

cp "$tmp/base" "$tmp/vol"; patch "$tmp/vol" 0 17
cp "$tmp/base" "$tmp/c1snap"; patch "$tmp/c1snap" 4 34
cp "$tmp/c1snap" "$tmp/c1"; patch "$tmp/c1" 5 35
cp "$tmp/base" "$tmp/c2"; patch "$tmp/c2" 8 51; patch "$tmp/c2" 31 52
for o in base vol c1 c1snap c2; do
    e=$o; [ $o = vol ] && e=""
    assert_eq "checksum of $o" "$(sha256sum <"$tmp/$o" | cut -d' ' -f1)" "$(sum "$e")"
done
"$top/bsnap" check >/dev/null || fail "check"
exit 0
