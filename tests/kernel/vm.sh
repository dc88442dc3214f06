#!/bin/bash
# tests/kernel/vm.sh: boot a throw-away qemu VM whose Debian kernel has nbd.ko
# and run one in-guest case script there; the project's built programs are
# copied in.  The host kernel has no NBD driver, so this is how libbuse's
# /dev/nbdN path is tested.  Design: the Debian cloud kernel is fetched with
# `apt-get download` and unpacked with `dpkg -x` (never installed), a base
# busybox-static initramfs is built once and cached, each run appends a small
# cpio with the case, tests/kernel/guest.sh and the programs (with their ldd
# libraries).  Kernel messages go to ttyS0 (console.log), the case's output to
# ttyS1 (test.log), streamed live.  qemu runs TCG: KVM does not work here.
#
# usage: tests/kernel/vm.sh CASE_SCRIPT [-- ARGS...]
# exit: 0 pass, 1 case failed, 77 case skipped, 2 VM/infrastructure problem.
# env: VM_TIMEOUT (s, default 180), VM_SMP (2), VM_MEM (1024), VM_VERBOSE=1,
#      VM_ACCEL (auto|tcg|kvm), KERNEL_PKG, KERNEL_SERIES (6.12: the newest
#      linux-image-6.12.*-cloud-amd64, the one with ublk_drv; default: the
#      distribution's linux-image-cloud-amd64), BUSE_VM_CACHE (default
#      ${TMPDIR:-/tmp}/busesnap-vm-cache), VM_KEEP=1 (keep logs on success),
#      VM_EXTRA_BINS="host paths" (more programs for /test/bin, with libs).
set -euo pipefail

