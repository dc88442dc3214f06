#!/bin/bash
# Ephemeral clones on connect (doc/throwaway-disks.md): opening export
# SNAP@ephemeral gives the connection a writable clone of SNAP of its own,
# SNAP@ephemeral:ID one clone shared by every connection naming that ID,
# and the clone goes when its last connection closes, when the client is
# killed, and (at the next start) when the server was killed.  Real
# clients: qemu-io, qemu-img, nbdcopy -C 4, fio's nbd engine, nbdsh.  Also
# bsnap keep, and names with '@' refused for volumes and snapshots.
. "$(dirname "$0")/functions.sh"
requires qemu-io qemu-img nbdcopy nbdsh fio jq socat
bsnap() { "$top/bsnap" "$@"; }
sum() { nbdcopy "$(uri_of "$1")" - | sha256sum | cut -d' ' -f1; }
# ephemerals: "NAME CLIENTS" of each live ephemeral clone, sorted.
ephemerals() { bsnap list --json | jq -r '.[] | select(.ephemeral) | "\(.name) \(.clients)"' | sort; }
# names_with_at: every object whose name holds '@' (what a restart sweeps).
names_with_at() { bsnap list --json | jq -r '.[] | select(.name | contains("@")) | .name'; }
# wait_for WHAT CMD...: until CMD succeeds (a client's close is seen by the
# server a little after the client exits).  60 s is a hang, not slowness.
wait_for() {
    local what=$1 end=$((SECONDS + 60)); shift
    until "$@"; do
        [ $SECONDS -lt $end ] || fail "timed out waiting for $what; '@' names: $(names_with_at | tr '\n' ' ')"
        sleep 0.05
    done
}
no_ephemerals() { [ -z "$(names_with_at)" ]; }
ephemerals_are() { [ "$(ephemerals | tr '\n' ';')" = "$1" ]; }
# hold EXPORT: keep one NBD connection to EXPORT open (an nbdsh waiting on a
# pipe) until release; sets holder (its pid) and holder_fd.
hold() {
    local fifo
    fifo=$tmp/fifo.$RANDOM
    mkfifo "$fifo"
    nbdsh -u "$(uri_of "$1")" -c 'import sys; sys.stdin.read()' <"$fifo" \
        >>"$tmp/holder.log" 2>&1 &
    holder=$!
    on_exit "kill $holder"
    exec {holder_fd}>"$fifo"
}
release() { exec {holder_fd}>&-; wait "$holder" || fail "holder of $1 failed: $(tail -2 "$tmp/holder.log")"; }

start_busesnap 32M
head -c 32M /dev/urandom >"$tmp/base"
nbdcopy "$tmp/base" "$uri" --flush || fail "import"
bsnap create golden >/dev/null
golden=$(sha256sum <"$tmp/base" | cut -d' ' -f1)

# qemu-io writes to its own clone, which reads as golden elsewhere; the
# clone is gone once qemu-io has disconnected, golden unchanged.
qemu-io -f raw "$(uri_of golden@ephemeral)" -c "write -P 0xab 0 1M" \
    -c "read -P 0xab 0 1M" >"$tmp/qio" || fail "qemu-io on golden@ephemeral: $(tail -2 "$tmp/qio")"
wait_for "the qemu-io clone to go" no_ephemerals
assert_eq "golden after a write to its ephemeral clone" "$golden" "$(sum golden)"
# A fresh connection gets a fresh clone: the snapshot's content.
qemu-img compare -f raw -F raw "$tmp/base" "$(uri_of golden@ephemeral)" >"$tmp/cmp" ||
    fail "a new ephemeral clone is not golden: $(cat "$tmp/cmp")"
qemu-img info -f raw "$(uri_of golden@ephemeral)" | grep -q 'virtual size: 32 MiB' ||
    fail "qemu-img info on golden@ephemeral"
wait_for "qemu-img's clones to go" no_ephemerals
# A private clone is one connection's: multi-conn is not advertised.
assert_eq "multi-conn of a private clone" False \
    "$(nbdsh -u "$(uri_of golden@ephemeral)" -c 'print(h.can_multi_conn())')"
assert_eq "multi-conn of a shared clone" True \
    "$(nbdsh -u "$(uri_of golden@ephemeral:mc)" -c 'print(h.can_multi_conn())')"
