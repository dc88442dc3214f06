#!/bin/bash
# test-nbd-extended: NBD_OPT_EXTENDED_HEADERS (qemu 8.2+, libnbd 1.18+; the
# clients here predate it, so a raw-socket client speaks it): 32-byte
# requests with 64-bit lengths, every reply an extended chunk (never a
# simple reply), BLOCK_STATUS_EXT over more than 4 GiB, TRIM of more than
# 4 GiB in one request, errors as ERROR chunks, and a 28-byte (old) request
# after negotiation treated as a bad magic.
. "$(dirname "$0")/functions.sh"
requires nbdsh
start_busexmp 8G

cat >"$tmp/t.py" <<'PY'
import socket, struct, sys
path = sys.argv[1]
OPT, REP = 0x49484156454f5054, 0x3e889045565a9
G = 1 << 30

def recvn(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("server closed the connection")
        b += c
    return b

def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", OPT, opt, len(data)) + data)

def reply(s):
    magic, opt, typ, ln = struct.unpack(">QIII", recvn(s, 20))
    assert magic == REP
    return typ, recvn(s, ln)

s = socket.socket(socket.AF_UNIX); s.connect(path)
recvn(s, 18); s.sendall(struct.pack(">I", 3))
option(s, 11)
assert reply(s)[0] == 1, "EXTENDED_HEADERS not acknowledged"
option(s, 11)
assert reply(s)[0] == 0x80000003, "second EXTENDED_HEADERS must be refused"
option(s, 8)
assert reply(s)[0] == 0x80000003, "STRUCTURED_REPLY after EXTENDED_HEADERS"
q = b"base:allocation"
option(s, 10, struct.pack(">II", 0, 1) + struct.pack(">I", len(q)) + q)
t, d = reply(s)
assert t == 4 and d[4:] == q, (t, d)
ctx = struct.unpack(">I", d[:4])[0]
assert reply(s)[0] == 1
option(s, 7, struct.pack(">IH", 0, 0))
while True:
    t, d = reply(s)
    if t == 1:
        break
    assert t == 3, t
    if struct.unpack(">H", d[:2])[0] == 0:
        size = struct.unpack(">Q", d[2:10])[0]
assert size == 8 * G, size

cookie = 0
def req(typ, off, ln, flags=0, payload=b""):
    global cookie
    cookie += 1
    s.sendall(struct.pack(">IHHQQQ", 0x21e41c71, flags, typ, cookie, off, ln) + payload)
    magic, fl, rtype, c, roff, rlen = struct.unpack(">IHHQQQ", recvn(s, 32))
    assert magic == 0x6e8a278c, "not an extended reply: 0x%x" % magic
    assert c == cookie and fl & 1 and roff == off, (c, fl, roff)
    return rtype, recvn(s, rlen)

data = bytes(range(256)) * 16
assert req(1, 5 * G, 4096, payload=data) == (0, b""), "WRITE -> NONE chunk"
t, d = req(0, 5 * G, 4096)
assert t == 1 and struct.unpack(">Q", d[:8])[0] == 5 * G and d[8:] == data, "READ"
assert req(3, 0, 0) == (0, b""), "FLUSH"
t, d = req(7, 0, 8 * G)
assert t == 6, "BLOCK_STATUS_EXT expected, got type %d" % t
cid, n = struct.unpack(">II", d[:8])
assert cid == ctx and len(d) == 8 + 16 * n, (cid, n, len(d))
ext = [struct.unpack(">QQ", d[8 + 16 * i:24 + 16 * i]) for i in range(n)]
assert ext == [(5 * G, 3), (4096, 0), (3 * G - 4096, 3)], ext
# One TRIM longer than 4 GiB, then the data is gone.
assert req(4, 0, 6 * G) == (0, b""), "TRIM of 6 GiB"
t, d = req(0, 5 * G, 4096)
assert t == 1 and d[8:] == bytes(4096), "TRIM did not zero"
# WRITE_ZEROES beyond 4 GiB with FAST_ZERO.
assert req(6, G, 5 * G, 16) == (0, b""), "WRITE_ZEROES 5 GiB"
# Errors are ERROR chunks: oversized READ, past the end.
t, d = req(0, 0, 33 << 20)
assert t == 0x8001 and struct.unpack(">I", d[:4])[0] == 75, (t, d)
t, d = req(0, 8 * G - 1, 2)
assert t == 0x8001 and struct.unpack(">I", d[:4])[0] == 22, (t, d)
t, d = req(1, 8 * G, 1, payload=b"x")
assert t == 0x8001 and struct.unpack(">I", d[:4])[0] == 28, (t, d)
# An old 28-byte request now has the wrong magic: the connection closes.
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 99, 0, 512) + bytes(4))
s.settimeout(10)
try:
    rest = s.recv(100)
except ConnectionResetError:
    rest = b""
assert rest == b"", "old-style request accepted after EXTENDED_HEADERS"
print("ok")
PY
PATH=/usr/bin:$PATH python3 "$tmp/t.py" "$sock" || fail "extended headers checks failed (see above)"
kill -0 "$server_pid" || fail "server died"
