#!/usr/bin/python3
"""nbdfuzz.py: a random protocol fuzzer for an NBD server on a Unix socket.

Each round opens a connection and sends a mix of well-formed and corrupted
handshake options and transmission requests (random magics, option and
command numbers, flags, offsets around the export's end, lengths up to
4 GiB with short or missing payloads), then hangs up at a random moment.
Replies are read without blocking and ignored: the point is that the
server neither crashes nor stops serving other clients (run the server
under ASan/UBSan to catch memory errors).  Usage:
  nbdfuzz.py SOCKET SECONDS [SEED]
"""
import random, socket, struct, sys, time

IHAVEOPT = 0x49484156454F5054
REQ = 0x25609513
EXT_REQ = 0x21e41c71

def rnd_len(r):
    return r.choice([0, 1, 4, 511, 512, 4096, 65536, 1 << 20, 33 << 20,
                     r.getrandbits(32), r.randrange(1, 100000)])

def rnd_off(r, size):
    return r.choice([0, size - 1, size, size + 1, r.randrange(size),
                     r.getrandbits(64), (1 << 63) - 1])

def option(r):
    opt = r.choice([1, 2, 3, 5, 6, 7, 8, 9, 10, 11, r.getrandbits(32)])
    name = r.choice([b"", b"a", b"x" * r.randrange(5000)])
    if opt in (6, 7):
        nreq = r.randrange(4)
        data = struct.pack(">I", r.choice([len(name), r.getrandbits(32)]))
        data += name + struct.pack(">H", nreq)
        data += b"".join(struct.pack(">H", r.randrange(6)) for _ in range(nreq))
    elif opt in (9, 10):
        qs = [r.choice([b"base:allocation", b"base:", b"", b"qemu:dirty"])
              for _ in range(r.randrange(3))]
        data = struct.pack(">I", len(name)) + name + struct.pack(">I", len(qs))
        data += b"".join(struct.pack(">I", r.choice([len(q), r.getrandbits(32)])) + q
                         for q in qs)
    else:
        data = bytes(r.getrandbits(8) for _ in range(r.randrange(20)))
    ln = len(data) if r.random() < 0.9 else rnd_len(r)
    magic = IHAVEOPT if r.random() < 0.97 else r.getrandbits(64)
    return struct.pack(">QII", magic, opt, ln) + data

def request(r, size, ext):
    typ = r.choice([0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 1, 1, r.randrange(65536)])
    flags = r.choice([0, 1, 2, 4, 8, 16, r.getrandbits(16)])
    ln = rnd_len(r) if r.random() < 0.5 else r.randrange(1, 70000)
    off = rnd_off(r, size)
    if ext:
        ln = ln if r.random() < 0.9 else r.getrandbits(64)
        magic = EXT_REQ if r.random() < 0.98 else r.getrandbits(32)
        hdr = struct.pack(">IHHQQQ", magic, flags, typ, r.getrandbits(64), off, ln)
    else:
        magic = REQ if r.random() < 0.98 else r.getrandbits(32)
        hdr = struct.pack(">IHHQQI", magic, flags, typ, r.getrandbits(64), off, ln)
    if typ == 2 and r.random() < 0.8:
        typ = 0  # keep most connections alive past a DISC
    if typ == 1:
        pay = min(ln, 70000) if r.random() < 0.9 else r.randrange(min(ln, 70000) + 1)
        hdr += bytes(pay)
    return hdr

def drain(s):
    try:
        while s.recv(1 << 20):
            pass
    except (BlockingIOError, OSError):
        pass

def one_round(path, r, size):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.setblocking(False)
    out = bytearray()
    out += struct.pack(">I", r.choice([3, 3, 3, 1, 0, r.getrandbits(32)]))
    for _ in range(r.randrange(6)):
        out += option(r)
    ext = r.random() < 0.3
    if ext:  # NBD_OPT_EXTENDED_HEADERS: 32-byte requests from here on
        out += struct.pack(">QII", IHAVEOPT, 11, 0)
    if r.random() < 0.8:
        name = b"" if r.random() < 0.9 else b"nope"
        out += struct.pack(">QII", IHAVEOPT, 1, len(name)) + name
        for _ in range(r.randrange(30)):
            out += request(r, size, ext)
    if r.random() < 0.3:
        out = out[:r.randrange(len(out) + 1)]
    deadline = time.time() + 0.5
    while out and time.time() < deadline:
        try:
            n = s.send(out[:65536])
            del out[:n]
        except BlockingIOError:
            drain(s)
            time.sleep(0.001)
        except OSError:
            break
    drain(s)
    s.close()

def main():
    path, secs = sys.argv[1], float(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else random.randrange(1 << 30)
    print("seed", seed, flush=True)
    r = random.Random(seed)
    size = 1 << 20
    end = time.time() + secs
    rounds = 0
    while time.time() < end:
        one_round(path, r, size)
        rounds += 1
    print("rounds", rounds)

main()
