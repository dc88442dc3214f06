#!/bin/bash
# test-nbd-nbdsh: every NBD command and flag through libnbd (nbdsh), with
# structured and with simple replies, and the errors the server must give
# for requests a strict client would never send (libnbd's strict mode off):
# out of range, bad flags, oversized payloads, writes to a read-only export.
. "$(dirname "$0")/functions.sh"
requires nbdsh
start_busexmp 16M

cat >"$tmp/t.py" <<'PY'
import errno, os, sys
uri = sys.argv[1]

def expect_err(code, fn, *a):
    try:
        fn(*a)
    except nbd.Error as e:
        if e.errnum != code:
            sys.exit("%s%r: expected %s, got %s" % (fn.__name__, a[1:],
                     errno.errorcode[code], e))
        return
    sys.exit("%s%r: expected %s, it succeeded" % (fn.__name__, a[1:],
             errno.errorcode[code]))

def run(structured):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    assert h.get_structured_replies_negotiated() == structured
    size = h.get_size()
    assert size == 16 << 20, size
    for f in ("can_flush", "can_fua", "can_trim", "can_zero", "can_cache",
              "can_multi_conn"):
        assert getattr(h, f)(), f
    assert h.can_fast_zero() and not h.is_read_only()
    assert h.can_df() == structured, "DF only with structured replies"

    buf = os.urandom(1 << 20)
    h.pwrite(buf, 4096)
    assert h.pread(1 << 20, 4096) == buf, "read after write"
    h.pwrite(buf[:12345], 3 << 20, nbd.CMD_FLAG_FUA)
    assert h.pread(12345, 3 << 20) == buf[:12345], "FUA write"
    h.flush()
    # Unaligned, straddling, and the very last byte.
    h.pwrite(b"\x5a" * 777, 4095)
    want = h.pread(1, 4094) + b"\x5a" * 777 + buf[4872 - 4096:4873 - 4096]
    assert h.pread(779, 4094) == want, "unaligned write"
    h.pwrite(b"\x7f", size - 1)
    assert h.pread(1, size - 1) == b"\x7f", "last byte"
    # TRIM and WRITE_ZEROES with each flag read back as zeros here.
    h.trim(65536, 4096)
    h.trim(1000, 70000, nbd.CMD_FLAG_FUA)
    assert h.pread(65536, 4096) == bytes(65536), "trim"
    for fl in (0, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FUA,
               nbd.CMD_FLAG_FAST_ZERO,
               nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE):
        h.pwrite(buf[:300000], 1 << 20)
        h.zero(299998, (1 << 20) + 1, fl)
        want = buf[:1] + bytes(299998) + buf[299999:300000]
        assert h.pread(300000, 1 << 20) == want, "zero, flags %d" % fl
    h.cache(1 << 20, 0)
    h.cache(size, 0)

    if structured:
        assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        ext = []
        h.block_status(size, 0, lambda m, o, e, err: ext.append((m, o, list(e))))
        m, o, e = ext[0]
        assert m == nbd.CONTEXT_BASE_ALLOCATION and o == 0, ext
        assert sum(e[0::2]) == size, "extents cover the disk: %r" % e
        assert e[1] == 0, "first page was written: %r" % e
        assert (nbd.STATE_HOLE | nbd.STATE_ZERO) in e[1::2], e
        one = []
        h.block_status(size, 0, lambda m, o, e, err: one.append(list(e)),
                       nbd.CMD_FLAG_REQ_ONE)
        assert len(one[0]) == 2, "REQ_ONE: one extent: %r" % one

    # Errors a strict client never sends: the server must refuse them.
    h.set_strict_mode(0)
    expect_err(errno.EINVAL, h.pread, 4096, size - 1)
    expect_err(errno.EINVAL, h.pread, 1, size)
    expect_err(errno.ENOSPC, h.pwrite, b"x" * 4096, size - 1)
    expect_err(errno.ENOSPC, h.zero, 2, size - 1)
    expect_err(errno.EINVAL, h.trim, 4096, size)
    expect_err(errno.EINVAL, h.cache, 2, 1 << 63)
    expect_err(errno.EINVAL, h.pread, 512, 0, nbd.CMD_FLAG_FUA)
    if structured:
        assert h.pread(4096, 3 << 20, nbd.CMD_FLAG_DF) == buf[:4096], "DF read"
    else:
        expect_err(errno.EINVAL, h.pread, 512, 0, nbd.CMD_FLAG_DF)
    expect_err(errno.EINVAL, h.pwrite, b"x", 0, nbd.CMD_FLAG_NO_HOLE)
    expect_err(errno.EINVAL, h.trim, 512, 0, nbd.CMD_FLAG_FAST_ZERO)
    expect_err(errno.EOVERFLOW, h.pread, 33 << 20, 0)
    # Oversized write: the payload is skipped and the stream stays in sync.
    expect_err(errno.EOVERFLOW, h.pwrite, bytes(33 << 20), 0)
    assert h.pread(4096, 3 << 20) == buf[:4096], "in sync after big write"
    if structured:
        expect_err(errno.EINVAL, h.block_status, 0, 0, lambda *a: 0)
    h.shutdown()

run(True)
run(False)

# Option negotiation: INFO on known and unknown exports, LIST, ABORT.
h = nbd.NBD()
h.set_opt_mode(True)
h.set_full_info(True)  # ask for NBD_INFO_NAME and NBD_INFO_DESCRIPTION
h.connect_uri(uri)
names = []
h.opt_list(lambda n, d: names.append((n, d)))
assert names == [("", "busexmp memory disk")], names
h.opt_info()
assert h.get_size() == 16 << 20
assert h.get_canonical_export_name() == "", "NBD_INFO_NAME"
assert h.get_export_description() == "busexmp memory disk", "NBD_INFO_DESCRIPTION"
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096, "NBD_INFO_BLOCK_SIZE"
ctx = []
h.opt_list_meta_context(lambda c: ctx.append(c))
assert ctx == [nbd.CONTEXT_BASE_ALLOCATION], ctx
h.opt_abort()
print("ok")
PY
PATH=/usr/bin:$PATH python3 -c "import nbd, runpy, sys; sys.argv = ['t', '$uri']; runpy.run_path('$tmp/t.py', {'nbd': nbd})" ||
    fail "nbdsh checks failed (see above)"

# A read-only export refuses every write with EPERM and says so in its flags.
sock2=$tmp/ro.sock
start_server "$sock2" "$top/busexmp" 1M --readonly --socket "$sock2"
out=$(nbdsh -u "nbd+unix:///?socket=$sock2" -c '
import errno
assert h.is_read_only() and not h.can_trim()
h.set_strict_mode(0)
for f, a in ((h.pwrite, (b"x", 0)), (h.trim, (1, 0)), (h.zero, (1, 0))):
    try:
        f(*a)
        print("write-succeeded")
    except nbd.Error as e:
        print(e.errno)
')
assert_eq "read-only export errors" "EPERM EPERM EPERM" "$(echo $out)"
kill -0 "$server_pid" || fail "server died"
