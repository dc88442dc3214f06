#!/bin/bash
# test-control-trust: bsnap talks only to its own server, and never hangs.
# As another local user would try it (setpriv): a fake control server that
# user planted at the victim's default path (a /tmp/busesnap-UID directory
# made first), or in a shared sticky directory, is refused before bsnap
# sends anything, naming the path and the owner, and the invented volumes
# it offers never show; a socket file that looks like the victim's but is
# served by another user's process is refused by SO_PEERCRED; the victim's
# own server refuses to start there instead of reporting "another server
# is listening"; with the planted directory gone, server and bsnap agree on
# a fresh 0700 directory.  The server refuses control and NBD sockets in a
# directory others can write to (unless sticky and the path is its own).
# A server that accepts and never answers, or a stopped one, makes bsnap
# exit 1 after its timeout (--timeout, default 5 s).
. "$(dirname "$0")/functions.sh"
requires setpriv python3 jq
requires_root
id nobody >/dev/null 2>&1 || skip "no user nobody"
chmod 755 "$tmp"
as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
as_nobody test -x "$top/bsnap" || skip "user nobody cannot run $top/bsnap"
# The victim: a uid of its own for this run (concurrent runs differ).
victim=$((40000 + $$ % 20000))
as_victim() {
    env -i PATH=/usr/bin:/bin HOME=/ setpriv --reuid=$victim --regid=$victim --clear-groups "$@"
}
vdir=/tmp/busesnap-$victim
rm -rf "$vdir"
on_exit "rm -rf '$vdir'"

# fake_server PATH [silent]: as nobody, a control server at PATH (mode
# 0777) that answers like busesnap with an invented volume, or (silent)
# accepts and never answers.  Sets fake_pid.
fake_server() {
    as_nobody python3 -c '
import json, os, socket, sys, time
path, silent = sys.argv[1], len(sys.argv) > 2
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chmod(path, 0o777)
s.listen(8)
while True:
    c, _ = s.accept()
    if silent:
        time.sleep(3600)
    try:
        f = c.makefile("rw")
        f.write(json.dumps({"busesnap": "control", "version": 1}) + "\n")
        f.flush()
        for line in f:
            obj = {"name": "FAKE-VOLUME", "uuid": "0" * 36, "kind": "volume"}
            res = {"ok": True, "version": 1, "image": "fake", "uuid": "0" * 36,
                   "objects": [obj], "object": obj}
            f.write(json.dumps(res) + "\n")
            f.flush()
    except OSError:
        pass
    c.close()
' "$@" >>"$tmp/fake.log" 2>&1 &
    fake_pid=$!
    on_exit "kill $fake_pid"
    wait_for_socket "$1" "$fake_pid"
}
# expect_refusal WHAT MSG CMD...: exit 1, MSG on stderr, nothing fake shown.
expect_refusal() {
    local what=$1 msg=$2 rc=0; shift 2
    "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    assert_eq "$what: exit" 1 "$rc"
    grep -q -- "$msg" "$tmp/err" || fail "$what: stderr lacks '$msg': $(cat "$tmp/err")"
    grep -q FAKE "$tmp/out" "$tmp/err" && fail "$what: the fake server's answer was shown"
    return 0
}

# ---- the planted /tmp/busesnap-UID directory (the victim has no
# XDG_RUNTIME_DIR, as under cron, su or CI) ----
as_nobody mkdir -m 755 "$vdir"
fake_server "$vdir/busesnap.ctl"
expect_refusal "bsnap at the planted default path" \
    "$vdir is not a private directory of yours .* owned by nobody" as_victim "$top/bsnap" list
# Without the directory check, the socket's owner still gives it away.
expect_refusal "bsnap --control to the planted socket" \
    "$vdir/busesnap.ctl belongs to nobody (uid $(id -u nobody)), not to you or root" \
    as_victim "$top/bsnap" --control "$vdir/busesnap.ctl" list
mkdir "$tmp/victim" && chown $victim:$victim "$tmp/victim"
expect_refusal "victim's server at the planted default path" \
    "$vdir is not a private directory of yours" \
    as_victim "$top/busesnap" serve "$tmp/victim/img.db" --size 4M --socket "$tmp/victim/nbd.sock"
kill $fake_pid 2>/dev/null; wait $fake_pid 2>/dev/null || true
rm -rf "$vdir"

# ---- a shared sticky directory: the planted socket, and a look-alike ----
mkdir -m 1777 "$tmp/shared"
fake_server "$tmp/shared/ctl"
expect_refusal "bsnap to another user's socket in a sticky dir" \
    "$tmp/shared/ctl belongs to nobody" as_victim "$top/bsnap" --control "$tmp/shared/ctl" create x
