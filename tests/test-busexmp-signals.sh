#!/bin/bash
# test-busexmp-signals: SIGTERM and SIGINT stop the server cleanly (exit 0,
# socket file removed), also with a client connected; with a request stuck
# in a slow callback the first signal waits for it, and a second signal
# forces the exit instead of hanging.
. "$(dirname "$0")/functions.sh"
requires nbdsh

# wait_exit PID SECS: wait up to SECS for PID to exit; 0 if it did.
wait_exit() {
    local i
    for ((i = 0; i < $2 * 50; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.02
    done
    return 1
}

for sig in TERM INT; do
    start_busexmp 16M
    nbdsh -u "$uri" -c 'h.pwrite(b"x" * 512, 0)' || fail "client failed"
    kill -$sig "$server_pid"
    wait_exit "$server_pid" 10 || fail "SIG$sig: server still running after 10 s"
    rc=0; wait "$server_pid" || rc=$?
    assert_eq "SIG$sig exit code" 0 "$rc"
    [ ! -e "$sock" ] || fail "SIG$sig: socket $sock was not removed"
done

# An idle client connected: shutdown closes its connection.
start_busexmp 16M
PATH=/usr/bin:$PATH python3 -c "
import nbd, time
h = nbd.NBD(); h.connect_uri('$uri')
open('$tmp/connected', 'w').close()
time.sleep(60)
" &
client=$!
on_exit "kill $client"
for ((i = 0; i < 500; i++)); do [ -e "$tmp/connected" ] && break; sleep 0.02; done
kill -TERM "$server_pid"
wait_exit "$server_pid" 10 || fail "server did not stop with an idle client connected"
[ ! -e "$sock" ] || fail "socket not removed with a client connected"

# A read stuck for 60 s: the first signal waits, the second forces.
rm -f "$tmp/connected"
start_busexmp 16M --delay-ms 60000
PATH=/usr/bin:$PATH python3 -c "
import nbd
h = nbd.NBD(); h.connect_uri('$uri')
h.aio_pread(nbd.Buffer(512), 0)
open('$tmp/connected', 'w').close()
h.poll(1)
import time; time.sleep(60)
" &
client2=$!
on_exit "kill $client2"
for ((i = 0; i < 500; i++)); do [ -e "$tmp/connected" ] && break; sleep 0.02; done
sleep 0.3 # let the request reach the callback
kill -TERM "$server_pid"
if wait_exit "$server_pid" 1; then
    fail "server exited at once although a callback was running"
fi
[ ! -e "$sock" ] || fail "socket not removed at the first signal"
kill -TERM "$server_pid"
wait_exit "$server_pid" 5 || fail "second SIGTERM did not force the exit"
