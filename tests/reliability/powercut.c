/* powercut.c: an LD_PRELOAD shim that lets test-power-loss.sh simulate a
 * power cut of busesnap: after SIGKILL, every write the store did not sync
 * can be taken back (crashload.py rewind).
 *
 * For the files named in POWERCUT_FILES (colon-separated: IMAGE and
 * IMAGE-chunks, whose log segments are format 5's write-ahead log, and
 * the IMAGE-journal of a format 3/4 image; matched by device and inode, so every
 * fd of them counts, whatever path or dup it came from), every write is first appended to the
 * log POWERCUT_LOG as one record {seq, offset, old content, new content},
 * then let through; the log is an ordinary file, so it survives SIGKILL of
 * the server.  A successful fsync/fdatasync/syncfs/sync appends a SYNC
 * record "every write with seq < N is durable" (N taken when the sync
 * started).  A write on an fd opened O_DSYNC/O_SYNC (LMDB's meta page) is
 * durable for its own bytes once it returns (a DSYNC_DONE record).
 * sync_file_range is NOT a sync (it flushes neither the disk cache nor
 * metadata): the store must not rely on it, and this model checks that.
 *
 * Invariant: the log is in seq order, and a write's data reaches the file
 * only after its record is in the log (one mutex around both), so rewinding
 * sector by sector from the newest record back gives every earlier state.
 * A shrinking truncate is logged as a write of zeros over the bytes cut
 * off (a format 3/4 IMAGE-journal was truncated to its header when idle).
 * Paths the model does not cover (a shared writable mmap or mprotect
 * making a shared mapping writable, copy_file_range,
 * sendfile or splice into a tracked file, fallocate that zeroes or
 * collapses; a punched hole is logged as a write of zeros)
 * abort the server with a message in the log's ".fail"
 * file: an untracked write must never pass silently.
 *
 * POWERCUT_IGNORE_SYNC=I (test of the test): fdatasyncs of the I-th
 * tracked file (0: IMAGE, 1: IMAGE-chunks, 2: IMAGE-journal) are performed but not recorded,
 * as if the store skipped them (its fsync at image creation still counts).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAXF 4
#define MAGIC 0x54435750u /* "PWCT" */

enum { REC_WRITE = 1, REC_SYNC = 2, REC_DSYNC_DONE = 3, REC_SIZE = 4 };

/* One log record header; a WRITE is followed by len bytes of old content
 * (zeros past the old end of file) and len bytes of new content. */
struct rec {
    uint32_t magic, type, file, flags;
    uint64_t seq;
    uint64_t off; /* WRITE: offset; SYNC: seq bound; DSYNC_DONE: seq;
                     SIZE: new size */
    uint64_t len;
    uint64_t old_size;
};

static struct tracked {
    char *path;
    dev_t dev;
    ino_t ino;
    int known;
    int rdfd;            /* private read-only fd for old content */
    uint64_t last_plain; /* seq+1 of the last non-DSYNC write */
    uint64_t synced;     /* writes with seq < synced are durable */
} files[MAXF];
static int nfiles = -1, logfd = -1, ignore_sync = -1;
static char failpath[4096];
static uint64_t next_seq = 1;
static unsigned dsync_inflight;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

#define REAL(ret, name, ...)                                                   \
    static ret (*real_##name)(__VA_ARGS__);                                    \
    if (!real_##name)                                                          \
        real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name);

static ssize_t raw_write(int fd, const void *buf, size_t n)
{
    return syscall(SYS_write, fd, buf, n);
}

static void die(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || n > (int)sizeof msg - 2)
        n = (int)sizeof msg - 2;
    msg[n++] = '\n';
    raw_write(2, "powercut: ", 10);
    raw_write(2, msg, (size_t)n);
    int fd = (int)syscall(SYS_openat, AT_FDCWD, failpath,
                          O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
        raw_write(fd, msg, (size_t)n);
        close(fd);
    }
    abort();
}

