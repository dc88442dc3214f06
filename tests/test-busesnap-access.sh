#!/bin/bash
# test-busesnap-access: who may open what, over TLS.  Exports restricted to
# TLS identities (bsnap access --allow: PSK usernames, certificate DNs)
# open only for those identities, by name, by UUID and as export "", are
# listed to nobody else, and a snapshot or clone of one inherits the
# restriction; a plaintext client has no identity.  An access change that
# would refuse a connected client is refused unless --force, which
# disconnects it.  Per-export read-only; --no-list; with --tls=require a
# client without an identity lists nothing; attributes survive a restart;
# one warning line for plaintext TCP on a non-loopback address.  An
# ephemeral clone (SNAP@ephemeral) opens for whom its snapshot opens.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/tls-functions.sh"
requires nbdinfo nbdsh jq
make_psk alice bob
make_pki
bsnap() { "$top/bsnap" "$@"; }
port=$(free_port)
as() { echo "nbds+unix://$1@/$2?socket=$sock&tls-psk-file=$tmp/keys.psk"; }
# opens WHO EXPORT / refused WHO EXPORT: can WHO (a PSK user, or "plain")
# open EXPORT?
try_open() {
    local u
    if [ "$1" = plain ]; then u="nbd+unix:///$2?socket=$sock"; else u=$(as "$1" "$2"); fi
    nbdinfo --size "$u" >"$tmp/out" 2>&1
}
opens() { try_open "$@" || fail "$1 cannot open export '$2': $(cat "$tmp/out")"; }
refused() {
    if try_open "$@"; then fail "$1 opened export '$2', which it may not"; fi
    grep -q "server replied with error\|server has no export named\|server requires TLS" "$tmp/out" ||
        fail "$1, '$2': not a refusal by the server: $(cat "$tmp/out")"
}
# listed WHO: the export names WHO sees, sorted, space-separated.
listed() {
    nbdinfo --list --json "$(as "$1" "")" | jq -r '[.exports[]."export-name"] | sort | join(" ")'
}

# TLS offered, plaintext allowed, on every address: one warning line.
start_busesnap 64M --tls=on --tls-psk "$tmp/keys.psk" --tcp "0.0.0.0:$port"
assert_eq "plaintext TCP warnings" 1 "$(grep -c "warning: TCP 0.0.0.0:$port is not loopback and TLS is optional" "$tmp/server.log")"
bsnap create s1 >/dev/null
bsnap clone s1 vm-alice >/dev/null
bsnap clone s1 vm-bob >/dev/null
bsnap access vm-alice --allow alice >/dev/null
bsnap access vm-bob --allow bob >/dev/null
bsnap access vm-bob | grep -q "allowed: bob" || fail "bsnap access does not show bob"
alice_uuid=$(bsnap list --json | jq -r '.[] | select(.name=="vm-alice") | .uuid')
opens alice vm-alice
opens alice "$alice_uuid"
refused bob vm-alice
refused bob "$alice_uuid"
refused plain vm-alice
opens bob vm-bob
refused plain vm-bob
assert_eq "alice's list" " default s1 vm-alice" "$(listed alice)"
assert_eq "bob's list" " default s1 vm-bob" "$(listed bob)"
grep -q 'export "vm-alice" refused to a client with TLS identity bob' "$tmp/server.log" ||
    fail "the server did not log bob's refusal"

# Snapshots and clones inherit the allowed identities.
bsnap create a-snap --volume vm-alice >/dev/null
bsnap clone a-snap a-clone >/dev/null
refused bob a-snap
refused bob a-clone
opens alice a-clone
assert_eq "a-clone access" '["alice"]' "$(bsnap list --json | jq -c '.[] | select(.name=="a-clone") | .allow')"
# An ephemeral clone opens for whom its snapshot opens, and a refused
# client makes none.
refused bob a-snap@ephemeral
refused bob a-snap@ephemeral:x
refused plain a-snap@ephemeral:x
assert_eq "clones made for refused clients" "" "$(bsnap list --json | jq -r '.[] | select(.name | contains("@")) | .name')"
opens alice a-snap@ephemeral:x
opens alice a-snap@ephemeral

