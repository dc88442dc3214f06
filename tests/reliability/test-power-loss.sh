#!/bin/bash
# Power loss: as test-crash-loop.sh, but at each cut every write busesnap
# had not synced is lost too.  powercut.so (LD_PRELOAD) logs every write to
# IMAGE, IMAGE-chunks and IMAGE-journal with its old content before letting it through,
# and every successful fsync/fdatasync (O_DSYNC writes count for their own
# bytes; sync_file_range does not count); after SIGKILL, crashload.py takes
# back the unsynced writes: all of them ("all") or, per 4 KiB sector, a
# random prefix of them ("subset": torn and reordered multi-block writes).
# Cuts alternate between the two modes.  First, a short run under strace
# proves that busesnap writes and syncs its image only through calls the
# shim models.  ITERATIONS (default 30) and SEED override the run.
. "$(dirname "$0")/../functions.sh"
requires python3 nbdsh strace
python3 -c 'import nbd' 2>/dev/null || skip "python3 nbd module missing"
[ -x "$top/busesnap" ] && [ -x "$top/bsnap" ] || fail "busesnap and bsnap are not built (make)"
[ -f "$top/tests/reliability/powercut.so" ] ||
    make -s -C "$top" tests/reliability/powercut.so >/dev/null || fail "cannot build powercut.so"

# 0. The shim and the rewind themselves, on a scratch file: synced data
# stays, unsynced writes go (all) or tear at 4 KiB (subset), an O_DSYNC
# write is durable for its bytes, and paths it cannot model fail loudly.
cl=$top/tests/reliability/crashload.py
so=$top/tests/reliability/powercut.so
f=$tmp/self.img
shim_run() { # LOG PYTHON: run python with the shim tracking $f
    rm -f "$1" "$1.fail"
    (LD_PRELOAD=$so POWERCUT_FILES=$f POWERCUT_LOG=$1 python3 -c "$2"; exit $?) 2>/dev/null
}
writes="
import os, signal
fd = os.open('$f', os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.pwrite(fd, b'A' * 8192, 0); os.fsync(fd)   # durable
os.pwrite(fd, b'B' * 4096, 0)                 # unsynced, then settled by:
os.pwrite(fd, b'C' * 8192, 4096)              # unsynced, grows the file
dfd = os.open('$f', os.O_WRONLY | os.O_DSYNC)
os.pwrite(dfd, b'D' * 100, 100)               # durable (O_DSYNC)
os.kill(os.getpid(), signal.SIGKILL)"
shim_run "$tmp/self.log" "$writes" && fail "shim self-test: python was not killed"
python3 "$cl" rewind "$tmp/self.log" all 1 "$f" >/dev/null || fail "shim self-test: rewind all failed"
python3 -c "
d = open('$f', 'rb').read()
want = b'B' * 100 + b'D' * 100 + b'B' * 3896 + b'A' * 4096
assert d == want, 'rewind all: %d bytes, %r... %r...' % (len(d), d[:8], d[4096:4104])
" || fail "shim self-test: 'all' did not leave exactly the synced state"
seen=
for s in $(seq 1 16); do
    shim_run "$tmp/self.log" "$writes" && fail "shim self-test: python was not killed"
    python3 "$cl" rewind "$tmp/self.log" subset "$s" "$f" >/dev/null || fail "shim self-test: rewind subset failed"
    seen+=" $(python3 -c "
d = open('$f', 'rb').read()
assert d[:4096] == b'B' * 100 + b'D' * 100 + b'B' * 3896, 'durable sector changed'
s1, s2 = d[4096:8192], d[8192:]
assert s1 in (b'A' * 4096, b'C' * 4096) and s2 in (b'', b'C' * 4096), 'not a legal mix'
print(s1[:1].decode() + (s2[:1].decode() or '-'))
" || fail "shim self-test: 'subset' left an illegal state")"
done
[ "$(echo $seen | tr ' ' '\n' | sort -u | wc -l)" -ge 3 ] || fail "shim self-test: 'subset' never tears ($seen)"
echo "shim self-test: subset outcomes over 16 seeds:$seen"
shim_run "$tmp/self.log" "
import mmap, os
fd = os.open('$f', os.O_RDWR)
m = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_WRITE | mmap.PROT_READ)
" && fail "shim self-test: a shared writable mmap of a tracked file passed silently"
grep -q "mmap" "$tmp/self.log.fail" || fail "shim self-test: no .fail message for the mmap"
shim_run "$tmp/self.log" "
import os
fd = os.open('$f', os.O_RDWR)
os.pwrite(fd, b'E' * 4096, 0)
os.pwrite(fd, b'G' * 4096, 4096)" || fail "shim self-test: plain write failed"
python3 -c "
import os
fd = os.open('$f', os.O_RDWR)
os.pwrite(fd, b'F' * 10, 50)" # behind the shim's back
out=$(python3 "$cl" rewind "$tmp/self.log" all 1 "$f" || true)
[[ $out == *"did not see"* ]] || fail "shim self-test: a write behind the shim's back was not noticed"
for synced in 0 1; do # a shrinking truncate (the journal's release)
    shim_run "$tmp/self.log" "