static void init(void)
{
    if (nfiles >= 0)
        return;
    nfiles = 0;
    const char *fl = getenv("POWERCUT_FILES"), *lg = getenv("POWERCUT_LOG");
    if (!fl || !lg)
        return;
    snprintf(failpath, sizeof failpath, "%s.fail", lg);
    logfd = (int)syscall(SYS_openat, AT_FDCWD, lg,
                         O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (logfd < 0)
        die("cannot open log %s: %s", lg, strerror(errno));
    char *s = strdup(fl), *save = NULL;
    for (char *p = strtok_r(s, ":", &save); p && nfiles < MAXF;
         p = strtok_r(NULL, ":", &save))
        files[nfiles++] = (struct tracked){.path = p, .rdfd = -1};
    const char *ig = getenv("POWERCUT_IGNORE_SYNC");
    if (ig && *ig)
        ignore_sync = atoi(ig);
}

/* The tracked file fd refers to, or -1.  Called with mu held. */
static int which(int fd)
{
    struct stat sb;
    init();
    if (nfiles == 0 || fd < 0 || fd == logfd || fstat(fd, &sb) < 0 ||
        !S_ISREG(sb.st_mode))
        return -1;
    for (int i = 0; i < nfiles; i++) {
        struct tracked *t = &files[i];
        if (!t->known) {
            struct stat ps;
            if (stat(t->path, &ps) < 0)
                continue;
            t->dev = ps.st_dev;
            t->ino = ps.st_ino;
            t->known = 1;
        }
        if (t->dev == sb.st_dev && t->ino == sb.st_ino) {
            if (t->rdfd < 0) {
                t->rdfd = (int)syscall(SYS_openat, AT_FDCWD, t->path,
                                       O_RDONLY | O_CLOEXEC);
                if (t->rdfd < 0)
                    die("%s: open: %s", t->path, strerror(errno));
            }
            return i;
        }
    }
    return -1;
}

static void log_all(const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = raw_write(logfd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("log write: %s", strerror(errno));
        p += w;
        n -= (size_t)w;
    }
}

static uint64_t file_size(int fd)
{
    struct stat sb;
    if (fstat(fd, &sb) < 0)
        die("fstat: %s", strerror(errno));
    return (uint64_t)sb.st_size;
}

/* Log a write of iov[0..cnt) at off to tracked file i (mu held).  Returns
 * the record's seq; *dsync says whether fd writes synchronously. */
static uint64_t log_write(int i, int fd, const struct iovec *iov, int cnt,
                          uint64_t off, int *dsync)
{
    size_t len = 0;
    for (int k = 0; k < cnt; k++)
        len += iov[k].iov_len;
    int fl = fcntl(fd, F_GETFL);
    *dsync = fl >= 0 && (fl & O_DSYNC);
    struct rec r = {MAGIC,      REC_WRITE, (uint32_t)i, (uint32_t)*dsync,
                    next_seq++, off,       len,         file_size(fd)};
    char *b = malloc(sizeof r + 2 * len);
    if (!b)
        die("out of memory (%zu)", len);
    memcpy(b, &r, sizeof r);
    char *old = b + sizeof r, *nw = old + len;
    memset(old, 0, len);
    size_t got = 0;
    while (got < len) {
        ssize_t n =
            pread(files[i].rdfd, old + got, len - got, (off_t)(off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("%s: pread: %s", files[i].path, strerror(errno));
        if (n == 0)
            break;
        got += (size_t)n;
    }
    for (int k = 0; k < cnt; k++) {
        memcpy(nw, iov[k].iov_base, iov[k].iov_len);
        nw += iov[k].iov_len;
    }
    log_all(b, sizeof r + 2 * len);
    free(b);
    if (*dsync)
        dsync_inflight++;
    else
        files[i].last_plain = r.seq + 1;
    return r.seq;
}

/* After the data write of a logged record returned (mu held). */
static void after_write(int i, uint64_t seq, int dsync)
{
    if (!dsync)
        return;
    struct rec r = {MAGIC, REC_DSYNC_DONE, (uint32_t)i, 0, 0, seq, 0, 0};
    log_all(&r, sizeof r);
    dsync_inflight--;
}

/* Every record of the log is durable: start it afresh (mu held). */
static void maybe_truncate_log(void)
{
    if (dsync_inflight)
        return;
    for (int i = 0; i < nfiles; i++)
        if (files[i].last_plain > files[i].synced)
            return;
    if (syscall(SYS_ftruncate, logfd, 0) < 0)
        die("log truncate: %s", strerror(errno));
}

/* A sync of file i (or of all files, i < 0) that started when next_seq
 * was upto has returned successfully. */
static void synced(int i, uint64_t upto, int datasync)
{
    for (int k = 0; k < nfiles; k++) {
        if ((i >= 0 && k != i) || (datasync && k == ignore_sync))
            continue;
        struct rec r = {MAGIC, REC_SYNC, (uint32_t)k, 0, 0, upto, 0, 0};
        log_all(&r, sizeof r);
        if (files[k].synced < upto)
            files[k].synced = upto;
    }
    maybe_truncate_log();
}

/* ---- writes ---- */

static ssize_t do_writev(int fd, const struct iovec *iov, int cnt, int64_t off,
                         int flags2, int has_flags2)
{
    REAL(ssize_t, pwritev2, int, const struct iovec *, int, off_t, int);
    REAL(ssize_t, writev, int, const struct iovec *, int);
    REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t);
    struct stat sb;
    int regular = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode);
    if (regular) /* sockets and pipes (NBD replies) never wait for mu */
        pthread_mutex_lock(&mu);
    int i = regular ? which(fd) : -1, ds = 0;
    uint64_t seq = 0;
    if (i >= 0) {
        uint64_t o = (uint64_t)off;
        if (off < 0) { /* current position (or the end with O_APPEND) */
            int fl = fcntl(fd, F_GETFL);
            o = (fl >= 0 && (fl & O_APPEND)) ? file_size(fd)
                                             : (uint64_t)lseek(fd, 0, SEEK_CUR);
        }
        if (has_flags2 && (flags2 & (RWF_DSYNC | RWF_SYNC)))
            die("%s: pwritev2 with RWF_DSYNC is not modelled", files[i].path);
        seq = log_write(i, fd, iov, cnt, o, &ds);
    }
    ssize_t rc;
    if (has_flags2)
        rc = real_pwritev2(fd, iov, cnt, (off_t)off, flags2);
    else if (off < 0)
        rc = real_writev(fd, iov, cnt);
    else
        rc = real_pwritev(fd, iov, cnt, (off_t)off);
    int e = errno;
    if (i >= 0)
        after_write(i, seq, ds);
    if (regular)
        pthread_mutex_unlock(&mu);
    errno = e;
    return rc;
}

ssize_t write(int fd, const void *buf, size_t n)
{
    struct iovec v = {(void *)buf, n};
    return do_writev(fd, &v, 1, -1, 0, 0);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    struct iovec v = {(void *)buf, n};
    if (off < 0) {
        errno = EINVAL;
        return -1;
    }
    return do_writev(fd, &v, 1, off, 0, 0);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    return pwrite(fd, buf, n, off);
}
ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    return do_writev(fd, iov, cnt, -1, 0, 0);
}
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    if (off < 0) {
        errno = EINVAL;
        return -1;
    }
    return do_writev(fd, iov, cnt, off, 0, 0);
}
ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
    return pwritev(fd, iov, cnt, off);
}
ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int fl)
{
    return do_writev(fd, iov, cnt, off, fl, 1);
}
ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off_t off, int fl)
{
    return pwritev2(fd, iov, cnt, off, fl);
}