expect_refusal "victim's server on another user's path in a sticky dir" \
    "it belongs to nobody" \
    as_victim "$top/busesnap" serve "$tmp/victim/img.db" --size 4M --socket "$tmp/victim/nbd.sock" \
    --control "$tmp/shared/ctl"
# The socket file made to look like the victim's (chown): SO_PEERCRED
# still names the process behind it.
chown $victim "$tmp/shared/ctl"
expect_refusal "bsnap to a server of another user behind the victim's file" \
    "the server there runs as nobody (uid $(id -u nobody)) .*not as you or root" \
    as_victim "$top/bsnap" --control "$tmp/shared/ctl" list
kill $fake_pid 2>/dev/null; wait $fake_pid 2>/dev/null || true

# ---- the victim's own server and bsnap agree on a fresh private dir ----
# (env, not the as_victim function: $! must be the server's own pid)
env -i PATH=/usr/bin:/bin HOME=/ setpriv --reuid=$victim --regid=$victim --clear-groups \
    "$top/busesnap" serve "$tmp/victim/img.db" --size 4M --socket "$tmp/victim/nbd.sock" \
    >>"$tmp/server.log" 2>&1 &
vpid=$!
on_exit "kill $vpid"
wait_for_socket "$vdir/busesnap.ctl" "$vpid"
assert_eq "default control dir" "700 $victim" "$(stat -c '%a %u' "$vdir")"
as_victim "$top/bsnap" create snap1 >/dev/null || fail "the victim's bsnap cannot reach its own server"
as_victim "$top/bsnap" list --json | jq -e 'map(.name) | index("snap1")' >/dev/null || fail "victim's list"
# bsnap trusts its own user's servers and root's only: root's bsnap does
# not take a user's server for its own.
expect_refusal "root's bsnap to a user's server" "belongs to uid $victim, not to you or root" \
    "$top/bsnap" --control "$vdir/busesnap.ctl" info
kill $vpid
wait $vpid || fail "the victim's server exit status $? after SIGTERM"

# ---- the server refuses sockets others could replace ----
mkdir -m 777 "$tmp/open"
rc=0; "$top/busesnap" serve "$tmp/img.db" --size 4M --socket "$tmp/nbd.sock" \
    --control "$tmp/open/ctl" 2>"$tmp/err" || rc=$?
assert_eq "control socket in a 0777 directory: exit" 1 "$rc"
grep -q "directory $tmp/open is writable by other users (mode 777) and not sticky" "$tmp/err" ||
    fail "0777 directory: $(cat "$tmp/err")"
rc=0; "$top/busesnap" serve "$tmp/img.db" --size 4M --socket "$tmp/open/nbd.sock" \
    --control "$tmp/ctl" 2>"$tmp/err" || rc=$?
assert_eq "NBD socket in a 0777 directory: exit" 1 "$rc"
[ ! -e "$tmp/img.db" ] || fail "a refused server created the image"
# A sticky shared directory and a path of our own: served.
start_server "$tmp/shared/ours.ctl" "$top/busesnap" serve "$tmp/img.db" --size 4M \
    --socket "$tmp/shared/nbd.sock" --control "$tmp/shared/ours.ctl"
"$top/bsnap" --control "$tmp/shared/ours.ctl" info >/dev/null || fail "server in a sticky dir"

# ---- timeouts: a server that accepts and never answers; a stopped one ----
python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
while True:
    c, _ = s.accept()
    time.sleep(3600)' "$tmp/silent.ctl" &
silent=$!
on_exit "kill $silent"
wait_for_socket "$tmp/silent.ctl" "$silent"
t0=$(date +%s%N)
# (timeout 30: without its own timeout bsnap would wait for ever)
expect_refusal "silent server, --timeout 1" "no answer from the server in 1 s" \
    timeout 30 "$top/bsnap" --control "$tmp/silent.ctl" --timeout 1 list
t1=$(date +%s%N)
[ $(((t1 - t0) / 1000000)) -lt 4000 ] || fail "--timeout 1 took $(((t1 - t0) / 1000000)) ms"
t0=$(date +%s%N)
expect_refusal "silent server, default timeout" "no answer from the server in 5 s" \
    timeout 30 "$top/bsnap" --control "$tmp/silent.ctl" list
t1=$(date +%s%N)
ms=$(((t1 - t0) / 1000000))
[ $ms -ge 4900 ] && [ $ms -lt 15000 ] || fail "default timeout took $ms ms"
kill -STOP $server_pid
expect_refusal "stopped server" "no answer from the server in 1 s" \
    timeout 30 env BSNAP_TIMEOUT=1 "$top/bsnap" --control "$tmp/shared/ours.ctl" create late
kill -CONT $server_pid
"$top/bsnap" --control "$tmp/shared/ours.ctl" list --json | jq -e 'map(.name) | index("late") == null' >/dev/null ||
    fail "a request that timed out before it was sent was carried out"
exit 0