die() { echo "VM: FAIL (infrastructure: $*)"; exit 2; }
[ $# -ge 1 ] || { sed -n '12,17p' "$0"; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
case_script=$1; shift
[ "${1:-}" = "--" ] && shift
[ -f "$case_script" ] || die "no case script $case_script"

t_start=$(date +%s.%N)
cache=${BUSE_VM_CACHE:-${TMPDIR:-/tmp}/busesnap-vm-cache}
mkdir -p "$cache"

# ------------------------------------------------------------ the kernel
exec 9>"$cache/.lock"
flock 9 # parallel runs: one prepares the cache, the others wait
if [ -z "${KERNEL_PKG:-}" ]; then
    meta=linux-image-cloud-amd64
    [ -n "${KERNEL_SERIES:-}" ] && meta=linux-image-$KERNEL_SERIES-cloud-amd64
    KERNEL_PKG=$(cat "$cache/kernel-pkg${KERNEL_SERIES:+-$KERNEL_SERIES}" 2>/dev/null || true)
    if [ -z "$KERNEL_PKG" ]; then
        resolve() { apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
        KERNEL_PKG=$(resolve)
        [ -n "$KERNEL_PKG" ] || { apt-get update -qq >&2 || true; KERNEL_PKG=$(resolve); }
        [ -n "$KERNEL_PKG" ] || die "cannot resolve $meta (apt-get update?)"
        echo "$KERNEL_PKG" >"$cache/kernel-pkg${KERNEL_SERIES:+-$KERNEL_SERIES}"
    fi
fi
kdir=$cache/$KERNEL_PKG
if [ ! -e "$kdir/.done-ublk" ]; then
    echo "[vm] fetching $KERNEL_PKG (apt-get download + dpkg -x, not installed)" >&2
    rm -rf "$kdir"
    mkdir -p "$kdir/deb"
    (cd "$kdir/deb" && apt-get download "$KERNEL_PKG" >/dev/null 2>&1) || die "apt-get download $KERNEL_PKG failed"
    dpkg -x "$kdir"/deb/*.deb "$kdir/root" || die "dpkg -x failed"
    rm -rf "$kdir/deb" "$kdir/root/usr"
    # newer kernels ship .ko.xz; keep nbd and ublk_drv (all we load: ext4
    # is built in; busybox insmod wants them uncompressed)
    find "$kdir/root/lib/modules" \( -path '*/drivers/block/nbd.ko.xz' -o \
        -path '*/drivers/block/ublk_drv.ko.xz' \) -exec xz -d {} + 2>/dev/null || true
    find "$kdir/root/lib/modules" \( -name '*.ko' -o -name '*.ko.xz' \) ! -path '*/drivers/block/nbd.ko' \
        ! -path '*/drivers/block/ublk_drv.ko' -delete
    touch "$kdir/.done-ublk"
fi
kver=$(ls "$kdir/root/lib/modules" | head -1)
vmlinuz=$kdir/root/boot/vmlinuz-$kver
nbd_ko=$kdir/root/lib/modules/$kver/kernel/drivers/block/nbd.ko
[ -f "$vmlinuz" ] && [ -f "$nbd_ko" ] || die "kernel $KERNEL_PKG lacks vmlinuz or nbd.ko"

# ------------------------------------------------------- base initramfs
copy_bin() { # copy_bin ROOT HOSTPATH [GUESTPATH]: a binary and its ldd libs
    local root=$1 src=$2 dst=${3:-$2} lib
    mkdir -p "$root/$(dirname "$dst")"
    cp -L "$src" "$root/$dst"
    for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' || true); do
        [ -e "$root/$lib" ] && continue
        mkdir -p "$root/$(dirname "$lib")"
        cp -L "$lib" "$root/$lib"
    done
}

# Host tools the cases use; the real ones replace busybox applets.
guest_tools="/sbin/mke2fs /sbin/e2fsck /sbin/nbd-client /sbin/blkdiscard /sbin/blockdev
  /sbin/fsfreeze /sbin/fstrim /usr/bin/fallocate /usr/bin/jq /bin/dd /bin/dash /bin/bash"
self_sum=$( (cat "$0"; echo "$guest_tools") | sha256sum | cut -c1-16)
base=$cache/base-$kver-$self_sum.cpio.gz
if [ ! -f "$base" ]; then
    echo "[vm] building base initramfs $base" >&2
    r=$(mktemp -d "$cache/root.XXXXXX")
    mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,mnt,test,root,var/tmp}
    cp /bin/busybox "$r/bin/busybox"
    for p in $(/bin/busybox --list-full); do [ -e "$r/$p" ] || ln -s /bin/busybox "$r/$p"; done
    for b in $guest_tools; do
        [ -x "$b" ] || continue
        for d in bin sbin usr/bin usr/sbin; do rm -f "$r/$d/${b##*/}"; done
        copy_bin "$r" "$b"
    done
    # busybox ash prefers its own applets over PATH: cases run under bash.
    ln -sf dash "$r/bin/sh"
    ln -sf mke2fs "$r/sbin/mkfs.ext4"
    ln -sf e2fsck "$r/sbin/fsck.ext4"
    cp /etc/mke2fs.conf "$r/etc/" 2>/dev/null || true
    mkdir -p "$r/lib/modules/$kver"
    cp "$nbd_ko" "$r/lib/modules/$kver/"
    ublk_ko=${nbd_ko%/nbd.ko}/ublk_drv.ko # 6.12 and later only
    [ -f "$ublk_ko" ] && cp "$ublk_ko" "$r/lib/modules/$kver/"
    ln -sf /proc/self/mounts "$r/etc/mtab"
    echo "root:x:0:0:root:/root:/bin/sh" >"$r/etc/passwd"
    echo "root:x:0:" >"$r/etc/group"
    cat >"$r/init" <<'EOF'
#!/bin/busybox sh
export PATH=/test/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run
ln -sf /proc/self/fd /dev/fd
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
. /test/.env
out=/dev/ttyS1; [ -c $out ] || out=/dev/console
stty -F $out -onlcr 2>/dev/null
{
  echo "VM-BOOTED: $(cut -d' ' -f1 /proc/uptime)s kernel $(uname -r)"
  cd /test
  timeout -s KILL "$CASE_TIMEOUT" /bin/bash /test/case.sh "$@"
  rc=$?
  echo "VM-RESULT: rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)s"
} >$out 2>&1 </dev/null
# no sync: nothing here persists, and sync could hang on a wedged nbd device
poweroff -n -f
sleep 5
EOF
    chmod +x "$r/init"
    (cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) >"$base.tmp" && mv "$base.tmp" "$base"
    for f in "$cache"/base-"$kver"-*.cpio.gz; do [ "$f" = "$base" ] || rm -f "$f"; done
    rm -rf "$r"
fi
flock -u 9

# ----------------------------------------------------------- accelerator
accel=${VM_ACCEL:-auto}
if [ "$accel" = auto ]; then
    # KVM only when it is hardware KVM; kvm_pvm (this host) cannot boot it.
    accel=tcg
    if [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } &&
        [ ! -d /sys/module/kvm_pvm ]; then accel=kvm; fi
fi
if [ "$accel" = kvm ]; then cpu=(-accel kvm -cpu host); else cpu=(-accel tcg,thread=multi -cpu max); fi
timeout_s=${VM_TIMEOUT:-180}

# ---------------------------------------------------------- per-run cpio
runs=${TMPDIR:-/tmp}/busesnap-vm-runs
mkdir -p "$runs"
logdir=$(mktemp -d "$runs/$(basename "$case_script" .sh).XXXXXX")
o=$logdir/overlay
mkdir -p "$o/test/bin"
for p in busexmp busesnap bsnap; do
    [ -x "$top/$p" ] && copy_bin "$o" "$top/$p" "/test/bin/$p"
done
for p in ${VM_EXTRA_BINS:-}; do copy_bin "$o" "$p" "/test/bin/${p##*/}"; done
cp "$case_script" "$o/test/case.sh"
cp "$here/guest.sh" "$o/test/guest.sh"
{
    printf 'CASE_TIMEOUT=%q\n' "$((timeout_s > 20 ? timeout_s - 10 : timeout_s))"
    printf 'set --'
    for a in "$@"; do printf ' %q' "$a"; done
    echo
} >"$o/test/.env"
initrd=$logdir/initrd.cpio.gz
{ cat "$base"; (cd "$o" && find . | cpio -o -H newc --quiet | gzip -1); } >"$initrd"
rm -rf "$o"

# ------------------------------------------------------------------ boot
append="console=ttyS0 panic=-1 oops=panic rdinit=/init tsc=reliable no_timer_check"
append="$append i8042.noaux i8042.nokbd i8042.nopnp"
[ -n "${VM_VERBOSE:-}" ] || append="$append quiet loglevel=3"
: >"$logdir/test.log"
t_qemu=$(date +%s.%N)
timeout -s KILL "$timeout_s" qemu-system-x86_64 "${cpu[@]}" -machine pc \
    -m "${VM_MEM:-1024}" -smp "${VM_SMP:-2}" \
    -nodefaults -no-user-config -display none -vga none -no-reboot \
    -kernel "$vmlinuz" -initrd "$initrd" -append "$append" \
    -serial "file:$logdir/console.log" -serial "file:$logdir/test.log" \
    </dev/null >"$logdir/qemu.log" 2>&1 &
qpid=$!
tail -n +1 -f --pid=$qpid "$logdir/test.log" 2>/dev/null | grep -a -v -E '^VM-(BOOTED|RESULT):' &
tpid=$!
set +e
wait $qpid
qrc=$?
wait $tpid 2>/dev/null
set -e
t_end=$(date +%s.%N)

res=$(grep -a -o 'VM-RESULT: rc=[0-9]*' "$logdir/test.log" | tail -1 || true)
boot=$(grep -a -o 'VM-BOOTED: [0-9.]*s' "$logdir/test.log" | head -1 | awk '{print $2}' || true)
times=$(awk -v a="$t_start" -v q="$t_qemu" -v e="$t_end" -v b="${boot:-?}" -v x="$accel" \
    'BEGIN{printf "accel=%s total=%.1fs vm=%.1fs guest-boot=%s", x, e-a, e-q, b}')
rc=${res#VM-RESULT: rc=}
if [ -n "${VM_VERBOSE:-}" ] || [ "$rc" != 0 ] && [ "$rc" != 77 ]; then
    echo "----- kernel console (last 40 lines of $logdir/console.log) -----"
    tail -n 40 "$logdir/console.log" | tr -d '\r'
    echo "-----"
fi
if [ -z "$res" ]; then
    why="VM ended without a result (kernel panic? qemu rc=$qrc)"
    [ "$qrc" = 137 ] && why="VM timeout after ${timeout_s}s"
    cat "$logdir/qemu.log" >&2
    echo "VM: FAIL ($why; $times; logs in $logdir)"
    exit 2
fi
case $rc in
0)
    echo "VM: PASS ($times)"
    [ -n "${VM_KEEP:-}" ] || rm -rf "$logdir"
    exit 0 ;;
77)
    echo "VM: SKIP ($times)"
    rm -rf "$logdir"
    exit 77 ;;
137) echo "VM: FAIL (killed by the in-guest timeout; $times; logs in $logdir)" ;;
*) echo "VM: FAIL (case exit code $rc; $times; logs in $logdir)" ;;
esac
exit 1
