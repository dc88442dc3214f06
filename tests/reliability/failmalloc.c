/* failmalloc.c: an LD_PRELOAD shim that makes allocations fail on demand,
 * so that tests/reliability/test-malloc-failure.sh can prove that busesnap
 * and busexmp survive ENOMEM anywhere: an error to the client or a clean
 * exit, never a crash, and correct data once memory is back.
 *
 * It replaces malloc, calloc, realloc, reallocarray, posix_memalign,
 * aligned_alloc, memalign, valloc and pvalloc (glibc routes strdup,
 * strndup, asprintf, getline, json and LMDB allocations through these, as
 * its documentation for replacing malloc promises); the real work is done by
 * glibc's __libc_* entry points, and free is glibc's own.
 *
 * Policy (environment, read at start-up; nothing fails until armed, so
 * start-up succeeds):
 *   FAILMALLOC_CTL=PATH  a watcher thread polls PATH every 2 ms.  Its
 *                        contents arm the shim: "ID nth N [K]" fails the
 *                        Nth allocation call after arming and the K-1 after
 *                        it (K = 1 if absent), "ID prob P SEED" fails each
 *                        call with probability P; "ID off"
 *                        or removing the file disarms.  After each change
 *                        the shim writes "ID armed" or "ID off calls=C
 *                        failed=F" to PATH.ack (C = calls while armed).
 *   FAILMALLOC_LOG=PATH  one line and a backtrace per injected failure
 *                        (append), to find the code that did not cope.
 *   FAILMALLOC_NTH=N     arm at start-up with "nth N" (for quick checks of
 *                        programs without a control file).
 * Counting and failing are lock-free (atomics), so any thread may allocate.
 */
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_memalign(size_t align, size_t size);

enum { MODE_OFF, MODE_NTH, MODE_PROB };

static _Atomic int fm_mode;             /* MODE_* */
static _Atomic unsigned long fm_calls;  /* allocation calls while armed */
static _Atomic unsigned long fm_failed; /* failures injected while armed */
static _Atomic unsigned long fm_nth;    /* MODE_NTH: the call to fail */
static _Atomic unsigned long fm_count;  /* MODE_NTH: how many calls fail */
static _Atomic uint64_t fm_rng;         /* MODE_PROB: xorshift state */
static _Atomic uint64_t fm_threshold;   /* MODE_PROB: fail if rand < this */
static int fm_log_fd = -1;
static char fm_ctl[512], fm_ack[520];

/* Write a whole string with write(2): no allocation, async-signal-safe. */
static void fm_puts(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void fm_report(const char *fn, size_t size, unsigned long call)
{
    if (fm_log_fd < 0)
        return;
    char line[160];
    snprintf(line, sizeof line,
             "failmalloc: pid %d: %s(%zu) failed (call %lu after arming)\n",
             (int)getpid(), fn, size, call);
    fm_puts(fm_log_fd, line);
    void *bt[32];
    int n = backtrace(bt, 32);
    backtrace_symbols_fd(bt, n, fm_log_fd);
    fm_puts(fm_log_fd, "failmalloc: end\n");
}

/* Decide whether this allocation call fails; counts it when armed. */
static int fm_should_fail(const char *fn, size_t size)
{
    int mode = atomic_load_explicit(&fm_mode, memory_order_relaxed);
    if (mode == MODE_OFF)
        return 0;
    unsigned long call = atomic_fetch_add(&fm_calls, 1) + 1;
    int fail = 0;
    if (mode == MODE_NTH) {
        unsigned long nth = atomic_load(&fm_nth);
        fail = call >= nth && call - nth < atomic_load(&fm_count);
    } else {
        uint64_t x = atomic_load(&fm_rng), y;
        do {
            y = x;
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
        } while (!atomic_compare_exchange_weak(&fm_rng, &x, y));
        fail = y < atomic_load(&fm_threshold);
    }
    if (fail) {
        atomic_fetch_add(&fm_failed, 1);
        fm_report(fn, size, call);
    }
    return fail;
}

void *malloc(size_t size)
{
    if (fm_should_fail("malloc", size)) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size)
{
    if (fm_should_fail("calloc", n * size)) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size)
{
    /* realloc(p, 0) frees: never a failure point */
    if ((size > 0 || !p) && fm_should_fail("realloc", size)) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_realloc(p, size);
}

void *reallocarray(void *p, size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, total);
}

void *memalign(size_t align, size_t size)
{
    if (fm_should_fail("memalign", size)) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_memalign(align, size);
}

void *aligned_alloc(size_t align, size_t size)
{
    return memalign(align, size);
}

