#!/bin/bash
# test-nbd-hostile: a table of hostile and broken inputs over raw sockets
# (tests/hostile.py, tests/nbdraw.py) against busesnap and busexmp: bad
# magics, malformed and oversized options, 4 KiB and NUL-bearing export
# names, requests past the end, overflowing, of length 0 and 2^32-1,
# unknown commands and flags, in simple, structured and extended modes;
# FLUSH storms, thousands of connections dropped at every stage, a client
# that never reads its replies.  Each gets the reply doc/proto.md requires,
# costs only its own connection, leaks no thread or descriptor, and a
# libnbd client connected throughout keeps reading back what it wrote.
# Then busexmp with TLS: the table inside TLS sessions and the STARTTLS
# rows (misuse, garbage and plaintext in the TLS handshake, plaintext
# state forgotten, drops at every TLS stage, a server requiring TLS).
. "$(dirname "$0")/functions.sh"
requires nbdsh
# Sanitizer builds keep freed memory in quarantine: memory is not judged.
if [[ $(ldd "$top/busesnap") == *libasan* ]]; then export HOSTILE_CHECK_MEMORY=0; fi
run() {
    PATH=/usr/bin:$PATH python3 "$top/tests/hostile.py" "$sock" "$server_pid" "$1" ||
        fail "$1: hostile table failed (see above)"
    kill -0 "$server_pid" 2>/dev/null || fail "$1: server died"
}

start_busesnap 128M
run busesnap
"$top/bsnap" check >/dev/null || fail "bsnap check after the hostile table"
stop_server TERM || fail "busesnap exit status $? after the hostile table"

start_busexmp 128M
run busexmp
stop_server TERM || fail "busexmp exit status $? after the hostile table"

# The same table inside TLS sessions, the STARTTLS rows, and a second
# server that requires TLS (tests/hostile.py's header).
. "$(dirname "$0")/tls-functions.sh"
make_pki
"$top/busexmp" 16M --socket "$tmp/require.sock" --tls=require \
    --tls-certificates "$tmp/pki/server" >"$tmp/require.log" 2>&1 &
require_pid=$!
on_exit "kill $require_pid"
wait_for_socket "$tmp/require.sock" "$require_pid"
: >"$tmp/server.log"
start_busexmp 128M --tls=on --tls-certificates "$tmp/pki/server"
HOSTILE_TLS_CA=$tmp/pki/ca/ca-cert.pem HOSTILE_REQUIRE_SOCK=$tmp/require.sock \
    HOSTILE_FLUSHES=300 HOSTILE_DROPS=300 run busexmp
kill -0 "$require_pid" || fail "the TLS-requiring server died"
stop_server TERM || fail "busexmp exit status $? after the TLS hostile table"
exit 0
