#!/bin/bash
# The throwaway-disk story end to end, as the README tells it: import a
# golden ext4 image with qemu-img convert, snapshot it, clone it per VM,
# mount a clone and write to it, see the space shared, roll the clone back
# (refused while mounted), delete the other clone and collect.  With
# TRANSCRIPT=FILE it also writes the session transcript used in
# doc/throwaway-disks.md.
. "$(dirname "$0")/functions.sh"
requires qemu-img mkfs.ext4 nbdfuse losetup fusermount3 jq
requires_root
[ -c /dev/fuse ] || skip "/dev/fuse is missing"
losetup -f >/dev/null 2>&1 || skip "no free loop device"
PATH=$top:$PATH
cd "$tmp"
out=${TRANSCRIPT:-$tmp/transcript}
: >"$out"
# run CMD...: log "$ CMD" and its output to the transcript; fail on error.
run() {
    echo "\$ $*" >>"$out"
    eval "$@" >>"$out" 2>&1 || fail "'$*' failed: $(tail -2 "$out")"
}
# refused CMD...: the same, expecting exit 1.
refused() {
    echo "\$ $*" >>"$out"
    local rc=0
    eval "$@" >>"$out" 2>&1 || rc=$?
    [ $rc = 1 ] || fail "'$*' exited $rc, expected a refusal"
    echo "[exit 1]" >>"$out"
}
note() { printf '\n# %s\n' "$*" >>"$out"; }

# A golden image: a small ext4 filesystem with an "OS" in it.
mkdir -p golden/etc golden/usr/bin
echo "golden 1.0" >golden/etc/release
head -c 24M /dev/urandom >golden/usr/bin/big-binary
note "A golden image (here a 64 MiB ext4 file system)"
run mkfs.ext4 -q -d golden golden.img 64M
note "Start the server: a 1 GiB image, NBD on nbd.sock, bsnap on ctl.sock"
echo "\$ busesnap serve image.db --size 1G --socket nbd.sock --control ctl.sock &" >>"$out"
busesnap serve image.db --size 1G --socket nbd.sock --control ctl.sock >server.log 2>&1 &
server_pid=$!
on_exit "kill $server_pid; wait $server_pid"
sock=$tmp/nbd.sock
wait_for_socket ctl.sock $server_pid
run export BSNAP_CONTROL=ctl.sock
note "Import the golden image into the default volume"
run qemu-img convert -n -f raw -O raw golden.img "'nbd+unix:///?socket=nbd.sock'"
run bsnap snapshot golden
note "One clone per VM, in milliseconds"
run bsnap clone golden vm1
run bsnap clone golden vm2
run bsnap list
note "Attach vm1 (a VM would use -drive file=nbd+unix:///vm1?socket=nbd.sock,format=raw; here: nbdfuse + loop + mount)"
mkdir -p fuse mnt
echo "\$ nbdfuse fuse/vm1 'nbd+unix:///vm1?socket=nbd.sock' &" >>"$out"
nbdfuse fuse/vm1 'nbd+unix:///vm1?socket=nbd.sock' &
fuse_pid=$!
on_exit "fusermount3 -u $tmp/fuse; kill $fuse_pid"
for ((i = 0; i < 500; i++)); do [ -f fuse/vm1 ] && break; sleep 0.02; done
[ -f fuse/vm1 ] || fail "nbdfuse did not expose vm1"
echo "\$ loop=\$(losetup -f --show --direct-io=on fuse/vm1)" >>"$out"
loop=$(losetup -f --show --direct-io=on fuse/vm1) || skip "losetup failed"
on_exit "losetup -d $loop"
run mount '$loop' mnt
on_exit "umount $tmp/mnt"
run cat mnt/etc/release
run "echo 'vm1 was here' > mnt/etc/release"
run "head -c 8M /dev/urandom > mnt/scratch"
run sync
note "vm2 is used by another VM meanwhile"
run "qemu-io -f raw -c 'write -P 0x55 0 16M' 'nbd+unix:///vm2?socket=nbd.sock' | tail -1"
run bsnap list
run bsnap info
note "Roll vm1 back to the golden image: refused while it is in use"
refused bsnap rollback golden --volume vm1
run umount mnt
run losetup -d '$loop'
run fusermount3 -u fuse
wait $fuse_pid || true # nbdfuse exits and disconnects
run bsnap rollback golden --volume vm1
run "qemu-img compare -f raw -F raw golden.img 'nbd+unix:///vm1?socket=nbd.sock'"
note "Throw vm2 away and collect its space"
run bsnap delete vm2
run bsnap gc
run bsnap list
run bsnap info
run bsnap check
# What the story must have shown.
grep -q '^golden 1.0$' "$out" || fail "the clone did not hold the golden release file"
grep -q 'Images are identical' "$out" || fail "vm1 was not rolled back to the golden image"
grep -q 'is served to [0-9]* NBD clients\? (export "vm1")' "$out" || fail "rollback was not refused with the client named"
exit 0
