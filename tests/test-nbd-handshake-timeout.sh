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

# Under TLS the same limit holds: silent after the ACK to STARTTLS, silent
# in the middle of the ClientHello, and a ClientHello trickled one byte
# every 0.3 s (each read is quick, so only the TLS handshake's total limit,
# the same 1 s, stops it).
stop_server TERM || fail "busexmp exit status $?"
. "$(dirname "$0")/tls-functions.sh"
make_pki
: >"$tmp/server.log"
BUSE_HANDSHAKE_TIMEOUT=1 start_busexmp 1M --tls=on --tls-certificates "$tmp/pki/server"
PATH=/usr/bin:$PATH python3 - "$sock" "$top/tests" <<'PY' || fail "TLS handshake idle limit"
import os, socket, sys, threading, time
sys.path.insert(0, sys.argv[2])
from nbdraw import *
hello = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + os.urandom(200)
def dropped_after(stage, c, t0):
    if not c.closed(timeout=10):
        sys.exit("TLS client %s still connected after 10 s" % stage)
    dt = time.time() - t0
    if dt > 5:
        sys.exit("TLS client %s dropped only after %.1f s" % (stage, dt))
    print("TLS client %s: dropped after %.1f s" % (stage, dt))
for stage in ("silent after the STARTTLS ACK", "silent mid-ClientHello",
              "trickling its ClientHello"):
    c = Conn(sys.argv[1])
    c.option(STARTTLS)
    assert c.reply()[1] == ACK
    t0 = time.time()
    if stage == "silent mid-ClientHello":
        c.send(hello[:40])
    if stage == "trickling its ClientHello":
        def trickle(c=c):
            try:
                for b in hello:
                    c.send(bytes([b]))
                    time.sleep(0.3)
            except OSError:
                pass
        threading.Thread(target=trickle, daemon=True).start()
    dropped_after(stage, c, t0)
PY
