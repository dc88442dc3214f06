#!/bin/bash
# 1,000 snapshots of one volume (900 over one control connection per 100,
# the last 100 through bsnap): every 100th snapshot follows a write of a
# new pattern to block 0, and each snapshot reads the pattern current when
# it was taken; list shows all of them; deleting half of them keeps the
# others intact; the check passes.
. "$(dirname "$0")/functions.sh"
requires qemu-io jq socat
bsnap() { "$top/bsnap" "$@"; }

start_busesnap 16M
# session FILE: send hello + the requests in FILE over one control
# connection (as a script would); every response must be ok.
session() {
    { echo '{"op":"hello","version":1}'; cat "$1"; } |
        socat -t 120 - "UNIX-CONNECT:$ctl" >"$tmp/resp" || fail "socat session"
    assert_eq "responses" $(($(wc -l <"$1") + 2)) "$(wc -l <"$tmp/resp")"
    tail -n +2 "$tmp/resp" | jq -e 'select(.ok != true)' >/dev/null &&
        fail "a request failed: $(tail -n +2 "$tmp/resp" | jq -c 'select(.ok != true)' | head -1)"
    return 0
}
start=$(date +%s%N)
for g in $(seq 0 9); do
    qemu-io -f raw "$uri" -c "write -P $((g + 1)) 0 4k" >/dev/null || fail "write before group $g"
    if [ $g -lt 9 ]; then
        # 900 snapshots over the control protocol, one connection per 100...
        for i in $(seq $((g * 100 + 1)) $((g * 100 + 100))); do
            echo "{\"op\":\"create\",\"name\":\"s$i\"}"
        done >"$tmp/req"
        session "$tmp/req"
    else
        # ...and the last 100 through bsnap, one process each.
        for i in $(seq 901 1000); do bsnap create "s$i" >/dev/null || fail "bsnap create s$i"; done
    fi
done
end=$(date +%s%N)
echo "1000 snapshots in $(((end - start) / 1000000)) ms (with 100 bsnap processes)"
assert_eq "objects" 1001 "$(bsnap list --json | jq length)"
bsnap list | grep -c '^  s[0-9]' | grep -qx 1000 || fail "human list does not show 1000 snapshots below the volume"
for i in 1 100 101 500 999 1000; do
    qemu-io -r -f raw "nbd+unix:///s$i?socket=$sock" -c "read -P $(((i - 1) / 100 + 1)) 0 4k" >/dev/null ||
        fail "snapshot s$i does not hold pattern $(((i - 1) / 100 + 1))"
done
# The server-side time of one more snapshot with 1,000 present.
printf '%s\n' '{"op":"hello","version":1}' '{"op":"create","name":"last"}' |
    socat -t 5 - "UNIX-CONNECT:$ctl" | tail -1 | jq -r '"snapshot 1001: \(.elapsed_us) us server-side"'
# The readers above are gone once the server has closed them.
for ((k = 0; k < 500; k++)); do
    [ "$(bsnap list --json | jq '[.[].clients] | add')" = 0 ] && break
    sleep 0.02
done
for i in $(seq 2 2 1000); do echo "{\"op\":\"delete\",\"name\":\"s$i\"}"; done >"$tmp/req"
session "$tmp/req"
bsnap delete s999 | grep -q "deleted snapshot s999" || fail "bsnap delete s999"
assert_eq "objects after deletes" 501 "$(bsnap list --json | jq length)"
qemu-io -r -f raw "nbd+unix:///s501?socket=$sock" -c "read -P 6 0 4k" >/dev/null || fail "s501 after deletes"
bsnap gc >/dev/null
bsnap check >/dev/null || fail "check"
exit 0
