#!/bin/bash
# Crash loop: busesnap killed with SIGKILL at random moments (with writes,
# write-zeroes, trims, FUA writes and flushes in flight, and sometimes in
# the middle of a bsnap create/clone/rollback/delete) keeps NBD's and the
# store's promises: after every kill the image passes `busesnap check`,
# flushed and FUA writes read back (or a later write of the block), no
# block reads anything but one of its legal values, every snapshot reads
# exactly what the volume held when `bsnap create` returned, and objects
# are there or gone as the operations said.  The verifying writer is
# crashload.py.  ITERATIONS (default 50) and SEED override the run.
. "$(dirname "$0")/../functions.sh"
requires python3 nbdsh
python3 -c 'import nbd' 2>/dev/null || skip "python3 nbd module missing"
[ -x "$top/busesnap" ] && [ -x "$top/bsnap" ] || fail "busesnap and bsnap are not built (make)"
seed=${SEED:-$(((RANDOM << 15) | RANDOM))}
python3 "$top/tests/reliability/crashload.py" --top "$top" --dir "$tmp" \
    --iterations "${ITERATIONS:-50}" --seed "$seed" ${CRASHLOAD_ARGS:-} ||
    fail "a promise was broken after SIGKILL (VIOLATION line above; SEED=$seed reruns)"
exit 0