# Not listed to NBD clients: they belong to their connections.
hold golden@ephemeral:hidden
wait_for "the holder's clone" ephemerals_are "golden@ephemeral:hidden 1;"
nbdinfo --list "$uri" | grep -q '@' && fail "an ephemeral clone is listed over NBD"
release hidden
wait_for "the hidden clone to go" no_ephemerals

# nbdcopy -C 4 with one ID: its four connections write one clone.  A holder
# keeps it alive to read it back whole afterwards.
head -c 32M /dev/urandom >"$tmp/new"
hold golden@ephemeral:job1
wait_for "job1's clone" ephemerals_are "golden@ephemeral:job1 1;"
nbdcopy -C 4 "$tmp/new" "$(uri_of golden@ephemeral:job1)" --flush || fail "nbdcopy -C 4"
assert_eq "nbdcopy -C 4 into one ID: ephemeral clones" "golden@ephemeral:job1 1;" "$(ephemerals | tr '\n' ';')"
assert_eq "what nbdcopy's 4 connections wrote, read back" \
    "$(sha256sum <"$tmp/new" | cut -d' ' -f1)" "$(sum golden@ephemeral:job1)"
release job1
wait_for "job1's clone to go" no_ephemerals
assert_eq "golden after nbdcopy" "$golden" "$(sum golden)"

# Two IDs: two clones, isolated from each other.
hold golden@ephemeral:a
hold_a=$holder fd_a=$holder_fd
hold golden@ephemeral:b
wait_for "two clones" ephemerals_are "golden@ephemeral:a 1;golden@ephemeral:b 1;"
qemu-io -f raw "$(uri_of golden@ephemeral:a)" -c "write -P 0x11 0 1M" >/dev/null || fail "write a"
qemu-io -f raw "$(uri_of golden@ephemeral:b)" -c "write -P 0x22 0 1M" >/dev/null || fail "write b"
qemu-io -f raw "$(uri_of golden@ephemeral:a)" -c "read -P 0x11 0 1M" >"$tmp/qio" ||
    fail "clone a does not read what a wrote: $(grep -i pattern "$tmp/qio" | head -1)"
qemu-io -f raw "$(uri_of golden@ephemeral:b)" -c "read -P 0x22 0 1M" >"$tmp/qio" ||
    fail "clone b does not read what b wrote: $(grep -i pattern "$tmp/qio" | head -1)"
release b
holder=$hold_a holder_fd=$fd_a release a
wait_for "clones a and b to go" no_ephemerals

# fio's nbd engine: random writes verified, on a shared clone.
fio --name=eph --ioengine=nbd --uri="$(uri_of golden@ephemeral:fio)" \
    --rw=randwrite --bs=4k --size=8M --iodepth=8 --refill_buffers \
    --verify=crc32c --do_verify=1 --verify_state_save=0 --output="$tmp/fio.out" >/dev/null 2>&1 ||
    fail "fio on golden@ephemeral:fio: $(grep -iE 'err|verify' "$tmp/fio.out" | head -2)"
grep -q 'err= 0' "$tmp/fio.out" || fail "fio reported errors: $(grep err= "$tmp/fio.out")"
wait_for "fio's clone to go" no_ephemerals
assert_eq "golden after fio" "$golden" "$(sum golden)"

# kill -9 of a client: the server sees its socket close, the clone goes.
hold golden@ephemeral:killed
wait_for "the killed client's clone" ephemerals_are "golden@ephemeral:killed 1;"
kill -9 "$holder"
wait "$holder" 2>/dev/null || true
exec {holder_fd}>&-
wait_for "the killed client's clone to go" no_ephemerals

# bsnap keep: the clone of a failed job becomes a normal volume.
hold golden@ephemeral:dbg
wait_for "dbg's clone" ephemerals_are "golden@ephemeral:dbg 1;"
qemu-io -f raw "$(uri_of golden@ephemeral:dbg)" -c "write -P 0x77 1M 1M" >/dev/null || fail "write dbg"
bsnap keep golden@ephemeral:dbg debug1 >"$tmp/keep" || fail "bsnap keep"
assert_eq "keep says" "kept golden@ephemeral:dbg as volume debug1" "$(cat "$tmp/keep")"
assert_eq "after keep, ephemeral clones" "" "$(ephemerals)"
release dbg
# Its handle is unregistered and (were it still ephemeral) deleted under one
# lock: once it has no clients, a deletion would have happened.
wait_for "debug1's client to close" bash -c "[ \$('$top/bsnap' list --json | jq '[.[] | select(.name == \"debug1\" and .clients > 0)] | length') = 0 ]"
qemu-io -f raw "$(uri_of debug1)" -c "read -P 0x77 1M 1M" >/dev/null ||
    fail "the kept volume debug1 lost what its job wrote"
