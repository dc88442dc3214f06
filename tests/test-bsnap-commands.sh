#!/bin/bash
# Every bsnap command and each refusal, against a served image with real
# NBD clients: create, list (tree and --json), clone, rename, rollback
# (refused with a client, --force), delete (refused when served, --force,
# a snapshot with clones), info, check, diff, gc; UUIDs wherever names go;
# exit codes 0 / 1 (one line on stderr) / 2.
. "$(dirname "$0")/functions.sh"
requires qemu-io nbdsh nbdinfo jq
bsnap() { "$top/bsnap" "$@"; }

# expect_fail RC MSG CMD...: want exit RC with one stderr line holding MSG.
expect_fail() {
    local want=$1 msg=$2 rc=0; shift 2
    "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    [ "$rc" = "$want" ] || fail "$*: exit $rc, expected $want ($(head -c 300 "$tmp/err"))"
    [ "$(wc -l <"$tmp/err")" = 1 ] || fail "$*: expected one stderr line, got: $(cat "$tmp/err")"
    grep -q -- "$msg" "$tmp/err" || fail "$*: stderr lacks '$msg': $(cat "$tmp/err")"
}
qio() { qemu-io -f raw "$@" >"$tmp/qio" 2>&1 || fail "qemu-io $*: $(tail -2 "$tmp/qio")"; }
# pattern EXPORT BYTE: the first MiB of EXPORT reads as BYTE.
pattern() { qio -r "$(uri_of "$1")" -c "read -P $2 0 1M"; }
clients_of() { bsnap list --json | jq -r ".[] | select(.name==\"$1\") | .clients"; }
# wait_clients NAME N: until object NAME has N clients (a client that
# just disconnected is counted until the server has closed it).
wait_clients() {
    local i
    for ((i = 0; i < 500; i++)); do
        [ "$(clients_of "$1")" = "$2" ] && return 0
        sleep 0.02
    done
    fail "object '$1' never got to $2 clients (has $(clients_of "$1"))"
}
# hold EXPORT NAME: keep one NBD connection to EXPORT (object NAME) open
# until $tmp/release-EXPORT exists; wait until bsnap list counts it.
hold() {
    rm -f "$tmp/release-$1"
    nbdsh -u "$(uri_of "$1")" -c "
import os, time
while not os.path.exists('$tmp/release-$1'):
    time.sleep(0.02)
" >/dev/null 2>&1 &
    # at exit: stop it (a release file may come too late: $tmp goes away)
    on_exit "kill $!"
    local i
    for ((i = 0; i < 500; i++)); do
        [ "$(clients_of "$2")" = 1 ] && return 0
        sleep 0.02
    done
    fail "the held connection to '$1' never showed up in bsnap list"
}

start_busesnap 64M
expect_fail 2 "missing COMMAND" bsnap
expect_fail 2 "unknown command" bsnap frob
expect_fail 2 "missing argument" bsnap create
expect_fail 2 "invalid snapshot name" bsnap create "bad name"
expect_fail 2 "invalid snapshot name" bsnap create -- -dash
expect_fail 2 "bad option" bsnap list --bogus
expect_fail 2 "unexpected argument" bsnap info extra
bsnap --help | grep -q rollback || fail "bsnap --help lacks rollback"
for c in snapshot create list rollback clone delete rename info check diff gc; do
    bsnap $c --help | grep -q "^Usage: bsnap .* $c" || fail "bsnap $c --help lacks its usage line"
done

