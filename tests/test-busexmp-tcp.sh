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

# IPv6 loopback, "[V6]:PORT" form (skipped where the host has no ::1).
if PATH=/usr/bin:$PATH python3 -c 'import socket; s = socket.socket(socket.AF_INET6); s.bind(("::1", 0))' 2>/dev/null; then
    port6=$(PATH=/usr/bin:$PATH python3 -c 'import socket; s = socket.socket(socket.AF_INET6); s.bind(("::1", 0)); print(s.getsockname()[1])')
    "$top/busexmp" 2M -v --tcp "[::1]:$port6" >"$tmp/server6.log" 2>&1 &
    pid6=$!
    on_exit "kill $pid6"
    for ((i = 0; i < 250; i++)); do
        kill -0 $pid6 2>/dev/null || fail "busexmp on [::1] died: $(cat "$tmp/server6.log")"
        nbdinfo --size "nbd://[::1]:$port6/" >/dev/null 2>&1 && break
        sleep 0.02
    done
    assert_eq "IPv6 size" 2097152 "$(nbdinfo --size "nbd://[::1]:$port6/")"
    # -v: one line per handshake step and request.
    qemu-io -f raw -c 'read 0 512' "nbd://[::1]:$port6/" >/dev/null || fail "IPv6 read failed"
    grep -q "request READ flags 0x0 offset 0 length 512" "$tmp/server6.log" ||
        fail "-v did not log the READ request: $(tail -3 "$tmp/server6.log")"
fi
