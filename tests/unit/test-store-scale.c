/* test-store-scale.c: 1,000 snapshots of one volume (creation time stays
 * flat, every snapshot reads its own content, reads of the volume stay one
 * seek) and a chain of 50 clones of clones; then deleting most of them and
 * collecting leaves a consistent image. */
#include "store-test-util.h"

#include <time.h>

#define SIZE (64ull << 20)
#define NSNAP 1000
#define NB 64

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void)
{
    struct store *st;
    struct store_vol *v;
    char name[64];
    t_prefer_shm = 1; /* 2,000 durable commits: measure them, not fsync */
    t_setup("scale");
    struct store_create_opts o = {.size = SIZE};
    OK(store_create(t_img, &o, &st));
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    for (uint64_t b = 0; b < NB; b++)
        t_write_pat(v, 1, b);
    /* snapshot i is taken after block i % NB was written with seed i+2 */
    double t_first = 0, t_last = 0;
    for (int i = 0; i < NSNAP; i++) {
        t_write_pat(v, i + 2, i % NB);
        snprintf(name, sizeof name, "snap%d", i);
        double t0 = now();
        OK(store_snapshot(st, STORE_DEFAULT_VOLUME, name, NULL));
        double dt = now() - t0;
        if (i < 50)
            t_first += dt;
        if (i >= NSNAP - 50)
            t_last += dt;
    }
    /* an O(n) snapshot shows as a growth far beyond noise; under memcheck
     * (test-valgrind.sh, several processes per core) time means nothing */
    if (!getenv("TEST_NO_TIMING"))
        EXPECT(t_last < 3 * t_first + 0.05,
               "snapshot time grew: first 50 took %.3fs, last 50 %.3fs",
               t_first, t_last);
    /* the volume: each block holds the last seed written to it */
    for (uint64_t b = 0; b < NB; b++) {
        uint64_t last = b + NB * ((NSNAP - 1 - b) / NB);
        EXPECT_PAT(v, last + 2, b);
    }
    /* a few snapshots, all blocks */
    int probe[] = {0, 1, 63, 64, 500, 998, 999};
    for (size_t p = 0; p < sizeof probe / sizeof probe[0]; p++) {
        int i = probe[p];
        struct store_vol *s;
        snprintf(name, sizeof name, "snap%d", i);
        OK(store_vol_open(st, name, &s));
        for (uint64_t b = 0; b < NB; b++) {
            /* last write to b at or before step i */
            int64_t last = -1;
            for (int j = 0; j <= i; j++)
                if ((uint64_t)j % NB == b)
                    last = j;
            EXPECT(t_is_pat(s, last < 0 ? 1 : (uint64_t)last + 2, b),
                   "snap%d block %llu", i, (unsigned long long)b);
        }
        store_vol_close(s);
    }
    /* reads on the volume with 1,000 snapshots below */
    uint8_t buf[STORE_BLOCK];
    double t0 = now();
    for (int r = 0; r < 20000; r++)
        OK(store_read(v, buf, (uint64_t)(r % NB) * STORE_BLOCK, STORE_BLOCK));
    double rd = now() - t0;
    printf("1000 snapshots: first 50 %.1f ms, last 50 %.1f ms; 20000 reads "
           "%.1f ms\n",
           t_first * 1e3, t_last * 1e3, rd * 1e3);
    EXPECT_CLEAN(st);

    /* a chain of 50 clones of clones */
    const char *prev = "snap999";
    char cname[64], sname[64];
    for (int i = 0; i < 50; i++) {
        struct store_vol *c;
        snprintf(cname, sizeof cname, "clone%d", i);
        OK(store_clone(st, prev, cname, NULL));
        OK(store_vol_open(st, cname, &c));
        t_write_pat(c, 5000 + i, (uint64_t)i % NB);
        store_vol_close(c);
        snprintf(sname, sizeof sname, "csnap%d", i);
        OK(store_snapshot(st, cname, sname, NULL));
        prev = sname;
    }
    struct store_vol *last;
    OK(store_vol_open(st, "clone49", &last));
    for (uint64_t b = 0; b < NB; b++) {
        uint64_t want;
        if (b < 50)
            want = 5000 + b;
        else
            want = b + NB * ((NSNAP - 1 - b) / NB) + 2;
        EXPECT(t_is_pat(last, want, b), "clone49 block %llu",
               (unsigned long long)b);
    }
    store_vol_close(last);
    EXPECT_CLEAN(st);

    /* delete most snapshots and the middle clones, collect, verify */
    for (int i = 0; i < NSNAP - 1; i++) {
        snprintf(name, sizeof name, "snap%d", i);
        OK(store_delete(st, name));
    }
    for (int i = 0; i < 49; i++) {
        snprintf(cname, sizeof cname, "clone%d", i);
        OK(store_delete(st, cname));
    }
    OK(store_gc(st));
    EXPECT_CLEAN(st);
    OK(store_vol_open(st, "clone49", &last));
    for (uint64_t b = 0; b < 50; b++)
        EXPECT(t_is_pat(last, 5000 + b, b), "clone49 block %llu after gc",
               (unsigned long long)b);
    store_vol_close(last);
    for (uint64_t b = 0; b < NB; b++) {
        uint64_t l = b + NB * ((NSNAP - 1 - b) / NB);
        EXPECT_PAT(v, l + 2, b);
    }
    store_vol_close(v);
    store_close(st);
    OK(store_open(t_img, 0, &st));
    EXPECT_CLEAN(st);
    store_close(st);
    return 0;
}