/* ---- size changes ---- */

static int size_change(int fd, uint64_t newsize)
{
    int i = which(fd);
    if (i < 0)
        return -1;
    uint64_t old = file_size(fd);
    if (newsize < old) {
        /* Modelled as a write of zeros over the bytes cut off (a short file
         * reads the same to the store: nothing is there), logged with their
         * old content, so an unsynced shrink can be taken back. */
        size_t n = (size_t)(old - newsize);
        void *z = calloc(1, n);
        if (!z)
            die("out of memory (%zu)", n);
        struct iovec v = {z, n};
        int ds;
        uint64_t seq = log_write(i, fd, &v, 1, newsize, &ds);
        after_write(i, seq, ds);
        free(z);
        return i;
    }
    struct rec r = {MAGIC,      REC_SIZE, (uint32_t)i, 0,
                    next_seq++, newsize,  0,           old};
    log_all(&r, sizeof r);
    files[i].last_plain = r.seq + 1;
    return i;
}

int ftruncate(int fd, off_t len)
{
    REAL(int, ftruncate, int, off_t);
    pthread_mutex_lock(&mu);
    size_change(fd, (uint64_t)len);
    int rc = real_ftruncate(fd, len), e = errno;
    pthread_mutex_unlock(&mu);
    errno = e;
    return rc;
}
int ftruncate64(int fd, off_t len)
{
    return ftruncate(fd, len);
}
int truncate(const char *path, off_t len)
{
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = ftruncate(fd, len), e = errno;
    close(fd);
    errno = e;
    return rc;
}
int truncate64(const char *path, off_t len)
{
    return truncate(path, len);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    REAL(int, fallocate, int, int, off_t, off_t);
    pthread_mutex_lock(&mu);
    int i = which(fd);
    if (i >= 0 && mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
        /* a punched range reads as zeros: modelled as a write of zeros
         * over the part inside the file, logged with its old content */
        uint64_t size = file_size(fd), end = (uint64_t)(off + len);
        if (end > size)
            end = size;
        if ((uint64_t)off < end) {
            size_t n = (size_t)(end - (uint64_t)off);
            void *z = calloc(1, n);
            if (!z)
                die("out of memory (%zu)", n);
            struct iovec v = {z, n};
            int ds;
            uint64_t seq = log_write(i, fd, &v, 1, (uint64_t)off, &ds);
            int rc = real_fallocate(fd, mode, off, len), e = errno;
            after_write(i, seq, ds);
            pthread_mutex_unlock(&mu);
            free(z);
            errno = e;
            return rc;
        }
    } else if (i >= 0 && (mode & ~FALLOC_FL_KEEP_SIZE))
        die("%s: fallocate mode %#x is not modelled", files[i].path, mode);
    if (i >= 0 && !(mode & FALLOC_FL_KEEP_SIZE) &&
        (uint64_t)(off + len) > file_size(fd))
        size_change(fd, (uint64_t)(off + len));
    int rc = real_fallocate(fd, mode, off, len), e = errno;
    pthread_mutex_unlock(&mu);
    errno = e;
    return rc;
}
int fallocate64(int fd, int mode, off_t off, off_t len)
{
    return fallocate(fd, mode, off, len);
}
int posix_fallocate(int fd, off_t off, off_t len)
{
    return fallocate(fd, 0, off, len) < 0 ? errno : 0;
}
int posix_fallocate64(int fd, off_t off, off_t len)
{
    return posix_fallocate(fd, off, len);
}

