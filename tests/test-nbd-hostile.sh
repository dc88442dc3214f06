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
exit 0
