#!/bin/bash
# test-busexmp-tcp: serving over TCP (HOST:PORT) with a real client, and a
# second listener (:PORT form, all addresses) in the same process.
. "$(dirname "$0")/functions.sh"
requires nbdinfo qemu-io
port=$(PATH=/usr/bin:$PATH python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$top/busexmp" 32M --tcp "127.0.0.1:$port" >"$tmp/server.log" 2>&1 &
server_pid=$!
on_exit "kill $server_pid"
uri="nbd://127.0.0.1:$port/"
for ((i = 0; i < 250; i++)); do
    kill -0 $server_pid 2>/dev/null || fail "busexmp died: $(cat "$tmp/server.log")"
    nbdinfo --size "$uri" >/dev/null 2>&1 && break
    sleep 0.02
done
assert_eq size $((32 << 20)) "$(nbdinfo --size "$uri")"
qemu-io -f raw -c 'write -P 0x33 123 100000' "$uri" >/dev/null || fail "TCP write failed"
out=$(qemu-io -f raw -c 'read -P 0x33 123 100000' "$uri") || fail "TCP read failed"
grep -qi "verification failed" <<<"$out" && fail "TCP: data differs"
kill -TERM $server_pid
wait $server_pid || fail "busexmp exit code $? after SIGTERM"

# Bad address: one clear line and a failure exit code.
if "$top/busexmp" 1M --tcp "nonsense" 2>"$tmp/err"; then
    fail "--tcp nonsense was accepted"
fi
grep -q "HOST:PORT" "$tmp/err" || fail "no clear message for --tcp nonsense: $(cat "$tmp/err")"
