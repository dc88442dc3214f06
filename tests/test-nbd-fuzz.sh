#!/bin/bash
# test-nbd-fuzz: tests/fuzz/nbdfuzz.py throws random, corrupted and cut-off
# handshakes and requests at busexmp for 10 s (seed in the log; FUZZ_SEED
# and FUZZ_SECS override).  The server must survive, keep serving a client
# that was connected throughout, and (under SANITIZER=) report nothing.
. "$(dirname "$0")/functions.sh"
requires nbdsh
start_busexmp 1M
PATH=/usr/bin:$PATH python3 -c "
import nbd, sys, subprocess
h = nbd.NBD(); h.connect_uri('$uri')
h.pwrite(b'k' * 512, 0)
subprocess.run([sys.executable, '$top/tests/fuzz/nbdfuzz.py', '$sock',
                '${FUZZ_SECS:-10}'] + (['${FUZZ_SEED:-}'] if '${FUZZ_SEED:-}' else []),
               check=True)
# The fuzzer may have written anywhere; the connection itself must live.
h.pwrite(b'k' * 512, 0)
assert h.pread(512, 0) == b'k' * 512
" || fail "fuzzing broke the server or the connected client"
kill -0 "$server_pid" 2>/dev/null || fail "server died while fuzzed: $(tail -3 "$tmp/server.log")"
nbdsh -u "$uri" -c 'h.pread(512, 0)' || fail "new client refused after fuzzing"