assert_eq "debug1" "volume golden 0" \
    "$(bsnap list --json | jq -r '.[] | select(.name == "debug1") | "\(.kind) \(.parent) \(.clients)"')"
if bsnap keep debug1 debug2 2>"$tmp/err"; then fail "keep of a normal volume accepted"; fi
grep -q 'not a live ephemeral clone' "$tmp/err" || fail "keep of a normal volume: $(cat "$tmp/err")"

# An ephemeral clone is renamed only by keep; delete --force takes it with
# its clients.
hold golden@ephemeral:del
wait_for "del's clone" ephemerals_are "golden@ephemeral:del 1;"
if bsnap rename golden@ephemeral:del foo 2>"$tmp/err"; then fail "rename of an ephemeral clone accepted"; fi
grep -q 'bsnap keep' "$tmp/err" || fail "rename of an ephemeral clone: $(cat "$tmp/err")"
bsnap delete golden@ephemeral:del --force >"$tmp/out" || fail "delete --force of an ephemeral clone"
assert_eq "delete --force says" "deleted volume golden@ephemeral:del (disconnected 1 client)" "$(cat "$tmp/out")"
assert_eq "after delete --force, '@' names" "" "$(names_with_at)"
exec {holder_fd}>&-
wait "$holder" 2>/dev/null || true

# Names with '@' are reserved: bsnap refuses them, and so does the server.
for c in "create a@b" "clone golden v@1" "rename debug1 d@2" "keep golden@ephemeral:x k@3"; do
    # shellcheck disable=SC2086
    if bsnap $c 2>"$tmp/err"; then fail "bsnap $c accepted"; fi
    grep -q "'@' is reserved" "$tmp/err" || fail "bsnap $c: $(cat "$tmp/err")"
done
hello='{"op":"hello","version":1}'
printf '%s\n' "$hello" '{"op":"create","name":"s@1"}' '{"op":"clone","snapshot":"golden","name":"v@1"}' \
    '{"op":"rename","name":"debug1","new_name":"d@1"}' | socat -t 5 - "UNIX-CONNECT:$ctl" >"$tmp/raw"
assert_eq "server refusals of '@' names" "EINVAL EINVAL EINVAL" \
    "$(sed -n 3,5p "$tmp/raw" | jq -r .error | tr '\n' ' ' | sed 's/ $//')"
sed -n 3,5p "$tmp/raw" | jq -r .message | grep -vq "'@' is reserved" &&
    fail "a server refusal does not say why: $(cat "$tmp/raw")"
names_with_at | grep -q . && fail "an '@' name was made: $(names_with_at)"
# Only SNAP@ephemeral[:ID] of a snapshot opens.
for bad in 'golden@other' 'default@ephemeral' 'nosuch@ephemeral' 'golden@ephemeral:a@b'; do
    if qemu-io -f raw "$(uri_of "$bad")" -c "read 0 4k" >/dev/null 2>&1; then
        fail "export $bad opened"
    fi
done
assert_eq "clones after refused opens" "" "$(names_with_at)"

# kill -9 of the server with a private and a shared clone alive: the next
# start deletes them, before anyone connects.
hold golden@ephemeral
hold_p=$holder fd_p=$holder_fd
hold golden@ephemeral:crash
wait_for "two clones before the crash" bash -c "[ \$('$top/bsnap' list --json | jq '[.[] | select(.ephemeral)] | length') = 2 ]"
stop_server KILL || true
exec {fd_p}>&- {holder_fd}>&-
wait "$hold_p" "$holder" 2>/dev/null || true
start_busesnap
assert_eq "'@' names after the restart" "" "$(names_with_at)"
grep -c 'deleted ephemeral clone' "$tmp/server.log" | grep -qx 2 ||
    fail "the restart did not report 2 swept clones: $(grep ephemeral "$tmp/server.log")"
assert_eq "golden after the crash" "$golden" "$(sum golden)"
bsnap check >/dev/null || fail "check after the sweep"
exit 0
