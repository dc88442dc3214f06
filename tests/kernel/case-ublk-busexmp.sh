#!/bin/bash
# Case: `busexmp 256M /dev/ublkb0` through the ublk driver (6.12 kernel).
# Before the module is loaded: one line naming `modprobe ublk_drv`.
# The device is live with the right size and honest queue limits (volatile
# cache and FUA from the flush callback, discard and write-zeroes from
# trim_flags and write_zeroes); ext4 round trip (mkfs, mount, write,
# umount, e2fsck -fn, remount, verify); dd pattern write and read-back with
# O_DIRECT; a second server on the busy id is refused; /dev/ublkb picks a
# free id; SIGTERM exits 0 and deletes the device; after kill -9 the same
# command deletes the stale device and serves; a re-attach works, with one
# queue and with two; --read-only makes a read-only disk.
. /test/guest.sh
[ -x /test/bin/busexmp ] || fail "busexmp was not built"
if [ ! -e /sys/module/ublk_drv ] && [ -f /lib/modules/$(uname -r)/ublk_drv.ko ]; then
    rc=0
    timeout 20 busexmp 64M /dev/ublkb0 >/tmp/nomod.err 2>&1 || rc=$?
    [ $rc = 1 ] || fail "busexmp on /dev/ublkb0 without ublk_drv exited $rc (expected 1, at once)"
    grep -q 'modprobe ublk_drv' /tmp/nomod.err || fail "no 'modprobe ublk_drv' hint in: $(cat /tmp/nomod.err)"
    note "before insmod ublk_drv: exit 1: $(head -n 1 /tmp/nomod.err)"
fi
load_ublk

