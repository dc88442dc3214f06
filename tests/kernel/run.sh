#!/bin/bash
# tests/kernel/run.sh: `make check-kernel`, libbuse's /dev/nbdN path against
# a real kernel.  The host has no NBD driver, so each case boots its own
# small VM (tests/kernel/vm.sh: Debian's 6.1 cloud kernel, qemu TCG) with
# the project's programs copied in: a fresh kernel per case keeps a wedged
# device from spoiling the next case.  Installs its own packages with
# apt-get when root.  Prints one PASS/FAIL/SKIP line per case and a closing
# "N passed, N failed" line; exit 0 only if nothing failed.
# usage: tests/kernel/run.sh [CASE...]   (e.g. run.sh busexmp-ioctl)
set -uo pipefail
cd "$(dirname "$0")/../.."
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
t0=$(date +%s.%N)

# Packages: the VM, its userland, and the reference client.
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static)
[ -x /sbin/nbd-client ] || need+=(nbd-client)
command -v cpio >/dev/null || need+=(cpio)
[ -x /sbin/mke2fs ] || need+=(e2fsprogs)
[ -x /sbin/fsfreeze ] && [ -x /sbin/blkdiscard ] || need+=(util-linux)
command -v jq >/dev/null || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "check-kernel: missing packages ${need[*]} (run as root to install them)" >&2
        exit 1
    fi
    echo "check-kernel: apt-get install ${need[*]}" >&2
    (export DEBIAN_FRONTEND=noninteractive
     apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}") >&2 ||
        { echo "check-kernel: apt-get install failed" >&2; exit 1; }
fi
[ -x ./busexmp ] || echo "check-kernel: ./busexmp not built: its cases will fail" >&2

# The cases, in order: cheap and basic first.
all=(missing-module busexmp-netlink busexmp-ioctl busexmp-multiconn busesnap
     ublk-busexmp ublk-busesnap)
sel=("${all[@]}")
[ $# -gt 0 ] && sel=("$@")

# One run at a time per machine: two TCG VMs on two cores time each other
# out, and the log folder is shared.
lock=${TMPDIR:-/tmp}/busesnap-check-kernel.lock
exec 8>"$lock"
if ! flock -n 8; then
    echo "check-kernel: waiting for another run (lock $lock)" >&2
    flock 8
fi
export VM_TIMEOUT=${VM_TIMEOUT:-240}

logdir=tests/kernel/logs
rm -rf "$logdir"
mkdir -p "$logdir"
pass=0 failn=0 skipn=0
for c in "${sel[@]}"; do
    script=tests/kernel/case-$c.sh
    [ -f "$script" ] || { echo "FAIL $c (no $script)"; failn=$((failn + 1)); continue; }
    start=$(date +%s)
    # ublk cases boot the 6.12 kernel (6.1 has no ublk_drv), the others
    # the distribution's cloud kernel.
    series= extra=${VM_EXTRA_BINS:-}
    case $c in ublk-*) series=6.12 ;; esac
    case $c in *bench*) extra="$extra $(command -v fio || true)" ;; esac
    KERNEL_SERIES=$series VM_EXTRA_BINS=$extra tests/kernel/vm.sh "$script" >"$logdir/$c.log" 2>&1
    rc=$?
    secs=$(($(date +%s) - start))
    vmline=$(grep -a '^VM: ' "$logdir/$c.log" | tail -1)
    case $rc in
    0)
        vmline=${vmline#VM: PASS (}
        echo "PASS $c (${secs}s; ${vmline%)})"
        grep -a '^  RESULT' "$logdir/$c.log" | sed 's/^  RESULT/     /'
        pass=$((pass + 1)) ;;
    77)
        echo "SKIP $c: $(grep -a -m1 '^SKIP' "$logdir/$c.log")"
        skipn=$((skipn + 1)) ;;
    *)
        echo "FAIL $c (rc=$rc, ${secs}s)"
        tail -n 30 "$logdir/$c.log" | sed 's/^/    /'
        failn=$((failn + 1)) ;;
    esac
done
echo "check-kernel: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.0f", b-a}')s in all; logs in $logdir"
[ "$skipn" -gt 0 ] && echo "($skipn skipped)"
echo "$pass passed, $failn failed"
[ "$failn" -eq 0 ] && [ "$pass" -gt 0 ]
