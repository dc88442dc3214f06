#!/usr/bin/python3
"""make-corpus.py: write the seed corpora of the libFuzzer targets.

tests/fuzz/corpus-nbd/ gets one file per handshake option and per
transmission command (the mode byte of fuzz-nbd.c first), and
tests/fuzz/corpus-control/ one file per control operation of
doc/control.md plus framing and malformed cases.  The committed corpora
are this script's output plus crash-* reproducers added by hand; run it
again only to regenerate the seeds (it does not touch crash-* files).
Usage: tests/fuzz/make-corpus.py
"""
import os, struct

top = os.path.dirname(os.path.abspath(__file__))
IHAVEOPT = 0x49484156454F5054
REQ, EXT_REQ = 0x25609513, 0x21E41C71
FLAGS = struct.pack(">I", 3)  # FIXED_NEWSTYLE | NO_ZEROES
CTX = b"base:allocation"


def opt(o, data=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(data)) + data


def go(name=b"disk", infos=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + \
        b"".join(struct.pack(">H", i) for i in infos)


def meta(queries, name=b""):
    d = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    return d + b"".join(struct.pack(">I", len(q)) + q for q in queries)


def req(cmd, off, length, flags=0, cookie=1, payload=b"", ext=False):
    if ext:
        return struct.pack(">IHHQQQ", EXT_REQ, flags, cmd, cookie, off,
                           length) + payload
    return struct.pack(">IHHQQI", REQ, flags, cmd, cookie, off, length) + payload


DISC = 2


def nbd_seeds():
    s = {}
    # Mode 0: the whole handshake is in the input.
    s["hs-export-name"] = b"\x00" + FLAGS + opt(1, b"disk") + \
        req(0, 0, 512) + req(DISC, 0, 0)
    s["hs-export-name-zeroes"] = b"\x00" + struct.pack(">I", 1) + opt(1, b"")
    s["hs-export-name-unknown"] = b"\x00" + FLAGS + opt(1, b"nosuch")
    s["hs-abort"] = b"\x00" + FLAGS + opt(2)
    s["hs-list"] = b"\x00" + FLAGS + opt(3) + opt(2)
    s["hs-starttls"] = b"\x00" + FLAGS + opt(5) + opt(2)
    # STARTTLS, then what follows is the TLS handshake: a ClientHello-like
    # record with a random-looking body, and plaintext options (injected).
    s["hs-starttls-hello"] = b"\x00" + FLAGS + opt(5) + \
        b"\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x03\x03" + bytes(range(44))
    s["hs-starttls-plain-go"] = b"\x00" + FLAGS + opt(5) + opt(7, go(b"disk"))
    s["hs-starttls-data"] = b"\x00" + FLAGS + opt(5, b"x") + opt(5) + opt(2)
    # Mode 0x08 without a prefix: TLS required; options refused first.
    s["hs-require"] = b"\x08" + FLAGS + opt(3) + opt(7, go(b"disk")) + \
        opt(99, bytes(100)) + opt(5) + b"\x15\x03\x03\x00\x02\x02\x28"
    s["hs-require-export-name"] = b"\x08" + FLAGS + opt(1, b"disk")
    s["hs-info"] = b"\x00" + FLAGS + opt(6, go(b"disk", (0, 1, 2, 3))) + opt(2)
    s["hs-info-eio"] = b"\x00" + FLAGS + opt(6, go(b"eio")) + opt(2)
    s["hs-go"] = b"\x00" + FLAGS + opt(7, go(b"")) + req(DISC, 0, 0)
    s["hs-structured-meta-go"] = b"\x00" + FLAGS + opt(8) + \
        opt(9, meta([b"base:"])) + opt(10, meta([CTX])) + \
        opt(7, go(b"disk", (1,))) + req(7, 0, 65536) + req(DISC, 0, 0)
    s["hs-extended-meta-go"] = b"\x00" + FLAGS + opt(11) + \
        opt(10, meta([CTX, b"other:ctx"])) + opt(7, go(b"odd")) + \
        req(7, 0, 65536, ext=True) + req(DISC, 0, 0, ext=True)
    s["hs-list-meta-all"] = b"\x00" + FLAGS + opt(8) + opt(9, meta([])) + opt(2)
    # Names at the 4096-byte limit and one byte over it.
    s["hs-info-name-4096"] = b"\x00" + FLAGS + opt(6, go(b"n" * 4096, (1,))) + opt(2)
    s["hs-go-name-4097"] = b"\x00" + FLAGS + opt(7, go(b"n" * 4097)) + opt(2)
    s["hs-export-name-4096"] = b"\x00" + FLAGS + opt(1, b"n" * 4096)
    s["hs-export-name-4097"] = b"\x00" + FLAGS + opt(1, b"n" * 4097)
    s["hs-unknown-option"] = b"\x00" + FLAGS + opt(99, b"xyz") + opt(2)
    s["hs-option-too-long"] = b"\x00" + FLAGS + \
        struct.pack(">QII", IHAVEOPT, 3, 70000) + b"\x00" * 64
    s["hs-bad-flags"] = b"\x00" + struct.pack(">I", 0x80)
    # Modes 1-3: a valid handshake is prefixed; the input is requests.
    data = bytes(range(256)) * 16  # 4 KiB
    for mode, tag in ((1, "simple"), (2, "structured"), (3, "extended")):
        e = mode == 3
        m = bytes([mode])
        s["tx-%s-read" % tag] = m + req(0, 4096, 4096, ext=e) + \
            req(0, 0, 1, flags=4 if mode > 1 else 0, ext=e)
        s["tx-%s-write-read" % tag] = m + \
            req(1, 8192, 4096, payload=data, ext=e) + \
            req(1, 0, 4, flags=1, payload=b"EIO!", ext=e) + \
            req(0, 8192, 4096, ext=e)
        s["tx-%s-disc" % tag] = m + req(DISC, 0, 0, ext=e) + req(0, 0, 512, ext=e)
        s["tx-%s-flush" % tag] = m + req(3, 0, 0, ext=e)
        s["tx-%s-trim" % tag] = m + req(4, 0, 65536, flags=1, ext=e)
        s["tx-%s-cache" % tag] = m + req(5, 0, 262144, ext=e)
        s["tx-%s-write-zeroes" % tag] = m + req(6, 0, 8192, flags=0x13, ext=e) + \
            req(6, 100, 8192, flags=0x10, ext=e) + req(6, 0, 4096, flags=2, ext=e)
        s["tx-%s-block-status" % tag] = m + \
            req(1, 4096, 4096, payload=data, ext=e) + \
            req(7, 0, 262144, ext=e) + req(7, 0, 262144, flags=8, ext=e)
        s["tx-%s-out-of-range" % tag] = m + req(0, 262144, 1, ext=e) + \
            req(1, 262143, 2, payload=b"xy", ext=e) + \
            req(0, 0xFFFFFFFFFFFFFF00, 512, ext=e) + req(0, 0, 0, ext=e)
        s["tx-%s-bad-command" % tag] = m + req(42, 0, 512, ext=e) + \
            req(0, 0, 512, flags=0x80, ext=e)
        s["tx-%s-bad-magic" % tag] = m + b"\x00" * 28
    s["tx-extended-payload-len"] = b"\x03" + \
        req(7, 0, 4096, flags=0x20, payload=b"\x00" * 16, ext=True)
    s["tx-extended-huge-write"] = b"\x03" + req(1, 0, 1 << 33, ext=True)
    s["tx-simple-write-too-big"] = b"\x01" + req(1, 0, 64 << 20) + b"abc"
    s["tx-readonly-write"] = b"\x09" + req(1, 0, 4, payload=b"abcd") + \
        req(4, 0, 4096) + req(6, 0, 4096)
    s["tx-odd-size"] = b"\x82" + req(0, 262144 - 1000 - 512, 512) + \
        req(0, 262144 - 1000, 1)
    s["tx-buse1-emulation"] = b"\x05" + req(4, 0, 65536, flags=1) + \
        req(6, 0, 65536, flags=1) + req(6, 0, 4096, flags=0x10) + \
        req(5, 0, 131072) + req(1, 0, 4, flags=1, payload=b"abcd")
    s["tx-small-blocks-verbose"] = b"\x32" + req(0, 0, 8192) + \
        req(1, 0, 8192, payload=data * 2) + req(0, 0, 4096)
    s["tx-serialize"] = b"\x41" + req(1, 0, 4, payload=b"abcd") + \
        req(0, 0, 4) + req(3, 0, 0)
    return s


def control_seeds():
    s = {}
    ops = {
        "hello-mismatch": '{"op":"hello","version":2}\n{"op":"list"}\n',
        "list": '{"op":"list"}\n',
        "info": '{"op":"info"}\n',
        "create": '{"op":"create","name":"s1"}\n'
                  '{"op":"create","name":"s2","volume":"default"}\n',
        "create-bad-names": '{"op":"create","name":""}\n'
                            '{"op":"create","name":"-x"}\n'
                            '{"op":"create","name":"a/b"}\n'
                            '{"op":"create","name":"' + "n" * 65 + '"}\n'
                            '{"op":"create","name":"s0"}\n'
                            '{"op":"create","name":"v","volume":"s0"}\n',
        "clone": '{"op":"clone","snapshot":"s0","name":"c1"}\n'
                 '{"op":"clone","snapshot":"default","name":"c2"}\n',
        "rollback": '{"op":"rollback","snapshot":"s0"}\n'
                    '{"op":"rollback","snapshot":"s0","volume":"default",'
                    '"force":true}\n',
        "delete": '{"op":"create","name":"d1"}\n{"op":"delete","name":"d1"}\n'
                  '{"op":"delete","name":"default","force":false}\n',
        "rename": '{"op":"rename","name":"s0","new_name":"s0b"}\n'
                  '{"op":"rename","name":"s0b","new_name":"default"}\n',
        "diff": '{"op":"diff","from":"s0","to":"default"}\n'
                '{"op":"diff","from":"default","to":"s0"}\n',
        "gc": '{"op":"delete","name":"s0"}\n{"op":"gc"}\n',
        "check": '{"op":"check"}\n',
        "uuid-args": '{"op":"create","name":"u1","volume":'
                     '"00000000-0000-0000-0000-000000000000"}\n'
                     '{"op":"delete","name":"6F1C0000-0000-4000-8000-000000000000"}\n',
        "malformed": '{"op":\n[1,2]\n{"op":1}\n"op"\n{"op":"list","op":"info"}\n'
                     '{"op":"nosuch"}\n{}\n',
        "huge-numbers": '{"op":"hello","version":99999999999999999999}\n'
                        '{"op":"hello","version":-9223372036854775808}\n'
                        '{"op":"hello","version":1e400}\n'
                        '{"op":"create","name":"x","force":1.5e308}\n',
        "types": '{"op":"create","name":["a"]}\n{"op":"rename","name":null,'
                 '"new_name":{}}\n{"op":"rollback","snapshot":true}\n',
        "framing": '\r\n  \t \n{"op":"list"}\r\n\n{"op":"info"}',
        "unicode": '{"op":"create","name":"\\u00e9t\\u00e9"}\n'
                   '{"op":"create","name":"a\\u0000b"}\n'
                   '{"op":"create","name":"\\ud800"}\n',
    }
    for k, v in ops.items():
        s[k] = v.encode()
    s["pre-hello"] = b'\x00{"op":"list"}\n{"op":"hello","version":1}\n' \
                     b'{"op":"list"}\n'
    s["long-line"] = b'{"op":"list","pad":"' + b"x" * 70000 + b'"}\n'
    return s


for d, seeds in (("corpus-nbd", nbd_seeds()), ("corpus-control", control_seeds())):
    path = os.path.join(top, d)
    os.makedirs(path, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    print("%s: %d seeds" % (d, len(seeds)))
