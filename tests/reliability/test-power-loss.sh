#!/bin/bash
# Power loss: as test-crash-loop.sh, but at each cut every write busesnap
# had not synced is lost too.  powercut.so (LD_PRELOAD) logs every write to
# IMAGE and IMAGE-chunks with its old content before letting it through,
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
grep -E "<$st\.db(-chunks)?>" "$tmp/strace.txt" | sed -E 's/^[0-9]+ +//; s/\(.*//' |
    sort | uniq -c >"$tmp/calls.txt"
echo "calls on the image files (strace):"; sed 's/^/    /' "$tmp/calls.txt"
grep -qE ' (pwritev|writev|pwrite64)$' "$tmp/calls.txt" || fail "strace saw no write to the image: the check is blind"
unmodelled=$(awk '{print $2}' "$tmp/calls.txt" | grep -vxE "$modelled|openat|open" || true)
[ -z "$unmodelled" ] || fail "busesnap uses calls powercut.so does not model on its image: $unmodelled"
grep -E "<$st\.db(-chunks)?>" "$tmp/strace.txt" | grep -E '^[0-9]+ +mmap\(' |
    grep -E 'PROT_WRITE.*MAP_SHARED|MAP_SHARED.*PROT_WRITE' && fail "busesnap maps its image writable"
grep -qE '^[0-9]+ +(io_uring_setup|io_submit|copy_file_range|sendfile|splice)\(' "$tmp/strace.txt" &&
    fail "busesnap uses a write path powercut.so does not model: $(grep -m1 -E 'io_uring_setup|io_submit|copy_file_range|sendfile|splice' "$tmp/strace.txt")"

# 2. The power cuts.
seed=${SEED:-$(((RANDOM << 15) | RANDOM))}
python3 "$top/tests/reliability/crashload.py" --top "$top" --dir "$tmp" \
    --iterations "${ITERATIONS:-30}" --seed "$seed" --powercut mixed ${CRASHLOAD_ARGS:-} ||
    fail "a promise was broken after a power cut (VIOLATION line above; SEED=$seed reruns)"
exit 0
