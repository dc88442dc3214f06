#!/bin/bash
# test-nbd-tls-qemu: qemu's NBD client over TLS against busesnap, the way a
# hypervisor pool would use it: qemu-img and qemu-io with --object
# tls-creds-psk and tls-creds-x509 (--image-opts ...,tls-creds=), over a
# Unix socket and TCP.  An image converted in through TLS reads back
# identical; qemu-io writes and verifies patterns; --tls-verify-peer
# accepts qemu's client certificate; a wrong key and a plaintext qemu are
# refused by a server that requires TLS.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/tls-functions.sh"
requires qemu-img qemu-io
make_psk alice
make_pki
P=$tmp/pki
port=$(free_port)
mkdir "$tmp/psk-client" && cp "$tmp/keys.psk" "$tmp/psk-client/keys.psk"

psk_obj="tls-creds-psk,id=tls0,endpoint=client,dir=$tmp/psk-client,username=alice"
x509_obj="tls-creds-x509,id=tls0,endpoint=client,dir=$P/client"
unix_opts() { echo "driver=nbd,server.type=unix,server.path=$sock,export=$1,tls-creds=tls0${2:+,$2}"; }
tcp_opts() { echo "driver=nbd,server.type=inet,server.host=localhost,server.port=$port,export=$1,tls-creds=tls0"; }
# qio OBJECT OPTS CMD...: qemu-io over TLS; fails the test on error or on
# a pattern that does not verify.
qio() {
    local obj=$1 opts=$2; shift 2
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io --object "$obj" --image-opts "$opts" "${args[@]}" >"$tmp/qio" 2>&1 ||
        fail "qemu-io $opts $*: $(tail -3 "$tmp/qio")"
    grep -qi "verification failed\|error" "$tmp/qio" && fail "qemu-io $opts $*: $(grep -i "fail\|error" "$tmp/qio" | head -3)"
    return 0
}

# ---- PSK, required, on the Unix socket and TCP ----
start_busesnap 256M --tls-psk "$tmp/keys.psk" --tcp "127.0.0.1:$port" -v
head -c 32M /dev/urandom >"$tmp/golden.raw"
truncate -s 256M "$tmp/golden.raw"
qemu-img convert -n -f raw --object "$psk_obj" --target-image-opts "$tmp/golden.raw" "$(unix_opts "")" ||
    fail "qemu-img convert into busesnap over TLS (PSK)"
"$top/bsnap" create golden >/dev/null
"$top/bsnap" clone golden vm1 >/dev/null
qemu-img compare --object "$psk_obj" --image-opts "driver=raw,file.filename=$tmp/golden.raw" "$(tcp_opts vm1)" >/dev/null ||
    fail "qemu-img compare over TLS/TCP: the clone differs from the golden image"
qemu-img info --object "$psk_obj" --image-opts "$(tcp_opts vm1)" | grep -q "virtual size: 256 MiB" ||
    fail "qemu-img info over TLS/TCP"
qio "$psk_obj" "$(unix_opts vm1)" "write -P 0x5a 1M 4M" "read -P 0x5a 1M 4M"
qio "$psk_obj" "$(tcp_opts vm1)" "read -P 0x5a 1M 4M" "write -z 2M 64k" "read -P 0 2M 64k"
grep -q 'TLS: (TLS1.3).* with PSK.*client identity "alice"' "$tmp/server.log" ||
    fail "qemu's PSK session was not TLS 1.3 for alice"
# A wrong key, and qemu without TLS: refused.
mkdir "$tmp/wrong" && (cd "$tmp/wrong" && psktool -u alice -p keys.psk >/dev/null)
if qemu-io --object "tls-creds-psk,id=tls0,endpoint=client,dir=$tmp/wrong,username=alice" \
    --image-opts "$(unix_opts vm1)" -c "read 0 4k" >"$tmp/out" 2>&1; then
    fail "qemu with a wrong PSK was served"
fi
if qemu-io -f raw -c "read 0 4k" "nbd+unix:///vm1?socket=$sock" >"$tmp/out" 2>&1; then
    fail "plaintext qemu was served by a server that requires TLS"
fi
grep -qi "TLS" "$tmp/out" || fail "plaintext qemu was not told TLS is required: $(cat "$tmp/out")"
stop_server TERM || fail "busesnap exit status $? (PSK)"

# ---- X.509 with client certificates ----
start_busesnap "" --tls-certificates "$P/server" --tls-verify-peer --tcp "127.0.0.1:$port" -v
qio "$x509_obj" "$(tcp_opts vm1)" "read -P 0x5a 1M 1M" "write -P 0x6b 8M 1M" "read -P 0x6b 8M 1M"
qio "$x509_obj" "$(unix_opts vm1 tls-hostname=localhost)" "read -P 0x6b 8M 1M"
grep -q "client identity \"$CLIENT_DN1\"" "$tmp/server.log" || fail "qemu's certificate DN not seen"
if qemu-io --object "tls-creds-x509,id=tls0,endpoint=client,dir=$P/client-expired" \
    --image-opts "$(tcp_opts vm1)" -c "read 0 4k" >"$tmp/out" 2>&1; then
    fail "qemu with an expired client certificate was served"
fi
stop_server TERM || fail "busesnap exit status $? (X.509)"
exit 0
