/* common.c: size parsing, the default control socket path and the check
 * that a socket path cannot be replaced by another user, shared by the
 * busesnap, bsnap and busexmp programs, and the one way they print sizes
 * (see common.h).  Any thread. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

int common_parse_size(const char *s, uint64_t *out)
{
    /* DIGITS[.DIGITS][K|M|G|T|P|E, any case][i][B]: what people type (and
     * qemu-img, truncate and lsblk print), in powers of 1024.  A fraction
     * must come to whole bytes (1.5K yes, 1.1K no: -EDOM).  Lowercase b is
     * refused: it would be bits. */
    static const char units[] = "kmgtpe";
    const char *p = s;
    uint64_t whole = 0, frac = 0, scale = 1;
    unsigned shift = 0;
    if (*p < '0' || *p > '9')
        return -EINVAL;
    for (; *p >= '0' && *p <= '9'; p++)
        if (__builtin_mul_overflow(whole, 10, &whole) ||
            __builtin_add_overflow(whole, (uint64_t)(*p - '0'), &whole))
            return -ERANGE;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return -EINVAL;
        for (; *p >= '0' && *p <= '9'; p++) {
            if (scale > UINT64_MAX / 100) /* 18 digits are plenty */
                return -EINVAL;
            frac = frac * 10 + (uint64_t)(*p - '0');
            scale *= 10;
        }
    }
    const char *u = *p ? strchr(units, *p | 0x20) : NULL;
    if (u) {
        shift = 10 * (unsigned)(u - units + 1);
        p++;
        if (*p == 'i')
            p++;
        if (*p == 'B')
            p++;
    } else if (*p == 'B') {
        p++;
    }
    if (*p != '\0')
        return -EINVAL;
    if (shift >= 64 || whole > (UINT64_MAX >> shift))
        return -ERANGE;
    uint64_t v = whole << shift;
    if (scale > 1) {
        /* frac / scale of a unit: exact only if it divides. */
        unsigned __int128 f = (unsigned __int128)frac << shift;
        if (f % scale)
            return -EDOM;
        if (__builtin_add_overflow(v, (uint64_t)(f / scale), &v))
            return -ERANGE;
    }
    *out = v;
    return 0;
}

const char *common_size_error(const char *s, int r)
{
    static __thread char buf[256];
    size_t n = strlen(s);
    if (r == -ERANGE)
        snprintf(buf, sizeof buf,
                 "size \"%.64s\" does not fit 64 bits (at most "
                 "18446744073709551615 bytes)",
                 s);
    else if (r == -EDOM)
        snprintf(buf, sizeof buf,
                 "size \"%.64s\" is not a whole number of bytes", s);
    else if (n > 1 && s[n - 1] == 'b' && s[n - 2] != 'b')
        snprintf(buf, sizeof buf,
                 "bad size \"%.64s\" (b would be bits: write B for bytes, as "
                 "in 512MiB or 8GB)",
                 s);
    else
        snprintf(buf, sizeof buf,
                 "bad size \"%.64s\" (expected a number and K, M, G, T, P or "
                 "E, with iB or B or alone, in powers of 1024: 512M, 8GiB, "
                 "1.5T)",
                 s);
    return buf;
}

/* A directory that is ours, not a symlink, and private (0700). */
static int private_dir(const char *dir)
{
    struct stat st;
    return lstat(dir, &st) == 0 && S_ISDIR(st.st_mode) &&
           st.st_uid == geteuid() && (st.st_mode & 077) == 0;
}

static const char *owner_name(uid_t uid, char *buf, size_t len)
{
    struct passwd pw, *res = NULL;
    char tmp[1024];
    if (getpwuid_r(uid, &pw, tmp, sizeof tmp, &res) == 0 && res)
        snprintf(buf, len, "%s (uid %u)", res->pw_name, (unsigned)uid);
    else
        snprintf(buf, len, "uid %u", (unsigned)uid);
    return buf;
}

