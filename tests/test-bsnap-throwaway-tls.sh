#!/bin/bash
# The throwaway-disk story over the network, as doc/throwaway-disks.md's
# TLS variant tells it: one storage host serves golden images and clones
# over TCP with TLS required and a pre-shared key per hypervisor; each
# clone is restricted to the hypervisor that runs its VM; qemu connects
# with tls-creds-psk; a plaintext client, and a hypervisor asking for
# another's disk, get nothing.  With TRANSCRIPT=FILE it writes the session
# transcript used in the document.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/tls-functions.sh"
requires qemu-img qemu-io nbdinfo jq
PATH=$top:$PATH
cd "$tmp"
out=${TRANSCRIPT:-$tmp/transcript}
: >"$out"
run() {
    echo "\$ $*" >>"$out"
    eval "$@" >>"$out" 2>&1 || fail "'$*' failed: $(tail -2 "$out")"
}
refused() {
    echo "\$ $*" >>"$out"
    local rc=0
    eval "$@" >>"$out" 2>&1 || rc=$?
    [ $rc != 0 ] || fail "'$*' succeeded, expected a refusal"
    echo "[exit $rc]" >>"$out"
}
note() { printf '\n# %s\n' "$*" >>"$out"; }
port=$(free_port)

note "On the storage host: one key per hypervisor (psktool, from gnutls-bin)"
run psktool -u hv1 -p keys.psk
run psktool -u hv2 -p keys.psk
run psktool -u admin -p keys.psk
run "cut -d: -f1 keys.psk"
note "Serve over TCP; credentials alone mean --tls=require"
echo "\$ busesnap serve image.db --size 1G --tcp :$port --tls-psk keys.psk --control ctl.sock &" >>"$out"
busesnap serve image.db --size 1G --tcp ":$port" --tls-psk keys.psk --control ctl.sock >server.log 2>&1 &
server_pid=$!
on_exit "kill $server_pid; wait $server_pid"
wait_for_socket ctl.sock $server_pid
run export BSNAP_CONTROL=ctl.sock
grep -q "warning" server.log && fail "the server warned: $(cat server.log)"
# Each hypervisor gets its own line of keys.psk, in a directory that qemu's
# tls-creds-psk reads (dir=.../keys.psk).
for u in hv1 hv2 admin; do
    mkdir -p "$u" && grep "^$u:" keys.psk >"$u/keys.psk" && chmod 600 "$u/keys.psk"
done
note "Import a golden image as admin, over TLS"
head -c 32M /dev/urandom >golden.img
truncate -s 1G golden.img
creds() { echo "tls-creds-psk,id=tls0,endpoint=client,dir=$1,username=$1"; }
nbd() { echo "driver=nbd,server.type=inet,server.host=localhost,server.port=$port,export=$2,tls-creds=tls0"; }
run "qemu-img convert -n -f raw --object $(creds admin) --target-image-opts golden.img '$(nbd admin "")'"
run bsnap snapshot golden
note "A clone per VM, each opened only by the hypervisor that runs it"
run bsnap clone golden vm1
run bsnap clone golden vm2
run bsnap access vm1 --allow hv1
run bsnap access vm2 --allow hv2
run bsnap access default --allow admin
run bsnap access golden --allow admin
run bsnap list
note "hv1 runs vm1 (qemu-system-x86_64 would take the same --object and -drive driver=nbd,...,tls-creds=tls0)"
run "qemu-img compare --object $(creds hv1) --image-opts 'driver=raw,file.filename=golden.img' '$(nbd hv1 vm1)' | tail -1"
run "qemu-io --object $(creds hv1) --image-opts '$(nbd hv1 vm1)' -c 'write -P 0x11 0 1M' | tail -1"
run "nbdinfo --list 'nbds://hv1@localhost:$port/?tls-psk-file=hv1/keys.psk' | grep export="
note "hv2 cannot open vm1, and does not even see it"
refused "qemu-io --object $(creds hv2) --image-opts '$(nbd hv2 vm1)' -c 'read 0 4k'"
run "nbdinfo --list 'nbds://hv2@localhost:$port/?tls-psk-file=hv2/keys.psk' | grep export="
note "Without TLS, nothing: not a byte of data, not a name"
refused "nbdinfo --list nbd://localhost:$port/"
refused "qemu-img info -f raw nbd://localhost:$port/vm1"
note "Snapshots and clones of vm1 stay hv1's"
run bsnap snapshot vm1-before-upgrade --volume vm1
run bsnap access vm1-before-upgrade
note "Throw vm2 away"
run bsnap delete vm2
run bsnap list
grep -q "^vm1-before-upgrade\|allowed: hv1" "$out" || fail "the snapshot did not inherit hv1"
grep -q 'export="vm1"' "$out" || fail "hv1 did not see vm1"
grep -q "Images are identical" "$out" || fail "vm1 is not the golden image"
exit 0
