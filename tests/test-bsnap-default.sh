#!/bin/bash
# test-bsnap-default: the default export "" never changes behind a client's
# back.  Deleting the default volume is refused unless the next default is
# named (--default) or --force, after which export "" does not exist: it
# never serves another volume (before, the oldest other volume, another
# VM's disk, took its place).  bsnap default shows and moves it, refused
# while export "" has clients unless --force; bsnap list marks it, or says
# there is none; it survives a restart (IMAGE-exports.json); an image
# without that file starts with the store's default.
. "$(dirname "$0")/functions.sh"
requires qemu-io nbdinfo nbdsh jq
bsnap() { "$top/bsnap" "$@"; }
expect_fail() {
    local want=$1 msg=$2 rc=0; shift 2
    "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    [ "$rc" = "$want" ] || fail "$*: exit $rc, expected $want ($(cat "$tmp/err"))"
    grep -q -- "$msg" "$tmp/err" || fail "$*: stderr lacks '$msg': $(cat "$tmp/err")"
}
# reads EXPORT BYTE: the first 64 KiB of EXPORT are BYTE.
reads() { qemu-io -f raw -r -c "read -P $2 0 64k" "$(uri_of "$1")" >"$tmp/qio" 2>&1 && ! grep -q "fail" "$tmp/qio"; }
no_default_export() {
    if nbdinfo --size "$uri" >"$tmp/out" 2>&1; then fail "$1: export \"\" exists: $(cat "$tmp/out")"; fi
    nbdinfo --list --json "$uri" | jq -e '[.exports[]."export-name"] | index("") == null' >/dev/null ||
        fail "$1: export \"\" is listed"
    bsnap list | grep -q '^(no default volume: export "" does not exist' || fail "$1: list does not say there is no default"
    bsnap list --json | jq -e 'map(select(.default)) | length == 0' >/dev/null || fail "$1: an object is marked default"
}

start_busesnap 16M
[ ! -e "$image-exports.json" ] || fail "a fresh image has an exports file"
qemu-io -f raw -c "write -P 0xaa 0 64k" "$uri" >/dev/null
bsnap create s1 >/dev/null
bsnap clone s1 vm-other >/dev/null
qemu-io -f raw -c "write -P 0xbb 0 64k" "$(uri_of vm-other)" >/dev/null
bsnap default | grep -q "^default " || fail "bsnap default does not show the store's default"

# Refused: the default volume without a successor or --force.
expect_fail 1 'volume "default" is the default (export ""): name the next default' bsnap delete default
reads "" 0xaa || fail "the refused delete changed export \"\""

# --force: export "" stops existing; it does not become vm-other.
bsnap delete default --force >"$tmp/out" || fail "delete default --force: $(cat "$tmp/err")"
grep -q 'there is no default volume now' "$tmp/out" || fail "delete --force output: $(cat "$tmp/out")"
no_default_export "after delete --force"
reads vm-other 0xbb || fail "vm-other changed"
jq -e '.default == null' "$image-exports.json" >/dev/null || fail "exports file: $(cat "$image-exports.json")"
stop_server TERM
start_busesnap
no_default_export "after a restart"
expect_fail 1 'there is no default volume' bsnap create s2

# bsnap default moves it; it survives a restart.
bsnap default vm-other | grep -q "^vm-other " || fail "bsnap default vm-other"
reads "" 0xbb || fail "export \"\" is not vm-other"
bsnap list | grep -q '^ *vm-other\* ' || fail "list does not mark vm-other: $(bsnap list)"
stop_server TERM
start_busesnap
reads "" 0xbb || fail "the default did not survive a restart"
expect_fail 1 "is a snapshot: the default must be a volume" bsnap default s1
expect_fail 1 'no such volume or snapshot "nope"' bsnap default nope

# Moving it under a client of export "": refused, then --force.
bsnap clone s1 vm2 >/dev/null
rm -f "$tmp/release"
nbdsh -u "$uri" -c "
import os, time
while not os.path.exists('$tmp/release'):
    h.pread(512, 0)  # fails once the server disconnects us
    time.sleep(0.02)
" >/dev/null 2>&1 &
held=$!
on_exit "kill $held"
for ((i = 0; i < 500; i++)); do
    [ "$(bsnap list --json | jq '.[] | select(.name=="vm-other") | .clients')" = 1 ] && break
    sleep 0.02
done
expect_fail 1 'export "" is served to 1 NBD client (of volume "vm-other"); on reconnecting it would get volume "vm2"' bsnap default vm2
kill -0 $held || fail "the refused move disconnected the client"
reads "" 0xbb || fail "the refused move changed export \"\""
bsnap default vm2 --force | grep -q "^vm2 .*(disconnected 1 client)" || fail "default --force"
rc=0; wait $held || rc=$?
reads "" 0xaa || fail "export \"\" is not vm2 (a clone of s1)"

# delete with --default names the next default in the same request.
bsnap delete vm2 --default vm-other >"$tmp/out" || fail "delete vm2 --default vm-other: $(cat "$tmp/err")"
grep -q 'the default volume (export "") is now vm-other' "$tmp/out" || fail "$(cat "$tmp/out")"
reads "" 0xbb || fail "export \"\" is not vm-other after delete --default"
bsnap default --none | grep -q "^none" || fail "default --none"
no_default_export "after default --none"
stop_server TERM

# An image from before the exports file: the store's default is taken.
rm -f "$tmp/image.db"* && image=$tmp/old.db
start_busesnap 16M
rm -f "$image-exports.json"
bsnap default | grep -q "^default " || fail "no exports file: the store's default is not used"
exit 0
