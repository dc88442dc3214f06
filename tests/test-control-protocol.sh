#!/bin/bash
# The control protocol spoken raw with socat (doc/control.md): greeting,
# hello first, version mismatch naming both versions, malformed JSON,
# non-objects, unknown ops and bad arguments get an error line and the
# connection stays; an oversized line gets E2BIG and a close; through all
# of it the server keeps serving NBD and other control clients.
. "$(dirname "$0")/functions.sh"
requires socat jq qemu-io

start_busesnap 16M
qemu-io -f raw "$uri" -c "write -P 0x5a 0 64k" >/dev/null || fail "initial write"

# talk LINE...: send the lines, print the server's lines.
talk() { printf '%s\n' "$@" | socat -t 5 - "UNIX-CONNECT:$ctl"; }
hello='{"op":"hello","version":1}'

talk >"$tmp/o1" '{"op":"list"}' "$hello" '{"op":"list"}'
assert_eq "greeting" '{"busesnap":"control","version":1}' "$(sed -n 1p "$tmp/o1")"
assert_eq "before hello" EPROTO "$(sed -n 2p "$tmp/o1" | jq -r .error)"
assert_eq "hello" "true 1" "$(sed -n 3p "$tmp/o1" | jq -r '"\(.ok) \(.version)"')"
assert_eq "list after hello" default "$(sed -n 4p "$tmp/o1" | jq -r '.objects[0].name')"

talk >"$tmp/o2" '{"op":"hello","version":2}' '{"op":"list"}'
sed -n 2p "$tmp/o2" | jq -e '.ok == false and .error == "EPROTO"' >/dev/null || fail "version 2 accepted: $(cat "$tmp/o2")"
m=$(sed -n 2p "$tmp/o2" | jq -r .message)
[[ $m == *"version 2"* && $m == *"version 1"* ]] || fail "mismatch message does not name both versions: $m"
assert_eq "still no hello after mismatch" EPROTO "$(sed -n 3p "$tmp/o2" | jq -r .error)"

# Each bad request gets exactly one error line; the connection goes on.
talk >"$tmp/o3" "$hello" '{"op":"list"' 'not json at all' '[1,2,3]' '{"noop":1}' \
    '{"op":"frobnicate"}' '{"op":"create"}' '{"op":"create","name":5}' \
    '{"op":"create","name":"bad name"}' '{"op":"delete","name":"nope"}' \
    '{"op":"info"}'
assert_eq "line count" 12 "$(wc -l <"$tmp/o3")"
assert_eq "errors" "EINVAL EINVAL EINVAL EINVAL ENOSYS EINVAL EINVAL EINVAL ENOENT" \
    "$(sed -n 3,11p "$tmp/o3" | jq -r .error | tr '\n' ' ' | sed 's/ $//')"
sed -n 3,11p "$tmp/o3" | jq -e 'select(.ok != false or (.message | length) == 0)' >/dev/null &&
    fail "an error line lacks ok:false or a message"
assert_eq "info after errors" 16777216 "$(sed -n 12p "$tmp/o3" | jq -r .info.size)"
sed -n 7p "$tmp/o3" | jq -r .message | grep -q 'unknown op "frobnicate"' || fail "unknown op message"

# Oversized request: E2BIG, then the server closes the connection.
# (python, not socat: the server may close while the client is still
# sending the rest of the line, and socat then quits on EPIPE before it
# reads the answer that is already there)
python3 - "$ctl" >"$tmp/o4" <<'EOS'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(5)
msg = '{"op":"hello","version":1}\n{"op":"list","pad":"%s"}\n{"op":"info"}\n' % ("x" * 70000)
try:
    s.sendall(msg.encode())
except (BrokenPipeError, ConnectionResetError):
    pass
data = b""
while True:
    try:
        d = s.recv(65536)
    except ConnectionResetError:
        break
    if not d:
        break
    data += d
sys.stdout.write(data.decode())
EOS
assert_eq "oversized" E2BIG "$(sed -n 3p "$tmp/o4" | jq -r .error)"
assert_eq "closed after oversized" 3 "$(wc -l <"$tmp/o4")"

# A client that connects and says nothing does not block anyone.
socat -u "UNIX-CONNECT:$ctl" - >/dev/null </dev/null &
sleep_pid=$!
socat "UNIX-CONNECT:$ctl" EXEC:"sleep 30" >/dev/null 2>&1 &
on_exit "kill $! $sleep_pid"
# A client that sends half a line and vanishes.
printf '{"op":"hel' | socat -t 0.1 - "UNIX-CONNECT:$ctl" >/dev/null || true

# bsnap against a server of another protocol version, and against a
# socket that is not a busesnap control socket: exit 1, one clear line.
cat >"$tmp/v2.sh" <<'EOS'
#!/bin/bash
echo '{"busesnap":"control","version":2}'
read -r line
echo '{"ok":false,"error":"EPROTO","message":"control protocol version mismatch: the client speaks version 1, this server speaks version 2"}'
EOS
cat >"$tmp/other.sh" <<'EOS'
#!/bin/bash
echo 'SSH-2.0-OpenSSH_9.2'
EOS
chmod +x "$tmp/v2.sh" "$tmp/other.sh"
socat "UNIX-LISTEN:$tmp/v2.sock,fork" "EXEC:$tmp/v2.sh" &
on_exit "kill $!"
socat "UNIX-LISTEN:$tmp/other.sock,fork" "EXEC:$tmp/other.sh" &
on_exit "kill $!"
wait_for_socket "$tmp/v2.sock"; wait_for_socket "$tmp/other.sock"
rc=0; "$top/bsnap" --control "$tmp/v2.sock" list 2>"$tmp/err" || rc=$?
assert_eq "bsnap vs. version 2: exit" 1 "$rc"
grep -q "client speaks version 1, this server speaks version 2" "$tmp/err" || fail "bsnap vs. version 2: $(cat "$tmp/err")"
rc=0; "$top/bsnap" --control "$tmp/other.sock" list 2>"$tmp/err" || rc=$?
assert_eq "bsnap vs. another protocol: exit" 1 "$rc"
assert_eq "bsnap vs. another protocol: lines" 1 "$(wc -l <"$tmp/err")"

# The server still serves NBD and control clients.
qemu-io -f raw "$uri" -c "read -P 0x5a 0 64k" >/dev/null || fail "NBD read after bad control traffic"
talk "$hello" '{"op":"create","name":"s1"}' | sed -n 3p | jq -e '.ok and .object.name == "s1" and .elapsed_us >= 0' >/dev/null ||
    fail "create after bad control traffic"
"$top/bsnap" list --json | jq -e 'length == 2' >/dev/null || fail "bsnap list after bad control traffic"
exit 0
