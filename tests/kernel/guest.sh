# tests/kernel/guest.sh: helpers for the in-guest cases (sourced by bash).
# The VM has no udev: /dev/nbdN come from devtmpfs and readiness is read
# from /sys/block/nbdN/pid and size.  Each case prints what it does and
# fails with one line "FAIL: what differed"; servers are started with their
# stderr in /tmp/NAME.err, shown on failure.  Nothing here sleeps for
# synchronisation except polling loops with a deadline.

set -u
export PATH=/test/bin:/usr/sbin:/usr/bin:/sbin:/bin
_errs=()

fail() {
    local f
    echo "FAIL: $*"
    for f in "${_errs[@]}"; do
        [ -s "$f" ] && { echo "--- $f:"; tail -n 15 "$f"; }
    done
    exit 1
}
skip() { echo "SKIP: $*"; exit 77; }

# A case that passed still fails if a server logged a sanitizer report
# (make check-kernel SANITIZER=address,undefined).
_sanitizer_check() {
    local rc=$? f
    [ $rc -eq 0 ] || exit $rc
    for f in "${_errs[@]}"; do
        if grep -q -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$f" 2>/dev/null; then
            echo "FAIL: sanitizer report in $f:"
            grep -m 5 -E 'Sanitizer|runtime error' "$f"
            exit 1
        fi
    done
}
trap _sanitizer_check EXIT
note() { echo "  $*"; }

# load_nbd [PARAMS...]: insmod the nbd module (no deps).
load_nbd() {
    [ -e /sys/module/nbd ] && return 0
    insmod /lib/modules/"$(uname -r)"/nbd.ko "$@" || fail "insmod nbd.ko $*"
}

# poll SECS CMD...: retry CMD every 0.1 s until it succeeds or SECS pass.
poll() {
    local t=$(($1 * 10))
    shift
    while [ $t -gt 0 ]; do
        "$@" && return 0
        sleep 0.1
        t=$((t - 1))
    done
    return 1
}
_nbd_up() { [ -e /sys/block/$1/pid ] && [ "$(cat /sys/block/$1/size 2>/dev/null || echo 0)" != 0 ]; }
_nbd_down() { [ ! -e /sys/block/$1/pid ]; }
_dead() { ! kill -0 "$1" 2>/dev/null; }

