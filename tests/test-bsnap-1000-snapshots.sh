#!/bin/bash
# 1,000 snapshots of one volume through bsnap: every 100th snapshot follows
# a write of a new pattern to block 0, and each snapshot reads the pattern
# current when it was taken; list shows all of them; the check passes;
# deleting half of them keeps the others intact.
. "$(dirname "$0")/functions.sh"
requires qemu-io jq
bsnap() { "$top/bsnap" "$@"; }

start_busesnap 16M
start=$(date +%s%N)
for i in $(seq 1 1000); do
    if [ $((i % 100)) = 1 ]; then
        qemu-io -f raw "$uri" -c "write -P $((i / 100 + 1)) 0 4k" >/dev/null || fail "write before s$i"
    fi
    bsnap create "s$i" >/dev/null || fail "bsnap create s$i"
done
end=$(date +%s%N)
echo "1000 snapshots in $(((end - start) / 1000000)) ms (bsnap process included)"
assert_eq "objects" 1001 "$(bsnap list --json | jq length)"
bsnap list | grep -c '^  s[0-9]' | grep -qx 1000 || fail "human list does not show 1000 snapshots below the volume"
for i in 1 100 101 500 999 1000; do
    qemu-io -r -f raw "nbd+unix:///s$i?socket=$sock" -c "read -P $(((i - 1) / 100 + 1)) 0 4k" >/dev/null ||
        fail "snapshot s$i does not hold pattern $(((i - 1) / 100 + 1))"
done
# The server-side time of one more snapshot with 1,000 present.
printf '%s\n' '{"op":"hello","version":1}' '{"op":"create","name":"last"}' |
    socat -t 5 - "UNIX-CONNECT:$ctl" | tail -1 | jq -r '"snapshot 1001: \(.elapsed_us) us server-side"'
for i in $(seq 2 2 1000); do bsnap delete "s$i" >/dev/null || fail "delete s$i"; done
qemu-io -r -f raw "nbd+unix:///s501?socket=$sock" -c "read -P 6 0 4k" >/dev/null || fail "s501 after deletes"
bsnap gc >/dev/null
bsnap check >/dev/null || fail "check"
exit 0
