#!/bin/bash
# test-busesnap-manners: the operator's everyday manners.  --version on
# busesnap, bsnap and busexmp says the Makefile's VERSION; sizes are read
# as people type them (64MiB, 64m, 0.0625G, 1.5M) and garbage, overflow,
# bits and fractions of a byte get one clear line; serve prints one
# startup line naming the image, its sockets and the control socket; a
# missing image or directory is named by its full path with the real
# cause; a failed first start leaves no image and no socket behind; bsnap
# prints human sizes and exact ones with --bytes; bsnap snapshot and its
# older name create both make snapshots.
. "$(dirname "$0")/functions.sh"
requires nbdsh nbdinfo jq
bs=$top/busesnap

# expect_fail RC MSG CMD...: CMD exits RC with one stderr line holding MSG.
expect_fail() {
    local want=$1 msg=$2 rc=0; shift 2
    "$@" >"$tmp/out" 2>"$tmp/err" </dev/null || rc=$?
    [ "$rc" = "$want" ] || fail "$*: exit $rc, expected $want ($(head -c 300 "$tmp/err"))"
    [ "$(wc -l <"$tmp/err")" = 1 ] || fail "$*: expected one line on stderr, got: $(cat "$tmp/err")"
    grep -qF -- "$msg" "$tmp/err" || fail "$*: stderr lacks '$msg': $(cat "$tmp/err")"
}

# --version, from the Makefile's VERSION.
version=$(sed -n 's/^VERSION *:= *//p' "$top/Makefile")
[ -n "$version" ] || fail "no VERSION in the Makefile"
for p in busesnap bsnap busexmp; do
    out=$("$top/$p" --version) || fail "$p --version failed"
    [[ $out == "$p $version"* ]] || fail "$p --version says '$out', not '$p $version'"
done

# Sizes as typed.
for s in 64M 64MiB 64m 64MB 0.0625G 65536K 67108864 67108864B; do
    rm -f "$tmp"/s.db*
    "$bs" create "$tmp/s.db" --size "$s" 2>"$tmp/err" || fail "create --size $s refused: $(cat "$tmp/err")"
    assert_eq "size of --size $s" 67108864 "$("$bs" info --json "$tmp/s.db" | jq -r .size)"
done
expect_fail 2 'bad size "12Q"' "$bs" create "$tmp/q.db" --size 12Q
expect_fail 2 'bad size "-1"' "$bs" create "$tmp/q.db" --size -1
expect_fail 2 "not a whole number of bytes" "$bs" create "$tmp/q.db" --size 1.1K
expect_fail 2 "does not fit 64 bits" "$bs" create "$tmp/q.db" --size 99999999999999999999
expect_fail 2 "does not fit 64 bits" "$bs" create "$tmp/q.db" --size 16E
expect_fail 2 "b would be bits" "$bs" create "$tmp/q.db" --size 64Mb
rc=0; "$top/busexmp" 1x --socket "$tmp/q.sock" 2>"$tmp/err" || rc=$?
assert_eq "busexmp 1x: exit" 2 "$rc"
head -1 "$tmp/err" | grep -qF 'busexmp: bad size "1x" (expected a number' ||
    fail "busexmp 1x: $(head -1 "$tmp/err")"
[ ! -e "$tmp/q.db" ] || fail "a refused size created an image"
assert_eq "busexmp 1.5M" 1572864 "$(nbdsh -c "
h.connect_command(['$top/busexmp', '1.5M', '-s'])
print(h.get_size())" 2>/dev/null)"

# A missing image, or a missing directory, by full path and real cause.
expect_fail 1 "$tmp/none.db: no such image (give --size SIZE to create it)" \
    "$bs" serve "$tmp/none.db" --socket "$tmp/n.sock" --control "$tmp/n.ctl"
expect_fail 1 "$tmp/nodir/x.db: no such image: directory $tmp/nodir: No such file or directory" \
    "$bs" serve "$tmp/nodir/x.db" --socket "$tmp/n.sock" --control "$tmp/n.ctl"
expect_fail 1 "$tmp/nodir/x.db: cannot create the image: directory $tmp/nodir" \
    "$bs" serve "$tmp/nodir/x.db" --size 64M --socket "$tmp/n.sock" --control "$tmp/n.ctl"
touch "$tmp/file"
expect_fail 1 "$tmp/file/x.db: no such image: $tmp/file is not a directory" \
    "$bs" info "$tmp/file/x.db"

# A failed first start (its TCP address is not this machine's, after the
# image, the Unix socket and the control socket path were taken) leaves
# nothing behind.
rc=0
"$bs" serve "$tmp/new.db" --size 64M --socket "$tmp/new.sock" --control "$tmp/new.ctl" \
    --tcp 192.0.2.1:10809 2>"$tmp/err" </dev/null || rc=$?
assert_eq "exit of a failed start" 1 "$rc"
grep -q "192.0.2.1:10809" "$tmp/err" || fail "the failure does not name the address: $(cat "$tmp/err")"
left=$(cd "$tmp" && ls -d new.* 2>/dev/null || true)
[ -z "$left" ] || fail "a failed start left $left"

# The startup line.
image=$tmp/image.db
start_busesnap 64M
grep -qxF "busesnap: serving $image on socket $sock; control socket $ctl" "$tmp/server.log" ||
    fail "no startup line naming image, socket and control socket: $(cat "$tmp/server.log")"
[ "$(grep -c "serving" "$tmp/server.log")" = 1 ] || fail "more than one startup line"

# bsnap: snapshot and its older name, human and exact sizes.
nbdsh -u "$uri" -c "h.pwrite(b'x' * 65536, 0); h.flush()"
"$top/bsnap" snapshot s1 >/dev/null || fail "bsnap snapshot failed"
"$top/bsnap" create s2 >/dev/null || fail "bsnap create (snapshot's older name) failed"
"$top/bsnap" list --json >"$tmp/list"
assert_eq "kinds of s1 and s2" "snapshot snapshot" \
    "$(jq -r '[.[] | select(.name == "s1" or .name == "s2") | .kind] | join(" ")' "$tmp/list")"
"$top/bsnap" snapshot --help | grep -q "busesnap create" ||
    fail "bsnap snapshot --help does not tell it from busesnap create"
"$top/bsnap" list >"$tmp/human"
awk '$1 == "s1" { print $6, $7 }' "$tmp/human" >"$tmp/cols"
assert_eq "s1 human size and written" "64M 64K" "$(cat "$tmp/cols")"
"$top/bsnap" list --bytes >"$tmp/exact"
assert_eq "s1 exact size and written" "67108864 65536" "$(awk '$1 == "s1" { print $6, $7 }' "$tmp/exact")"
"$top/bsnap" info >"$tmp/info"
grep -q "^logical size: *64M (67108864 bytes)$" "$tmp/info" || fail "bsnap info: $(cat "$tmp/info")"
"$top/bsnap" info --bytes >"$tmp/info"
grep -q "^logical size: *67108864$" "$tmp/info" || fail "bsnap info --bytes: $(cat "$tmp/info")"
exit 0
