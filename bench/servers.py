"""bench/servers.py: start and stop the servers the benchmark compares.

Every server runs as a child of the benchmark, on a private Unix socket in
its own folder under the run's temp dir, with its log beside the run's other
logs.  A server whose program is missing is not an error: it is reported as
skipped with the reason, so the bench runs on whatever the tree has built.
Space is measured as the allocated bytes of every regular file the server
holds open or keeps in its folder (nbdkit's cow overlay is an unlinked temp
file, so `du` alone would miss it).  Only the benchmark's thread calls this.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (description used in the report, program that must exist)
KINDS = {
    "busesnap": ("busesnap serve (LMDB + XXH3 chunk store)", os.path.join(TOP, "busesnap")),
    "nbdkit-memory": ("nbdkit memory 1G (RAM, the transport ceiling)", "nbdkit"),
    "nbdkit-cow": ("nbdkit file --filter=cow cow-block-size=4K", "nbdkit"),
    "nbdkit-file": ("nbdkit file (raw file, sequential points only)", "nbdkit"),
    "qemu-qcow2": ("qemu-nbd -f qcow2 --cache=writeback", "qemu-nbd"),
    "busexmp": ("busexmp (libbuse memory disk)", os.path.join(TOP, "busexmp")),
}


def available(kind):
    """Return None when KIND can run here, else a one-line reason."""
    prog = KINDS[kind][1]
    if os.path.isabs(prog):
        if not os.access(prog, os.X_OK):
            return "%s is not built" % os.path.relpath(prog, TOP)
    elif shutil.which(prog) is None:
        return "%s is not installed" % prog
    if kind == "qemu-qcow2" and shutil.which("qemu-img") is None:
        return "qemu-img is not installed"
    return None


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)


class Server:
    """One running server.  uri(export) gives its NBD URI; stop() ends it."""

    def __init__(self, kind, workdir, logdir, size="1G", tag=None, image=None,
                 prog=None):
        self.kind = kind
        self.prog = prog or KINDS[kind][1]  # another busesnap build: A/B
        self.size = size
        self.dir = os.path.join(workdir, tag or kind)
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.dir, "nbd.sock")
        self.control = os.path.join(self.dir, "control.sock")
        self.log = os.path.join(logdir, (tag or kind) + ".log")
        self.proc = None
        self.image = image
        if kind == "busesnap":
            self.image = image or os.path.join(self.dir, "image.db")
        elif kind == "qemu-qcow2":
            self.image = image or os.path.join(self.dir, "disk.qcow2")
            if not os.path.exists(self.image):
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", self.image, size],
                               check=True)
        elif kind in ("nbdkit-cow", "nbdkit-file"):
            self.image = os.path.join(self.dir, "base.raw")
            with open(self.image, "wb") as f:
                f.truncate(parse_size(size))

    def argv(self):
        k = self.kind
        if k == "busesnap":
            return [self.prog, "serve", self.image, "--size", self.size,
                    "--socket", self.sock, "--control", self.control]
        if k == "busexmp":
            return [KINDS[k][1], self.size, "--socket", self.sock]
        if k == "nbdkit-memory":
            return ["nbdkit", "-f", "-U", self.sock, "memory", self.size]
        if k == "nbdkit-cow":
            return ["nbdkit", "-f", "-U", self.sock, "--filter=cow", "file", self.image,
                    "cow-block-size=4K"]
        if k == "nbdkit-file":
            return ["nbdkit", "-f", "-U", self.sock, "file", self.image]
        if k == "qemu-qcow2":
            return ["qemu-nbd", "-f", "qcow2", "--cache=writeback", "-t", "-e", "8",
                    "-k", self.sock, self.image]
        raise ValueError(k)

    def start(self):
        env = dict(os.environ, TMPDIR=self.dir)  # nbdkit's cow overlay goes here
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        logf = open(self.log, "ab")
        logf.write(("# %s\n" % " ".join(self.argv())).encode())
        logf.flush()
        self.proc = subprocess.Popen(self.argv(), stdout=logf, stderr=logf, env=env,
                                     stdin=subprocess.DEVNULL)
        logf.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %d before listening; log %s"
                                   % (self.kind, self.proc.returncode, self.log))
            if os.path.exists(self.sock) and self._connectable():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("%s: no socket %s after 60 s" % (self.kind, self.sock))

    def _connectable(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.sock)
            return True
        except OSError:
            return False
        finally:
            s.close()

    @property
    def pid(self):
        return self.proc.pid

    def uri(self, export=""):
        return "nbd+unix:///%s?socket=%s" % (export, self.sock)

    def stop(self):
        conn = getattr(self, "ctl_conn", None)
        if conn is not None:
            conn.close()
            self.ctl_conn = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def rss_anon_kib(self):
        """RssAnon of the server process in KiB (heap + anonymous maps)."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return None

    def allocated_bytes(self):
        """Allocated bytes of the files in the server's folder and of every
        regular file it holds open (counted once each)."""
        seen = {}
        for root, _, files in os.walk(self.dir):
            for n in files:
                try:
                    st = os.stat(os.path.join(root, n))
                except OSError:
                    continue
                seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
        if self.proc is not None and self.proc.poll() is None:
            fddir = "/proc/%d/fd" % self.pid
            for fd in os.listdir(fddir):
                try:
                    st = os.stat(os.path.join(fddir, fd))
                except OSError:
                    continue
                if (st.st_mode & 0o170000) == 0o100000 and not \
                        os.readlink(os.path.join(fddir, fd)).startswith(self.log):
                    seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
        return sum(seen.values())
