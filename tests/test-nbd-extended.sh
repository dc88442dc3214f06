#!/bin/bash
# test-nbd-extended: NBD_OPT_EXTENDED_HEADERS (qemu 8.2+, libnbd 1.18+; the
# clients here predate it, so a raw-socket client speaks it): 32-byte
# requests with 64-bit lengths, every reply an extended chunk (never a
# simple reply), BLOCK_STATUS_EXT over more than 4 GiB, TRIM of more than
# 4 GiB in one request, errors as ERROR chunks, and a 28-byte (old) request
# after negotiation treated as a bad magic.  The raw client is
# tests/nbdraw.py (shared with test-nbd-errors and test-nbd-hostile).
. "$(dirname "$0")/functions.sh"
requires nbdsh
start_busexmp 8G

cat >"$tmp/t.py" <<'PY'
import os, struct, sys
sys.path.insert(0, os.environ["top"] + "/tests")
from nbdraw import *
path = sys.argv[1]
G = 1 << 30

c = Conn(path)
c.option(EXTENDED_HEADERS)
assert c.reply()[1] == ACK, "EXTENDED_HEADERS not acknowledged"
c.option(EXTENDED_HEADERS)
assert c.reply()[1] == ERR_INVALID, "second EXTENDED_HEADERS must be refused"
c.option(STRUCTURED_REPLY)
assert c.reply()[1] == ERR_INVALID, "STRUCTURED_REPLY after EXTENDED_HEADERS"
q = b"base:allocation"
c.option(SET_META, struct.pack(">II", 0, 1) + struct.pack(">I", len(q)) + q)
_, t, d = c.reply()
assert t == META_CONTEXT and d[4:] == q, (t, d)
ctx = struct.unpack(">I", d[:4])[0]
assert c.reply()[1] == ACK
c.option(GO, struct.pack(">IH", 0, 0))
assert c.final_reply()[0] == ACK, "GO"
assert c.size == 8 * G, c.size
c.extended = c.structured = True

def req(typ, off, ln, flags=0, payload=b""):
    """One request; its single reply chunk as (type, payload)."""
    cookie = c.request(typ, off, ln, flags, payload)
    magic, fl, rtype, ck, roff, rlen = struct.unpack(">IHHQQQ", c.recvn(32))
    assert magic == EXTENDED, "not an extended reply: 0x%x" % magic
    assert ck == cookie and fl & 1 and roff == off, (ck, fl, roff)
    return rtype, c.recvn(rlen)

data = bytes(range(256)) * 16
assert req(WRITE, 5 * G, 4096, payload=data) == (0, b""), "WRITE -> NONE chunk"
t, d = req(READ, 5 * G, 4096)
assert t == T_DATA and struct.unpack(">Q", d[:8])[0] == 5 * G and d[8:] == data, "READ"
assert req(FLUSH, 0, 0) == (0, b""), "FLUSH"
t, d = req(BLOCK_STATUS, 0, 8 * G)
assert t == T_BS_EXT, "BLOCK_STATUS_EXT expected, got type %d" % t
cid, n = struct.unpack(">II", d[:8])
assert cid == ctx and len(d) == 8 + 16 * n, (cid, n, len(d))
ext = [struct.unpack(">QQ", d[8 + 16 * i:24 + 16 * i]) for i in range(n)]
assert ext == [(5 * G, 3), (4096, 0), (3 * G - 4096, 3)], ext
# One TRIM longer than 4 GiB, then the data is gone.
assert req(TRIM, 0, 6 * G) == (0, b""), "TRIM of 6 GiB"
t, d = req(READ, 5 * G, 4096)
assert t == T_DATA and d[8:] == bytes(4096), "TRIM did not zero"
# WRITE_ZEROES beyond 4 GiB with FAST_ZERO.
assert req(WRITE_ZEROES, G, 5 * G, FAST_ZERO) == (0, b""), "WRITE_ZEROES 5 GiB"
# Errors are ERROR chunks: oversized READ, past the end.
t, d = req(READ, 0, 33 << 20)
assert t == T_ERROR and struct.unpack(">I", d[:4])[0] == EOVERFLOW, (t, d)
t, d = req(READ, 8 * G - 1, 2)
assert t == T_ERROR and struct.unpack(">I", d[:4])[0] == EINVAL, (t, d)
t, d = req(WRITE, 8 * G, 1, payload=b"x")
assert t == T_ERROR and struct.unpack(">I", d[:4])[0] == ENOSPC, (t, d)
# An old 28-byte request now has the wrong magic: the connection closes.
c.send(struct.pack(">IHHQQI", REQ, 0, READ, 99, 0, 512) + bytes(4))
assert c.closed(), "old-style request accepted after EXTENDED_HEADERS"
print("ok")
PY
PATH=/usr/bin:$PATH python3 "$tmp/t.py" "$sock" || fail "extended headers checks failed (see above)"
kill -0 "$server_pid" || fail "server died"