# The default export follows its volume's access.
bsnap access default --allow alice >/dev/null
refused bob ""
opens alice ""
bsnap access default --allow-any >/dev/null
opens bob ""

# Restricting a served export: refused while it would cut a client off,
# --force disconnects the object's clients.
rm -f "$tmp/release"
nbdsh -c "
import os, time
h.set_uri_allow_local_file(True)
h.connect_uri('$(as alice vm-alice)')
open('$tmp/held', 'w').close()
while not os.path.exists('$tmp/release'):
    h.pread(512, 0)
    time.sleep(0.02)
" >"$tmp/held.log" 2>&1 &
held=$!
on_exit "kill $held"
for ((i = 0; i < 500; i++)); do [ -e "$tmp/held" ] && break; sleep 0.02; done
[ -e "$tmp/held" ] || fail "alice's connection never came up"
rc=0; bsnap access vm-alice --allow bob 2>"$tmp/err" || rc=$?
assert_eq "restricting a served export: exit" 1 "$rc"
grep -q "served to 1 NBD client that the new access would refuse" "$tmp/err" || fail "refusal: $(cat "$tmp/err")"
kill -0 $held 2>/dev/null || fail "the refused change disconnected alice"
bsnap access vm-alice | grep -q "allowed: alice" || fail "the refused change changed the access"
bsnap access vm-alice --allow bob --force | grep -q "disconnected 1 client" || fail "access --force"
rc=0; wait $held || rc=$?
[ $rc -ne 0 ] || fail "alice's connection survived the --force change"
opens bob vm-alice
refused alice vm-alice
bsnap access vm-alice --allow alice --force >/dev/null

# Per-export read-only: the client sees a read-only export, writes fail.
bsnap access vm-bob --read-only >/dev/null
nbdsh -c "
h.set_uri_allow_local_file(True)
h.set_strict_mode(0)  # send the write anyway: the server must refuse it
h.connect_uri('$(as bob vm-bob)')
assert h.is_read_only()
try:
    h.pwrite(b'x' * 4096, 0)
    raise SystemExit('write to a read-only export succeeded')
except nbd.Error as e:
    assert e.errno == 'EPERM', e.errno
" || fail "per-export read-only"
assert_eq "vm-bob access column" "ro, 1 id" "$(bsnap list | awk '$1 == "vm-bob" {print $(NF-2), $(NF-1), $NF}')"

# Attributes survive a restart (IMAGE-exports.json); --no-list.
stop_server TERM
: >"$tmp/server.log"
start_busesnap "" --tls-psk "$tmp/keys.psk" --no-list
refused bob vm-alice
opens alice vm-alice
if nbdinfo --list "$(as alice "")" >"$tmp/out" 2>&1; then fail "--no-list: alice listed the exports"; fi
# require: the plaintext client cannot even ask.
refused plain vm-bob
grep -q "warning: TCP" "$tmp/server.log" && fail "a Unix-only server warned about TCP"
stop_server TERM

# X.509 identities: the certificate DN, with --tls-verify-peer.
start_busesnap "" --tls-certificates "$tmp/pki/server" --tls-verify-peer --tcp "127.0.0.1:$port"
bsnap access vm-bob --read-write --allow "$CLIENT_DN2" >/dev/null
x509() { nbdinfo --size "nbds://localhost:$port/$2?tls-certificates=$tmp/pki/$1" >"$tmp/out" 2>&1; }
x509 client2 vm-bob || fail "client2 cannot open vm-bob: $(cat "$tmp/out")"
if x509 client vm-bob; then fail "client1 opened vm-bob, restricted to client2"; fi
stop_server TERM
: >"$tmp/server.log"
# Certificates without client verification: TLS, but no identity, so a
# required-TLS server lists nothing to it; opening still works.
start_busesnap "" --tls-certificates "$tmp/pki/server" --tcp "127.0.0.1:$port"
x509 client s1 || fail "anonymous TLS client cannot open s1: $(cat "$tmp/out")"
if nbdinfo --list "nbds://localhost:$port/?tls-certificates=$tmp/pki/client" >"$tmp/out" 2>&1; then
    fail "a client without a TLS identity listed the exports"
fi
grep -q "warning: TCP" "$tmp/server.log" && fail "warned although TLS is required"
exit 0