int posix_memalign(void **out, size_t align, size_t size)
{
    if (align < sizeof(void *) || (align & (align - 1)))
        return EINVAL;
    if (fm_should_fail("posix_memalign", size))
        return ENOMEM;
    void *p = __libc_memalign(align, size);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

void *valloc(size_t size)
{
    return memalign((size_t)sysconf(_SC_PAGESIZE), size);
}

void *pvalloc(size_t size)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return memalign(pg, (size + pg - 1) / pg * pg);
}

/* Apply a policy line "ID nth N" / "ID prob P SEED" / "ID off". */
static void fm_apply(const char *buf)
{
    char id[64], what[16];
    double p = 0;
    unsigned long n = 0, count = 1, seed = 1;
    int k = sscanf(buf, "%63s %15s", id, what);
    if (k < 2) {
        snprintf(what, sizeof what, "off");
        if (k < 1)
            snprintf(id, sizeof id, "-");
    }
    char line[200];
    if (strcmp(what, "nth") == 0 &&
        sscanf(buf, "%*s %*s %lu %lu", &n, &count) >= 1) {
        atomic_store(&fm_mode, MODE_OFF);
        atomic_store(&fm_calls, 0);
        atomic_store(&fm_failed, 0);
        atomic_store(&fm_nth, n);
        atomic_store(&fm_count, count);
        atomic_store(&fm_mode, MODE_NTH);
        snprintf(line, sizeof line, "%s armed\n", id);
    } else if (strcmp(what, "prob") == 0 &&
               sscanf(buf, "%*s %*s %lf %lu", &p, &seed) >= 1) {
        atomic_store(&fm_mode, MODE_OFF);
        atomic_store(&fm_calls, 0);
        atomic_store(&fm_failed, 0);
        atomic_store(&fm_rng, seed * 0x9E3779B97F4A7C15ull | 1);
        atomic_store(&fm_threshold, (uint64_t)(p * 18446744073709551615.0));
        atomic_store(&fm_mode, MODE_PROB);
        snprintf(line, sizeof line, "%s armed\n", id);
    } else {
        atomic_store(&fm_mode, MODE_OFF);
        snprintf(line, sizeof line, "%s off calls=%lu failed=%lu\n", id,
                 atomic_load(&fm_calls), atomic_load(&fm_failed));
    }
    /* write the ack under a temporary name and rename: readers never see
     * half a line */
    char tmp[540];
    snprintf(tmp, sizeof tmp, "%s.tmp", fm_ack);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        fm_puts(fd, line);
        close(fd);
        rename(tmp, fm_ack);
    }
}

/* The watcher: re-applies the control file whenever its contents change. */
static void *fm_watch(void *arg)
{
    char last[256] = "", buf[256];
    int had = 0;
    struct timespec ts = {0, 2 * 1000 * 1000};
    for (;;) {
        int fd = open(fm_ctl, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            buf[n > 0 ? n : 0] = 0;
            /* a line is complete once it ends in a newline */
            if (n > 0 && buf[n - 1] == '\n' && strcmp(buf, last) != 0) {
                memcpy(last, buf, sizeof last);
                fm_apply(buf);
                had = 1;
            }
        } else if (had) {
            char id[64] = "-";
            sscanf(last, "%63s", id);
            char off[80];
            snprintf(off, sizeof off, "%s off\n", id);
            fm_apply(off);
            last[0] = 0;
            had = 0;
        }
        nanosleep(&ts, NULL);
    }
    return arg;
}

__attribute__((constructor)) static void fm_init(void)
{
    const char *log = getenv("FAILMALLOC_LOG");
    const char *ctl = getenv("FAILMALLOC_CTL");
    const char *nth = getenv("FAILMALLOC_NTH");
    void *bt[4];
    backtrace(bt, 4); /* loads libgcc_s now, not inside a failing malloc */
    if (log)
        fm_log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (ctl && strlen(ctl) < sizeof fm_ctl) {
        snprintf(fm_ctl, sizeof fm_ctl, "%s", ctl);
        snprintf(fm_ack, sizeof fm_ack, "%s.ack", ctl);
        /* the watcher takes no signals: they stay the program's business */
        pthread_t t;
        pthread_attr_t a;
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &a, fm_watch, NULL) != 0)
            fm_puts(2, "failmalloc: cannot start the watcher thread\n");
        pthread_attr_destroy(&a);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (nth) {
        atomic_store(&fm_nth, strtoul(nth, NULL, 10));
        atomic_store(&fm_count, 1);
        atomic_store(&fm_mode, MODE_NTH);
    }
}
