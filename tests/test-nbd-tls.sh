#!/bin/bash
# test-nbd-tls: NBD over TLS (NBD_OPT_STARTTLS) with libnbd's clients
# (nbdinfo, nbdsh, nbdcopy) against busexmp, with keys
# and a test CA made here by psktool and certtool.  PSK and X.509 connect,
# negotiate TLS 1.3 and read back what they wrote; --tls=require refuses a
# plaintext client and tells it nothing (no export name, size or flag);
# a wrong key, an unknown username, a CA the client does not trust, an
# expired server certificate and one for another name are refused;
# --tls-verify-peer refuses a client without a certificate, with an
# expired one or one from another CA, and a refused handshake never falls
# back to plaintext; --tls=on serves both; the server names what failed.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/tls-functions.sh"
requires nbdinfo nbdsh
make_psk alice
make_pki
P=$tmp/pki
port=$(free_port)
# start_tls ARGS...: busexmp 64M on $tmp/sock and 127.0.0.1:$port (-v: the
# log says which TLS version and identity each session had).
start_tls() {
    [ -z "${server_pid:-}" ] || stop_server TERM || true
    : >"$tmp/server.log"
    start_busexmp 64M -v --tcp "127.0.0.1:$port" --exports disk,secret-export "$@"
}
psk_uri() { echo "nbds+unix://${2:-alice}@/${1:-disk}?socket=$sock&tls-psk-file=${3:-$tmp/keys.psk}"; }
x509_uri() { echo "nbds://localhost:$port/${2:-disk}?tls-certificates=$1"; }
# refused WHAT URI: the client must fail, and never reach the export.
refused() {
    if nbdinfo --size "$2" >"$tmp/out" 2>&1; then
        fail "$1: the client was served: $(cat "$tmp/out")"
    fi
}
# rw URI: write a pattern at 1 MiB and read it back through nbdsh.
rw() {
    nbdsh -c "
import os
h.set_uri_allow_local_file(True)  # tls-psk-file=, tls-certificates=
h.connect_uri('$1')
d = os.urandom(65536)
h.pwrite(d, 1 << 20)
assert h.pread(65536, 1 << 20) == d
assert h.get_size() == 64 << 20
" || fail "read/write over $1"
}

# ---- PSK, required ----
start_tls --tls-psk "$tmp/keys.psk"
rw "$(psk_uri)"
rw "nbds://alice@127.0.0.1:$port/disk?tls-psk-file=$tmp/keys.psk"
grep -q 'TLS: (TLS1.3).* with PSK and ECDHE .*client identity "alice"' "$tmp/server.log" ||
    fail "PSK session was not TLS 1.3 with ECDHE for alice: $(grep 'TLS:' "$tmp/server.log")"
# A wrong key for alice, and a username the server does not know.
cp "$tmp/keys.psk" "$tmp/good.psk"
make_psk alice && mv "$tmp/keys.psk" "$tmp/wrong.psk" && mv "$tmp/good.psk" "$tmp/keys.psk"
refused "wrong PSK" "$(psk_uri disk alice "$tmp/wrong.psk")"
make_psk mallory && mv "$tmp/keys.psk" "$tmp/mallory.psk" && make_psk alice
refused "unknown PSK username" "$(psk_uri disk mallory "$tmp/mallory.psk")"
grep -q "TLS handshake with a Unix socket client failed" "$tmp/server.log" ||
    fail "the server did not log the failed handshakes"

# Plaintext clients of a require server: refused, and told nothing.
refused "plaintext client" "nbd+unix:///disk?socket=$sock"
if nbdinfo --list "nbd+unix:///?socket=$sock" >"$tmp/list" 2>&1; then
    fail "plaintext --list succeeded: $(cat "$tmp/list")"
