#!/bin/bash
# Case (b): the BUSE ioctl fallback (BUSE_FORCE_IOCTL=1, read by libbuse):
# NBD_SET_SOCK ... NBD_DO_IT in a thread.  ext4 round trip; `nbd-client -d`
# makes the server exit cleanly; SIGTERM releases the device; after an
# ioctl device, a netlink attach of the same device works.
. /test/guest.sh
load_nbd
[ -x /test/bin/busexmp ] || fail "busexmp was not built"

start srv env BUSE_FORCE_IOCTL=1 busexmp 256M /dev/nbd0
wait_nbd /dev/nbd0 15 $pid
kpid=$(cat /sys/block/nbd0/pid)
[ "$kpid" != "$pid" ] && [ -d /proc/$pid/task/$kpid ] ||
    fail "/sys/block/nbd0/pid is $kpid: not a thread of busexmp ($pid) other than its main thread: not ioctl?"
note "attached via ioctl: NBD_DO_IT in thread $kpid of busexmp $pid"

# "auto" through ioctl: the first nbdN without a pid file is nbd1.
srv_pid=$pid
start auto env BUSE_FORCE_IOCTL=1 busexmp 64M auto
wait_nbd /dev/nbd1 15 $pid
[ -d /proc/$pid/task/$(cat /sys/block/nbd1/pid) ] || fail "busexmp 64M auto (ioctl): nbd1 is not served by it"
term_released $pid /dev/nbd1 20 "busexmp (ioctl) on /dev/nbd1"
pid=$srv_pid
note "auto (ioctl) took the free /dev/nbd1 while nbd0 was busy: $(head -n 1 /tmp/auto.err)"

ext4_fill /dev/nbd0 /mnt/a
ext4_verify /dev/nbd0 /mnt/a
note "ext4 round trip clean and verified"

nbd-client -d /dev/nbd0 >/dev/null 2>&1 || fail "nbd-client -d /dev/nbd0 failed"
wait_exit $pid 20
[ $exit_rc -eq 0 ] || fail "busexmp exited $exit_rc after nbd-client -d"
wait_nbd_gone /dev/nbd0
note "nbd-client -d: server exit 0, device released"

start srv2 env BUSE_FORCE_IOCTL=1 busexmp 256M /dev/nbd0
wait_nbd /dev/nbd0 15 $pid
dd if=/dev/urandom of=/tmp/r bs=1M count=4 2>/dev/null
dd if=/tmp/r of=/dev/nbd0 bs=1M oflag=direct 2>/dev/null || fail "write after ioctl re-attach"
cmp -n 4194304 /tmp/r /dev/nbd0 || fail "data read back differs after ioctl re-attach"
term_released $pid /dev/nbd0 20 "busexmp (ioctl)"
note "ioctl re-attach, I/O, SIGTERM: exit 0, device released"

start srv3 busexmp 256M /dev/nbd0
wait_nbd /dev/nbd0 15 $pid
[ "$(cat /sys/block/nbd0/pid)" = "$pid" ] || fail "netlink attach after ioctl use: pid file $(cat /sys/block/nbd0/pid) != $pid"
term_released $pid /dev/nbd0 20 "busexmp"
note "netlink attach of the same device after ioctl use works"

# kill -9 of an ioctl server: NBD_DO_IT is interrupted and the device freed.
start srv4 env BUSE_FORCE_IOCTL=1 busexmp 64M /dev/nbd0 --timeout 9
wait_nbd /dev/nbd0 15 $pid
t=$(cat /sys/block/nbd0/queue/io_timeout)
[ "$t" = 9000 ] || fail "busexmp --timeout 9 (ioctl): io_timeout is $t ms, expected 9000"
kill -KILL $pid
wait_exit $pid 20
poll 10 _nbd_down nbd0 && gone=released || gone="still bound"
note "ioctl --timeout 9: io_timeout 9000 ms; after kill -9 the device is $gone"
nbd-client -d /dev/nbd0 >/dev/null 2>&1
wait_nbd_gone /dev/nbd0
start srv5 env BUSE_FORCE_IOCTL=1 busexmp 64M /dev/nbd0
wait_nbd /dev/nbd0 15 $pid
term_released $pid /dev/nbd0 20 "busexmp (ioctl)"
note "ioctl attach after kill -9 works"
