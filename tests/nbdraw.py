# nbdraw.py: a raw-socket NBD client for tests that must send what no
# well-behaved client (libnbd, qemu) would: bad magics, malformed options,
# out-of-range requests, pipelines nobody reads, STARTTLS misuse.  One Conn
# per socket (Unix; TLS with Python's ssl, X.509 only); every
# field is encoded by hand (big-endian), as doc/proto.md of
# NetworkBlockDevice/nbd lays it out.  Shared by test-nbd-hostile.sh
# (hostile.py), test-nbd-errors.sh and test-nbd-extended.sh.
import socket
import ssl
import struct

NBD_MAGIC = 0x4E42444D41474943
OPT = 0x49484156454F5054  # IHAVEOPT
REP = 0x3E889045565A9
REQ, EXT_REQ = 0x25609513, 0x21E41C71
SIMPLE, STRUCTURED, EXTENDED = 0x67446698, 0x668E33EF, 0x6E8A278C

# Options and option replies.
EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO = 1, 2, 3, 5, 6, 7
STRUCTURED_REPLY, LIST_META, SET_META, EXTENDED_HEADERS = 8, 9, 10, 11
ACK, SERVER, INFO_REP, META_CONTEXT = 1, 2, 3, 4
ERR_UNSUP, ERR_POLICY, ERR_INVALID = 0x80000001, 0x80000002, 0x80000003
ERR_TLS_REQD, ERR_UNKNOWN, ERR_TOO_BIG = 0x80000005, 0x80000006, 0x80000009

# Commands, command flags, reply chunk types, errors.
READ, WRITE, DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS = range(8)
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO, PAYLOAD_LEN = 1, 2, 4, 8, 16, 32
T_NONE, T_DATA, T_HOLE, T_BS, T_BS_EXT = 0, 1, 2, 5, 6
T_ERROR, T_ERROR_OFFSET = 0x8001, 0x8002
EPERM, EIO, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP = 1, 5, 22, 28, 75, 95


class Closed(Exception):
    """The server closed the connection (EOF or reset)."""