/* ---- syncs ---- */

static int do_sync(int fd, int all, int (*fn)(int), int arg, int datasync)
{
    pthread_mutex_lock(&mu);
    int i = all ? -1 : which(fd);
    uint64_t upto = next_seq;
    pthread_mutex_unlock(&mu);
    int rc = fn(arg), e = errno;
    if (rc == 0 && (all || i >= 0)) {
        pthread_mutex_lock(&mu);
        synced(i, upto, datasync);
        pthread_mutex_unlock(&mu);
    }
    errno = e;
    return rc;
}

int fsync(int fd)
{
    REAL(int, fsync, int);
    return do_sync(fd, 0, real_fsync, fd, 0);
}
int fdatasync(int fd)
{
    REAL(int, fdatasync, int);
    return do_sync(fd, 0, real_fdatasync, fd, 1);
}
int syncfs(int fd)
{
    REAL(int, syncfs, int);
    return do_sync(fd, 1, real_syncfs, fd, 0);
}
static int sync_wrap(int unused)
{
    REAL(void, sync, void);
    (void)unused;
    real_sync();
    return 0;
}
void sync(void)
{
    do_sync(-1, 1, sync_wrap, 0, 0);
}
/* sync_file_range: passed through, deliberately not a sync (see above). */

/* ---- paths the model does not cover: refuse loudly ---- */