# wait_nbd /dev/nbdN [SECS] [PID]: until connected; fail if PID dies first.
wait_nbd() {
    local n=${1##*/} t=$((${2:-15} * 10)) pid=${3:-}
    while [ $t -gt 0 ]; do
        _nbd_up "$n" && return 0
        if [ -n "$pid" ] && _dead "$pid"; then
            fail "server (pid $pid) exited before $1 was connected"
        fi
        sleep 0.1
        t=$((t - 1))
    done
    fail "$1 not connected after ${2:-15}s"
}
# wait_nbd_gone /dev/nbdN [SECS]: until the device is released.
wait_nbd_gone() {
    poll "${2:-15}" _nbd_down "${1##*/}" || fail "$1 still attached (/sys/block/${1##*/}/pid: $(cat /sys/block/${1##*/}/pid))"
}
# wait_exit PID [SECS]: wait for a background child to exit; sets $exit_rc.
wait_exit() {
    poll "${2:-15}" _dead "$1" || fail "process $1 did not exit within ${2:-15}s"
    exit_rc=0
    wait "$1" || exit_rc=$?
}

# term PID: SIGTERM a server, on purpose as soon as its device is live:
# libbuse holds SIGINT/SIGTERM from the attach until buse_server_run() has
# its handlers, so even this early a signal must release the device.
term() {
    kill -TERM "$1"
}

# term_released PID DEV SECS WHAT: SIGTERM the server WHAT, which must
# exit 0 within SECS and release DEV.
term_released() {
    term "$1"
    wait_exit "$1" "$3"
    [ $exit_rc -eq 0 ] || fail "$4 exited $exit_rc after SIGTERM"
    wait_nbd_gone "$2"
}

# start NAME CMD...: run CMD in the background, stderr+stdout to
# /tmp/NAME.err; sets $pid.
start() {
    local name=$1
    shift
    "$@" >"/tmp/$name.err" 2>&1 &
    pid=$!
    _errs+=("/tmp/$name.err")
}

# ext4_fill DEV MNT: mkfs.ext4, mount, write files, record checksums in
# /tmp/sums.${DEV##*/}, umount, e2fsck -fn, remount, verify.  Leaves MNT
# mounted.
ext4_fill() {
    local dev=$1 mnt=$2 sums=/tmp/sums.${1##*/}
    mkfs.ext4 -q -F "$dev" || fail "mkfs.ext4 $dev"
    mkdir -p "$mnt"
    mount -t ext4 "$dev" "$mnt" || fail "mount $dev"
    dd if=/dev/urandom of="$mnt/big" bs=1M count=8 2>/dev/null || fail "write $mnt/big"
    mkdir -p "$mnt/dir"
    for i in 1 2 3 4 5 6 7 8; do
        head -c $((i * 12345)) /dev/urandom >"$mnt/dir/f$i" || fail "write $mnt/dir/f$i"
    done
    (cd "$mnt" && md5sum big dir/*) >"$sums"
    umount "$mnt" || fail "umount $dev"
    echo 3 >/proc/sys/vm/drop_caches
    e2fsck -fn "$dev" >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; fail "e2fsck -fn $dev not clean"; }
    mount -t ext4 "$dev" "$mnt" || fail "remount $dev"
    (cd "$mnt" && md5sum -c -s "$sums") || fail "checksums differ on $dev after remount"
}

# ext4_verify DEV MNT: (MNT mounted) verify, umount, e2fsck -fn clean.
ext4_verify() {
    local dev=$1 mnt=$2 sums=${3:-/tmp/sums.${1##*/}}
    (cd "$mnt" && md5sum -c -s "$sums") || fail "checksums differ on $dev"
    umount "$mnt" || fail "umount $dev"
    e2fsck -fn "$dev" >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; fail "e2fsck -fn $dev not clean"; }
}

# ---- ublk (6.12 kernel only: tests/kernel/run.sh boots it for ublk-*)

# load_ublk: insmod ublk_drv (no deps), or skip where the kernel has none.
load_ublk() {
    [ -e /sys/module/ublk_drv ] && return 0
    local ko=/lib/modules/$(uname -r)/ublk_drv.ko
    [ -f "$ko" ] || skip "kernel $(uname -r) has no ublk_drv.ko"
    insmod "$ko" || fail "insmod ublk_drv.ko"
    poll 5 test -c /dev/ublk-control || fail "no /dev/ublk-control after insmod"
}
_ublk_up() { [ "$(cat /sys/block/$1/size 2>/dev/null || echo 0)" != 0 ]; }
_ublk_gone() { [ ! -e /sys/block/$1 ] && [ ! -e /sys/class/ublk-char/${1/ublkb/ublkc} ]; }
# wait_ublk /dev/ublkbN [SECS] [PID]: until the disk is live; fail if PID
# dies first.
wait_ublk() {
    local n=${1##*/} t=$((${2:-15} * 10)) pid=${3:-}
    while [ $t -gt 0 ]; do
        _ublk_up "$n" && [ -b "$1" ] && return 0
        if [ -n "$pid" ] && _dead "$pid"; then
            fail "server (pid $pid) exited before $1 was live"
        fi
        sleep 0.1
        t=$((t - 1))
    done
    fail "$1 not live after ${2:-15}s"
}
# wait_ublk_gone /dev/ublkbN [SECS]: until the disk and its char device
# are deleted.
wait_ublk_gone() {
    poll "${2:-15}" _ublk_gone "${1##*/}" || fail "$1 still exists ($(ls /sys/block /sys/class/ublk-char 2>&1 | tr '\n' ' '))"
}
