#!/bin/bash
# Case: `busesnap serve image.db /dev/ublkb0` through the ublk driver
# (6.12 kernel).  ext4 round trip; a snapshot taken with bsnap while the
# filesystem is mounted and frozen; its clone served over NBD on --socket by
# the same process, attached with nbd-client to /dev/nbd1 beside the ublk
# device and mounted, isolated both ways; rollback refused while the
# volume is attached; fstrim on ublkb0 reaches the store (fewer chunks);
# SIGTERM exits 0 and deletes the device; a restart attaches the volume and
# the clone both on ublk (ublkb0, --attach /dev/ublkb1=c1) with every file
# intact, fsck clean and bsnap check clean; rollback --force while attached
# deletes the volume's device and the next run shows the snapshot.
. /test/guest.sh
load_ublk
load_nbd
for p in busesnap bsnap; do [ -x /test/bin/$p ] || fail "$p was not built"; done
mkdir -p /tmp/img
img=/tmp/img/image.db ctl=/tmp/ctl sock=/tmp/snap.sock
bs() { bsnap --control $ctl "$@"; }
chunks() { bs info --json | jq -r '.chunks'; }

start snap busesnap serve $img /dev/ublkb0 --size 256M --control $ctl --socket $sock
wait_ublk /dev/ublkb0 30 $pid
poll 15 test -S $ctl || fail "no control socket $ctl"
poll 15 test -S $sock || fail "no NBD socket $sock"
size=$(blockdev --getsize64 /dev/ublkb0)
[ "$size" = 268435456 ] || fail "/dev/ublkb0 size $size, expected 268435456"
nq=$(ls -d /sys/block/ublkb0/mq/* | wc -l)
note "busesnap attached /dev/ublkb0 ($size bytes, $nq queues, write_cache '$(cat /sys/block/ublkb0/queue/write_cache)'), control $ctl"

ext4_fill /dev/ublkb0 /mnt/a # leaves /mnt/a mounted, sums in /tmp/sums.ublkb0
note "ext4 round trip clean and verified"

fsfreeze -f /mnt/a || fail "fsfreeze -f /mnt/a"
bs create s1 >/tmp/create.out 2>&1
rc=$?
fsfreeze -u /mnt/a || fail "fsfreeze -u /mnt/a"
[ $rc -eq 0 ] || fail "bsnap create s1 (filesystem frozen) exited $rc: $(cat /tmp/create.out)"
bs clone s1 c1 >/tmp/clone.out 2>&1 || fail "bsnap clone s1 c1: $(cat /tmp/clone.out)"
note "snapshot s1 of the mounted, frozen filesystem; clone c1: $(tr '\n' ' ' </tmp/clone.out)"

rc=0
bs rollback s1 >/tmp/rb.out 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "bsnap rollback s1 succeeded while the volume is attached to /dev/ublkb0"
note "rollback refused while attached: $(head -n 1 /tmp/rb.out)"

dd if=/dev/urandom of=/mnt/a/after bs=1M count=8 2>/dev/null || fail "write /mnt/a/after"
sync

nbd-client -unix $sock /dev/nbd1 -N c1 -b 4096 >/tmp/nbdc.out 2>&1 ||
    fail "nbd-client -unix $sock /dev/nbd1 -N c1: $(cat /tmp/nbdc.out)"
wait_nbd /dev/nbd1 15
mkdir -p /mnt/b
mount -t ext4 /dev/nbd1 /mnt/b || fail "mount the clone /dev/nbd1"
(cd /mnt/b && md5sum -c -s /tmp/sums.ublkb0) || fail "clone c1 does not hold the files of snapshot s1"
[ ! -e /mnt/b/after ] || fail "clone c1 shows a file written to the volume after the snapshot"
head -c 3000000 /dev/urandom >/mnt/b/clonefile
(cd /mnt/b && md5sum big dir/* clonefile) >/tmp/sums.c1
sync
[ ! -e /mnt/a/clonefile ] || fail "the volume shows a file written to the clone"
(cd /mnt/a && md5sum -c -s /tmp/sums.ublkb0) || fail "volume files changed after the clone was written"
note "clone served over NBD on /dev/nbd1 beside the volume on /dev/ublkb0; isolated both ways"

before=$(chunks)
rm /mnt/a/after
sync
fstrim -v /mnt/a >/tmp/fstrim.out 2>&1 || fail "fstrim /mnt/a: $(cat /tmp/fstrim.out)"
after=$(chunks)
if [ "$after" -ge "$before" ]; then
    bs gc >/dev/null 2>&1 || true
    after=$(chunks)
fi
[ -n "$before" ] && [ -n "$after" ] && [ "$after" -lt "$before" ] ||
    fail "fstrim did not free chunks: bsnap info says chunks=$before before, $after after"
note "RESULT fstrim on ublk: $(cat /tmp/fstrim.out); store chunks $before -> $after"

ext4_verify /dev/ublkb0 /mnt/a
ext4_verify /dev/nbd1 /mnt/b /tmp/sums.c1
nbd-client -d /dev/nbd1 >/dev/null 2>&1 || fail "nbd-client -d /dev/nbd1"
wait_nbd_gone /dev/nbd1
term "$pid"
wait_exit $pid 30
[ $exit_rc -eq 0 ] || fail "busesnap exited $exit_rc after SIGTERM"
wait_ublk_gone /dev/ublkb0
note "both filesystems fsck clean; SIGTERM: exit 0, /dev/ublkb0 deleted"

start snap2 busesnap serve $img /dev/ublkb0 --attach /dev/ublkb1=c1 --control $ctl --queues 1
wait_ublk /dev/ublkb0 30 $pid
wait_ublk /dev/ublkb1 15 $pid
mount -t ext4 /dev/ublkb0 /mnt/a || fail "mount /dev/ublkb0 after restart"
mount -t ext4 /dev/ublkb1 /mnt/b || fail "mount /dev/ublkb1 (clone) after restart"
ext4_verify /dev/ublkb0 /mnt/a /tmp/sums.ublkb0
ext4_verify /dev/ublkb1 /mnt/b /tmp/sums.c1
bs check >/tmp/check.out 2>&1 || fail "bsnap check: $(tail -n 3 /tmp/check.out)"
note "restart attached the volume on ublkb0 and the clone on ublkb1 (one queue each): files intact, fsck clean, bsnap check ok"

# rollback --force while attached: the volume's device is stopped and
# deleted (no page cache of the old contents can survive), the clone's
# device and the server stay; after a restart the volume is snapshot s1.
mount -t ext4 /dev/ublkb0 /mnt/a || fail "mount /dev/ublkb0 before rollback"
echo marker >/mnt/a/marker
umount /mnt/a || fail "umount /dev/ublkb0 before rollback"
bs rollback s1 --force >/tmp/rbf.out 2>&1 || fail "bsnap rollback s1 --force: $(cat /tmp/rbf.out)"
wait_ublk_gone /dev/ublkb0
_dead $pid && fail "busesnap exited after rollback --force"
_ublk_up ublkb1 || fail "the clone's /dev/ublkb1 went away with the rollback"
term "$pid"
wait_exit $pid 30
[ $exit_rc -eq 0 ] || fail "busesnap (restarted) exited $exit_rc after SIGTERM"
wait_ublk_gone /dev/ublkb1
start snap3 busesnap serve $img /dev/ublkb0 --control $ctl
wait_ublk /dev/ublkb0 30 $pid
mount -t ext4 /dev/ublkb0 /mnt/a || fail "mount /dev/ublkb0 after rollback"
[ ! -e /mnt/a/marker ] || fail "the file written after s1 survived rollback --force"
ext4_verify /dev/ublkb0 /mnt/a /tmp/sums.ublkb0
term "$pid"
wait_exit $pid 30
[ $exit_rc -eq 0 ] || fail "busesnap (third run) exited $exit_rc after SIGTERM"
wait_ublk_gone /dev/ublkb0
note "rollback --force: $(head -n 1 /tmp/rbf.out); ublkb0 deleted, ublkb1 and the server stayed; after a restart the volume is s1 (marker gone, files intact, fsck clean); SIGTERM deleted the devices"