fi
grep -q secret-export "$tmp/list" && fail "plaintext --list showed an export name"
PATH=/usr/bin:$PATH python3 - "$sock" "$top/tests" <<'EOF' || fail "a plaintext client learned something"
import struct, sys
sys.path.insert(0, sys.argv[2])
from nbdraw import *
c = Conn(sys.argv[1])
for opt, data in ((LIST, b""), (INFO, struct.pack(">I", 4) + b"disk\0\0"),
                  (GO, struct.pack(">I", 0) + b"\0\0"), (STRUCTURED_REPLY, b""),
                  (99, b"junk")):
    c.option(opt, data)
    o, typ, msg = c.reply()
    assert (o, typ) == (opt, ERR_TLS_REQD), (opt, hex(typ), msg)
c.option(EXPORT_NAME, b"disk")  # cannot be refused: the server closes
assert c.closed(), "EXPORT_NAME without TLS was not closed"
for secret in (b"secret-export", b"disk", struct.pack(">Q", 64 << 20)):
    assert secret not in c.received, "leaked %r" % secret
EOF

# ---- X.509, required, over TCP (the client checks the name "localhost") ----
start_tls --tls-certificates "$P/server"
rw "$(x509_uri "$P/client")"
grep -q 'TLS: (TLS1.3)-(ECDHE' "$tmp/server.log" || fail "X.509 session was not TLS 1.3 with ECDHE"
refused "client trusts another CA" "$(x509_uri "$P/otherca")"
start_tls --tls-certificates "$P/server-othername"
refused "certificate for another name" "$(x509_uri "$P/client")"
start_tls --tls-certificates "$P/server-expired"
grep -q "server-cert.pem: the certificate has expired" "$tmp/server.log" ||
    fail "no warning at start for an expired server certificate"
refused "expired server certificate" "$(x509_uri "$P/client")"
start_tls --tls-certificates "$P/server-otherca"
refused "server certificate from another CA" "$(x509_uri "$P/client")"

# ---- --tls-verify-peer: the client's certificate is its identity ----
start_tls --tls-certificates "$P/server" --tls-verify-peer
rw "$(x509_uri "$P/client")"
grep -q "client identity \"$CLIENT_DN1\"" "$tmp/server.log" || fail "client DN not seen"
mkdir "$tmp/nocert" && cp "$P/ca/ca-cert.pem" "$tmp/nocert/"
refused "no client certificate" "$(x509_uri "$tmp/nocert")"
refused "expired client certificate" "$(x509_uri "$P/client-expired")"
refused "client certificate from another CA" "$(x509_uri "$P/client-otherca")"
grep -q "failed: client certificate: .*expired" "$tmp/server.log" ||
    grep -q "failed: handshake: .*[Cc]ertificate" "$tmp/server.log" ||
    fail "the server did not say why client certificates were refused"

# ---- --tls=on: TLS at the client's choice; plaintext served too ----
start_tls --tls=on --tls-psk "$tmp/keys.psk"
rw "$(psk_uri)"
rw "nbd+unix:///disk?socket=$sock"
nbdinfo --list "nbd+unix:///?socket=$sock" | grep -q secret-export || fail "--tls=on: plaintext list"
# The TCP listener is loopback: no plaintext warning.
grep -q "warning: TCP" "$tmp/server.log" && fail "warned about a loopback listener"

# ---- bulk data: nbdcopy 1 GiB in and back out, bit-exact ----
# (fio's nbd engine cannot take TLS credentials: libnbd refuses the local
# files of tls-psk-file= and tls-certificates= in a URI unless the program
# allows them, and fio does not.)
stop_server TERM || true
server_pid=
start_busexmp 1G --tls-psk "$tmp/keys.psk" --exports disk
head -c 1G /dev/urandom >"$tmp/src"
t0=$(date +%s.%N)
nbdcopy --flush "$tmp/src" "$(psk_uri)" || fail "nbdcopy into the TLS export"
nbdcopy "$(psk_uri)" - | cmp - "$tmp/src" || fail "1 GiB over TLS did not come back bit-exact"
t1=$(date +%s.%N)
echo "nbdcopy 1 GiB in and out over TLS: $(awk "BEGIN {print $t1 - $t0}") s"
rm -f "$tmp/src"
stop_server TERM || fail "busexmp exit status $? after the TLS runs"
exit 0