class Conn:
    """One raw connection.  After the greeting (connect) it is in the option
    phase; go()/export_name() move it to transmission."""

    def __init__(self, path, cflags=3, timeout=30, tls=None):
        """tls: an ssl.SSLContext (X.509: Python's ssl has no PSK before
        3.13) to run STARTTLS with right after the client flags."""
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.received = b""  # every byte read, for "learns nothing" checks
        self.structured = self.extended = False
        self.size = self.tflags = None
        self.cookie = 0
        if cflags is None:
            return
        magic, opt, flags = struct.unpack(">QQH", self.recvn(18))
        assert magic == NBD_MAGIC and opt == OPT, "bad greeting"
        assert flags & 1, "server is not fixed newstyle"
        self.send(struct.pack(">I", cflags))
        if tls:
            self.starttls(tls)

    def starttls(self, ctx, hostname="localhost"):
        """NBD_OPT_STARTTLS, then the TLS handshake on this socket."""
        self.option(STARTTLS)
        _, typ, data = self.reply()
        assert typ == ACK, "STARTTLS refused: 0x%x %r" % (typ, data)
        self.s = ctx.wrap_socket(self.s, server_hostname=hostname)

    def close(self):
        self.s.close()

    def send(self, b):
        self.s.sendall(b)

    def recvn(self, n):
        b = bytearray()
        while len(b) < n:
            try:
                c = self.s.recv(min(n - len(b), 1 << 20))
            except (ConnectionResetError, ssl.SSLError):
                c = b""
            if not c:
                raise Closed("server closed the connection")
            b += c
        self.received += b
        return bytes(b)

    def closed(self, timeout=10):
        """True if the server closes the connection within timeout
        (anything it sends first is read and discarded)."""
        self.s.settimeout(timeout)
        try:
            while True:
                c = self.s.recv(65536)
                if not c:
                    return True
                self.received += c
        except (ConnectionResetError, BrokenPipeError):
            return True
        except ssl.SSLError:  # the TLS session ended without close_notify
            return True
        except socket.timeout:
            return False

    # ---- option phase ----
    def option(self, opt, data=b""):
        self.send(struct.pack(">QII", OPT, opt, len(data)) + data)

    def reply(self):
        """One option reply: (opt, type, data)."""
        magic, opt, typ, ln = struct.unpack(">QIII", self.recvn(20))
        assert magic == REP, "bad option reply magic 0x%x" % magic
        return opt, typ, self.recvn(ln)

    def final_reply(self):
        """Skip INFO/SERVER/META_CONTEXT replies; (type, data) of the last."""
        while True:
            _, typ, data = self.reply()
            if typ == INFO_REP:
                if struct.unpack(">H", data[:2])[0] == 0:
                    self.size, self.tflags = struct.unpack(">QH", data[2:12])
                continue
            if typ in (SERVER, META_CONTEXT):
                continue
            return typ, data

    def export_name(self, name=b""):
        self.option(EXPORT_NAME, name)
        self.size, self.tflags = struct.unpack(">QH", self.recvn(10))
        return self.size

    def go(self, name=b"", structured=False, meta=False, extended=False):
        """Negotiate and enter transmission; returns the export size."""
        if extended:
            self.option(EXTENDED_HEADERS)
            assert self.reply()[1] == ACK, "EXTENDED_HEADERS refused"
            self.structured = self.extended = True
        elif structured:
            self.option(STRUCTURED_REPLY)
            assert self.reply()[1] == ACK, "STRUCTURED_REPLY refused"
            self.structured = True
        if meta:
            q = b"base:allocation"
            self.option(SET_META, struct.pack(">I", len(name)) + name
                        + struct.pack(">II", 1, len(q)) + q)
            assert self.final_reply()[0] == ACK, "SET_META_CONTEXT"
        self.option(GO, struct.pack(">I", len(name)) + name + b"\0\0")
        typ, data = self.final_reply()
        assert typ == ACK, "GO refused: 0x%x %r" % (typ, data)
        return self.size

    # ---- transmission phase ----
    def header(self, typ, off, ln, flags=0, cookie=None):
        """The request header for this connection's mode (28 or 32 bytes)."""
        if cookie is None:
            self.cookie += 1
            cookie = self.cookie
        if self.extended:
            return struct.pack(">IHHQQQ", EXT_REQ, flags, typ, cookie, off, ln)
        return struct.pack(">IHHQQI", REQ, flags, typ, cookie, off,
                           ln & 0xFFFFFFFF)

    def request(self, typ, off, ln, flags=0, payload=b"", cookie=None):
        self.send(self.header(typ, off, ln, flags, cookie) + payload)
        return self.cookie if cookie is None else cookie

    def response(self, readlen=0):
        """One whole reply: (cookie, errno, data).  Structured chunks are
        gathered until the DONE flag; data is the READ payload, or the
        raw BLOCK_STATUS payload."""
        err, data, cookie = 0, b"", None
        while True:
            magic = struct.unpack(">I", self.recvn(4))[0]
            if magic == SIMPLE:
                err, cookie = struct.unpack(">IQ", self.recvn(12))
                if err == 0 and readlen:
                    data = self.recvn(readlen)
                return cookie, err, data
            if magic == STRUCTURED:
                fl, typ, cookie, ln = struct.unpack(">HHQI", self.recvn(16))
            elif magic == EXTENDED:
                fl, typ, cookie, _, ln = struct.unpack(">HHQQQ",
                                                       self.recvn(28))
            else:
                raise AssertionError("bad reply magic 0x%x" % magic)
            p = self.recvn(ln)
            if typ in (T_ERROR, T_ERROR_OFFSET):
                err = struct.unpack(">I", p[:4])[0]
            elif typ == T_DATA:
                data += p[8:]
            elif typ == T_HOLE:
                data += bytes(struct.unpack(">I", p[8:12])[0])
            elif typ in (T_BS, T_BS_EXT):
                data += p
            if fl & 1:
                return cookie, err, data

    def call(self, typ, off, ln, flags=0, payload=b""):
        """Send one request and wait for its reply: (errno, data)."""
        c = self.request(typ, off, ln, flags, payload)
        cookie, err, data = self.response(ln if typ == READ else 0)
        assert cookie == c, "reply for cookie %s, expected %s" % (cookie, c)
        return err, data
