#!/bin/bash
# test-busesnap-systemd: the systemd units.  systemd-analyze verify accepts
# the three templates (when it is installed), then the ExecStart line of
# busesnap@.service is run as systemd would run busesnap@vms.service: a
# listening socket made here on fd 3 with LISTEN_FDS/LISTEN_PID, and
# NOTIFY_SOCKET naming a datagram socket this test reads (abstract "@name"
# the first time, a path the second).  READY=1 must come once, and only
# when the server answers (its control socket exists and bsnap talks to it
# at once, and an nbdsh round trip goes through the passed socket);
# STOPPING=1 must follow SIGTERM, before a clean exit (0); the data
# written is there after the second activation.
. "$(dirname "$0")/functions.sh"
requires python3 nbdsh
units="busesnap@.service busesnap@.socket busesnap-dev@.service"
if command -v systemd-analyze >/dev/null; then
    mkdir "$tmp/units"
    for u in $units; do
        sed "s|@SBINDIR@|$top|g" "$top/systemd/$u" >"$tmp/units/$u"
    done
    out=$(cd "$tmp/units" && systemd-analyze verify --man=no $(printf './%s ' $units) 2>&1) ||
        fail "systemd-analyze verify failed: $out"
    [ -z "$out" ] || fail "systemd-analyze verify complains: $out"
else
    echo "$test_name: no systemd-analyze (package systemd): units not verified" >&2
fi

# The unit's own command line, with /var/lib and /run moved under $tmp.
export cmd=$(sed -n 's/^ExecStart=//p' "$top/systemd/busesnap@.service" |
    sed -e "s|@SBINDIR@|$top|g" -e "s|/var/lib/busesnap|$tmp/lib|g" \
        -e "s|/run/busesnap|$tmp/run|g" -e 's|%i|vms|g' -e 's|\$BUSESNAP_OPTS||g')
case "$cmd" in "$top/busesnap serve $tmp/lib/vms "*) ;; *) fail "unexpected ExecStart: $cmd" ;; esac
mkdir "$tmp/lib" "$tmp/run"
"$top/busesnap" create "$tmp/lib/vms" --size 64M >/dev/null || fail "busesnap create failed"
export top tmp

cat >"$tmp/activate.py" <<'PY'
import os, select, shlex, signal, socket, subprocess, sys, time
top, tmp, cmd = os.environ['top'], os.environ['tmp'], os.environ['cmd']
run, notify_kind = int(sys.argv[1]), sys.argv[2]
sock = tmp + '/run/vms.sock'
uri = 'nbd+unix:///?socket=' + sock

def fail(msg):
    print('activate.py: run %d: %s' % (run, msg), file=sys.stderr)
    sys.exit(1)

if os.path.exists(sock):
    os.unlink(sock)
ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ls.bind(sock)
ls.listen(16)
ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
if notify_kind == 'abstract':
    name = 'busesnap-test-notify-%d' % os.getpid()
    ns.bind('\0' + name)
    notify = '@' + name
else:
    notify = tmp + '/notify-%d' % run
    ns.bind(notify)

err = open(tmp + '/serve-%d.log' % run, 'w')
pid = os.fork()
if pid == 0:  # as systemd does: the socket on fd 3, LISTEN_PID = our pid
    os.dup2(ls.fileno(), 3)
    os.set_inheritable(3, True)  # dup2(3, 3) leaves close-on-exec set
    os.dup2(err.fileno(), 2)
    env = dict(os.environ, LISTEN_FDS='1', LISTEN_PID=str(os.getpid()),
               NOTIFY_SOCKET=notify)
    argv = shlex.split(cmd)
    os.execve(argv[0], argv, env)
ls.close()

def log():
    return open(tmp + '/serve-%d.log' % run).read()

msgs = []
deadline = time.time() + 300  # a hang, not a speed bound
while not any('READY=1' in m.split('\n') for m in msgs):
    if time.time() > deadline:
        fail('no READY=1 in 300 s; got %r; log: %s' % (msgs, log()))
    if os.waitpid(pid, os.WNOHANG)[0] == pid:
        fail('busesnap exited before READY=1: %s' % log())
    if select.select([ns], [], [], 0.2)[0]:
        msgs.append(ns.recv(4096).decode())

# READY=1 came: everything must answer now, with no retry.
r = subprocess.run([top + '/bsnap', '--control', tmp + '/run/vms.ctl', 'list'],
                   capture_output=True, text=True)
if r.returncode != 0:
    fail('READY=1 before the control socket answers: %s' % r.stderr)
code = '''
assert h.get_size() == 64 << 20, h.get_size()
if %d == 1:
    h.pwrite(b"systemd!" * 512, 1 << 20)
assert h.pread(4096, 1 << 20) == b"systemd!" * 512
''' % run
r = subprocess.run(['nbdsh', '-u', uri, '-c', code], capture_output=True,
                   text=True)
if r.returncode != 0:
    fail('nbdsh round trip through the passed socket failed: %s' % r.stderr)

os.kill(pid, signal.SIGTERM)
status = os.waitpid(pid, 0)[1]
if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
    fail('busesnap did not exit 0 on SIGTERM (status %d): %s' % (status, log()))
ns.setblocking(False)
try:
    while True:
        msgs.append(ns.recv(4096).decode())
except BlockingIOError:
    pass
lines = [l for m in msgs for l in m.split('\n')]
if lines.count('READY=1') != 1:
    fail('READY=1 sent %d times: %r' % (lines.count('READY=1'), msgs))
if 'STOPPING=1' not in lines:
    fail('no STOPPING=1 after SIGTERM: %r' % msgs)
if lines.index('STOPPING=1') < lines.index('READY=1'):
    fail('STOPPING=1 before READY=1: %r' % msgs)
print('run %d: %r' % (run, msgs))
PY
python3 "$tmp/activate.py" 1 abstract >"$tmp/out" || fail "socket activation, abstract NOTIFY_SOCKET"
python3 "$tmp/activate.py" 2 path >>"$tmp/out" || fail "socket activation again, NOTIFY_SOCKET a path"
grep -q "READY=1" "$tmp/out" || fail "no notices reported: $(cat "$tmp/out")"
