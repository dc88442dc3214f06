#!/bin/bash
# test-nbd-readonly: read-only serving.  busexmp --read-only, busesnap
# --read-only (every export) and a busesnap export made read-only with
# bsnap access: nbdinfo shows it read-only, qemu-io cannot write, and every
# write-type command (WRITE, TRIM, WRITE_ZEROES, with any flags: FUA,
# NO_HOLE, FAST_ZERO, and unknown ones), sent anyway by libnbd with strict
# mode off and by a raw client in simple, structured and extended modes,
# gets EPERM; reads still work and the data never changes.
. "$(dirname "$0")/functions.sh"
requires nbdinfo nbdsh qemu-io jq

# check_ro URI SOCK EXPORT: the whole battery against one export.
check_ro() {
    local uri=$1 s=$2 name=$3
    assert_eq "$uri: nbdinfo is_read_only" true "$(nbdinfo --json "$uri" | jq -r '.exports[0].is_read_only')"
    if qemu-io -f raw -c "write -P 0x66 0 4k" "$uri" >"$tmp/out" 2>&1 &&
        ! grep -qi "read-only\|Permission\|EPERM" "$tmp/out"; then
        fail "$uri: qemu-io wrote to a read-only export: $(cat "$tmp/out")"
    fi
    nbdsh -u "$uri" -c "
h.set_strict_mode(0)  # send them anyway: the server must say EPERM
assert h.is_read_only()
before = h.pread(65536, 0)
def perm(what, f):
    try:
        f()
    except nbd.Error as e:
        assert e.errno == 'EPERM', '%s: %s' % (what, e.errno)
        return
    raise SystemExit('%s succeeded on a read-only export' % what)
for flags in (0, nbd.CMD_FLAG_FUA):
    perm('write', lambda: h.pwrite(b'w' * 4096, 0, flags))
    perm('trim', lambda: h.trim(4096, 0, flags))
for flags in (0, nbd.CMD_FLAG_FUA, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FAST_ZERO,
              nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE):
    perm('zero', lambda: h.zero(4096, 0, flags))
assert h.pread(65536, 0) == before, 'data changed'
" || fail "$uri: libnbd write-type commands"
    PATH=/usr/bin:$PATH python3 - "$s" "$name" "$top/tests" <<'EOF' || fail "$uri: raw write-type commands"
import os, sys
sys.path.insert(0, sys.argv[3])
from nbdraw import *
name = sys.argv[2].encode()
for mode in "sSx":
    c = Conn(sys.argv[1])
    c.go(name, structured=mode == "S", meta=mode in "Sx", extended=mode == "x")
    for typ, payload in ((WRITE, os.urandom(4096)), (TRIM, b""),
                         (WRITE_ZEROES, b"")):
        for flags in (0, FUA, NO_HOLE, FAST_ZERO, FUA | NO_HOLE | FAST_ZERO,
                      0x40):
            if typ != WRITE_ZEROES and flags & (NO_HOLE | FAST_ZERO):
                continue
            err, _ = c.call(typ, 0, 4096, flags, payload)
            assert err == EPERM, "mode %s cmd %d flags 0x%x: errno %d" % (
                mode, typ, flags, err)
    err, data = c.call(READ, 0, 4096)
    assert err == 0, "read errno %d" % err
    c.close()
EOF
}

# busexmp --read-only (the libbuse flag BUSE_READONLY).
start_busexmp 16M --read-only
check_ro "$uri" "$sock" ""
stop_server TERM || fail "busexmp exit status $?"

# busesnap: one export made read-only, the others stay writable.
start_busesnap 16M
qemu-io -f raw -c "write -P 0x33 0 64k" "$uri" >/dev/null || fail "initial write"
"$top/bsnap" create s1 >/dev/null
"$top/bsnap" clone s1 vm1 >/dev/null
"$top/bsnap" access vm1 --read-only >/dev/null
check_ro "$(uri_of vm1)" "$sock" vm1
qemu-io -f raw -c "write -P 0x44 0 64k" "$uri" >/dev/null || fail "the default volume became read-only"
"$top/bsnap" access vm1 --read-write >/dev/null
qemu-io -f raw -c "write -P 0x55 0 64k" "$(uri_of vm1)" >/dev/null || fail "vm1 still read-only after --read-write"
stop_server TERM

# busesnap --read-only: every export, whatever its attributes.
: >"$tmp/server.log"
start_busesnap "" --read-only
check_ro "$uri" "$sock" ""
check_ro "$(uri_of vm1)" "$sock" vm1
qemu-io -f raw -r -c "read -P 0x55 0 64k" "$(uri_of vm1)" >/dev/null || fail "vm1's data changed"
exit 0
