#!/bin/bash
# Benchmark (not part of check-kernel): the same busexmp memory disk
# served to the same guest as /dev/ublkb0 (ublk, default queues: one per
# vCPU) and as /dev/nbd0 (netlink, one socket, then two), fio libaio 4k
# random read and random write at QD16 over 256 MiB, O_DIRECT, RUNTIME
# seconds each (default 10).  Prints one RESULT line per point.  The
# guest is emulated (TCG): compare the figures with each other only.
# run: tests/kernel/run.sh ublk-bench   (copies fio into the guest)
. /test/guest.sh
load_ublk
load_nbd
command -v fio >/dev/null || skip "no fio in the guest (VM_EXTRA_BINS=/usr/bin/fio)"
rt=${RUNTIME:-10}

point() { # point LABEL DEV RW
    fio --name=p --filename="$2" --ioengine=libaio --direct=1 --bs=4k \
        --iodepth=16 --rw="$3" --size=256M --time_based --runtime="$rt" \
        --ramp_time=1 --output-format=json >/tmp/fio.json 2>/tmp/fio.err ||
        fail "fio $3 on $2: $(tail -n 3 /tmp/fio.err)"
    local k=read
    [ "$3" = randwrite ] && k=write
    iops=$(jq -r ".jobs[0].$k.iops | floor" /tmp/fio.json)
    lat=$(jq -r ".jobs[0].$k.clat_ns.mean / 1000 | floor" /tmp/fio.json)
    note "RESULT $1 $3 4k QD16: $iops IOPS, mean completion latency $lat us"
}
fill() { dd if=/dev/urandom of="$1" bs=1M count=256 oflag=direct 2>/dev/null || fail "fill $1"; }

serve_ublk() {
    start ublk$1 busexmp 256M /dev/ublkb0 ${2:+--queues $2}
    wait_ublk /dev/ublkb0 15 $pid
    fill /dev/ublkb0
    point "ublk(${2:-$(nproc)}q)" /dev/ublkb0 randread
    point "ublk(${2:-$(nproc)}q)" /dev/ublkb0 randwrite
    term "$pid"
    wait_exit $pid 30
    wait_ublk_gone /dev/ublkb0
}
serve_nbd() {
    start nbd$1 busexmp 256M /dev/nbd0 --connections "$1"
    wait_nbd /dev/nbd0 15 $pid
    fill /dev/nbd0
    point "nbd(${1}conn)" /dev/nbd0 randread
    point "nbd(${1}conn)" /dev/nbd0 randwrite
    term_released $pid /dev/nbd0 30 "busexmp on nbd0"
}
serve_ublk a
serve_nbd 1
serve_ublk b 1
serve_nbd 2
