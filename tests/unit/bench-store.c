/* bench-store.c: raw figures of the chunk store, called directly (no NBD):
 * single-threaded 4 KiB write and read rates, space used by 1 GiB of random
 * data and by the same 1 GiB written again, snapshot and clone times with
 * 1 GiB and more written, and the process's RSS.  Not a test (not run by
 * make check).  Build and run:
 *   make libstore.a && cc -O2 -std=gnu11 -Iinclude -Isrc -D_GNU_SOURCE \
 *     -o /tmp/bench-store tests/unit/bench-store.c libstore.a \
 *     -pthread -llmdb -lxxhash -luuid && /tmp/bench-store [DIR] [GIB]
 * DIR (default /tmp) gets a temporary image; GIB (default 4) is the size
 * written for the second snapshot/clone figure.
 */
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256 /* blocks per store_write call in the bulk phases */

static double cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rng = 88172645463325252ull;
static void fill_random(void *buf, size_t n)
{
    uint64_t *w = buf;
    for (size_t i = 0; i < n / 8; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        w[i] = rng;
    }
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench-store: %s: %d %s\n", what, rc, store_errmsg());
    exit(1);
}

static uint64_t file_bytes(struct store *st)
{
    struct store_info inf;
    int rc = store_info(st, &inf);
    if (rc)
        die("store_info", rc);
    return inf.file_bytes;
}

/* Bytes this process has caused to be written to disk so far. */
static uint64_t io_written(void)
{
    FILE *f = fopen("/proc/self/io", "r");
    char line[128];
    unsigned long long v = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "write_bytes: %llu", &v) == 1)
            break;
    if (f)
        fclose(f);
    return v;
}

static void rss(const char *when)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    printf("  RSS %s:", when);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM", 5) || !strncmp(line, "RssAnon", 7) ||
            !strncmp(line, "RssFile", 7)) {
            line[strcspn(line, "\n")] = 0;
            printf(" %s;", line);
        }
    printf("\n");
    if (f)
        fclose(f);
}

