#!/bin/bash
# test-nbd-errors: what a broken or hostile client can send, over a raw
# socket: unknown and malformed options (the handshake goes on), unknown
# commands (EINVAL), bad request magic, a half-sent header, a client that
# vanishes mid-payload or mid-reply.  Each must cost only that connection:
# a libnbd client connected throughout keeps being served.  The raw client
# is tests/nbdraw.py (shared with test-nbd-hostile and test-nbd-extended).
. "$(dirname "$0")/functions.sh"
requires nbdsh
start_busexmp 8M

cat >"$tmp/t.py" <<'PY'
import os, struct, sys
import nbd
sys.path.insert(0, os.environ["top"] + "/tests")
from nbdraw import *
path = sys.argv[1]

survivor = nbd.NBD()
survivor.connect_unix(path)
survivor.pwrite(b"\xaa" * 4096, 0)

def export_name(c):
    assert c.export_name() == 8 << 20, c.size
    return c.tflags

# Unknown option: NBD_REP_ERR_UNSUP, then the handshake goes on.
c = Conn(path)
c.option(99, b"junk")
assert c.reply()[1] == ERR_UNSUP, "unknown option -> ERR_UNSUP"
# Malformed GO (name length beyond the option): ERR_INVALID.
c.option(GO, struct.pack(">I", 100) + b"ab")
assert c.reply()[1] == ERR_INVALID, "malformed GO -> ERR_INVALID"
# SET_META_CONTEXT before STRUCTURED_REPLY: ERR_INVALID.
c.option(SET_META, struct.pack(">II", 0, 0))
assert c.reply()[1] == ERR_INVALID, "meta context needs structured replies"
# STRUCTURED_REPLY with data: ERR_INVALID.
c.option(STRUCTURED_REPLY, b"x")
assert c.reply()[1] == ERR_INVALID, "STRUCTURED_REPLY with data"
# An oversized option is skipped: ERR_TOO_BIG, still in sync.
c.option(99, bytes(100000))
assert c.reply()[1] == ERR_TOO_BIG, "oversized option -> ERR_TOO_BIG"
assert export_name(c) & 1, "HAS_FLAGS"
# Unknown command: EINVAL (22), the connection goes on.
assert c.call(99, 0, 512)[0] == EINVAL, "unknown command -> EINVAL"
assert c.call(READ, 0, 4096) == (0, b"\xaa" * 4096)
# Zero-length read: EINVAL.
assert c.call(READ, 0, 0)[0] == EINVAL, "zero-length read -> EINVAL"
# Bad request magic: the server closes this connection.
c.send(b"\xde\xad\xbe\xef" + bytes(24))
assert c.closed(), "bad magic must close the connection"

# Half-sent header, then hang up.
c = Conn(path); export_name(c)
c.send(struct.pack(">IHH", REQ, 0, 0)); c.close()
# Hang up in the middle of a WRITE payload.
c = Conn(path); export_name(c)
c.request(WRITE, 0, 1 << 20, payload=bytes(1000)); c.close()
# Hang up without reading the reply to a big read (mid-reply).
c = Conn(path); export_name(c)
for i in range(8):
    c.request(READ, 0, 8 << 20)
c.close()
# Hang up in the middle of the handshake.
c = Conn(path); c.send(struct.pack(">QI", OPT, GO)); c.close()
# Unknown export via EXPORT_NAME is served by busexmp (any name), but a
# client flag the server does not know closes the connection.
c = Conn(path, cflags=None); c.recvn(18)
c.send(struct.pack(">I", 0x80)); assert c.closed(), "unknown client flag"
# NBD_OPT_ABORT: ACK, then the server closes.
c = Conn(path); c.option(ABORT)
assert c.reply()[1] == ACK and c.closed(), "ABORT"

# The connection that was open all along still works, and so do new ones.
assert survivor.pread(4096, 0) == b"\xaa" * 4096, "survivor"
h = nbd.NBD(); h.connect_unix(path)
assert h.pread(4096, 0) == b"\xaa" * 4096, "new client"
print("ok")
PY
PATH=/usr/bin:$PATH python3 "$tmp/t.py" "$sock" || fail "raw protocol checks failed (see above)"
kill -0 "$server_pid" 2>/dev/null || fail "server died"
