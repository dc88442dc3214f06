#!/usr/bin/python3
"""crashload.py: the verifying writer of the crash-loop and power-loss tests.

It drives `busesnap serve` through libnbd (asynchronous writes, write
zeroes, trims, FUA writes and flushes, several in flight) and bsnap
(create, clone, rollback --force, delete --force, gc), kills the server with
SIGKILL at a random moment, optionally takes back every write the store
had not synced (the powercut.so log: `--powercut all|subset|mixed`), checks
the image offline, restarts the server and verifies every block of every
volume and snapshot against a model of what NBD and the store promise
(src/store/store.h):

  - a write is durable once a FLUSH sent after its reply arrived has been
    answered, or when it was a FUA write and its reply arrived;
  - a block reads its last durable value or a value written after it
    (acknowledged or in flight), nothing else: each 4 KiB block written
    carries a header (magic, volume, block, sequence number) and a fill
    derived from it, so a read names the write it came from;
  - a snapshot holds exactly the volume's content when `bsnap create`
    returned (I/O quiesced first) after every later crash; a clone starts
    as its snapshot; a rolled-back volume reads as the snapshot; a deleted
    object stays deleted; an operation cut by the kill happened atomically
    or not at all.

Usage: crashload.py --top DIR --dir TMPDIR [--iterations N] [--seed S]
                    [--size BYTES] [--powercut all|subset|mixed]
The first violation prints one line "VIOLATION: ..." and exits 1.
`crashload.py rewind LOG MODE SEED FILE...` applies a powercut log by hand.
"""
import argparse
import hashlib
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time

import nbd

BLOCK = 4096
MAGIC = b"CRASHLD1"
HDR = struct.Struct("<8sIIQ")  # magic, volume id, block, seq
ZERO = bytes(BLOCK)
PATTERN_ID = 0xFFFFFFFF  # volume and block of the shared (dedup) patterns
NPATTERNS = 8


class Violation(Exception):
    pass


def block_bytes(vol, blk, seq):
    h = HDR.pack(MAGIC, vol, blk, seq)
    return h + hashlib.shake_128(h).digest(BLOCK - HDR.size)


def value_bytes(value, vol, blk):
    """Bytes of a value: 0 zeros, < 0 shared pattern, > 0 write seq."""
    if value == 0:
        return ZERO
    if value < 0:
        return block_bytes(PATTERN_ID, PATTERN_ID, -value - 1)
    return block_bytes(vol, blk, value)


def describe(v):
    return "zeros" if v == 0 else ("pattern %d" % (-v - 1) if v < 0 else "write #%d" % v)


# ---- the power-cut log (tests/reliability/powercut.c) ----

REC = struct.Struct("<IIIIQQQQ")
REC_WRITE, REC_SYNC, REC_DSYNC_DONE, REC_SIZE = 1, 2, 3, 4
REC_MAGIC = 0x54435750


# The files of an image (suffixes of IMAGE) that powercut.so tracks.
IMAGE_FILES = ("", "-chunks", "-journal")