start srv busexmp 256M /dev/ublkb0
wait_ublk /dev/ublkb0 15 $pid
size=$(blockdev --getsize64 /dev/ublkb0)
[ "$size" = 268435456 ] || fail "/dev/ublkb0 size $size, expected 268435456"
q=/sys/block/ublkb0/queue
wc=$(cat $q/write_cache) fua=$(cat $q/fua) dmax=$(cat $q/discard_max_bytes)
wz=$(cat $q/write_zeroes_max_bytes) nq=$(ls -d /sys/block/ublkb0/mq/* | wc -l)
note "attached: size $size, write_cache '$wc', fua $fua, discard_max $dmax, write_zeroes_max $wz, $nq hw queues, logical $(cat $q/logical_block_size) physical $(cat $q/physical_block_size)"
[ "$wc" = "write back" ] || fail "write_cache is '$wc', expected 'write back' (busexmp has flush)"
[ "$fua" = 1 ] || fail "fua is $fua, expected 1"
[ "$dmax" != 0 ] || fail "discard_max_bytes is 0 (busexmp has trim_flags)"
[ "$wz" != 0 ] || fail "write_zeroes_max_bytes is 0 (busexmp has write_zeroes)"
[ "$nq" = "$(nproc)" ] || fail "$nq hw queues, expected one per CPU ($(nproc))"

rc=0
timeout 20 busexmp 64M /dev/ublkb0 >/tmp/busy.err 2>&1 || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "a second busexmp on the busy /dev/ublkb0 exited $rc"
grep -qi 'in use' /tmp/busy.err || fail "second attach: no 'in use' message: $(cat /tmp/busy.err)"
note "second server on ublkb0 refused: $(head -n 1 /tmp/busy.err)"

srv_pid=$pid
start auto busexmp 64M /dev/ublkb
wait_ublk /dev/ublkb1 15 $pid
grep -q 'attached /dev/ublkb1' /tmp/auto.err || fail "busexmp 64M /dev/ublkb did not say it attached /dev/ublkb1: $(cat /tmp/auto.err)"
term "$pid"
wait_exit $pid 20
[ $exit_rc -eq 0 ] || fail "busexmp on /dev/ublkb1 exited $exit_rc after SIGTERM"
wait_ublk_gone /dev/ublkb1
pid=$srv_pid
note "/dev/ublkb (auto) took ublkb1 while ublkb0 was busy: $(head -n 1 /tmp/auto.err); SIGTERM deleted it"

# Raw block I/O: a pattern written with O_DIRECT in pieces of every size
# up to the largest request, read back whole.
head -c $((24 << 20)) /dev/urandom >/tmp/pat
dd if=/tmp/pat of=/dev/ublkb0 bs=1M seek=7 oflag=direct conv=fsync 2>/dev/null || fail "dd write to /dev/ublkb0"
dd if=/tmp/pat of=/dev/ublkb0 bs=4k seek=$((100 << 8)) count=777 oflag=direct 2>/dev/null || fail "dd 4k writes"
dd if=/dev/ublkb0 of=/tmp/back bs=1M skip=7 count=24 iflag=direct 2>/dev/null || fail "dd read from /dev/ublkb0"
cmp -s /tmp/pat /tmp/back || fail "read back differs from the pattern written to /dev/ublkb0"
dd if=/dev/ublkb0 of=/tmp/back4 bs=4k skip=$((100 << 8)) count=777 iflag=direct 2>/dev/null || fail "dd 4k reads"
cmp -s /tmp/back4 <(head -c $((777 * 4096)) /tmp/pat) || fail "4k reads differ"
blkdiscard -o $((7 << 20)) -l $((1 << 20)) /dev/ublkb0 || fail "blkdiscard"
blkdiscard -z -o $((8 << 20)) -l $((1 << 20)) /dev/ublkb0 || fail "blkdiscard -z"
dd if=/dev/ublkb0 of=/tmp/z bs=1M skip=8 count=1 iflag=direct 2>/dev/null
cmp -s /tmp/z <(head -c $((1 << 20)) /dev/zero) || fail "blkdiscard -z range does not read as zeros"
note "O_DIRECT pattern (1M and 4k pieces) read back identical; discard and write-zeroes work"

ext4_fill /dev/ublkb0 /mnt/a
ext4_verify /dev/ublkb0 /mnt/a
note "ext4 round trip clean and verified"

term "$pid"
wait_exit $pid 20
[ $exit_rc -eq 0 ] || fail "busexmp exited $exit_rc after SIGTERM"
wait_ublk_gone /dev/ublkb0
note "SIGTERM: exit 0, /dev/ublkb0 and /dev/ublkc0 deleted"

# kill -9: the kernel keeps the device (its requests fail) until someone
# deletes it; the same command run again deletes the stale device and
# serves.
start k9 busexmp 64M /dev/ublkb0
wait_ublk /dev/ublkb0 15 $pid
kill -KILL $pid
wait_exit $pid 20
dd if=/dev/ublkb0 of=/dev/null bs=4k count=1 skip=99 iflag=direct 2>/dev/null && rd=ok || rd=EIO
state="ublkb0 $([ -e /sys/block/ublkb0 ] && echo present || echo gone), ublkc0 $([ -e /sys/class/ublk-char/ublkc0 ] && echo present || echo gone)"
start k9b busexmp 64M /dev/ublkb0
poll 20 grep -q 'left by a server that is gone' /tmp/k9b.err || fail "restart after kill -9 did not delete the stale device: $(cat /tmp/k9b.err)"
poll 20 dd if=/dev/ublkb0 of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null || fail "no I/O on /dev/ublkb0 after the restart"
dd if=/tmp/pat of=/dev/ublkb0 bs=64k count=16 oflag=direct 2>/dev/null || fail "write after restart"
dd if=/dev/ublkb0 of=/tmp/back bs=64k count=16 iflag=direct 2>/dev/null || fail "read after restart"
cmp -s /tmp/back <(head -c $((1 << 20)) /tmp/pat) || fail "read back differs after the restart"
term "$pid"
wait_exit $pid 20
[ $exit_rc -eq 0 ] || fail "busexmp (after kill -9) exited $exit_rc after SIGTERM"
wait_ublk_gone /dev/ublkb0
note "kill -9: read then $rd, $state; the same command again: $(head -n 1 /tmp/k9b.err); I/O verified, SIGTERM deleted it"

# Re-attach with one queue, then two, and depth 16; data written by one
# server is gone (a memory disk) but the device works.
for nq_want in 1 2; do
    start q$nq_want busexmp 64M /dev/ublkb0 --connections $nq_want --queue-depth 16
    wait_ublk /dev/ublkb0 15 $pid
    nq=$(ls -d /sys/block/ublkb0/mq/* | wc -l)
    [ "$nq" = $nq_want ] || fail "--connections $nq_want: $nq hw queues"
    depth=$(cat /sys/block/ublkb0/mq/0/nr_tags 2>/dev/null || echo '?')
    dd if=/tmp/pat of=/dev/ublkb0 bs=64k count=128 oflag=direct 2>/dev/null || fail "write after re-attach"
    dd if=/dev/ublkb0 of=/tmp/back bs=64k count=128 iflag=direct 2>/dev/null || fail "read after re-attach"
    cmp -s /tmp/back <(head -c $((8 << 20)) /tmp/pat) || fail "read back differs after re-attach ($nq_want queues)"
    term "$pid"
    wait_exit $pid 20
    [ $exit_rc -eq 0 ] || fail "busexmp ($nq_want queues) exited $exit_rc after SIGTERM"
    wait_ublk_gone /dev/ublkb0
    note "re-attach with $nq_want queue(s) of depth $depth: I/O verified, SIGTERM deleted it"
done

# A read-only export is a read-only disk (UBLK_ATTR_READ_ONLY), without
# discard or write-zeroes.
start ro busexmp 64M /dev/ublkb0 --read-only
wait_ublk /dev/ublkb0 15 $pid
ro=$(blockdev --getro /dev/ublkb0)
[ "$ro" = 1 ] || fail "busexmp --read-only: blockdev --getro says $ro"
[ "$(cat /sys/block/ublkb0/queue/discard_max_bytes)" = 0 ] || fail "read-only disk advertises discard"
dd if=/tmp/pat of=/dev/ublkb0 bs=4k count=1 oflag=direct 2>/dev/null && fail "a write to the read-only /dev/ublkb0 succeeded"
dd if=/dev/ublkb0 of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null || fail "read from the read-only /dev/ublkb0"
term "$pid"
wait_exit $pid 20
[ $exit_rc -eq 0 ] || fail "busexmp --read-only exited $exit_rc after SIGTERM"
wait_ublk_gone /dev/ublkb0
note "--read-only: getro 1, no discard, writes refused, reads work"

# SIGTERM the moment the device is live: still exit 0 and the device gone.
for i in 1 2 3; do
    start early$i busexmp 64M /dev/ublkb0
    wait_ublk /dev/ublkb0 15 $pid
    kill -TERM $pid
    wait_exit $pid 20
    [ $exit_rc -eq 0 ] || fail "SIGTERM right after attach (round $i): busexmp exited $exit_rc"
    wait_ublk_gone /dev/ublkb0
done
note "SIGTERM right after attach, 3 rounds: exit 0 and device deleted each time"
