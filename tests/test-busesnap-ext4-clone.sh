#!/bin/bash
# ext4 on a clone of a snapshot of a volume holding another ext4, both
# mounted at once through nbdfuse + direct-I/O loop devices: the snapshot
# is taken of the mounted filesystem after fsfreeze, the clone mounts with
# the frozen files, both sides then diverge, and both fsck clean with the
# checksums each should have.
. "$(dirname "$0")/functions.sh"
requires nbdfuse losetup mkfs.ext4 e2fsck fsfreeze fusermount3
requires_root
[ -c /dev/fuse ] || skip "/dev/fuse is missing"
losetup -f >/dev/null 2>&1 || skip "no free loop device"
bsnap() { "$top/bsnap" "$@"; }

start_busesnap 256M

# attach NAME EXPORT: nbdfuse + loop; sets loop_NAME.
attach() {
    mkdir -p "$tmp/fuse-$1" "$tmp/mnt-$1"
    nbdfuse "$tmp/fuse-$1/disk" "$(uri_of "$2")" &
    on_exit "fusermount3 -u $tmp/fuse-$1; kill $!"
    for ((i = 0; i < 500; i++)); do [ -f "$tmp/fuse-$1/disk" ] && break; sleep 0.02; done
    [ -f "$tmp/fuse-$1/disk" ] || fail "nbdfuse did not expose export '$2'"
    local l
    l=$(losetup -f --show --direct-io=on "$tmp/fuse-$1/disk") || skip "losetup failed"
    on_exit "losetup -d $l"
    eval "loop_$1=$l"
}
files() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }

attach a ""
mkfs.ext4 -q -F -E nodiscard "$loop_a" || fail "mkfs.ext4 on the volume"
mount "$loop_a" "$tmp/mnt-a" || skip "mount failed (no ext4 or loop support?)"
on_exit "umount $tmp/mnt-a"
head -c 20M /dev/urandom >"$tmp/mnt-a/golden"
for i in $(seq 1 30); do head -c $((i * 3000 + 5)) /dev/urandom >"$tmp/mnt-a/f$i"; done
files "$tmp/mnt-a" >"$tmp/sums-frozen"

fsfreeze -f "$tmp/mnt-a" || fail "fsfreeze"
bsnap create frozen >/dev/null || { fsfreeze -u "$tmp/mnt-a"; fail "snapshot of the frozen fs"; }
fsfreeze -u "$tmp/mnt-a"
bsnap clone frozen vm >/dev/null || fail "clone"
# The original goes on changing.
head -c 5M /dev/urandom >"$tmp/mnt-a/after"
rm "$tmp/mnt-a/f1"

attach b vm
e2fsck -fn "$loop_b" >"$tmp/fsck-b0" 2>&1 || fail "the clone of the frozen fs is not clean: $(tail -3 "$tmp/fsck-b0")"
mount "$loop_b" "$tmp/mnt-b" || fail "mount the clone"
on_exit "umount $tmp/mnt-b"
files "$tmp/mnt-b" >"$tmp/sums-b"
cmp -s "$tmp/sums-frozen" "$tmp/sums-b" || fail "the clone does not hold the files as frozen"
head -c 7M /dev/urandom >"$tmp/mnt-b/clone-only"
rm "$tmp/mnt-b/f2"
files "$tmp/mnt-a" >"$tmp/sums-a1"
files "$tmp/mnt-b" >"$tmp/sums-b1"
grep -q clone-only "$tmp/sums-a1" && fail "a file written in the clone shows in the volume"
grep -q ' ./after$' "$tmp/sums-b1" && fail "a file written in the volume shows in the clone"
umount "$tmp/mnt-a"; umount "$tmp/mnt-b"
e2fsck -fn "$loop_a" >"$tmp/fsck-a" 2>&1 || fail "e2fsck of the volume: $(tail -3 "$tmp/fsck-a")"
e2fsck -fn "$loop_b" >"$tmp/fsck-b" 2>&1 || fail "e2fsck of the clone: $(tail -3 "$tmp/fsck-b")"
mount "$loop_a" "$tmp/mnt-a" && mount "$loop_b" "$tmp/mnt-b" || fail "remount"
(cd "$tmp/mnt-a" && sha256sum -c --quiet "$tmp/sums-a1") || fail "volume checksums after remount"
(cd "$tmp/mnt-b" && sha256sum -c --quiet "$tmp/sums-b1") || fail "clone checksums after remount"
umount "$tmp/mnt-a"; umount "$tmp/mnt-b"
bsnap check >/dev/null || fail "store check"
exit 0
