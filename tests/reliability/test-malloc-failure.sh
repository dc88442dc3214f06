#!/usr/bin/env bash
# test-malloc-failure.sh: busesnap serve and busexmp under injected
# allocation failures (tests/reliability/failmalloc.so, LD_PRELOAD).
#
# A python driver (libnbd) owns the server process.  For each N of a sweep
# it arms the shim with "fail the Nth allocation from now", runs one round of
# client work (write, read, flush, trim, zero, block status, and for busesnap
# bsnap create/clone/list/delete), disarms, and checks:
#   - the server never dies of a signal (SIGSEGV, SIGABRT, ...) and never
#     hangs; if it exits, it exits with a status and a message, and a
#     restarted server serves the same data;
#   - a failed request reaches the client as an NBD error (or a closed
#     connection) and a failed bsnap command as exit 1 with a message;
#   - after disarming, every block reads back as the model says (a block
#     touched by a failed request holds its old or its new contents, nothing
#     else), and a fresh clone equals the snapshot it came from.
# Then a random phase (every allocation fails with probability P), a clean
# SIGTERM exit and an offline `busesnap check`.  The counts are printed.
# Budget: 120 s on 2 shared cores (FM_BUDGET seconds per server; default
# 10 s for busexmp, 90 s for busesnap).  FM_POINTS=5,17: only those N;
# FM_KINDS=busesnap: one server only; FM_NTH_COUNT=2: fail calls N and N+1.
. "$(dirname "$0")/../functions.sh"
# a sanitizer build has its own allocator: neither an LD_PRELOAD allocator
# nor valgrind can run under it (make check SANITIZER=... covers that build)
if ldd "$top/busesnap" 2>/dev/null | grep -qE 'lib(a|ub|t)san'; then
    skip "busesnap is built with a sanitizer"
fi
requires nbdsh python3
shim=$top/tests/reliability/failmalloc.so
[ -f "$shim" ] || make -C "$top" -s tests/reliability/failmalloc.so ||
    fail "cannot build $shim"

cat >"$tmp/driver.py" <<'EOF'
# The sweep: see the header of test-malloc-failure.sh.
import atexit, json, os, random, signal, subprocess, sys, time
import nbd

kind, top, tmp, bindir = sys.argv[1:5]
budget = float(os.environ.get("FM_BUDGET", "10" if kind == "busexmp" else "90"))
shim = top + "/tests/reliability/failmalloc.so"
sock, ctl = tmp + "/sock", tmp + "/ctl"
fmctl = tmp + "/fm.ctl"
image = tmp + "/image.db"
BS = 4096
SIZE = 2 << 20
NB = SIZE // BS
env = dict(os.environ, LD_PRELOAD=shim, FAILMALLOC_CTL=fmctl,
           FAILMALLOC_LOG=tmp + "/failmalloc.log")
bsnap = [bindir + "/bsnap", "--control", ctl]
t0 = time.time()
stats = dict(rounds=0, points=0, calls=0, injected=0, nbd_errors=0,
             nbd_ok=0, bsnap_errors=0, bsnap_ok=0, exits=0, reconnects=0,
             clones_checked=0, random_rounds=0, store_failed=0,
             checks=0)

def die(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)

def log(msg):
    print(msg, flush=True)

