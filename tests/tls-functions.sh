# tests/tls-functions.sh: keys and certificates for the TLS tests, made in
# the test's temp dir with GnuTLS's own tools (gnutls-bin: psktool,
# certtool), never committed.  Source after functions.sh:
#
#   . "$(dirname "$0")/tls-functions.sh"
#   make_psk alice bob          # $tmp/keys.psk ("alice:HEX" lines)
#   make_pki                    # a test CA and certificates, see below
#
# make_pki makes, with ECDSA keys (fast):
#   $tmp/pki/ca/                ca-cert.pem, ca-key.pem: the test CA
#   $tmp/pki/server/            server-cert.pem (CN and DNS localhost, IP
#                               127.0.0.1 and ::1), server-key.pem,
#                               ca-cert.pem: busesnap --tls-certificates
#   $tmp/pki/client/            ca-cert.pem, client-cert.pem (CN=client1,
#                               O=busesnap test), client-key.pem: what
#                               libnbd's tls-certificates= and qemu's
#                               tls-creds-x509 endpoint=client read
#   $tmp/pki/client2/           the same for CN=client2
#   $tmp/pki/client-expired/    a client certificate that expired in 2020
#   $tmp/pki/client-otherca/    a client certificate from another CA
#   $tmp/pki/server-expired/    a server certificate that expired in 2020
#   $tmp/pki/server-othername/  a server certificate for other.example
#   $tmp/pki/server-otherca/    a server certificate from another CA
#   $tmp/pki/otherca/           the other CA (ca-cert.pem, ca-key.pem)
# CLIENT_DN1 and CLIENT_DN2 are the clients' subject DNs as libbuse gives
# them (GnuTLS's RFC 4514 string).

requires psktool certtool

make_psk() {
    local u
    rm -f "$tmp/keys.psk"
    for u in "$@"; do
        psktool -u "$u" -p "$tmp/keys.psk" >/dev/null || fail "psktool -u $u"
    done
    chmod 600 "$tmp/keys.psk"
}

_key() { certtool --generate-privkey --key-type=ecdsa --outfile "$1" 2>/dev/null || fail "certtool: key $1"; }

# _cert OUT KEY CA_DIR TEMPLATE_LINES...
_cert() {
    local out=$1 key=$2 ca=$3; shift 3
    printf '%s\n' "$@" >"$out.tmpl"
    certtool --generate-certificate --load-privkey "$key" \
        --load-ca-certificate "$ca/ca-cert.pem" --load-ca-privkey "$ca/ca-key.pem" \
        --template "$out.tmpl" --outfile "$out" 2>/dev/null || fail "certtool: certificate $out"
}

_ca() {
    mkdir -p "$1"
    _key "$1/ca-key.pem"
    printf '%s\n' "cn = $2" ca cert_signing_key "expiration_days = 30" >"$1/ca.tmpl"
    certtool --generate-self-signed --load-privkey "$1/ca-key.pem" \
        --template "$1/ca.tmpl" --outfile "$1/ca-cert.pem" 2>/dev/null || fail "certtool: CA $1"
}

# _server DIR CA_DIR TEMPLATE_LINES...: a server certificate directory.
_server() {
    local d=$1 ca=$2; shift 2
    mkdir -p "$d"
    _key "$d/server-key.pem"
    _cert "$d/server-cert.pem" "$d/server-key.pem" "$ca" "$@" tls_www_server \
        encryption_key signing_key
    cp "$tmp/pki/ca/ca-cert.pem" "$d/ca-cert.pem"
}

# _client DIR CA_DIR CN TEMPLATE_LINES...: a client certificate directory
# that trusts the test CA.
_client() {
    local d=$1 ca=$2 cn=$3; shift 3
    mkdir -p "$d"
    _key "$d/client-key.pem"
    _cert "$d/client-cert.pem" "$d/client-key.pem" "$ca" "cn = $cn" \
        "organization = busesnap test" tls_www_client encryption_key signing_key "$@"
    cp "$tmp/pki/ca/ca-cert.pem" "$d/ca-cert.pem"
}

make_pki() {
    local p=$tmp/pki past=('activation_date = "2019-01-01 00:00:00"' 'expiration_date = "2020-01-01 00:00:00"')
    _ca "$p/ca" "busesnap test CA"
    _ca "$p/otherca" "another CA"
    local names=("cn = localhost" "dns_name = localhost" "ip_address = 127.0.0.1" "ip_address = ::1")
    _server "$p/server" "$p/ca" "${names[@]}" "expiration_days = 30"
    _server "$p/server-expired" "$p/ca" "${names[@]}" "${past[@]}"
    _server "$p/server-othername" "$p/ca" "cn = other.example" "dns_name = other.example" "expiration_days = 30"
    _server "$p/server-otherca" "$p/otherca" "${names[@]}" "expiration_days = 30"
    _client "$p/client" "$p/ca" client1 "expiration_days = 30"
    _client "$p/client2" "$p/ca" client2 "expiration_days = 30"
    _client "$p/client-expired" "$p/ca" client1 "${past[@]}"
    _client "$p/client-otherca" "$p/otherca" client1 "expiration_days = 30"
    CLIENT_DN1="CN=client1,O=busesnap test"
    CLIENT_DN2="CN=client2,O=busesnap test"
}

# free_port: a TCP port on 127.0.0.1 nobody listens on now.
free_port() {
    PATH=/usr/bin:$PATH python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
