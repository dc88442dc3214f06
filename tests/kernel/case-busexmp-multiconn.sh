#!/bin/bash
# Case (c): several sockets per device (NBD_FLAG_CAN_MULTI_CONN; the kernel
# maps one blk-mq hardware queue to each, at most one per CPU).  For 1, 2
# and 4 connections: attach and check the queue count; up to one per vCPU,
# measure direct-I/O throughput with one dd per vCPU (pinned, so every
# queue carries I/O); run the ext4 round trip over 4.  The server is
# busexmp when it has --connections, else `busesnap serve --connections`.
. /test/guest.sh
load_nbd

if [ -x /test/bin/busexmp ] && busexmp --help 2>&1 | grep -q -- '--connections'; then
    server=busexmp
    run_server() { start "srv$1" busexmp 256M /dev/nbd0 --connections "$1"; }
elif [ -x /test/bin/busesnap ] && busesnap serve --help 2>&1 | grep -q -- '--connections'; then
    server=busesnap
    run_server() {
        start "srv$1" busesnap serve /tmp/mc.db /dev/nbd0 --size 256M \
            --connections "$1" --control /tmp/mc.ctl
    }
else
    skip "neither busexmp nor busesnap offers --connections"
fi
ncpu=$(grep -c ^processor /proc/cpuinfo)
note "server: $server; $ncpu vCPUs"

now() { cut -d' ' -f1 /proc/uptime; }
# bench RW: one dd per vCPU, 32 MiB each at its own offset, O_DIRECT.
bench() {
    local rw=$1 i t0 t1 pids=()
    t0=$(now)
    for ((i = 0; i < ncpu; i++)); do
        if [ "$rw" = write ]; then
            taskset -c $i dd if=/dev/zero of=/dev/nbd0 bs=1M count=32 seek=$((i * 32)) \
                oflag=direct conv=notrunc 2>/dev/null &
        else
            taskset -c $i dd if=/dev/nbd0 of=/dev/null bs=1M count=32 skip=$((i * 32)) \
                iflag=direct 2>/dev/null &
        fi
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || fail "dd $rw failed"; done
    t1=$(now)
    awk -v a="$t0" -v b="$t1" -v n="$ncpu" 'BEGIN{d=b-a; if (d<=0) d=0.01; printf "%.0f", n*32/d}'
}

for n in 1 2 4; do
    run_server $n
    wait_nbd /dev/nbd0 30 $pid
    # blk-mq makes one queue per connection, at most one per CPU.
    q=$(ls /sys/block/nbd0/mq | wc -l)
    want=$((n < ncpu ? n : ncpu))
    [ "$q" = "$want" ] || fail "$n connections: the kernel has $q hardware queues, expected $want"
    # Throughput where it can differ: up to one queue per CPU.
    if [ $n -le $ncpu ]; then
        w=$(bench write)
        r=$(bench read)
        note "RESULT connections=$n: write ${w} MB/s, read ${r} MB/s (dd bs=1M O_DIRECT, $ncpu streams, TCG guest)"
    fi
    if [ $n = 4 ]; then
        ext4_fill /dev/nbd0 /mnt/a
        ext4_verify /dev/nbd0 /mnt/a
        note "ext4 round trip over 4 connections clean and verified"
    fi
    term_released $pid /dev/nbd0 30 "$server ($n connections)"
done
note "every connection count attached, served and released cleanly"