def block(seed):
    # one 4 KiB block whose bytes say which write made it
    return (seed.to_bytes(8, "little") * (BS // 8))

model = [bytes(BS)] * NB   # what each block must read back as
cand = {}                  # block -> allowed contents after a failed request
hist = {}                  # block -> contents since the last good flush

server = None
gen = 0

def kill_server():
    # a failing run leaves no server behind
    if server is not None and server.poll() is None:
        server.kill()
        server.wait()

atexit.register(kill_server)
deleted = set()            # names bsnap said it deleted in this round

def start_server(first=False):
    global server
    if kind == "busexmp":
        # a memory disk: a new server starts from zeros
        model[:] = [bytes(BS)] * NB
        cand.clear()
    else:
        # what was not flushed may be lost: old or any newer contents
        for b, vals in hist.items():
            cand.setdefault(b, {model[b]}).update(vals)
    hist.clear()
    if kind == "busesnap":
        args = [bindir + "/busesnap", "serve", image, "--socket", sock,
                "--control", ctl]
        if first:
            args += ["--size", str(SIZE)]
        wait_for = ctl
    else:
        args = [bindir + "/busexmp", str(SIZE), "--socket", sock]
        wait_for = sock
    for p in (sock, ctl):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    logf = open(tmp + "/server.log", "a")
    server = subprocess.Popen(args, env=env, stdout=logf, stderr=logf)
    for _ in range(1000):
        if os.path.exists(wait_for):
            if kind != "busesnap" or subprocess.run(
                    bsnap + ["info"], capture_output=True).returncode == 0:
                return
        if server.poll() is not None:
            die("server exited at start-up (status %d)" % server.returncode)
        time.sleep(0.01)
    die("server did not start")

def check_exit():
    """None if the server runs; else fail on a signal or restart it."""
    rc = server.poll()
    if rc is None:
        return False
    if rc < 0:
        die("server killed by signal %d (%s); see failmalloc.log"
            % (-rc, signal.Signals(-rc).name))
    tail = open(tmp + "/server.log").read().strip().splitlines()[-1:]
    if not tail:
        die("server exited with status %d and no message" % rc)
    log("server exited (status %d): %s" % (rc, tail[0]))
    stats["exits"] += 1
    return True

def connect(name=""):
    h = nbd.NBD()
    h.set_export_name(name)
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_unix(sock)
    return h

def arm(policy):
    global gen
    gen += 1
    tag = "g%d" % gen
    with open(fmctl + ".tmp", "w") as f:
        f.write("%s %s\n" % (tag, policy))
    os.rename(fmctl + ".tmp", fmctl)
    wait_ack(tag + " armed")

def wait_ack(want):
    for _ in range(3000):
        try:
            s = open(fmctl + ".ack").read()
            if s.startswith(want):
                return s
        except FileNotFoundError:
            pass
        if server.poll() is not None:
            return None
        time.sleep(0.001)
    die("the shim did not acknowledge '%s'" % want)

def disarm():
    tag = "g%d" % gen
    try:
        os.unlink(fmctl)
    except FileNotFoundError:
        pass
    s = wait_ack(tag + " off")
    if s:
        kv = dict(x.split("=") for x in s.split()[2:])
        return int(kv.get("calls", 0)), int(kv.get("failed", 0))
    return 0, 0

oplog = []                 # this round's requests, for the failure message

def seed_of(data):
    return int.from_bytes(data[:8], "little")

def nbd_op(h, what, blocks, news, fn):
    """Run fn(h); on error, blocks may hold old or new contents."""
    for b, new in zip(blocks, news):
        hist.setdefault(b, {model[b]}).add(new)
    try:
        fn(h)
        stats["nbd_ok"] += 1
        for b, new in zip(blocks, news):
            model[b] = new
            cand.pop(b, None)  # a later request that succeeded decides
        oplog.append("%s %s ok" % (what, blocks))
        return True
    except nbd.Error as e:
        stats["nbd_errors"] += 1
        for b, new in zip(blocks, news):
            cand.setdefault(b, {model[b]}).add(new)
        oplog.append("%s %s failed (%s)" % (what, blocks, e))
        return False

def run_bsnap(*args):
    try:
        r = subprocess.run(bsnap + list(args), capture_output=True,
                           timeout=20)
    except subprocess.TimeoutExpired:
        die("bsnap %s hung (20 s)" % " ".join(args))
    if r.returncode == 0:
        stats["bsnap_ok"] += 1
        return r
    if r.returncode != 1 or not r.stderr.strip():
        if server.poll() is not None and r.returncode == 1:
            return r   # the server went away: judged by check_exit
        die("bsnap %s: status %d, message %r" % (" ".join(args),
                                                 r.returncode, r.stderr))
    if b"malformed answer" in r.stderr:
        die("bsnap %s: the server sent a malformed line: %r"
            % (" ".join(args), r.stderr))
    stats["bsnap_errors"] += 1
    with open(tmp + "/bsnap-errors.log", "a") as f:
        f.write("bsnap %s: %s\n" % (args[0], r.stderr.decode().strip()))
    return r

def verify(h, where):
    verify_data(bytes(h.pread(SIZE, 0)), where)

def verify_data(data, where):
    """Every block must read back as the model says (or a candidate)."""
    for b in range(NB):
        got = data[b * BS:(b + 1) * BS]
        if b in cand:
            if got not in cand[b]:
                die("%s: block %d holds neither its old nor its new contents "
                    "(holds write %d, allowed %s); requests: %s"
                    % (where, b, seed_of(got),
                       sorted(seed_of(c) for c in cand[b]), "; ".join(oplog)))
            model[b] = got
        elif got != model[b]:
            die("%s: block %d differs from what was written (holds write %d, "
                "expected %d); requests: %s" % (where, b, seed_of(got),
                                                seed_of(model[b]),
                                                "; ".join(oplog)))
    cand.clear()

def workload(h, i, rng):
    """One round of client work; returns the clone made (or None)."""
    seed = i * 100
    b = rng.randrange(NB - 2)
    news = [block(seed + 1), block(seed + 2)]
    if h is not None:
        nbd_op(h, "write", [b, b + 1], news,
               lambda h: h.pwrite(news[0] + news[1], b * BS))
        r = rng.randrange(NB - 2)
        nbd_op(h, "read", [], [], lambda h: h.pread(2 * BS, r * BS))
        if nbd_op(h, "flush", [], [], lambda h: h.flush()) and not cand:
            hist.clear()
        t = rng.randrange(NB)
        nbd_op(h, "trim", [t], [bytes(BS)], lambda h: h.trim(BS, t * BS))
        z = rng.randrange(NB)
        nbd_op(h, "zero", [z], [bytes(BS)], lambda h: h.zero(BS, z * BS))
        s = rng.randrange(NB - 16)
        nbd_op(h, "block_status", [], [], lambda h: h.block_status(
            16 * BS, s * BS, lambda *a: 0))
    # a second connection: the handshake's allocations too
    try:
        h2 = connect()
        h2.pread(BS, 0)
        h2.shutdown()
        stats["nbd_ok"] += 1
    except nbd.Error:
        stats["nbd_errors"] += 1
    if kind != "busesnap":
        return None
    snap, clone = "s%d" % i, "c%d" % i
    made = None
    if run_bsnap("create", snap).returncode == 0:
        if run_bsnap("clone", snap, clone).returncode == 0:
            made = (clone, list(model) if not cand else None)
    run_bsnap("list")
    for name in leftovers():
        if name not in (snap, clone):
            if run_bsnap("delete", name, "--force").returncode == 0:
                deleted.add(name)
    return made

def leftovers():
    """Names of snapshots and clones the rounds made (bsnap list --json)."""
    r = subprocess.run(bsnap + ["list", "--json"], capture_output=True)
    if r.returncode != 0:
        return []
    names = []
    def walk(o):
        if isinstance(o, dict):
            n = o.get("name")
            if isinstance(n, str) and n[:1] in "sc" and n[1:].isdigit():
                names.append(n)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(json.loads(r.stdout))
    # clones before the snapshots they came from
    return sorted(set(names), key=lambda n: n[0] != "c")

def one_round(i, policy, h, rng):
    """Arm, work, disarm, check; returns the (possibly new) handle."""
    with open(tmp + "/failmalloc.log", "a") as f:
        f.write("failmalloc: === round %d (%s)\n" % (i, policy))
    arm(policy)
    deleted.clear()
    oplog.clear()
    made = None
    if h is None or check_exit():
        h = None
    try:
        made = workload(h, i, rng)
    finally:
        calls, failed = disarm()
    stats["rounds"] += 1
    stats["calls"] += calls
    stats["injected"] += failed
    if check_exit():
        # a clean exit with a message: a restarted server serves the data
        start_server()
        h = None
    # After disarming, a flush commits what the round did: a store that lost
    # acknowledged writes says so here (EIO) and refuses I/O until restarted
    # (design.md).  Try the connection, then a new one, then a restart.
    data = None
    for attempt in ("connection", "new connection", "restart"):
        try:
            if h is None:
                stats["reconnects"] += 1
                h = connect()
            h.flush()
            data = bytes(h.pread(SIZE, 0))
            break
        except nbd.Error as e:
            why = str(e)
        h = None
        if check_exit():
            start_server()
            continue
        if attempt == "connection":
            continue
        if attempt == "restart" or kind != "busesnap":
            die("round %d (%s): no service after disarming (%s, after a %s)"
                % (i, policy, why, attempt))
        log("round %d (%s): the store refuses I/O (%s); log: %s" % (
            i, policy, why, " | ".join(open(tmp + "/server.log").read()
                                       .strip().splitlines()[-2:])))
        # it must exit on SIGTERM, and a restart serves the data
        stats["store_failed"] += 1
        server.send_signal(signal.SIGTERM)
        try:
            rc = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            die("round %d: a failed store did not exit on SIGTERM" % i)
        if rc < 0:
            die("round %d: a failed store died of signal %d on SIGTERM"
                % (i, -rc))
        start_server()
    verify_data(data, "round %d (%s)" % (i, policy))
    hist.clear()  # flushed: durable

    if kind == "busesnap":
        # a delete that said "done" is done; a snapshot that said so exists
        still = deleted.intersection(leftovers())
        if still:
            die("round %d (%s): bsnap delete succeeded but %s still listed"
                % (i, policy, ", ".join(sorted(still))))
        deleted.clear()
        # the index is consistent after every round (online check)
        r = subprocess.run(bsnap + ["check"], capture_output=True, timeout=60)
        if r.returncode != 0:
            die("round %d (%s): bsnap check: %s" % (
                i, policy, (r.stdout + r.stderr).decode().strip()[-600:]))
        stats["checks"] += 1
    if made and made[1] is not None and kind == "busesnap":
        try:
            c = connect(made[0])
            if bytes(c.pread(SIZE, 0)) != b"".join(made[1]):
                die("round %d (%s): clone %s differs from its snapshot"
                    % (i, policy, made[0]))
            c.shutdown()
            stats["clones_checked"] += 1
        except nbd.Error as e:
            die("round %d: clone %s not served: %s" % (i, made[0], e))
    if kind == "busesnap":
        # keep the image small: what the round could not delete goes now
        # (this round's snapshot and clone are for the next round to delete)
        for name in leftovers():
            if name in ("s%d" % i, "c%d" % i):
                continue
            if run_bsnap("delete", name, "--force").returncode != 0:
                die("round %d: bsnap delete %s failed after disarming"
                    % (i, name))
    return h, calls

start_server(first=True)
h = connect()
rng = random.Random(7)
# How many allocation calls does one round make?  ("prob 0" counts only.)
_, calls = one_round(0, "prob 0", h, rng)
h = _
log("%s: one round makes %d allocation calls" % (kind, calls))
limit = calls + calls // 4 + 2
# sweep N over 1..limit (one failure per round) within 70% of the budget:
# the stride grows if the rounds are too slow to try every point
only = [int(x) for x in os.environ.get("FM_POINTS", "").split(",") if x]
nth_count = int(os.environ.get("FM_NTH_COUNT", "1"))  # failures in a row
points = only or list(range(1, limit + 1))
i = 1
pos = 0.0
t_sweep = time.time()
while int(pos) < len(points):
    n = points[int(pos)]
    h, _ = one_round(i, "nth %d %d" % (n, nth_count), h, rng)
    stats["points"] += 1
    i += 1
    left = budget * 0.7 - (time.time() - t0)
    per = (time.time() - t_sweep) / stats["points"]
    todo = len(points) - int(pos) - 1
    step = 1.0 if left <= 0 or per * todo <= left else per * todo / left
    if left <= 0:
        log("%s: budget reached at N=%d of %d" % (kind, n, limit))
        break
    pos += step
swept = n
# random phase: every call fails with probability 2%
seed = 1
while time.time() - t0 < budget:
    h, _ = one_round(i, "prob 0.02 %d" % seed, h, rng)
    stats["random_rounds"] += 1
    i += 1
    seed += 1
h.shutdown()
if kind == "busesnap":
    for name in leftovers():
        run_bsnap("delete", name, "--force")
server.send_signal(signal.SIGTERM)
try:
    rc = server.wait(timeout=30)
except subprocess.TimeoutExpired:
    die("server did not exit on SIGTERM")
if rc != 0:
    die("server exit status %d on SIGTERM" % rc)
# the data once more, from a server without the shim
env.pop("LD_PRELOAD")
start_server()
h = connect()
verify(h, "after restart without the shim")
h.shutdown()
server.send_signal(signal.SIGTERM)
server.wait(timeout=30)
log("%s: swept N up to %d (%d allocation points tried, %d calls per round), "
    "%d random rounds; %s; %.0f s"
    % (kind, swept, stats["points"], calls, stats["random_rounds"],
       " ".join("%s=%d" % kv for kv in stats.items()), time.time() - t0))
EOF

fm_fail() {
    # name the code that did not cope: the stacks of the failures injected
    # in the last round, program frames resolved to function and line
    local line obj off
    if [ -s "$tmp/failmalloc.log" ]; then
        echo "failures injected in the last round:" >&2
        awk '/^failmalloc: === round/{b=""} {b=b $0 "\n"} END{printf "%s", b}' \
            "$tmp/failmalloc.log" | grep -v -e '^/.*failmalloc\.so' -e '/libc\.so' |
            while IFS= read -r line; do
                if [[ $line =~ ^(/[^\(]+)\(\+(0x[0-9a-f]+)\) ]]; then
                    obj=${BASH_REMATCH[1]} off=${BASH_REMATCH[2]}
                    echo "  $(addr2line -f -p -e "$obj" "$off" 2>/dev/null || echo "$line")"
                else
                    echo "  $line"
                fi
            done >&2
    fi
    fail "$1"
}

# private copies: a rebuild in the tree meanwhile does not disturb the run
mkdir "$tmp/bin"
cp "$top/busesnap" "$top/busexmp" "$top/bsnap" "$tmp/bin/" ||
    fail "cannot copy the programs (make first)"
for kind in ${FM_KINDS:-busexmp busesnap}; do
    rm -f "$tmp"/image.db* "$tmp/failmalloc.log" "$tmp/server.log"
    python3 "$tmp/driver.py" "$kind" "$top" "$tmp" "$tmp/bin" | tee "$tmp/$kind.out" ||
        fm_fail "$kind: $(grep -m1 '^FAIL' "$tmp/$kind.out" || echo 'driver failed')"
    if [ "$kind" = busesnap ]; then
        "$tmp/bin/busesnap" check "$tmp/image.db" >"$tmp/check.out" 2>&1 ||
            fail "busesnap check after the sweep: $(tail -3 "$tmp/check.out")"
        echo "busesnap check: clean"
    fi
done
echo "PASS $test_name"