def rewind(log, files, mode, rng):
    """Take back the unsynced writes of files (mode "all": every one;
    "subset": per 4 KiB sector, keep a random prefix of its unsynced
    writes, so multi-sector writes tear and later writes may survive
    earlier ones of other sectors).  Returns a dict of counts."""
    data = open(log, "rb").read() if os.path.exists(log) else b""
    recs, pos = [], 0
    while pos + REC.size <= len(data):
        m, typ, f, flags, seq, off, ln, old = REC.unpack_from(data, pos)
        if m != REC_MAGIC:
            raise Violation("powercut log %s: bad record at %d" % (log, pos))
        end = pos + REC.size + (2 * ln if typ == REC_WRITE else 0)
        if end > len(data):
            break  # cut while being appended: its write never happened
        recs.append((typ, f, flags, seq, off, ln, old, pos + REC.size))
        pos = end
    last_seq = max([r[3] for r in recs if r[0] == REC_WRITE] or [0])
    stats = {"records": 0, "unsynced": 0, "sectors": 0, "kept": 0}
    for fi, path in enumerate(files):
        upto, done, writes = 0, set(), []
        for typ, f, flags, seq, off, ln, old, dpos in recs:
            if f != fi:
                continue
            if typ == REC_SYNC:
                upto = max(upto, off)
            elif typ == REC_DSYNC_DONE:
                done.add(off)
            elif typ == REC_WRITE:
                writes.append((seq, off, ln, old, dpos))
            elif typ == REC_SIZE:
                writes.append((seq, off, 0, old, None))
        stats["records"] += len(writes)
        if not writes or not os.path.exists(path):
            continue

        def synced(seq):
            return seq < upto or seq in done

        # pieces per sector, in log order
        sectors = {}
        for w in writes:
            seq, off, ln, old, dpos = w
            s = off // BLOCK
            while s * BLOCK < off + ln:
                lo, hi = max(off, s * BLOCK), min(off + ln, (s + 1) * BLOCK)
                sectors.setdefault(s, []).append((seq, lo, hi, off, dpos, ln))
                s += 1
        fd = os.open(path, os.O_RDWR)
        try:
            cur_size = os.fstat(fd).st_size
            unsynced = [w for w in writes if not synced(w[0])]
            stats["unsynced"] += len(unsynced)
            size = cur_size
            if unsynced:
                first = min(unsynced)
                size = first[3]  # the size before the first unsynced write
                for seq, off, ln, old, dpos in writes:
                    if synced(seq) and dpos is None:  # a synced size change
                        size = max(size, off)
            for s, pieces in sorted(sectors.items()):
                cur = os.pread(fd, BLOCK, s * BLOCK).ljust(BLOCK, b"\0")
                last = len(pieces)
                while last > 0 and not synced(pieces[last - 1][0]):
                    last -= 1
                tail = pieces[last:]
                expect = bytearray(cur)
                for seq, lo, hi, off, dpos, ln in pieces:
                    if seq == last_seq:
                        # the kill may have come between this record and
                        # its write (or in the middle of it)
                        expect[lo - s * BLOCK:hi - s * BLOCK] = \
                            cur[lo - s * BLOCK:hi - s * BLOCK]
                    else:
                        expect[lo - s * BLOCK:hi - s * BLOCK] = \
                            data[dpos + ln + lo - off:dpos + ln + hi - off]
                # the redo check: the file holds what the log says was
                # written last (a write the shim missed would show here)
                if bytes(expect) != cur:
                    raise Violation("powercut: %s sector %d differs from its "
                                    "last logged write (a write the shim "
                                    "did not see)" % (path, s))
                if not tail:
                    for p in pieces:
                        size = max(size, p[2])
                    continue
                stats["sectors"] += 1
                k = 0 if mode == "all" else rng.randint(0, len(tail))
                stats["kept"] += k
                for p in pieces[:last + k]:  # durable or kept: the size too
                    size = max(size, p[2])
                for seq, lo, hi, off, dpos, ln in reversed(tail[k:]):
                    os.pwrite(fd, data[dpos + lo - off:dpos + hi - off], lo)
            if size < cur_size:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)
    return stats


# ---- the model ----

class Obj:
    """A volume (cand: per block, a list of (wid, value), first the last
    durable value, then every value written after it) or a snapshot (exp:
    per block, the one value it must read)."""

    def __init__(self, name, kind, vol_id, nblocks, parent=None):
        self.name, self.kind, self.vol_id, self.parent = name, kind, vol_id, parent
        self.cand = None
        self.exp = None


