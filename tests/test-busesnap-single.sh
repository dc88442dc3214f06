#!/bin/bash
# test-busesnap-single: `busesnap serve IMAGE -s` and `busexmp SIZE -s`
# serve one client on stdin/stdout (nbdkit's --single) and exit when it
# goes.  Driven by libnbd's nbd_connect_command (nbdsh: a socketpair as
# stdin and stdout), by the same through two pipes (what ssh gives the
# remote command: `ssh host busesnap serve IMAGE -s`), and by qemu-img and
# nbdcopy through socat running the command per connection.  Data must
# come back bit-exact, a snapshot taken with bsnap over --control during a
# single connection must be served by the next one, and --single refuses
# to be combined with listeners.
. "$(dirname "$0")/functions.sh"
requires nbdsh qemu-img nbdcopy socat cmp
img=$tmp/image.db
head -c 8M /dev/urandom >"$tmp/src.raw"
head -c 3M /dev/urandom >"$tmp/pat.raw"
export top img tmp

# 1. nbd_connect_command: write at an odd offset, flush, snapshot through
#    the control socket while connected, read back.  The server is gone
#    once nbdsh closed the handle (libnbd waits for its command).
timeout 120 nbdsh -c "
import os, subprocess
h.connect_command([os.environ['top'] + '/busesnap', 'serve', os.environ['img'],
                   '--size', '16M', '-s', '--control', os.environ['tmp'] + '/ctl'])
assert h.get_size() == 16 << 20, h.get_size()
pat = open(os.environ['tmp'] + '/pat.raw', 'rb').read()
h.pwrite(pat, 12345)
h.flush()
subprocess.run([os.environ['top'] + '/bsnap', '--control', os.environ['tmp'] + '/ctl',
                'snapshot', 's1'], check=True, stdout=subprocess.DEVNULL)
h.pwrite(b'\xff' * 4096, 12345)
assert h.pread(len(pat) - 4096, 12345 + 4096) == pat[4096:], 'read back differs'
h.shutdown()
del h
" 2>"$tmp/nbdsh1.log" || fail "connect_command session failed: $(tail -3 "$tmp/nbdsh1.log")"
grep -q "serving $img on stdin/stdout" "$tmp/nbdsh1.log" ||
    fail "no startup line naming the image and stdin/stdout: $(cat "$tmp/nbdsh1.log")"
# (libnbd waits for its command at close; allow for a slow exit anyway)
for ((i = 0; i < 600; i++)); do
    pgrep -f "busesnap serve $img" >/dev/null || break
    sleep 0.1
done
pgrep -f "busesnap serve $img" >/dev/null && fail "busesnap still runs 60 s after its client left"
[ -e "$tmp/ctl" ] && fail "control socket $tmp/ctl left behind"

# 2. Two pipes, as ssh connects them: the snapshot holds the pattern, the
#    volume the later 0xff block.
timeout 120 nbdsh -c "
import os
h.set_export_name('s1')
h.connect_command(['sh', '-c', 'cat | \"\$top\"/busesnap serve \"\$img\" -s | cat'])
pat = open(os.environ['tmp'] + '/pat.raw', 'rb').read()
assert h.is_read_only(), 'snapshot export is writable'
assert h.pread(len(pat), 12345) == pat, 'snapshot through pipes differs'
h.shutdown()
h2 = nbd.NBD()
h2.connect_command(['sh', '-c', 'cat | \"\$top\"/busesnap serve \"\$img\" --single | cat'])
assert h2.pread(4096, 12345) == b'\xff' * 4096, 'volume through pipes differs'
assert h2.pread(len(pat) - 4096, 12345 + 4096) == pat[4096:], 'volume tail differs'
" 2>"$tmp/nbdsh2.log" || fail "session through pipes failed: $(tail -3 "$tmp/nbdsh2.log")"

# 3. qemu-img writes, nbdcopy reads back, each through socat running the
#    server for its one connection (-t: let the server close the image).
through_socat() {
    rm -f "$tmp/t.sock"
    socat -t 30 UNIX-LISTEN:"$tmp/t.sock" EXEC:"$*" 2>>"$tmp/socat.log" &
    socat_pid=$!
    on_exit "kill $socat_pid"
    wait_for_socket "$tmp/t.sock" "$socat_pid"
}
through_socat "$top/busesnap" serve "$img" -s
timeout 120 qemu-img convert -n -f raw -O raw "$tmp/src.raw" "nbd+unix:///?socket=$tmp/t.sock" ||
    fail "qemu-img convert through the command failed"
wait "$socat_pid" || true
through_socat "$top/busesnap" serve "$img" -s
timeout 120 nbdcopy -C 1 "nbd+unix:///?socket=$tmp/t.sock" "$tmp/back.raw" ||
    fail "nbdcopy through the command failed"
wait "$socat_pid" || true
head -c 8M "$tmp/back.raw" | cmp -s - "$tmp/src.raw" ||
    fail "nbdcopy read back differs from what qemu-img wrote"

# 4. busexmp -s, through pipes: the example serves one client too.
timeout 120 nbdsh -c "
import os
h.connect_command(['sh', '-c', 'cat | \"\$top\"/busexmp 4M -s | cat'])
assert h.get_size() == 4 << 20
data = os.urandom(1 << 20)
h.pwrite(data, 4096)
assert h.pread(1 << 20, 4096) == data, 'busexmp read back differs'
" 2>"$tmp/nbdsh4.log" || fail "busexmp -s failed: $(tail -3 "$tmp/nbdsh4.log")"

# 5. --single serves stdin/stdout only.
rc=0; "$top/busesnap" serve "$img" -s --socket "$tmp/x.sock" 2>"$tmp/err" </dev/null || rc=$?
assert_eq "serve -s --socket exit code" 2 "$rc"
grep -q -- "--single" "$tmp/err" || fail "unclear refusal: $(cat "$tmp/err")"
rc=0; "$top/busexmp" 4M -s --socket "$tmp/x.sock" 2>"$tmp/err" </dev/null || rc=$?
assert_eq "busexmp -s --socket exit code" 2 "$rc"
[ -e "$tmp/x.sock" ] && fail "a refused start left $tmp/x.sock"
# ... and not to a person at a terminal (script gives it a pty).
if command -v script >/dev/null; then
    script -qec "'$top/busesnap' serve '$img' -s" /dev/null >"$tmp/tty.out" 2>&1 </dev/null && rc=0 || rc=$?
    assert_eq "serve -s on a terminal: exit" 1 "$rc"
    grep -q "not a terminal" "$tmp/tty.out" || fail "serve -s on a terminal: $(cat "$tmp/tty.out")"
fi
exit 0
