#!/bin/bash
# A full disk and a full index lose nothing: busesnap on a small loop-mounted
# ext4 (and, second, with a 4 MiB --map-size) takes unique 1 MiB writes
# until they fail.  The failure must be ENOSPC (not EIO, not a dead server);
# every write acknowledged before it, flushed or not, reads back exactly;
# reads, a snapshot's delete, trims and the collector go on; once space is
# freed writes work again without a restart; `bsnap check` is clean, and
# after a restart everything acknowledged and flushed is still there.
. "$(dirname "$0")/functions.sh"
requires nbdsh mkfs.ext4 losetup
requires_root

# fill.py PHASE: one python driver for both cases (state in $tmp/model.pkl).
cat >"$tmp/fill.py" <<'EOF'
import nbd, os, pickle, subprocess, sys
phase, sock, ctl, model = sys.argv[1:5]
bsnap = lambda *a: subprocess.run([os.environ["top"] + "/bsnap", "--control", ctl, *a],
                                  capture_output=True, text=True)
h = nbd.NBD(); h.connect_unix(sock)
M = 1 << 20
size = h.get_size() // M
if phase == "fill":
    acked, snap = {}, None
    err = None
    for i in range(size):
        d = os.urandom(M)
        try:
            h.pwrite(d, i * M)
        except nbd.Error as e:
            err = e
            break
        acked[i] = d
        if i == 7:
            r = bsnap("create", "s1")
            assert r.returncode == 0, r.stderr
            snap = dict(acked)
    if err is None:
        sys.exit("FAIL: %d MiB written and no error: the image never filled" % size)
    if err.errno != "ENOSPC":
        sys.exit("FAIL: a write failed with %s, not ENOSPC: %s" % (err.errno, err))
    n = len(acked)
    print("filled: %d MiB acknowledged, then ENOSPC" % n)
    # the failed write may have stored some of its blocks (as a disk may):
    # each 4 KiB of it reads as before (zeros) or as written
    partial = (n, d)
    # acknowledged but not yet flushed: must still be there, and flushable
    for i, d in acked.items():
        if h.pread(M, i * M) != d:
            sys.exit("FAIL: MiB %d acknowledged before ENOSPC reads back wrong" % i)
    h.flush()
    # with nothing freed the image stays full: once a checkpoint has
    # measured what the index really took, a few more MiB may fit (the
    # refusal is by an estimate that errs on the safe side), then ENOSPC
    for extra in range(17):
        if extra == 16:
            sys.exit("FAIL: 16 MiB more written after ENOSPC with nothing freed")
        d = os.urandom(M)
        try:
            h.pwrite(d, (n + extra) * M)
        except nbd.Error as e:
            assert e.errno == "ENOSPC", e
            partial = (n + extra, d)
            break
        acked[n + extra] = d
    n = len(acked)
    # free space: delete the snapshot, trim the first half, collect
    r = bsnap("delete", "s1")
    if r.returncode != 0:
        sys.exit("FAIL: bsnap delete on a full image: " + r.stderr.strip())
    for i in range(n // 2):
        h.trim(M, i * M)
        del acked[i]
    h.flush()
    r = bsnap("gc")
    assert r.returncode == 0, r.stderr
    again = 0
    for i in range(n // 2):
        d = os.urandom(M)
        try:
            h.pwrite(d, i * M)
        except nbd.Error as e:
            assert e.errno == "ENOSPC", e
            h.trim(M, i * M) # what the failed write left: zeros again
            break
        acked[i] = d
        again += 1
    if again < n // 8:
        sys.exit("FAIL: only %d MiB written again after freeing %d MiB" % (again, n // 2))
    h.flush()
    print("after delete + trim (%d MiB) + gc: %d MiB written again" % (n // 2, again))
    pickle.dump((acked, partial), open(model, "wb"))
elif phase == "verify":
    acked, (pi, pd) = pickle.load(open(model, "rb"))
    for i in range(size):
        got = h.pread(M, i * M)
        if i == pi and i not in acked:
            for b in range(0, M, 4096):
                if got[b:b + 4096] not in (bytes(4096), pd[b:b + 4096]):
                    sys.exit("FAIL: block %d of the write that failed reads "
                             "neither old nor new" % (b // 4096))
            continue
        if got != acked.get(i, bytes(M)):
            sys.exit("FAIL: MiB %d differs after restart" % i)
    print("verified %d MiB after restart" % size)
EOF

# run_case NAME SERVE-ARGS...: fill, free, check, restart, verify.
run_case() {
    local name=$1; shift
    start_busesnap "" "$@"
    top=$top python3 "$tmp/fill.py" fill "$sock" "$ctl" "$tmp/model.pkl" ||
        fail "$name: $(tail -1 "$tmp/server.log")"
    kill -0 "$server_pid" || fail "$name: server died"
    "$top/bsnap" check >"$tmp/check.out" || fail "$name: bsnap check: $(tail -3 "$tmp/check.out")"
    "$top/bsnap" info | sed "s/^/$name: /"
    stop_server TERM || fail "$name: server exit status after SIGTERM"
    start_busesnap "" "$@"
    top=$top python3 "$tmp/fill.py" verify "$sock" "$ctl" "$tmp/model.pkl" || fail "$name: verify"
    stop_server TERM || true
}

# 1. The file system fills up: an 80 MiB ext4 holding a 512 MiB disk.
small_fs 80M
image=$tmp/mnt/img.db
"$top/busesnap" create "$image" --size 512M >/dev/null
run_case disk
df -h "$tmp/mnt" | tail -1

# 2. The index (LMDB map) fills up: a 4 MiB map for a 1 GiB disk.
image=$tmp/map.db
"$top/busesnap" create "$image" --size 1G >/dev/null
run_case map --map-size 4M
exit 0
