#!/bin/bash
# A client that connects and stops talking during the handshake is dropped
# after the idle limit (BUSE_HANDSHAKE_TIMEOUT, default 30 s; 1 s here), so
# silent clients cannot pile up threads; a client idle in transmission is
# never dropped.
. "$(dirname "$0")/functions.sh"
requires nbdsh
BUSE_HANDSHAKE_TIMEOUT=1 start_busexmp 1M
PATH=/usr/bin:$PATH python3 - "$sock" "$uri" <<'PY' || fail "handshake idle limit"
import nbd, socket, sys, time
sock, uri = sys.argv[1:3]
silent = []
for stage in ("greeting", "flags", "half-option"):
    s = socket.socket(socket.AF_UNIX); s.connect(sock)
    s.settimeout(10)
    s.recv(18)
    if stage != "greeting":
        s.sendall(b"\0\0\0\3")          # client flags
    if stage == "half-option":
        s.sendall(b"IHAVEOPT\0\0\0\7")   # an option header cut short
    silent.append((stage, s, time.time()))
h = nbd.NBD(); h.connect_uri(uri)           # a good client, then idle
for stage, s, t0 in silent:
    try:
        data = s.recv(4096)
    except socket.timeout:
        sys.exit("client silent after %s still connected after 10 s" % stage)
    while data:
        data = s.recv(4096)
    dt = time.time() - t0
    if dt > 5:
        sys.exit("client silent after %s dropped only after %.1f s" % (stage, dt))
    print("silent after %s: dropped after %.1f s" % (stage, dt))
time.sleep(2)
h.pwrite(b"x" * 512, 0)
assert h.pread(512, 0) == b"x" * 512
print("client idle 2+ s in transmission: still served")
PY
