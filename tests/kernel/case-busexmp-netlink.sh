#!/bin/bash
# Case (a): `busexmp 256M /dev/nbd0` attached through generic netlink.
# ext4 round trip (mkfs, mount, write, umount, e2fsck -fn, remount, verify),
# a second server on the same device is refused (EBUSY), SIGTERM releases
# the device and a re-attach works, `nbd-client -d` stops the server.
. /test/guest.sh
load_nbd
[ -x /test/bin/busexmp ] || fail "busexmp was not built"

start srv busexmp 256M /dev/nbd0
wait_nbd /dev/nbd0 15 $pid
size=$(blockdev --getsize64 /dev/nbd0)
[ "$size" = 268435456 ] || fail "/dev/nbd0 size $size, expected 268435456"
# Netlink's NBD_CMD_CONNECT runs in the server's main thread: the pid file
# names the process; the ioctl path names its NBD_DO_IT thread instead.
kpid=$(cat /sys/block/nbd0/pid)
[ "$kpid" = "$pid" ] || fail "/sys/block/nbd0/pid is $kpid, not busexmp's pid $pid: not attached through netlink?"
note "attached via netlink: size $size, pid $kpid, discard_max=$(cat /sys/block/nbd0/queue/discard_max_bytes), io_timeout=$(cat /sys/block/nbd0/queue/io_timeout) ms (default)"

rc=0
timeout 20 busexmp 64M /dev/nbd0 >/tmp/busy.err 2>&1 || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "a second busexmp on the busy /dev/nbd0 exited $rc"
grep -qi 'in use\|busy' /tmp/busy.err || fail "second attach: no 'in use' message: $(cat /tmp/busy.err)"
note "second server on nbd0 refused: $(head -n 1 /tmp/busy.err)"

# "/dev/nbd" means the first free device (netlink NBD_CMD_STATUS): nbd1.
srv_pid=$pid
start auto busexmp 64M /dev/nbd
wait_nbd /dev/nbd1 15 $pid
[ "$(cat /sys/block/nbd1/pid)" = "$pid" ] || fail "busexmp 64M /dev/nbd: nbd1's pid file is not the server's"
grep -q 'attached /dev/nbd1' /tmp/auto.err || fail "busexmp 64M /dev/nbd did not say it attached /dev/nbd1: $(cat /tmp/auto.err)"
term_released $pid /dev/nbd1 20 "busexmp on /dev/nbd1"
pid=$srv_pid
note "/dev/nbd (auto) took the free /dev/nbd1 while nbd0 was busy: $(head -n 1 /tmp/auto.err)"

ext4_fill /dev/nbd0 /mnt/a
ext4_verify /dev/nbd0 /mnt/a
note "ext4 round trip clean and verified"

term_released $pid /dev/nbd0 20 "busexmp"
note "SIGTERM: exit 0, /dev/nbd0 released"

start srv2 busexmp 256M /dev/nbd0
wait_nbd /dev/nbd0 15 $pid
dd if=/dev/zero of=/dev/nbd0 bs=1M count=4 oflag=direct 2>/dev/null || fail "write after re-attach"
dd if=/dev/nbd0 of=/dev/null bs=1M count=4 iflag=direct 2>/dev/null || fail "read after re-attach"
note "re-attach of /dev/nbd0 works"
nbd-client -d /dev/nbd0 >/dev/null 2>&1 || fail "nbd-client -d /dev/nbd0 failed"
wait_exit $pid 20
[ $exit_rc -eq 0 ] || fail "busexmp exited $exit_rc after nbd-client -d"
wait_nbd_gone /dev/nbd0
note "nbd-client -d: server exit 0, device released"

# --timeout reaches the kernel; kill -9 leaves a netlink device bound (no
# one is left to disconnect it) until nbd-client -d; then it attaches again.
start srv4 busexmp 64M /dev/nbd0 --timeout 7
wait_nbd /dev/nbd0 15 $pid
t=$(cat /sys/block/nbd0/queue/io_timeout)
[ "$t" = 7000 ] || fail "busexmp --timeout 7: io_timeout is $t ms, expected 7000"
kill -KILL $pid
wait_exit $pid 20
dd if=/dev/nbd0 of=/dev/null bs=4k count=1 skip=100 iflag=direct 2>/dev/null && rd=ok || rd=EIO
note "--timeout 7: io_timeout 7000 ms; after kill -9: pid file $([ -e /sys/block/nbd0/pid ] && echo present || echo gone), read $rd"
nbd-client -d /dev/nbd0 >/dev/null 2>&1
wait_nbd_gone /dev/nbd0
start srv5 busexmp 64M /dev/nbd0
wait_nbd /dev/nbd0 15 $pid
term_released $pid /dev/nbd0 20 "busexmp"
note "after kill -9 and nbd-client -d, /dev/nbd0 attached and released again"

# SIGTERM the moment the device is live (before or just as the server
# enters buse_server_run): still a clean exit that releases the device.
for i in 1 2 3 4 5; do
    start early$i busexmp 64M /dev/nbd0
    wait_nbd /dev/nbd0 15 $pid
    kill -TERM $pid
    wait_exit $pid 20
    [ $exit_rc -eq 0 ] || fail "SIGTERM right after attach (round $i): busexmp exited $exit_rc"
    wait_nbd_gone /dev/nbd0
done
note "SIGTERM right after attach, 5 rounds: exit 0 and device released each time"