static void refuse_fd(int fd, const char *what)
{
    pthread_mutex_lock(&mu);
    int i = which(fd);
    pthread_mutex_unlock(&mu);
    if (i >= 0)
        die("%s: %s into a tracked file is not modelled", files[i].path, what);
}

/* Shared mappings of tracked files (LMDB reads through one): mprotect
 * must not make them writable. */
static struct {
    char *addr;
    size_t len;
} maps[16];

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    REAL(void *, mmap, void *, size_t, int, int, int, off_t);
    if (fd >= 0 && (prot & PROT_WRITE) && (flags & MAP_SHARED))
        refuse_fd(fd, "a shared writable mmap");
    void *p = real_mmap(addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED && fd >= 0 && (flags & MAP_SHARED)) {
        pthread_mutex_lock(&mu);
        if (which(fd) >= 0)
            for (int k = 0; k < 16; k++)
                if (!maps[k].addr) {
                    maps[k].addr = p;
                    maps[k].len = len;
                    break;
                }
        pthread_mutex_unlock(&mu);
    }
    return p;
}
int mprotect(void *addr, size_t len, int prot)
{
    REAL(int, mprotect, void *, size_t, int);
    if (prot & PROT_WRITE)
        for (int k = 0; k < 16; k++)
            if (maps[k].addr && (char *)addr < maps[k].addr + maps[k].len &&
                maps[k].addr < (char *)addr + len)
                die("mprotect(PROT_WRITE) of a tracked file's mapping is "
                    "not modelled");
    return real_mprotect(addr, len, prot);
}
int munmap(void *addr, size_t len)
{
    REAL(int, munmap, void *, size_t);
    pthread_mutex_lock(&mu);
    for (int k = 0; k < 16; k++)
        if (maps[k].addr == addr)
            maps[k].addr = NULL;
    pthread_mutex_unlock(&mu);
    (void)len;
    return real_munmap(addr, len);
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return mmap(addr, len, prot, flags, fd, off);
}
ssize_t copy_file_range(int in, off_t *inoff, int out, off_t *outoff,
                        size_t len, unsigned fl)
{
    REAL(ssize_t, copy_file_range, int, off_t *, int, off_t *, size_t,
         unsigned);
    refuse_fd(out, "copy_file_range");
    return real_copy_file_range(in, inoff, out, outoff, len, fl);
}
ssize_t sendfile(int out, int in, off_t *off, size_t n)
{
    REAL(ssize_t, sendfile, int, int, off_t *, size_t);
    refuse_fd(out, "sendfile");
    return real_sendfile(out, in, off, n);
}
ssize_t sendfile64(int out, int in, off_t *off, size_t n)
{
    return sendfile(out, in, off, n);
}
ssize_t splice(int in, loff_t *inoff, int out, loff_t *outoff, size_t len,
               unsigned fl)
{
    REAL(ssize_t, splice, int, loff_t *, int, loff_t *, size_t, unsigned);
    refuse_fd(out, "splice");
    return real_splice(in, inoff, out, outoff, len, fl);
}
