#!/bin/bash
# Control socket security and life cycle: created 0600; another user is
# refused by the mode, and still refused by SO_PEERCRED when the socket is
# chmod'ed open; a stale socket from a killed server is replaced on start;
# a live one makes a second server refuse to start.
. "$(dirname "$0")/functions.sh"
requires setpriv stat jq
requires_root
id nobody >/dev/null 2>&1 || skip "no user nobody"

start_busesnap 16M
assert_eq "control socket mode" 600 "$(stat -c %a "$ctl")"
assert_eq "control socket owner" 0 "$(stat -c %u "$ctl")"

# Let nobody reach the socket's directory and the bsnap binary.
chmod 755 "$tmp"
as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
as_nobody test -x "$top/bsnap" || skip "user nobody cannot run $top/bsnap"

rc=0; as_nobody "$top/bsnap" --control "$ctl" list 2>"$tmp/err" || rc=$?
assert_eq "nobody, socket 0600: exit" 1 "$rc"
grep -q "Permission denied" "$tmp/err" || fail "nobody, 0600: $(cat "$tmp/err")"

chmod 666 "$ctl"
rc=0; as_nobody "$top/bsnap" --control "$ctl" create evil 2>"$tmp/err" || rc=$?
assert_eq "nobody, socket 0666: exit" 1 "$rc"
grep -q "uid $(id -u nobody) may not control" "$tmp/err" || fail "nobody, 0666: $(cat "$tmp/err")"
# And raw: one error line instead of the greeting, then the server closes.
as_nobody socat -u "UNIX-CONNECT:$ctl" - >"$tmp/raw" </dev/null || true
assert_eq "raw refusal lines" 1 "$(wc -l <"$tmp/raw")"
assert_eq "raw refusal" EACCES "$(jq -r .error "$tmp/raw")"
"$top/bsnap" list --json | jq -e 'map(.name) == ["default"]' >/dev/null || fail "nobody created something"

# A live socket: a second server on it refuses to start.
rc=0; "$top/busesnap" serve "$tmp/other.db" --size 4M --socket "$tmp/s2" --control "$ctl" 2>"$tmp/err" || rc=$?
assert_eq "second server exit" 1 "$rc"
grep -q "another server is listening" "$tmp/err" || fail "second server: $(cat "$tmp/err")"
"$top/bsnap" info >/dev/null || fail "first server disturbed by the second"

# A stale socket (server killed) is replaced on start.
stop_server KILL || true
[ -S "$ctl" ] || fail "kill -9 left no stale socket to test with"
start_busesnap # waits until the new server answers
assert_eq "mode after replacing stale socket" 600 "$(stat -c %a "$ctl")"
"$top/bsnap" list --json | jq -e 'length == 1' >/dev/null || fail "bsnap after restart"
# Something that is not a socket is never removed.
stop_server TERM
echo keep >"$tmp/notasock"
rc=0; "$top/busesnap" serve "$image" --socket "$tmp/s3" --control "$tmp/notasock" 2>"$tmp/err" || rc=$?
assert_eq "control path is a file: exit" 1 "$rc"
assert_eq "file kept" keep "$(cat "$tmp/notasock")"
exit 0
