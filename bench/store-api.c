/* store-api.c: the store's write path measured through its C API, with no
 * NBD transport in the way (issue 17, milestone M0).
 *
 * A volume of SIZE is filled with unique data in 1 MiB writes, then
 * THREADS threads overwrite random 4 KiB blocks with fresh unique data for
 * SECONDS.  What is printed, one line per figure, as "key value" pairs a
 * script can read:
 *   iops            overwrites per second (wall clock, all threads)
 *   cpu_us_per_write  process CPU time (every thread: writers, the
 *                   store's background work) per overwrite, the close's
 *                   final checkpoint included
 *   disk_per_data   bytes this process caused to be written to disk
 *                   (/proc/self/io write_bytes) per byte of data written,
 *                   the close included
 *   dev_per_data    the same counted at the block device (every writer of
 *                   the machine: only meaningful on a quiet machine)
 *   image_per_live  the image's files (allocated bytes, du) over the live
 *                   data after the overwrites and the close
 *   files_per_live  the same without the space reserved past the files'
 *                   ends (the index's room), as store_info counts it
 * Modes (-m): "rand" (the above), "flush32" (a store_flush after every 32
 * writes of each thread), "seq" (1 MiB sequential overwrites instead of
 * 4 KiB random ones), "snaps" (-n N snapshots of the volume, a 4 KiB write
 * before each, then clones and deletes: the time of each as the history
 * grows, "create_us_first" over the first thousand, "create_us_last" over
 * the last, "clone_us", "delete_us" at the end; the tree's operations must
 * not grow with the depth).  The figures of one run mean something only beside
 * another binary's, measured in the same minutes (bench/notes.md).
 *
 * Usage: store-api [-d DIR] [-s SIZE_MIB] [-t THREADS] [-T SECONDS]
 *                  [-m rand|flush32|seq] [-k (keep the image)]
 */
#include "store/store.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define MIB (1ull << 20)

static struct store *st;
static struct store_vol *vol;
static uint64_t nblocks;
static int mode_flush32, mode_seq, mode_snaps;
static atomic_bool stop;
static atomic_uint_fast64_t writes_done;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "store-api: %s: %s (%s)\n", what, strerror(-rc),
            store_errmsg());
    exit(1);
}

/* xorshift64*: unique data and offsets, cheap next to the store's work */
static uint64_t next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static void fill(uint64_t *seed, void *buf, size_t n)
{
    uint64_t *w = buf;
    for (size_t i = 0; i < n / 8; i++)
        w[i] = next(seed);
}

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

/* Sectors written to the block device under dir, from its stat file (the
 * whole machine's writes to it: noisy where other work runs, but it counts
 * what the kernel really wrote, writeback included). */
static uint64_t dev_written(const char *dir)
{
    struct stat sb;
    char p[128];
    unsigned long long f[7] = {0};
    if (stat(dir, &sb))
        return 0;
    snprintf(p, sizeof p, "/sys/dev/block/%u:%u/stat", major(sb.st_dev),
             minor(sb.st_dev));
    FILE *fp = fopen(p, "r");
    if (!fp || fscanf(fp, "%llu %llu %llu %llu %llu %llu %llu", &f[0], &f[1],
                      &f[2], &f[3], &f[4], &f[5], &f[6]) != 7)
        f[6] = 0;
    if (fp)
        fclose(fp);
    return f[6] * 512;
}

/* Allocated bytes of every file of the image (IMAGE*). */
static uint64_t image_bytes(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "du -B1 -c '%s'/image.db* | tail -n1", dir);
    FILE *p = popen(cmd, "r");
    unsigned long long v = 0;
    if (!p || fscanf(p, "%llu", &v) != 1)
        v = 0;
    if (p)
        pclose(p);
    return v;
}

static void *writer(void *arg)
{
    uint64_t seed = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
    size_t len = mode_seq ? MIB : STORE_BLOCK;
    uint8_t *buf = malloc(len);
    uint64_t pos = (uintptr_t)arg * (nblocks / 16) % nblocks, n = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        uint64_t b;
        if (mode_seq) {
            b = pos;
            pos = (pos + MIB / STORE_BLOCK) % nblocks;
        } else {
            b = next(&seed) % nblocks;
        }
        fill(&seed, buf, len);
        int rc = store_write(vol, buf, b * STORE_BLOCK, (uint32_t)len, 0);
        if (rc)
            die("write", rc);
        n++;
        if (mode_flush32 && n % 32 == 0 && (rc = store_flush(st)))
            die("flush", rc);
        atomic_fetch_add_explicit(&writes_done, 1, memory_order_relaxed);
    }
    free(buf);
    return NULL;
}