int common_default_control_path(const char *prog, char *buf, size_t len,
                                int create)
{
    const char *e = getenv("BSNAP_CONTROL");
    uid_t uid = geteuid();
    char dir[256], who[128];
    struct stat st;
    if (e && *e) {
        snprintf(buf, len, "%s", e);
        return 0;
    }
    e = getenv("XDG_RUNTIME_DIR");
    if (e && *e && private_dir(e)) {
        snprintf(buf, len, "%s/busesnap.ctl", e);
        return 0;
    }
    snprintf(dir, sizeof dir, "/run/user/%u", (unsigned)uid);
    if (uid != 0 && private_dir(dir)) {
        snprintf(buf, len, "%s/busesnap.ctl", dir);
        return 0;
    }
    if (uid == 0) {
        snprintf(buf, len, "/run/busesnap.ctl");
        return 0;
    }
    /* Shared /tmp: a directory of our own, which nobody else can have
     * made for us (checked, not trusted, when it exists). */
    snprintf(dir, sizeof dir, "/tmp/busesnap-%u", (unsigned)uid);
    snprintf(buf, len, "%s/busesnap.ctl", dir);
    if (create && mkdir(dir, 0700) < 0 && errno != EEXIST) {
        int r = -errno;
        fprintf(stderr, "%s: %s: %s\n", prog, dir, strerror(-r));
        return r;
    }
    if (lstat(dir, &st) < 0) {
        if (errno == ENOENT)
            return 0; /* no server made it: connecting will say so */
        int r = -errno;
        fprintf(stderr, "%s: %s: %s\n", prog, dir, strerror(-r));
        return r;
    }
    if (!S_ISDIR(st.st_mode) || st.st_uid != uid || (st.st_mode & 077)) {
        fprintf(stderr,
                "%s: %s is not a private directory of yours (it is %s%s "
                "owned by %s, mode %03o): refusing to use the control socket "
                "in it; remove it, or choose a socket with --control or "
                "BSNAP_CONTROL\n",
                prog, dir, S_ISLNK(st.st_mode) ? "a symbolic link" : "",
                S_ISDIR(st.st_mode)   ? "a directory"
                : S_ISLNK(st.st_mode) ? ""
                                      : "not a directory,",
                owner_name(st.st_uid, who, sizeof who),
                (unsigned)(st.st_mode & 07777));
        return -EPERM;
    }
    return 0;
}

int common_check_socket_path(const char *prog, const char *what,
                             const char *path)
{
    char copy[4096], real[PATH_MAX], who[128];
    struct stat st;
    uid_t uid = geteuid();
    snprintf(copy, sizeof copy, "%s", path);
    if (!realpath(dirname(copy), real))
        return 0; /* no such directory: binding will say so */
    size_t n = strlen(real);
    int parent = 1;
    for (;;) {
        if (lstat(real, &st) < 0) {
            int r = -errno;
            fprintf(stderr, "%s: %s %s: %s: %s\n", prog, what, path, real,
                    strerror(-r));
            return r;
        }
        if (st.st_uid != uid && st.st_uid != 0) {
            fprintf(stderr,
                    "%s: %s %s: directory %s belongs to %s, who could "
                    "replace the socket: refusing it\n",
                    prog, what, path, real,
                    owner_name(st.st_uid, who, sizeof who));
            return -EPERM;
        }
        if ((st.st_mode & 022) && !(st.st_mode & S_ISVTX)) {
            fprintf(stderr,
                    "%s: %s %s: directory %s is writable by other users "
                    "(mode %03o) and not sticky: they could replace the "
                    "socket; refusing it\n",
                    prog, what, path, real, (unsigned)(st.st_mode & 07777));
            return -EPERM;
        }
        if (parent && (st.st_mode & 022)) {
            /* A sticky shared directory such as /tmp: only a path of our
             * own is safe there. */
            struct stat ps;
            if (lstat(path, &ps) == 0 && ps.st_uid != uid) {
                fprintf(stderr,
                        "%s: %s %s: it belongs to %s, in directory %s that "
                        "others may write to: refusing it\n",
                        prog, what, path,
                        owner_name(ps.st_uid, who, sizeof who), real);
                return -EPERM;
            }
        }
        parent = 0;
        if (n <= 1)
            return 0;
        while (n > 1 && real[n - 1] != '/')
            n--;
        if (n > 1)
            n--; /* the slash, unless it is the root */
        real[n] = '\0';
    }
}

const char *common_human_size(unsigned long long bytes, char *buf, size_t len)
{
    static const char units[] = "BKMGTPE";
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 6) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%lluB", bytes);
    else
        snprintf(buf, len, "%.*f%c", v < 10 ? 1 : 0, v, units[u]);
    return buf;
}

int common_take_stdio(const char *prog, int *in, int *out)
{
    int r, null;
    if (isatty(0) || isatty(1)) {
        fprintf(stderr,
                "%s: --single speaks NBD on stdin and stdout: run it from an "
                "NBD client (nbd_connect_command, ssh HOST ...), not a "
                "terminal\n",
                prog);
        return -ENOTTY;
    }
    fflush(stdout);
    *in = fcntl(0, F_DUPFD_CLOEXEC, 3);
    *out = *in < 0 ? -1 : fcntl(1, F_DUPFD_CLOEXEC, 3);
    if (*out < 0)
        goto fail;
    null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null < 0 || dup2(null, 0) < 0 || dup2(2, 1) < 0)
        goto fail;
    close(null);
    return 0;
fail:
    r = -errno;
    fprintf(stderr, "%s: --single: cannot take stdin and stdout: %s\n", prog,
            strerror(-r));
    return r;
}