import os, signal
fd = os.open('$f', os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.pwrite(fd, b'H' * 12288, 0); os.fsync(fd)
os.ftruncate(fd, 4096)
if $synced: os.fsync(fd)
os.kill(os.getpid(), signal.SIGKILL)" && fail "shim self-test: python was not killed"
    python3 "$cl" rewind "$tmp/self.log" all 1 "$f" >/dev/null || fail "shim self-test: rewind after truncate failed"
    python3 -c "
d = open('$f', 'rb').read()
want = b'H' * 4096 if $synced else b'H' * 12288
assert d.rstrip(b'\0') == want, 'truncate (synced $synced) rewound to %d bytes %r' % (len(d), d[-8:])
" || fail "shim self-test: a shrinking truncate was not modelled"
done
echo "shim self-test: passed (mmap refused, a write behind its back noticed, truncate taken back)"

# 1. Which calls write or sync the image files: every one must be modelled.
modelled='write|pwrite64|writev|pwritev|pwritev2|fsync|fdatasync|sync_file_range|ftruncate|fallocate|mmap|close|read|pread64|preadv|lseek|fstat|newfstatat|flock|fcntl|fadvise64|munmap|fstatfs|statfs'
st=$tmp/st
strace -f -y -qq -o "$tmp/strace.txt" -e trace=%desc,%file,%memory,sync,syncfs \
    "$top/busesnap" serve "$st.db" --size 8M --socket "$st.sock" --control "$st.ctl" \
    >"$tmp/strace-server.log" 2>&1 &
spid=$!
on_exit "kill -9 $spid"
wait_for_socket "$st.ctl" "$spid"
for ((i = 0; i < 200; i++)); do "$top/bsnap" --control "$st.ctl" info >/dev/null 2>&1 && break; sleep 0.05; done
nbdsh -u "nbd+unix:///?socket=$st.sock" -c "
import os
for i in range(64):
    h.pwrite(os.urandom(8192), i * 8192, nbd.CMD_FLAG_FUA if i % 9 == 0 else 0)
h.flush()
h.zero(65536, 0)
h.trim(65536, 65536)
h.flush()
" || fail "strace run: writes"
for op in "create s1" "clone s1 c1" "rollback s1 --force" "delete c1 --force" "gc"; do
    "$top/bsnap" --control "$st.ctl" $op >/dev/null || fail "strace run: bsnap $op"
done
sleep 1.2 # the 1 s background commit
bpid=$(ps -o pid= --ppid $spid | tr -d ' ')
[ -n "$bpid" ] || fail "strace run: busesnap is gone"
kill -TERM "$bpid"
wait $spid || true
# syscall names whose arguments name one of the image files (strace -y)
grep -E "<$st\.db(-chunks|-journal)?>" "$tmp/strace.txt" | sed -E 's/^[0-9]+ +//; s/\(.*//' |
    sort | uniq -c >"$tmp/calls.txt"
echo "calls on the image files (strace):"; sed 's/^/    /' "$tmp/calls.txt"
grep -qE ' (pwritev|writev|pwrite64)$' "$tmp/calls.txt" || fail "strace saw no write to the image: the check is blind"
unmodelled=$(awk '{print $2}' "$tmp/calls.txt" | grep -vxE "$modelled|openat|open" || true)
[ -z "$unmodelled" ] || fail "busesnap uses calls powercut.so does not model on its image: $unmodelled"
grep -E "^[0-9]+ +open(at)?\(.*$st\.db(-chunks|-journal)?\".*O_TRUNC" "$tmp/strace.txt" &&
    fail "busesnap opens its image with O_TRUNC (not modelled)"
grep -E "<$st\.db(-chunks|-journal)?>" "$tmp/strace.txt" | grep -E '^[0-9]+ +mmap\(' |
    grep -E 'PROT_WRITE.*MAP_SHARED|MAP_SHARED.*PROT_WRITE' && fail "busesnap maps its image writable"
grep -qE '^[0-9]+ +(io_uring_setup|io_submit|copy_file_range|sendfile|splice)\(' "$tmp/strace.txt" &&
    fail "busesnap uses a write path powercut.so does not model: $(grep -m1 -E 'io_uring_setup|io_submit|copy_file_range|sendfile|splice' "$tmp/strace.txt")"

# 2. The power cuts.
seed=${SEED:-$(((RANDOM << 15) | RANDOM))}
python3 "$top/tests/reliability/crashload.py" --top "$top" --dir "$tmp" \
    --iterations "${ITERATIONS:-30}" --seed "$seed" --powercut mixed ${CRASHLOAD_ARGS:-} ||
    fail "a promise was broken after a power cut (VIOLATION line above; SEED=$seed reruns)"
exit 0