static void time_snap_clone(struct store *st, const char *label, int i)
{
    char s[32], c[32];
    snprintf(s, sizeof s, "bsnap%d", i);
    snprintf(c, sizeof c, "bclone%d", i);
    double t0 = now();
    int rc = store_snapshot(st, "bench", s, NULL);
    double t1 = now();
    if (rc)
        die("snapshot", rc);
    rc = store_clone(st, s, c, NULL);
    double t2 = now();
    if (rc)
        die("clone", rc);
    printf("  %s: snapshot %.2f ms, clone %.2f ms\n", label, (t1 - t0) * 1e3,
           (t2 - t1) * 1e3);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    int gib = argc > 2 ? atoi(argv[2]) : 4;
    char tmpl[512], img[600];
    snprintf(tmpl, sizeof tmpl, "%s/bench-store.XXXXXX", dir);
    if (!mkdtemp(tmpl)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(img, sizeof img, "%s/image.db", tmpl);
    struct store *st;
    struct store_vol *v;
    const uint64_t G = 1ull << 30, GB = G / STORE_BLOCK;
    struct store_create_opts o = {.size = (uint64_t)(gib + 3) * G,
                                  .volume_name = "bench"};
    int rc = store_create(img, &o, &st);
    if (rc)
        die("create", rc);
    if ((rc = store_vol_open(st, "bench", &v)))
        die("open", rc);
    printf("store bench in %s (%d GiB run)\n", tmpl, gib);

    /* 1. single 4 KiB writes of random data, then flush */
    uint8_t blk[STORE_BLOCK];
    uint64_t nw = 200000;
    double t0 = now(), c0 = cpu();
    for (uint64_t i = 0; i < nw; i++) {
        fill_random(blk, sizeof blk);
        if ((rc = store_write(v, blk, i * STORE_BLOCK, STORE_BLOCK, 0)))
            die("write", rc);
    }
    if ((rc = store_flush(st)))
        die("flush", rc);
    double dt = now() - t0, dc = cpu() - c0;
    printf("  4 KiB random-data writes, 1 thread: %.0f ops/s wall, %.0f ops/s "
           "per CPU second (%llu writes + flush in %.2f s)\n",
           nw / dt, nw / dc, (unsigned long long)nw, dt);
    /* 2. random 4 KiB reads of what was written */
    uint64_t nr = 400000;
    t0 = now();
    c0 = cpu();
    for (uint64_t i = 0; i < nr; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if ((rc = store_read(v, blk, (rng % nw) * STORE_BLOCK, STORE_BLOCK)))
            die("read", rc);
    }
    dt = now() - t0;
    dc = cpu() - c0;
    printf("  4 KiB random reads, 1 thread: %.0f ops/s wall, %.0f per CPU "
           "second\n",
           nr / dt, nr / dc);
    /* 3. overwrite the same blocks with fresh data (the free list at work) */
    t0 = now();
    for (uint64_t i = 0; i < nw; i++) {
        fill_random(blk, sizeof blk);
        if ((rc = store_write(v, blk, i * STORE_BLOCK, STORE_BLOCK, 0)))
            die("write", rc);
    }
    store_flush(st);
    dt = now() - t0;
    printf("  4 KiB overwrites, 1 thread: %.0f ops/s\n", nw / dt);
    /* a fresh image for the space figures (free slots would hide growth) */
    store_vol_close(v);
    store_close(st);
    char cmd0[1300];
    snprintf(cmd0, sizeof cmd0, "rm -f '%s' '%s-chunks'", img, img);
    if (system(cmd0))
        return 1;
    if ((rc = store_create(img, &o, &st)) ||
        (rc = store_vol_open(st, "bench", &v)))
        die("create", rc);
    /* 4. 1 GiB random data: space */
    uint64_t base = file_bytes(st);
    uint8_t *gbuf = malloc(BATCH * STORE_BLOCK);
    uint64_t seed0 = rng;
    uint64_t io0 = io_written();
    t0 = now();
    for (uint64_t b = 0; b < GB; b += BATCH) {
        fill_random(gbuf, BATCH * STORE_BLOCK);
        if ((rc =
                 store_write(v, gbuf, b * STORE_BLOCK, BATCH * STORE_BLOCK, 0)))
            die("write", rc);
    }
    store_flush(st);
    dt = now() - t0;
    uint64_t used1 = file_bytes(st) - base;
    printf("  1 GiB random data (1 MiB writes): %.0f MB/s; image grew by "
           "%.3f GiB (%.4fx)\n",
           G / dt / 1e6, used1 / (double)G, used1 / (double)G);
    printf("  disk writes for that 1 GiB: %.3f GiB\n",
           (io_written() - io0) / (double)G);
    rss("after 1 GiB");
    time_snap_clone(st, "1 GiB written", 1);
    /* 5. the same 1 GiB again at other offsets */
    rng = seed0;
    t0 = now();
    for (uint64_t b = 0; b < GB; b += BATCH) {
        fill_random(gbuf, BATCH * STORE_BLOCK);
        if ((rc = store_write(v, gbuf, (GB + b) * STORE_BLOCK,
                              BATCH * STORE_BLOCK, 0)))
            die("write", rc);
    }
    store_flush(st);
    dt = now() - t0;
    uint64_t used2 = file_bytes(st) - base - used1;
    printf("  same 1 GiB again elsewhere: %.0f MB/s; image grew by %.1f MiB "
           "(%.2f%%)\n",
           G / dt / 1e6, used2 / 1048576.0, 100.0 * used2 / G);
    /* 6. more distinct data up to gib GiB, then snapshot/clone again */
    io0 = io_written();
    t0 = now();
    for (uint64_t b = 2 * GB; b < (uint64_t)(gib + 1) * GB; b += BATCH) {
        fill_random(gbuf, BATCH * STORE_BLOCK);
        if ((rc =
                 store_write(v, gbuf, b * STORE_BLOCK, BATCH * STORE_BLOCK, 0)))
            die("write", rc);
    }
    store_flush(st);
    dt = now() - t0;
    printf("  %d GiB more random data: %.0f MB/s, %.2f GiB written to disk\n",
           gib - 1, (gib - 1) * G / dt / 1e6, (io_written() - io0) / (double)G);
    char label[64];
    snprintf(label, sizeof label, "%d GiB distinct written", gib);
    time_snap_clone(st, label, 2);
    rss(label);
    /* 7. a full check */
    t0 = now();
    rc = store_check(st, NULL, NULL, NULL);
    printf("  store_check: %d problems, %.1f s\n", rc, now() - t0);
    store_vol_close(v);
    store_close(st);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
    if (system(cmd))
        return 1;
    free(gbuf);
    return 0;
}
