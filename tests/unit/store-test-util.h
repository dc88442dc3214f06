/* store-test-util.h: helpers shared by the store unit tests (tests/unit/
 * test-store-*.c): a private temp dir, failure reporting in one line, block
 * patterns and a consistency-check assertion.  Each test is a program that
 * exits 0 (pass) or 1 (one line on stderr says what differed).
 */
#ifndef STORE_TEST_UTIL_H
#define STORE_TEST_UTIL_H

#include "store/store.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char t_dir[256];
static char t_img[300];

static inline void t_cleanup(void)
{
    char cmd[300];
    if (t_dir[0] && !getenv("KEEP_TMP")) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", t_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", t_dir);
    }
}

static pid_t t_main_pid;
static int t_prefer_shm; /* set before t_setup() to use /dev/shm */

/* Make a private temp dir and set t_img to an image path inside it. */
static inline void t_setup(const char *name)
{
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    /* metadata-heavy tests measure the algorithm, not the fsyncs */
    struct stat sb;
    if (!getenv("TMPDIR") && t_prefer_shm && stat("/dev/shm", &sb) == 0 &&
        access("/dev/shm", W_OK) == 0)
        tmp = "/dev/shm";
    snprintf(t_dir, sizeof t_dir, "%s/busesnap-%s.XXXXXX", tmp, name);
    if (!mkdtemp(t_dir)) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(t_img, sizeof t_img, "%s/image.db", t_dir);
    t_main_pid = getpid();
    atexit(t_cleanup);
}

__attribute__((format(printf, 3, 4), noreturn)) static void
t_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " [store: %s]\n", store_errmsg());
    if (getpid() != t_main_pid)
        _exit(1);
    exit(1);
}
#define FAIL(...) t_fail(__FILE__, __LINE__, __VA_ARGS__)
/* Expect a store call to return 0. */
#define OK(expr)                                                               \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        if (rc_ < 0)                                                           \
            FAIL("%s returned %d (%s)", #expr, rc_, strerror(-rc_));           \
    } while (0)
#define EXPECT(cond, ...)                                                      \
    do {                                                                       \
        if (!(cond))                                                           \
            FAIL(__VA_ARGS__);                                                 \
    } while (0)

/* Block content determined by (seed, block): never all zero. */
static inline void t_pattern(void *buf, uint64_t seed, uint64_t block)
{
    uint64_t *w = buf, x = seed * 0x9E3779B97F4A7C15ull + block + 1;
    for (size_t i = 0; i < STORE_BLOCK / 8; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w[i] = x | 1;
    }
}

static inline void t_write_pat(struct store_vol *v, uint64_t seed,
                               uint64_t block)
{
    uint8_t buf[STORE_BLOCK];
    t_pattern(buf, seed, block);
    OK(store_write(v, buf, block * STORE_BLOCK, STORE_BLOCK, 0));
}

/* Blocks first..first+n-1 of pattern seed, written at block `at` on, in
 * requests of 256 blocks (buf holds 256). */
static inline void t_write_run(struct store_vol *v, uint8_t *buf,
                               uint64_t seed, uint64_t first, uint64_t at,
                               uint64_t n)
{
    for (uint64_t b = 0; b < n; b += 256) {
        uint64_t k = n - b < 256 ? n - b : 256;
        for (uint64_t i = 0; i < k; i++)
            t_pattern(buf + i * STORE_BLOCK, seed, first + b + i);
        OK(store_write(v, buf, (at + b) * STORE_BLOCK,
                       (uint32_t)(k * STORE_BLOCK), 0));
    }
}

/* Check block reads as pattern seed (or zero if seed == 0). */
static inline int t_is_pat(struct store_vol *v, uint64_t seed, uint64_t block)
{
    uint8_t buf[STORE_BLOCK], want[STORE_BLOCK];
    OK(store_read(v, buf, block * STORE_BLOCK, STORE_BLOCK));
    if (seed)
        t_pattern(want, seed, block);
    else
        memset(want, 0, sizeof want);
    return memcmp(buf, want, STORE_BLOCK) == 0;
}
#define EXPECT_PAT(v, seed, block)                                             \
    EXPECT(t_is_pat(v, seed, block), "block %llu: not pattern %llu",           \
           (unsigned long long)(block), (unsigned long long)(seed))

static inline void t_problem(const char *msg, void *arg)
{
    fprintf(stderr, "check: %s\n", msg);
}

#define EXPECT_CLEAN(st)                                                       \
    do {                                                                       \
        int n_ = store_check(st, NULL, t_problem, NULL);                       \
        if (n_ != 0)                                                           \
            FAIL("store_check found %d problems", n_);                         \
    } while (0)

/* Open the image (replaying its journal), check it, open its volume. */
static inline void t_open_clean(struct store **st, struct store_vol **v)
{
    OK(store_open(t_img, 0, st));
    EXPECT_CLEAN(*st);
    OK(store_vol_open(*st, STORE_DEFAULT_VOLUME, v));
}

static inline uint64_t t_file_bytes(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (uint64_t)sb.st_blocks * 512 : 0;
}

#endif