# create: prints name and UUID; the snapshot is frozen and read-only.
qio "$uri" -c "write -P 0xa1 0 1M"
out=$(bsnap create s1) || fail "bsnap create s1 failed"
[[ $out =~ ^s1\ [0-9a-f-]{36}$ ]] || fail "bsnap create printed '$out'"
s1_uuid=${out#s1 }
expect_fail 1 "s1" bsnap create s1
expect_fail 1 "no such volume or snapshot \"nope\"" bsnap create s9 --volume nope
expect_fail 1 "is a snapshot" bsnap create s9 --volume s1
qio "$uri" -c "write -P 0xb2 0 1M"
pattern s1 0xa1
pattern "$s1_uuid" 0xa1
pattern "" 0xb2
nbdsh -u "$(uri_of s1)" -c 'assert h.is_read_only()' || fail "snapshot export s1 is writable"
bsnap create s2 >/dev/null

# clone (by UUID too), served at once and writable.
bsnap clone s1 vm1 | grep -q '^vm1 ' || fail "bsnap clone printed no name"
bsnap clone "$s1_uuid" vm2 >/dev/null || fail "clone by UUID failed"
expect_fail 1 "is a volume, not a snapshot" bsnap clone vm1 vm3
expect_fail 1 "vm1" bsnap clone s1 vm1
pattern vm1 0xa1
qio "$(uri_of vm1)" -c "write -P 0xc3 0 1M"
pattern vm1 0xc3
pattern vm2 0xa1
pattern s1 0xa1
nbdinfo --list --json "$uri" >"$tmp/exports.json"
assert_eq "export descriptions" "default volume|volume|snapshot of default|volume (from s1)" \
    "$(jq -r '[.exports[] | select(."export-name" | IN("", "default", "s1", "vm1")) | .description] | join("|")' "$tmp/exports.json")"

# list --json: objects, kinds, parents, and the human tree.
bsnap list --json >"$tmp/list.json"
assert_eq "object count" 5 "$(jq length "$tmp/list.json")"
assert_eq "default volume" default "$(jq -r '.[] | select(.default) | .name' "$tmp/list.json")"
assert_eq "s1 kind/parent" "snapshot default" "$(jq -r '.[] | select(.name=="s1") | "\(.kind) \(.parent)"' "$tmp/list.json")"
assert_eq "vm1 kind/parent" "volume s1 $s1_uuid" "$(jq -r '.[] | select(.name=="vm1") | "\(.kind) \(.parent) \(.parent_uuid)"' "$tmp/list.json")"
assert_eq "vm1 written" 1048576 "$(jq -r '.[] | select(.name=="vm1") | .written' "$tmp/list.json")"
bsnap list >"$tmp/list.txt"
grep -q '^NAME ' "$tmp/list.txt" || fail "list has no header"
grep -q '^default\* ' "$tmp/list.txt" || fail "list: default volume not a marked root: $(cat "$tmp/list.txt")"
grep -q '^  s1 ' "$tmp/list.txt" || fail "list: s1 not below its volume"
grep -q '^    vm1 ' "$tmp/list.txt" || fail "list: clone vm1 not below s1"

# rename keeps the UUID; the old name is gone.
vm2_uuid=$(jq -r '.[] | select(.name=="vm2") | .uuid' "$tmp/list.json")
bsnap rename vm2 vm2b | grep -q "renamed vm2 to vm2b" || fail "rename output"
assert_eq "renamed uuid" "$vm2_uuid" "$(bsnap list --json | jq -r '.[] | select(.name=="vm2b") | .uuid')"
expect_fail 1 "no such volume or snapshot \"vm2\"" bsnap rename vm2 x
expect_fail 1 "" bsnap rename vm2b s1
pattern vm2b 0xa1

# rollback: refused while a client is connected, naming it; --force works.
hold "" default
expect_fail 1 'served to 1 NBD client (export "")' bsnap rollback s1
pattern "" 0xb2
wait_clients default 1 # the hold only
bsnap rollback s1 --force >"$tmp/out" || fail "rollback --force failed"
grep -q "disconnected 1 client" "$tmp/out" || fail "rollback --force output: $(cat "$tmp/out")"
assert_eq "clients after force" 0 "$(clients_of default)"
pattern "" 0xa1
bsnap rollback s2 --volume default | grep -q "rolled back default to s2" || fail "rollback s2"
pattern "" 0xb2
expect_fail 1 "is a volume, not a snapshot" bsnap rollback vm1
expect_fail 1 "no such" bsnap rollback s1 --volume nope

# delete: a served volume is refused unless --force.
hold vm1 vm1
wait_clients vm1 1 # the hold only
expect_fail 1 'volume "vm1" is served to 1 NBD client (export "vm1")' bsnap delete vm1
bsnap delete vm1 --force | grep -q "deleted volume vm1 (disconnected 1 client)" || fail "delete --force"
nbdinfo --list --json "$uri" | jq -e '[.exports[]."export-name"] | index("vm1") == null' >/dev/null || fail "vm1 still exported"
# A snapshot with a clone may be deleted; the clone keeps its content.
bsnap delete s1 | grep -q "deleted snapshot s1" || fail "delete s1"
pattern vm2b 0xa1
expect_fail 1 "no such volume or snapshot \"s1\"" bsnap delete s1

# info, check, diff, gc.
bsnap info --json >"$tmp/info.json"
for k in image uuid format_version size chunks physical_bytes dedup_ratio free_bytes reclaimable_bytes; do
    jq -e "has(\"$k\")" "$tmp/info.json" >/dev/null || fail "info --json lacks $k"
done
assert_eq "info size" 67108864 "$(jq -r .size "$tmp/info.json")"
bsnap info | grep -q "^dedup ratio:" || fail "human info lacks the dedup ratio"
bsnap check | grep -q "no problems found" || fail "bsnap check"
bsnap check --json | jq -e '.problems == 0' >/dev/null || fail "check --json"
bsnap check --progress 2>"$tmp/progress" >/dev/null || fail "check --progress"
grep -q "checking:" "$tmp/progress" || fail "check --progress printed no progress"
bsnap create s3 >/dev/null
qio "$uri" -c "write -P 0x11 8M 64k" -c "write -P 0x12 20M 4k"
bsnap diff s3 default --json >"$tmp/diff.json"
assert_eq "diff extents" "8388608+65536 20971520+4096" "$(jq -r '[.extents[] | "\(.offset)+\(.length)"] | join(" ")' "$tmp/diff.json")"
assert_eq "diff bytes" 69632 "$(jq -r .changed_bytes "$tmp/diff.json")"
bsnap diff s3 default 2>/dev/null | head -1 | grep -q "^8388608 65536$" || fail "human diff"
assert_eq "empty diff" 0 "$(bsnap diff s3 s3 --json | jq '.extents | length')"
bsnap gc >/dev/null || fail "bsnap gc"

# No server: exit 1 with one line.
expect_fail 1 "cannot reach busesnap" bsnap --control "$tmp/none" list
exit 0
