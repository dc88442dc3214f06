#!/bin/bash
# test-control-refused: a refused control command changes nothing, on every
# --force path (delete, rollback, default, access): each request below is
# refused, and a client connected to the object concerned stays connected
# and keeps reading its data; the objects, the default and the access stay
# as they were.  (Before, `bsnap delete default --force` on the only
# volume was refused only after it had disconnected the volume's clients.)
# Malformed arguments sent raw (wrong JSON types) are refused the same way.
. "$(dirname "$0")/functions.sh"
requires nbdsh qemu-io jq socat
bsnap() { "$top/bsnap" "$@"; }

start_busesnap 16M
qemu-io -f raw -c "write -P 0x5c 0 64k" "$uri" >/dev/null
bsnap create snap >/dev/null

# A client of export "" (the default volume, the only one) that reads all
# along and exits at once if its connection breaks.
rm -f "$tmp/release"
nbdsh -u "$uri" -c "
import os, time
while not os.path.exists('$tmp/release'):
    assert h.pread(4096, 0) == b'\x5c' * 4096
    time.sleep(0.01)
" >"$tmp/held.log" 2>&1 &
held=$!
on_exit "kill $held"
state() { bsnap list --json | jq -c 'map({name, kind, default, clients, read_only, allow})'; }
for ((i = 0; i < 500; i++)); do
    [ "$(bsnap list --json | jq '.[] | select(.name=="default") | .clients')" = 1 ] && break
    sleep 0.02
done
before=$(state)
[[ $before == *'"name":"default","kind":"volume","default":true,"clients":1'* ]] || fail "setup: $before"

# refused MSG CMD...: exit 1 with MSG, the client still there, nothing changed.
n=0
refused() {
    local msg=$1 rc=0; shift
    "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    [ $rc = 1 ] || fail "$*: exit $rc, expected a refusal ($(cat "$tmp/err"))"
    grep -q -- "$msg" "$tmp/err" || fail "$*: stderr lacks '$msg': $(cat "$tmp/err")"
    sleep 0.05 # a disconnection would show by now in the client's reads
    kill -0 $held 2>/dev/null || fail "$*: refused, but the client was disconnected: $(cat "$tmp/held.log")"
    assert_eq "state after '$*'" "$before" "$(state)"
    n=$((n + 1))
}
raw() { # raw JSON request: the answer's error name
    printf '%s\n' '{"op":"hello","version":1}' "$1" | socat -t5 - "UNIX-CONNECT:$ctl" | tail -1 | jq -r .error
}
rawrefused() {
    assert_eq "raw $1" "$2" "$(raw "$1")"
    kill -0 $held 2>/dev/null || fail "raw $1: the client was disconnected"
    assert_eq "state after raw $1" "$before" "$(state)"
    n=$((n + 1))
}

# delete --force
refused "is the only volume and cannot be deleted" bsnap delete default --force
rawrefused '{"op":"delete","name":"","force":true}' EBUSY
refused "is a snapshot: the default must be a volume" bsnap delete default --force --default snap
refused 'no such volume or snapshot "nope"' bsnap delete default --force --default nope
refused "no such volume or snapshot" bsnap delete nope --force
rawrefused '{"op":"delete","name":"default","force":true,"default":"default"}' EBUSY
# rollback --force
refused "is a volume, not a snapshot" bsnap rollback default --force
refused "is a snapshot, not a volume" bsnap rollback snap --volume snap --force
refused 'no such volume or snapshot "nope"' bsnap rollback nope --force
rawrefused '{"op":"rollback","snapshot":"snap","volume":"nope","force":true}' ENOENT
# default --force
refused "is a snapshot: the default must be a volume" bsnap default snap --force
refused 'no such volume or snapshot "nope"' bsnap default nope --force
rawrefused '{"op":"default","name":"default","none":true,"force":true}' EINVAL
# access --force
rawrefused '{"op":"access","name":"default","allow":["bad\u0001id"],"force":true}' EINVAL
rawrefused '{"op":"access","name":"default","allow":[],"force":true}' EINVAL
rawrefused '{"op":"access","name":"default","allow":[7],"force":true}' EINVAL
rawrefused '{"op":"access","name":"default","read_only":"yes","force":true}' EINVAL
rawrefused '{"op":"access","name":"nope","read_only":true,"force":true}' ENOENT
refused 'no such volume or snapshot "nope"' bsnap access nope --read-only --force
echo "$n refused requests, the client connected throughout"

# The same requests done right do act (so the refusals above were not
# vacuous): a second volume lets the first go.
touch "$tmp/release"
wait $held || fail "the client failed: $(cat "$tmp/held.log")"
bsnap clone snap vm2 >/dev/null
bsnap delete default --default vm2 | grep -q "deleted volume default" || fail "delete --default"
bsnap default | grep -q "^vm2 " || fail "vm2 is not the default"
exit 0
