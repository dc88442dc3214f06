#!/bin/bash
# test-nbd-errors: what a broken or hostile client can send, over a raw
# socket: unknown and malformed options (the handshake goes on), unknown
# commands (EINVAL), bad request magic, a half-sent header, a client that
# vanishes mid-payload or mid-reply.  Each must cost only that connection:
# a libnbd client connected throughout keeps being served.
. "$(dirname "$0")/functions.sh"
requires nbdsh
start_busexmp 8M

cat >"$tmp/t.py" <<'PY'
import socket, struct, sys
import nbd
path = sys.argv[1]
REP = 0x3e889045565a9
OPT = 0x49484156454f5054

survivor = nbd.NBD()
survivor.connect_unix(path)
survivor.pwrite(b"\xaa" * 4096, 0)

def connect():
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    hello = recvn(s, 18)
    magic, opt, flags = struct.unpack(">QQH", hello)
    assert magic == 0x4e42444d41474943 and opt == OPT, hello
    assert flags & 1, "fixed newstyle"
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    return s

def recvn(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            sys.exit("server closed the connection early")
        b += c
    return b

def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", OPT, opt, len(data)) + data)

def reply(s):
    magic, opt, typ, ln = struct.unpack(">QIII", recvn(s, 20))
    assert magic == REP, hex(magic)
    return opt, typ, recvn(s, ln)

def export_name(s, name=b""):
    option(s, 1, name)
    size, flags = struct.unpack(">QH", recvn(s, 10))
    assert size == 8 << 20, size
    return flags

def request(s, typ, off, ln, flags=0, cookie=7, payload=b""):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, flags, typ, cookie, off, ln)
              + payload)

def simple(s, cookie=7):
    magic, err, c = struct.unpack(">IIQ", recvn(s, 16))
    assert magic == 0x67446698 and c == cookie, (hex(magic), c)
    return err

def closed(s):
    s.settimeout(10)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True

# Unknown option: NBD_REP_ERR_UNSUP, then the handshake goes on.
s = connect()
option(s, 99, b"junk")
assert reply(s)[1] == 0x80000001, "unknown option -> ERR_UNSUP"
# Malformed GO (name length beyond the option): ERR_INVALID.
option(s, 7, struct.pack(">I", 100) + b"ab")
assert reply(s)[1] == 0x80000003, "malformed GO -> ERR_INVALID"
# SET_META_CONTEXT before STRUCTURED_REPLY: ERR_INVALID.
option(s, 10, struct.pack(">II", 0, 0))
assert reply(s)[1] == 0x80000003, "meta context needs structured replies"
# STRUCTURED_REPLY with data: ERR_INVALID.
option(s, 8, b"x")
assert reply(s)[1] == 0x80000003, "STRUCTURED_REPLY with data"
# An oversized option is skipped: ERR_TOO_BIG, still in sync.
option(s, 99, bytes(100000))
assert reply(s)[1] == 0x80000009, "oversized option -> ERR_TOO_BIG"
flags = export_name(s)
assert flags & 1, "HAS_FLAGS"
# Unknown command: EINVAL (22), the connection goes on.
request(s, 99, 0, 512)
assert simple(s) == 22, "unknown command -> EINVAL"
request(s, 0, 0, 4096, cookie=8)
assert simple(s, 8) == 0 and recvn(s, 4096) == b"\xaa" * 4096
# Zero-length read: EINVAL.
request(s, 0, 0, 0, cookie=9)
assert simple(s, 9) == 22, "zero-length read -> EINVAL"
# Bad request magic: the server closes this connection.
s.sendall(b"\xde\xad\xbe\xef" + bytes(24))
assert closed(s), "bad magic must close the connection"

# Half-sent header, then hang up.
s = connect(); export_name(s)
s.sendall(struct.pack(">IHH", 0x25609513, 0, 0)); s.close()
# Hang up in the middle of a WRITE payload.
s = connect(); export_name(s)
request(s, 1, 0, 1 << 20, payload=bytes(1000)); s.close()
# Hang up without reading the reply to a big read (mid-reply).
s = connect(); export_name(s)
for i in range(8):
    request(s, 0, 0, 8 << 20, cookie=i)
s.close()
# Hang up in the middle of the handshake.
s = connect(); s.sendall(struct.pack(">QI", OPT, 7)); s.close()
# Unknown export via EXPORT_NAME is served by busexmp (any name), but a
# client flag the server does not know closes the connection.
s = socket.socket(socket.AF_UNIX); s.connect(path); recvn(s, 18)
s.sendall(struct.pack(">I", 0x80)); assert closed(s), "unknown client flag"
# NBD_OPT_ABORT: ACK, then the server closes.
s = connect(); option(s, 2)
assert reply(s)[1] == 1 and closed(s), "ABORT"

# The connection that was open all along still works, and so do new ones.
assert survivor.pread(4096, 0) == b"\xaa" * 4096, "survivor"
h = nbd.NBD(); h.connect_unix(path)
assert h.pread(4096, 0) == b"\xaa" * 4096, "new client"
print("ok")
PY
PATH=/usr/bin:$PATH python3 "$tmp/t.py" "$sock" || fail "raw protocol checks failed (see above)"
kill -0 "$server_pid" 2>/dev/null || fail "server died"
