#!/bin/bash
# test-nbd-fuse-ext4: a real filesystem on busexmp through the kernel's
# block layer, without an NBD driver: nbdfuse exposes the export as a file,
# a direct-I/O loop device turns it into a block device, then mkfs.ext4,
# mount -o discard, write files, fstrim (TRIM reaches the server: the map
# shows holes again), umount, e2fsck -fn clean, remount, checksums equal.
. "$(dirname "$0")/functions.sh"
requires nbdfuse losetup mkfs.ext4 e2fsck fstrim nbdinfo fusermount3
requires_root
[ -c /dev/fuse ] || skip "/dev/fuse is missing"
losetup -f >/dev/null 2>&1 || skip "no free loop device"
start_busexmp 256M

mkdir "$tmp/fuse" "$tmp/mnt"
nbdfuse "$tmp/fuse/disk" --unix "$sock" &
fuse_pid=$!
on_exit "fusermount3 -u $tmp/fuse; kill $fuse_pid"
for ((i = 0; i < 500; i++)); do [ -f "$tmp/fuse/disk" ] && break; sleep 0.02; done
[ -f "$tmp/fuse/disk" ] || fail "nbdfuse did not expose $tmp/fuse/disk"

loop=$(losetup -f --show --direct-io=on "$tmp/fuse/disk") || skip "losetup failed"
on_exit "losetup -d $loop"
mkfs.ext4 -q -F -E nodiscard "$loop" || fail "mkfs.ext4 failed"
mount -o discard "$loop" "$tmp/mnt" || skip "mount failed (no ext4 or loop support?)"
on_exit "umount $tmp/mnt"
head -c 40M /dev/urandom >"$tmp/mnt/big"
for i in $(seq 1 50); do head -c $((i * 1000 + 17)) /dev/urandom >"$tmp/mnt/small$i"; done
mkdir "$tmp/mnt/dir" && cp "$tmp/mnt/small1" "$tmp/mnt/dir/copy"
(cd "$tmp/mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$tmp/sums"
sync
used_before=$(nbdinfo --map "$uri" | awk '$3 == 0 {s += $2} END {print s + 0}')
rm "$tmp/mnt/big"
sync
fstrim -v "$tmp/mnt" >/dev/null || fail "fstrim failed"
used_after=$(nbdinfo --map "$uri" | awk '$3 == 0 {s += $2} END {print s + 0}')
[ "$used_after" -lt $((used_before - 30 * 1048576)) ] ||
    fail "trim did not free space: $used_before bytes of data before, $used_after after"
grep -v ' ./big$' "$tmp/sums" >"$tmp/sums2"
umount "$tmp/mnt"
e2fsck -fn "$loop" >"$tmp/fsck.log" 2>&1 || fail "e2fsck found problems: $(tail -5 "$tmp/fsck.log")"
mount "$loop" "$tmp/mnt" || fail "remount failed"
(cd "$tmp/mnt" && sha256sum -c --quiet "$tmp/sums2") || fail "checksums differ after remount"
umount "$tmp/mnt"
