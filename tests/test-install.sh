#!/bin/bash
# test-install: make install DESTDIR=... PREFIX=/usr/local puts the header,
# both libraries, buse.pc, the programs, the man pages, the bash
# completion of bsnap and busesnap and the systemd units (starting the
# installed /usr/local/sbin/busesnap) in place (the installed completion
# scripts load and register themselves); a C99 program and a
# C++ program compile against the installed header with pkg-config, link
# (shared, and static with --static), and serve a disk that nbdinfo reads.
. "$(dirname "$0")/functions.sh"
requires make pkg-config cc c++ nbdinfo
dest=$tmp/root
make -C "$top" -s install DESTDIR="$dest" PREFIX=/usr/local >"$tmp/install.log" 2>&1 ||
    fail "make install failed: $(tail -3 "$tmp/install.log")"
for f in include/buse.h lib/libbuse.a lib/libbuse.so lib/libbuse.so.2 \
         lib/pkgconfig/buse.pc share/man/man3/buse.3 share/man/man1/busexmp.1 bin/busexmp \
         bin/bsnap sbin/busesnap share/man/man1/bsnap.1 share/man/man8/busesnap.8 \
         share/bash-completion/completions/bsnap share/bash-completion/completions/busesnap \
         lib/systemd/system/busesnap@.service lib/systemd/system/busesnap@.socket \
         lib/systemd/system/busesnap-dev@.service; do
    [ -e "$dest/usr/local/$f" ] || fail "make install did not install $f"
done
for p in bsnap busesnap; do
    bash -c ". '$dest/usr/local/share/bash-completion/completions/$p' && complete -p $p" >"$tmp/complete" 2>&1 ||
        fail "installed completion of $p does not load: $(cat "$tmp/complete")"
    grep -q -- "-F _$p $p" "$tmp/complete" || fail "installed completion of $p registers no function: $(cat "$tmp/complete")"
done
for u in busesnap@.service busesnap-dev@.service; do
    grep -q '^ExecStart=/usr/local/sbin/busesnap serve ' "$dest/usr/local/lib/systemd/system/$u" ||
        fail "installed $u does not start /usr/local/sbin/busesnap: $(grep ExecStart "$dest/usr/local/lib/systemd/system/$u")"
done
assert_eq "installed bsnap --version" "bsnap $(sed -n 's/^VERSION *:= *//p' "$top/Makefile")" \
    "$("$dest/usr/local/bin/bsnap" --version | cut -d' ' -f1-2)"
export PKG_CONFIG_PATH=$dest/usr/local/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$dest
cflags=$(pkg-config --cflags buse) && libs=$(pkg-config --libs buse) || fail "pkg-config buse failed"
# Under make SANITIZER=..., libbuse is instrumented: so must its users be.
san=${SANITIZER:+-fsanitize=$SANITIZER}
assert_eq "pkg-config version" 2.0.0 "$(pkg-config --modversion buse)"

cat >"$tmp/zero.c" <<'C'
/* A BUSE-style program: the BUSE 1 members first, positional. */
#include <buse.h>
#include <stdio.h>
#include <string.h>
static int zread(void *buf, uint32_t len, uint64_t off, void *u)
{
    (void)off; (void)u;
    memset(buf, 0, len);
    return 0;
}
int main(int argc, char **argv)
{
    struct buse_operations ops = {zread, NULL, NULL, NULL, NULL, 1 << 20, 0, 0};
    struct buse_server *srv = buse_server_new(&ops, NULL);
    if (!srv || argc < 2 || buse_server_listen_unix(srv, argv[1], 0) < 0)
        return 1;
    int r = buse_server_run(srv);
    buse_server_free(srv);
    return r < 0;
}
C
cat >"$tmp/zero.cc" <<'C'
#include <buse.h>
#include <cstring>
static int zread(void *buf, uint32_t len, uint64_t, void *)
{
    std::memset(buf, 0, len);
    return 0;
}
int main(int argc, char **argv)
{
    buse_operations ops{};
    ops.read = zread;
    ops.size = 2 << 20;
    ops.flags = BUSE_READONLY;
    buse_server *srv = buse_server_new(&ops, nullptr);
    if (!srv || argc < 2 || buse_server_listen_unix(srv, argv[1], 0) < 0)
        return 1;
    int r = buse_server_run(srv);
    buse_server_free(srv);
    return r < 0;
}
C
cc -std=c99 -pedantic -Wall -Werror $san $cflags -o "$tmp/zero-c" "$tmp/zero.c" $libs -Wl,-rpath,"$dest/usr/local/lib" ||
    fail "C99 program does not build against the installed header"
c++ -std=c++11 -Wall -Werror $san $cflags -o "$tmp/zero-cxx" "$tmp/zero.cc" $libs -Wl,-rpath,"$dest/usr/local/lib" ||
    fail "C++ program does not build against the installed header"
cc -std=c99 $san $cflags -o "$tmp/zero-static" "$tmp/zero.c" \
    "$dest/usr/local/lib/libbuse.a" $(pkg-config --libs --static buse | sed 's/-lbuse//') ||
    fail "static link against libbuse.a failed"
ldd "$tmp/zero-c" | grep "$dest/usr/local/lib/libbuse.so.2" >/dev/null || fail "zero-c is not linked to the installed libbuse.so.2"

# libbuse.so exports exactly the functions the installed header declares
# (plus buse_server_attach_kernel, kept for programs built before
# queue_depth), each at version LIBBUSE_2: no internal name leaks
declared=$(cc -E -P "$dest/usr/local/include/buse.h" |
    grep -oE "\bbuse_[a-z0-9_]+[[:space:]]*\(" | sed 's/[[:space:](]//g' |
    { cat; echo buse_server_attach_kernel; } | sort -u)
exported=$(nm -D --defined-only "$dest/usr/local/lib/libbuse.so.2" |
    awk '$3 ~ /^buse_/ || $3 !~ /^LIBBUSE/ {print $3}' | sort -u)
[ "$exported" = "$(sed 's/$/@@LIBBUSE_2/' <<<"$declared")" ] ||
    fail "libbuse.so exports other names than buse.h declares: $(diff <(sed 's/$/@@LIBBUSE_2/' <<<"$declared") <(echo "$exported") | grep '^[<>]' | head -10 | tr '\n' ' ')"

start_server "$tmp/c.sock" "$tmp/zero-c" "$tmp/c.sock"
assert_eq "C99 program size" 1048576 "$(nbdinfo --size "nbd+unix:///?socket=$tmp/c.sock")"
start_server "$tmp/cxx.sock" "$tmp/zero-cxx" "$tmp/cxx.sock"
assert_eq "C++ program read-only" true "$(nbdinfo --is read-only "nbd+unix:///?socket=$tmp/cxx.sock" && echo true)"
start_server "$tmp/s.sock" "$tmp/zero-static" "$tmp/s.sock"
assert_eq "static program size" 1048576 "$(nbdinfo --size "nbd+unix:///?socket=$tmp/s.sock")"
