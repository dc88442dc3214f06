# tests/functions.sh: shared helpers for the shell tests, sourced by each
# tests/test-*.sh (the nbdkit way).  A test runs in its own temp dir, starts
# servers on private sockets there, drives real NBD clients, and fails with
# one line saying what differed.  Exit 77 = skipped.
#
#   . "$(dirname "$0")/functions.sh"
#   requires nbdsh qemu-io          # skip (77) if a program is missing
#   start_busexmp 64M               # sets $sock, $uri, $server_pid
#   start_server SOCKET CMD...      # any server; waits for the socket
#   fail "what differed"            # print and exit 1
#   on_exit "cmd"                   # run at exit (reverse order)

set -eu
set -o pipefail

# Clients from Debian must run with Debian's python3 (nbdsh).
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export top
test_name=$(basename "$0" .sh)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/busesnap-$test_name.XXXXXX")
_exit_cmds=()
on_exit() { _exit_cmds=("$1" "${_exit_cmds[@]}"); }
_run_exit() {
    local rc=$? c
    for c in "${_exit_cmds[@]}"; do eval "$c" >/dev/null 2>&1 || true; done
    # A sanitizer report in a server log fails the test (make SANITIZER=...).
    if [ $rc -eq 0 ] && grep -qsE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$tmp"/*.log; then
        echo "FAIL $test_name: sanitizer report in $(grep -lsE 'Sanitizer|runtime error:' "$tmp"/*.log | head -1)" >&2
        rc=1
    fi
    if [ $rc -eq 0 ] || [ $rc -eq 77 ] || [ -n "${KEEP_TMP:-}" ]; then
        [ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"
    else
        echo "$test_name: logs kept in $tmp" >&2
    fi
    exit $rc
}
trap _run_exit EXIT
trap 'exit 130' INT TERM

fail() { echo "FAIL $test_name: $*" >&2; exit 1; }
skip() { echo "SKIP $test_name: $*" >&2; exit 77; }

requires() {
    local p
    for p in "$@"; do
        command -v "$p" >/dev/null 2>&1 || skip "$p is not installed"
    done
}
requires_root() { [ "$(id -u)" = 0 ] || skip "needs root"; }

# wait_for_socket PATH [PID] [SECS]: wait until PATH is a socket; fail if the
# process PID dies first.
wait_for_socket() {
    local path=$1 pid=${2:-} secs=${3:-20} i
    for ((i = 0; i < secs * 50; i++)); do
        [ -S "$path" ] && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            fail "server (pid $pid) died before creating $path; log: $(tail -5 "$tmp/server.log" 2>/dev/null)"
        fi
        sleep 0.02
    done
    fail "timed out waiting for socket $path"
}

# start_server SOCKET CMD...: run CMD in the background (log in
# $tmp/server.log), wait for SOCKET; sets server_pid.  Killed at exit.
start_server() {
    local s=$1; shift
    "$@" >>"$tmp/server.log" 2>&1 &
    server_pid=$!
    on_exit "kill $server_pid; wait $server_pid"
    wait_for_socket "$s" "$server_pid"
}

# stop_server [SIGNAL]: signal the server and wait; returns its exit code.
stop_server() {
    local sig=${1:-TERM} rc=0
    kill -"$sig" "$server_pid" 2>/dev/null || true
    wait "$server_pid" || rc=$?
    return $rc
}

# start_busexmp SIZE [ARGS...]: the libbuse example on $tmp/sock.
start_busexmp() {
    local size=$1; shift
    sock=$tmp/sock
    uri="nbd+unix:///?socket=$sock"
    start_server "$sock" "$top/busexmp" "$size" --socket "$sock" "$@"
}

# nbdsh_run URI PYTHON: run a python snippet with h connected to URI.
nbdsh_run() { nbdsh -u "$1" -c "$2"; }

# small_fs SIZE: a fresh ext4 of SIZE in a file, loop-mounted on $tmp/mnt
# (unmounted at exit): a file system a test can fill up.  Needs root.
small_fs() {
    truncate -s "$1" "$tmp/fs.img"
    mkfs.ext4 -q "$tmp/fs.img"
    mkdir "$tmp/mnt"
    mount -o loop "$tmp/fs.img" "$tmp/mnt" || skip "cannot loop-mount"
    on_exit "umount -l '$tmp/mnt'"
}

# assert_eq WHAT EXPECTED ACTUAL
assert_eq() { [ "$2" = "$3" ] || fail "$1: expected '$2', got '$3'"; }

# start_busesnap [SIZE] [ARGS...]: busesnap serve $image (default
# $tmp/image.db; created when SIZE is given) on NBD socket $tmp/sock and
# control socket $tmp/ctl (exported as BSNAP_CONTROL for bsnap); waits
# until the control socket, which appears last, answers.  Sets image, sock,
# ctl, uri, server_pid.  uri_of EXPORT prints the URI of another export.
start_busesnap() {
    local size=${1:-}; shift || true
    image=${image:-$tmp/image.db}
    sock=$tmp/sock
    ctl=$tmp/ctl
    export BSNAP_CONTROL=$ctl
    uri="nbd+unix:///?socket=$sock"
    if [ -n "$size" ]; then set -- --size "$size" "$@"; fi
    start_server "$ctl" "$top/busesnap" serve "$image" --socket "$sock" \
        --control "$ctl" "$@"
    # The socket file may be a stale one from a killed server: wait until
    # the new server answers.
    local i
    for ((i = 0; i < 1000; i++)); do
        "$top/bsnap" --control "$ctl" info >/dev/null 2>&1 && return 0
        kill -0 "$server_pid" 2>/dev/null ||
            fail "busesnap died at start: $(tail -3 "$tmp/server.log")"
        sleep 0.02
    done
    fail "busesnap did not answer on $ctl"
}
uri_of() { echo "nbd+unix:///$1?socket=$sock"; }