/* -m snaps: the cost of tree operations as one volume's history grows. */
static int snaps(const char *tdir, long n, int keep)
{
    uint8_t blk[STORE_BLOCK];
    uint64_t seed = 7;
    char name[32];
    double first = 0, last = 0;
    int rc;
    for (long i = 0; i < n; i++) {
        fill(&seed, blk, sizeof blk);
        if ((rc = store_write(vol, blk, (uint64_t)(i % nblocks) * STORE_BLOCK,
                              STORE_BLOCK, 0)))
            die("write", rc);
        snprintf(name, sizeof name, "s%ld", i);
        double t = now();
        if ((rc = store_snapshot(st, "bench", name, NULL)))
            die("snapshot", rc);
        t = now() - t;
        if (i < 1000)
            first += t;
        if (i >= n - 1000)
            last += t;
        if (i % 10000 == 9999)
            fprintf(stderr, "store-api: %ld snapshots\n", i + 1);
    }
    long k = n < 1000 ? n : 1000;
    printf("snapshots %ld\n", n);
    printf("create_us_first %.1f\ncreate_us_last %.1f\n", first * 1e6 / k,
           last * 1e6 / k);
    double tc = 0, td = 0;
    for (int i = 0; i < 100; i++) {
        char c[32];
        snprintf(name, sizeof name, "s%ld", n - 1 - i);
        snprintf(c, sizeof c, "c%d", i);
        double t = now();
        if ((rc = store_clone(st, name, c, NULL)))
            die("clone", rc);
        tc += now() - t;
        t = now();
        if ((rc = store_delete(st, c)) || (rc = store_delete(st, name)))
            die("delete", rc);
        td += (now() - t) / 2;
    }
    printf("clone_us %.1f\ndelete_us %.1f\n", tc * 1e6 / 100, td * 1e6 / 100);
    store_vol_close(vol);
    store_close(st);
    if (!keep) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tdir);
        return system(cmd) ? 1 : 0;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *dir = "/var/tmp";
    uint64_t size_mib = 1024;
    int threads = 1, seconds = 10, keep = 0, opt;
    const char *mode = "rand";
    long nsnaps = 100000;
    while ((opt = getopt(argc, argv, "d:s:t:T:m:kn:")) != -1) {
        switch (opt) {
        case 'd': dir = optarg; break;
        case 's': size_mib = strtoull(optarg, NULL, 0); break;
        case 't': threads = atoi(optarg); break;
        case 'T': seconds = atoi(optarg); break;
        case 'm': mode = optarg; break;
        case 'k': keep = 1; break;
        case 'n': nsnaps = atol(optarg); break;
        default:
            fprintf(stderr, "usage: store-api [-d DIR] [-s SIZE_MIB] "
                            "[-t THREADS] [-T SECONDS] [-m rand|flush32|seq] "
                            "[-k]\n");
            return 2;
        }
    }
    mode_flush32 = !strcmp(mode, "flush32");
    mode_seq = !strcmp(mode, "seq");
    mode_snaps = !strcmp(mode, "snaps");
    if (!mode_flush32 && !mode_seq && !mode_snaps && strcmp(mode, "rand")) {
        fprintf(stderr, "store-api: unknown mode %s\n", mode);
        return 2;
    }
    if (threads < 1 || threads > 64 || size_mib < 16 || seconds < 1) {
        fprintf(stderr, "store-api: bad arguments\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    char tdir[512], img[600];
    snprintf(tdir, sizeof tdir, "%s/store-api.XXXXXX", dir);
    if (!mkdtemp(tdir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(img, sizeof img, "%s/image.db", tdir);
    uint64_t size = size_mib * MIB;
    nblocks = size / STORE_BLOCK;
    struct store_create_opts o = {.size = size, .volume_name = "bench"};
    int rc = store_create(img, &o, &st);
    if (rc)
        die("create", rc);
    if ((rc = store_vol_open(st, "bench", &vol)))
        die("open", rc);

    /* the fill: unique data, 1 MiB writes, then flushed */
    uint8_t *big = malloc(MIB);
    uint64_t seed = 42;
    double t0 = now();
    for (uint64_t off = 0; off < size; off += MIB) {
        fill(&seed, big, MIB);
        if ((rc = store_write(vol, big, off, MIB, 0)))
            die("fill", rc);
    }
    if ((rc = store_flush(st)))
        die("flush", rc);
    double fill_s = now() - t0;
    free(big);
    printf("mode %s\nsize_mib %" PRIu64 "\nthreads %d\nseconds %d\n", mode,
           size_mib, threads, seconds);
    printf("fill_mb_s %.0f\n", size / fill_s / 1e6);
    /* let the fill's background work settle, then measure */
    store_vol_close(vol);
    store_close(st);
    if ((rc = store_open(img, 0, &st)) || (rc = store_vol_open(st, "bench", &vol)))
        die("reopen", rc);

    sync();
    if (mode_snaps)
        return snaps(tdir, nsnaps, keep);
    uint64_t io0 = io_written(), dev0 = dev_written(dir);
    double c0 = cpu();
    t0 = now();
    pthread_t th[64];
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, writer, (void *)(uintptr_t)i);
    struct timespec ts = {seconds, 0};
    nanosleep(&ts, NULL);
    atomic_store(&stop, true);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    double wall = now() - t0;
    uint64_t n = atomic_load(&writes_done);
    uint64_t bytes = n * (mode_seq ? MIB : STORE_BLOCK);
    struct store_info inf;
    if ((rc = store_info(st, &inf)))
        die("info", rc);
    /* the background work that the writes left is theirs too */
    store_vol_close(vol);
    double tc = now();
    store_close(st);
    double close_s = now() - tc;
    double cpu_s = cpu() - c0;
    uint64_t io = io_written() - io0;
    sync();
    uint64_t dev = dev_written(dir) - dev0;
    printf("writes %" PRIu64 "\n", n);
    printf("iops %.0f\n", n / wall);
    printf("mb_s %.1f\n", bytes / wall / 1e6);
    printf("cpu_us_per_write %.2f\n", cpu_s * 1e6 / n);
    printf("cpu_us_per_block %.2f\n", cpu_s * 1e6 / (bytes / STORE_BLOCK));
    printf("close_s %.2f\n", close_s);
    printf("disk_per_data %.3f\n", (double)io / bytes);
    printf("dev_per_data %.3f\n", (double)dev / bytes);
    printf("image_per_live %.3f\n", (double)image_bytes(tdir) / size);
    printf("files_per_live %.3f\n", (double)inf.file_bytes / size);
    if (!keep) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tdir);
        if (system(cmd))
            return 1;
    } else {
        printf("image %s\n", img);
    }
    return 0;
}
