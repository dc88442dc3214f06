#!/bin/bash
# Case (d): `busesnap serve image.db /dev/nbd0 --size 256M` on the real
# kernel.  ext4 round trip; a snapshot taken with bsnap while the
# filesystem is mounted (between fsfreeze -f and -u); a clone of it
# attached to /dev/nbd1 (served by the same process on --socket, attached
# with nbd-client) and mounted at the same time, isolated both ways; fstrim
# on nbd0 reaches the store (fewer chunks in `bsnap info --json`); SIGTERM
# releases the device; a restart re-attaches nbd0 and the clone on nbd1
# (--attach) with every file intact; both filesystems fsck clean.
. /test/guest.sh
load_nbd
for p in busesnap bsnap; do [ -x /test/bin/$p ] || fail "$p was not built"; done
mkdir -p /tmp/img
img=/tmp/img/image.db ctl=/tmp/ctl sock=/tmp/snap.sock
bs() { bsnap --control $ctl "$@"; }
chunks() { bs info --json | jq -r '.chunks'; }

start snap busesnap serve $img /dev/nbd0 --size 256M --control $ctl --socket $sock
wait_nbd /dev/nbd0 30 $pid
poll 15 test -S $ctl || fail "no control socket $ctl"
poll 15 test -S $sock || fail "no NBD socket $sock"
size=$(blockdev --getsize64 /dev/nbd0)
[ "$size" = 268435456 ] || fail "/dev/nbd0 size $size, expected 268435456"
note "busesnap attached /dev/nbd0 ($size bytes), control $ctl"

ext4_fill /dev/nbd0 /mnt/a # leaves /mnt/a mounted, sums in /tmp/sums.nbd0
note "ext4 round trip clean and verified"

fsfreeze -f /mnt/a || fail "fsfreeze -f /mnt/a"
bs create s1 >/tmp/create.out 2>&1
rc=$?
fsfreeze -u /mnt/a || fail "fsfreeze -u /mnt/a"
[ $rc -eq 0 ] || fail "bsnap create s1 (filesystem frozen) exited $rc: $(cat /tmp/create.out)"
bs clone s1 c1 >/tmp/clone.out 2>&1 || fail "bsnap clone s1 c1: $(cat /tmp/clone.out)"
note "snapshot s1 of the mounted, frozen filesystem; clone c1: $(tr '\n' ' ' </tmp/clone.out)"

# Written after the snapshot: only the volume has it, not the clone.
dd if=/dev/urandom of=/mnt/a/after bs=1M count=8 2>/dev/null || fail "write /mnt/a/after"
sync

nbd-client -unix $sock /dev/nbd1 -N c1 -b 4096 >/tmp/nbdc.out 2>&1 ||
    fail "nbd-client -unix $sock /dev/nbd1 -N c1: $(cat /tmp/nbdc.out)"
wait_nbd /dev/nbd1 15
mkdir -p /mnt/b
mount -t ext4 /dev/nbd1 /mnt/b || fail "mount the clone /dev/nbd1"
(cd /mnt/b && md5sum -c -s /tmp/sums.nbd0) || fail "clone c1 does not hold the files of snapshot s1"
[ ! -e /mnt/b/after ] || fail "clone c1 shows a file written to the volume after the snapshot"
head -c 3000000 /dev/urandom >/mnt/b/clonefile
(cd /mnt/b && md5sum big dir/* clonefile) >/tmp/sums.nbd1
sync
[ ! -e /mnt/a/clonefile ] || fail "the volume shows a file written to the clone"
(cd /mnt/a && md5sum -c -s /tmp/sums.nbd0) || fail "volume files changed after the clone was written"
note "clone mounted on /dev/nbd1 beside the volume on /dev/nbd0; isolated both ways"

# TRIM reaches the store: the 8 MiB written after the snapshot belong to the
# volume alone; delete them and fstrim.
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
note "RESULT fstrim: $(cat /tmp/fstrim.out); store chunks $before -> $after"

ext4_verify /dev/nbd0 /mnt/a
ext4_verify /dev/nbd1 /mnt/b /tmp/sums.nbd1
nbd-client -d /dev/nbd1 >/dev/null 2>&1 || fail "nbd-client -d /dev/nbd1"
wait_nbd_gone /dev/nbd1
term_released $pid /dev/nbd0 30 "busesnap"
note "both filesystems fsck clean; SIGTERM: exit 0, /dev/nbd0 released"

# Restart on the same image: the volume on nbd0, the clone on nbd1.
start snap2 busesnap serve $img /dev/nbd0 --attach /dev/nbd1=c1 --control $ctl
wait_nbd /dev/nbd0 30 $pid
wait_nbd /dev/nbd1 15 $pid
mount -t ext4 /dev/nbd0 /mnt/a || fail "mount /dev/nbd0 after restart"
mount -t ext4 /dev/nbd1 /mnt/b || fail "mount /dev/nbd1 (clone) after restart"
ext4_verify /dev/nbd0 /mnt/a
ext4_verify /dev/nbd1 /mnt/b /tmp/sums.nbd1
bs check >/tmp/check.out 2>&1 || fail "bsnap check: $(tail -n 3 /tmp/check.out)"
term_released $pid /dev/nbd0 30 "busesnap (restarted)"
wait_nbd_gone /dev/nbd1
note "restart re-attached nbd0 and the clone on nbd1: files intact, fsck clean, bsnap check ok; SIGTERM released both"