class Run:
    def __init__(self, a):
        self.a = a
        self.rng = random.Random(a.seed)
        self.nblocks = a.size // BLOCK
        self.image = os.path.join(a.dir, "image.db")
        self.sock = os.path.join(a.dir, "sock")
        self.ctl = os.path.join(a.dir, "ctl")
        self.log = os.path.join(a.dir, "server.log")
        self.pclog = os.path.join(a.dir, "powercut.log")
        self.busesnap = os.path.join(a.top, "busesnap")
        self.bsnap_bin = os.path.join(a.top, "bsnap")
        self.proc = None
        self.next_seq = 1
        self.next_wid = 1
        self.next_vol = 1
        self.next_name = 1
        self.seq_info = {}  # seq -> (vol id, block)
        self.objs = {}
        self.c = dict(iterations=0, blocks=0, snapshots=0, bsnap_ops=0,
                      writes=0, flushes=0, fua=0, zeroes=0, uncertain=0,
                      unsynced_lost=0, sectors_rewound=0, kept=0,
                      online_checks=0, offline_checks=0, inflight_at_kill=0)
        d = Obj("default", "volume", self.new_vol(), self.nblocks)
        d.cand = [[(0, 0)] for _ in range(self.nblocks)]
        self.objs["default"] = d

    def new_vol(self):
        v = self.next_vol
        self.next_vol += 1
        return v

    def wid(self):
        w = self.next_wid
        self.next_wid += 1
        return w

    # ---- server ----

    def start(self):
        env = dict(os.environ)
        if self.a.powercut:
            for p in (self.pclog, self.pclog + ".fail"):
                if os.path.exists(p):
                    os.unlink(p)
            env["LD_PRELOAD"] = os.path.join(self.a.top, "tests/reliability/powercut.so")
            env["POWERCUT_FILES"] = ":".join(self.image + x for x in IMAGE_FILES)
            env["POWERCUT_LOG"] = self.pclog
            if self.a.ignore_sync is not None:
                env["POWERCUT_IGNORE_SYNC"] = str(self.a.ignore_sync)
        with open(self.log, "ab") as lf:
            self.proc = subprocess.Popen(
                [self.busesnap, "serve", self.image, "--size", str(self.a.size),
                 "--socket", self.sock, "--control", self.ctl],
                stdout=lf, stderr=lf, env=env)
        for _ in range(1000):
            if self.proc.poll() is not None:
                raise Violation("busesnap exited (%s) at start: %s"
                                % (self.proc.returncode, self.tail_log()))
            if os.path.exists(self.ctl) and subprocess.run(
                    [self.bsnap_bin, "--control", self.ctl, "info"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                return
            time.sleep(0.02)
        raise Violation("busesnap did not answer on its control socket")

    def tail_log(self):
        try:
            return " | ".join(open(self.log, errors="replace").read().splitlines()[-3:])
        except OSError:
            return ""

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait()
            if self.proc.returncode != -signal.SIGKILL:
                raise Violation("busesnap died by itself (status %s) before the "
                                "kill: %s" % (self.proc.returncode, self.tail_log()))
        self.proc = None

    def bsnap(self, *args, check=True):
        r = subprocess.run([self.bsnap_bin, "--control", self.ctl] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if check and r.returncode != 0:
            raise Violation("bsnap %s failed: %s" % (" ".join(args),
                                                       (r.stderr or r.stdout).strip()))
        return r

    def connect(self, name):
        h = nbd.NBD()
        h.connect_uri("nbd+unix:///%s?socket=%s" % (name, self.sock))
        return h

    # ---- verification ----

    def decode(self, obj, blk, buf):
        if buf == ZERO:
            return 0
        magic, vol, b, seq = HDR.unpack_from(buf)
        if magic != MAGIC:
            raise Violation("%s block %d: not written by this test (garbage)"
                            % (obj.name, blk))
        if buf != block_bytes(vol, b, seq):
            raise Violation("%s block %d: torn or corrupt content (header says "
                            "volume %d block %d write #%d)" % (obj.name, blk, vol, b, seq))
        if vol == PATTERN_ID and b == PATTERN_ID:
            return -seq - 1
        if b != blk:
            raise Violation("%s block %d holds block %d's data (write #%d)"
                            % (obj.name, blk, b, seq))
        if self.seq_info.get(seq) != (vol, b):
            raise Violation("%s block %d: write #%d never went to volume %d"
                            % (obj.name, blk, seq, vol))
        return seq

    def read_all(self, obj):
        h = self.connect(obj.name)
        if h.get_size() != self.a.size:
            raise Violation("%s: size %d, expected %d" % (obj.name, h.get_size(), self.a.size))
        vals, step = [], 1 << 20
        for off in range(0, self.a.size, step):
            try:
                buf = h.pread(step, off)
            except nbd.Error as e:
                raise Violation("%s: read of [%d, +%d) after restart failed: %s"
                                % (obj.name, off, step, e))
            for i in range(0, step, BLOCK):
                vals.append(self.decode(obj, (off + i) // BLOCK, buf[i:i + BLOCK]))
        h.shutdown()
        h = None  # the handle closes when dropped
        self.c["blocks"] += len(vals)
        return vals

    def verify_volume(self, obj, vals, commit=True):
        for b, v in enumerate(vals):
            if v not in [x for _, x in obj.cand[b]]:
                legal = ", ".join(describe(x) for _, x in obj.cand[b][-6:])
                raise Violation("volume %s block %d reads %s; legal: %s (first is "
                                "the last durable value)" % (obj.name, b, describe(v), legal))
        if commit:
            obj.cand = [[(self.wid(), v)] for v in vals]

    def verify_snapshot(self, obj, vals):
        for b, v in enumerate(vals):
            if v != obj.exp[b]:
                raise Violation("snapshot %s block %d reads %s, expected %s"
                                % (obj.name, b, describe(v), describe(obj.exp[b])))
        self.c["snapshots"] += 1

    def verify_all(self, pending):
        listing = json.loads(self.bsnap("list", "--json").stdout)
        names = {o["name"] for o in listing}
        if pending:
            self.resolve(pending, names)
        if names != set(self.objs):
            raise Violation("objects after restart: %s, expected %s"
                            % (sorted(names), sorted(self.objs)))
        for o in listing:
            if o["kind"] != self.objs[o["name"]].kind:
                raise Violation("%s is a %s, expected a %s" % (o["name"], o["kind"],
                                                             self.objs[o["name"]].kind))
        for obj in list(self.objs.values()):
            vals = self.read_all(obj)
            if obj.kind == "snapshot":
                self.verify_snapshot(obj, vals)
            else:
                self.verify_volume(obj, vals)

    def resolve(self, op, names):
        """An operation the kill may have cut: accept either outcome."""
        kind = op[0]
        self.c["uncertain"] += 1
        if kind in ("create", "clone"):
            obj = op[1]
            if obj.name in names:
                self.objs[obj.name] = obj
        elif kind == "delete":
            if op[1] not in names:
                self.objs.pop(op[1], None)
        elif kind == "rollback":
            vol, snap = op[1], op[2]
            vals = self.read_all(vol)
            try:
                self.verify_volume(vol, vals, commit=False)
            except Violation as before:
                if vals != snap.exp:
                    raise Violation("volume %s after a cut rollback to %s is neither "
                                    "its old content (%s) nor the snapshot" % (vol.name, snap.name, before))
                vol.cand = [[(self.wid(), v)] for v in snap.exp]

    # ---- I/O ----

    def io_phase(self, vol, seconds, op_at):
        """Write to vol until the deadline, then kill the server with
        requests in flight.  At op_at (seconds), quiesce and run one bsnap
        operation (which may be cut by the kill: self.cut)."""
        h = self.connect(vol.name)
        rng, nb = self.rng, self.nblocks
        inflight, busy, dirty = {}, set(), {}
        t0 = time.monotonic()
        deadline = t0 + seconds
        op_done = op_at is None
        qd = rng.choice([1, 4, 16])
        # per phase: how often to flush and to write with FUA (0: only
        # group commits; a FUA write commits what came before it too)
        flush_p = rng.choice([0, 0.005, 0.025])
        fua_p = rng.choice([0, 0, 0.01, 0.04])

        def harvest(block):
            while inflight:
                c = h.aio_peek_command_completed()
                if c == 0:
                    if not block or not inflight:
                        return
                    h.poll(-1)
                    continue
                h.aio_command_completed(c)  # raises if the command failed
                kind, info = inflight.pop(c)
                if kind == "flush":
                    self.c["flushes"] += 1
                    for b, w in info.items():
                        self.make_durable(vol, b, w)
                        if dirty.get(b) == w:
                            del dirty[b]
                    continue
                fua = kind == "fua"
                for b, w in info:
                    busy.discard(b)
                    dirty[b] = w
                    if fua:
                        self.make_durable(vol, b, w)
                block = False

        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if not op_done and now - t0 >= op_at:
                while inflight:
                    harvest(True)
                op_done = True
                h = self.bsnap_op(vol, h)
                if h is None:
                    return  # killed while the operation ran (self.cut)
                continue
            if len(inflight) >= qd:
                harvest(True)
                continue
            r = rng.random()
            if r < flush_p:
                c = h.aio_flush()
                inflight[c] = ("flush", dict(dirty))
                continue
            # mostly 1-4 blocks; some runs of up to 64 (one pwritev of
            # many chunk slots, torn at 4 KiB by a power cut)
            n = rng.randint(1, 4) if rng.random() < 0.9 else rng.randint(8, 64)
            start = rng.randrange(0, nb - n + 1)
            blocks = range(start, start + n)
            if any(b in busy for b in blocks):
                harvest(False)
                continue
            if r < 0.12:
                kind = "zero"
                vals = [0] * n
                self.c["zeroes"] += 1
            else:
                kind = "fua" if r > 1 - fua_p else "write"
                vals = []
                for b in blocks:
                    if rng.random() < 0.15:
                        vals.append(-rng.randrange(NPATTERNS) - 1)
                    else:
                        s = self.next_seq
                        self.next_seq += 1
                        self.seq_info[s] = (vol.vol_id, b)
                        vals.append(s)
                self.c["writes"] += 1
                self.c["fua"] += kind == "fua"
            info = []
            for b, v in zip(blocks, vals):
                w = self.wid()
                vol.cand[b].append((w, v))
                busy.add(b)
                info.append((b, w))
            off = start * BLOCK
            if kind == "zero":
                if rng.random() < 0.5:
                    c = h.aio_zero(n * BLOCK, off)
                else:
                    c = h.aio_trim(n * BLOCK, off)
            else:
                buf = b"".join(value_bytes(v, vol.vol_id, b) for b, v in zip(blocks, vals))
                c = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(buf)), off,
                                 flags=nbd.CMD_FLAG_FUA if kind == "fua" else 0)
            inflight[c] = (kind, info)
            harvest(False)
        self.c["inflight_at_kill"] += len(inflight) > 0
        self.kill()
        h = None  # the handle closes when dropped

    def make_durable(self, vol, b, w):
        lst = vol.cand[b]
        for i, (x, _) in enumerate(lst):
            if x == w:
                del lst[:i]
                return

    def bsnap_op(self, vol, h):
        """One bsnap operation on a quiesced volume; returns the handle to
        go on with.  Sometimes the server is killed while it runs: then
        returns None, and self.cut is the operation if its outcome is
        unknown (bsnap did not report success)."""
        rng = self.rng
        snaps = [o for o in self.objs.values() if o.kind == "snapshot"]
        vols = [o for o in self.objs.values() if o.kind == "volume"]
        choices = ["create"] * 3
        if snaps:
            choices += ["clone"] * (len(vols) < 3) + ["rollback"] * any(
                s.parent == vol.name for s in snaps)
        if len(snaps) > 3 or len(vols) > 2:
            choices += ["delete"] * 3
        if len(snaps) > 5 or len(vols) > 3:  # keep verification passes short
            choices = ["delete"]
        if rng.random() < 0.1:
            choices = ["gc"]  # the collector, killed or not as it runs
        kind = rng.choice(choices)
        name = None
        if kind == "create":
            name = "s%d" % self.next_name
            self.next_name += 1
            obj = Obj(name, "snapshot", 0, self.nblocks, parent=vol.name)
            obj.exp = [lst[-1][1] for lst in vol.cand]
            args, op = ["create", name, "--volume", vol.name], ("create", obj)
        elif kind == "clone":
            snap = rng.choice(snaps)
            name = "c%d" % self.next_name
            self.next_name += 1
            obj = Obj(name, "volume", self.new_vol(), self.nblocks)
            obj.cand = [[(self.wid(), v)] for v in snap.exp]
            args, op = ["clone", snap.name, name], ("clone", obj)
        elif kind == "gc":
            args, op = ["gc"], ("gc",)
        elif kind == "rollback":
            snap = rng.choice([s for s in snaps if s.parent == vol.name])
            args, op = ["rollback", snap.name, "--volume", vol.name, "--force"], \
                ("rollback", vol, snap)
        else:
            cands = snaps + [v for v in vols if v is not vol and v.name != "default"]
            if not cands:
                return h
            victim = rng.choice(cands)
            args, op = ["delete", victim.name, "--force"], ("delete", victim.name)
        self.c["bsnap_ops"] += 1
        if rng.random() < 0.2:
            # kill while the operation runs: either outcome is legal
            p = subprocess.Popen([self.bsnap_bin, "--control", self.ctl] + args,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.random() * 0.01)
            self.kill()
            p.wait()
            h = None  # the handle closes when dropped
            self.cut = op if p.returncode != 0 else None
            if p.returncode == 0:
                self.apply(op)
            return None
        self.bsnap(*args)
        self.apply(op)
        if kind == "rollback":
            # our connection was disconnected by --force: reconnect
            h = None  # the handle closes when dropped
            h = self.connect(vol.name)
        return h

    def apply(self, op):
        if op[0] in ("create", "clone"):
            self.objs[op[1].name] = op[1]
        elif op[0] == "delete":
            self.objs.pop(op[1], None)
            # deleting a volume loses nothing else; snapshots keep parent
        elif op[0] == "rollback":
            vol, snap = op[1], op[2]
            vol.cand = [[(self.wid(), v)] for v in snap.exp]

    # ---- the loop ----

    def cut_power(self, i):
        if not self.a.powercut:
            return
        if os.path.exists(self.pclog + ".fail"):
            raise Violation("powercut shim refused a write path: "
                            + open(self.pclog + ".fail").read().strip())
        if not os.path.exists(self.pclog):
            raise Violation("no powercut log %s: powercut.so was not loaded"
                            % self.pclog)
        mode = self.a.powercut
        if mode == "mixed":
            mode = "all" if i % 2 == 0 else "subset"
        st = rewind(self.pclog, [self.image + x for x in IMAGE_FILES], mode, self.rng)
        self.c["unsynced_lost"] += st["unsynced"]
        self.c["sectors_rewound"] += st["sectors"]
        self.c["kept"] += st["kept"]

    def offline_check(self):
        r = subprocess.run([self.busesnap, "check", self.image],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.c["offline_checks"] += 1
        if r.returncode != 0:
            raise Violation("busesnap check after the crash (status %d): %s"
                            % (r.returncode, " | ".join(r.stdout.strip().splitlines()[-3:])))

    def online_check(self):
        r = self.bsnap("check", "--json", check=False)
        self.c["online_checks"] += 1
        try:
            j = json.loads(r.stdout)
        except ValueError:
            raise Violation("bsnap check: %s" % (r.stdout + r.stderr).strip())
        if r.returncode != 0 or j.get("problems", 1) != 0:
            raise Violation("bsnap check: %s" % json.dumps(j)[:300])

    def run(self):
        self.start()
        self.cut = None
        t_start = time.monotonic()
        for i in range(self.a.iterations):
            vol = self.rng.choice([o for o in self.objs.values() if o.kind == "volume"])
            seconds = self.rng.uniform(0.1, 0.7)
            op_at = self.rng.uniform(0, seconds) if self.rng.random() < 0.6 else None
            self.cut = None
            self.io_phase(vol, seconds, op_at)
            self.cut_power(i)
            if not self.a.no_offline_check:
                self.offline_check()
            self.start()
            self.verify_all(self.cut)
            if i % 10 == 9:
                self.online_check()
            self.c["iterations"] += 1
            if self.a.verbose:
                print("iteration %d: %s" % (i + 1, self.counts()), flush=True)
        self.kill_clean()
        self.c["seconds"] = round(time.monotonic() - t_start, 1)
        if self.a.powercut and self.a.iterations >= 4 and not self.c["unsynced_lost"]:
            raise Violation("the power cuts took back no write at all: the "
                            "simulation is blind")
        if self.a.iterations >= 10 and not self.c["inflight_at_kill"]:
            raise Violation("no kill ever found a request in flight")
        print("survived: " + self.counts(), flush=True)

    def kill_clean(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait()
            self.proc = None

    def counts(self):
        c = dict(self.c)
        c["bytes"] = c["blocks"] * BLOCK
        return " ".join("%s=%s" % kv for kv in c.items())


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "rewind":
        log, mode, seed = sys.argv[2], sys.argv[3], int(sys.argv[4])
        try:
            print(rewind(log, sys.argv[5:], mode, random.Random(seed)))
        except Violation as e:
            print("VIOLATION: %s" % e)
            return 1
        return 0
    p = argparse.ArgumentParser()
    p.add_argument("--top", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--size", type=int, default=16 << 20)
    p.add_argument("--powercut", choices=["all", "subset", "mixed"])
    p.add_argument("--ignore-sync", type=int, default=None)
    p.add_argument("--verbose", action="store_true")
    # to show what the reads alone catch (busesnap check catches more first)
    p.add_argument("--no-offline-check", action="store_true")
    a = p.parse_args()
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1 << 31)
    print("seed %d (rerun with SEED=%d), %d iterations, volume %d MiB%s"
          % (a.seed, a.seed, a.iterations, a.size >> 20,
             ", power cuts: " + a.powercut if a.powercut else ""), flush=True)
    r = Run(a)
    try:
        r.run()
    except Violation as e:
        print("VIOLATION: %s (seed %d, iteration %d)" % (e, a.seed, r.c["iterations"] + 1),
              flush=True)
        print("counts so far: " + r.counts(), flush=True)
        r.kill_clean()
        return 1
    except nbd.Error as e:
        print("VIOLATION: NBD error outside a crash: %s (seed %d, iteration %d)"
              % (e, a.seed, r.c["iterations"] + 1), flush=True)
        r.kill_clean()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
