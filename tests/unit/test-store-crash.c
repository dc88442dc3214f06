/* test-store-crash.c: durability and the checker.  A child writes, flushes,
 * keeps writing and is killed with SIGKILL (no close); another child
 * _exits right after a snapshot.  Reopened, the image holds every flushed
 * block and the snapshot, every block reads old or new content, and
 * store_check is clean.  The same kill on an image big enough for its
 * hashes to be merged, so that the overwrites stage deletions (`dead`).
 * Then a deliberately corrupted chunk is found by store_check.  Last, an
 * unclean exit whose log is then erased: store_open says -EUCLEAN (read-only
 * too) and STORE_OPEN_ACCEPT_LOSS opens it. */
#include "store-test-util.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>

#define SIZE (64ull << 20)

static uint64_t prog[3]; /* calls, last done, last total */
static void progress(uint64_t done, uint64_t total, void *arg)
{
    prog[0]++;
    prog[1] = done;
    prog[2] = total;
}
#define NB 2000

/* Fork a writer: in the child (0 returned) the image and its volume are
 * open and *fd is the pipe end to signal a flush on; in the parent *fd is
 * the end to wait on. */
static pid_t fork_writer(int *fd, struct store **st, struct store_vol **v)
{
    int pfd[2];
    if (pipe(pfd) < 0)
        FAIL("pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        *fd = pfd[1];
        OK(store_open(t_img, 0, st));
        OK(store_vol_open(*st, STORE_DEFAULT_VOLUME, v));
        return 0;
    }
    close(pfd[1]);
    *fd = pfd[0];
    return pid;
}

/* Once the child has flushed (a byte on fd), let it go on for us
 * microseconds, then SIGKILL it (no close, no commit). */
static void kill_later(pid_t pid, int fd, useconds_t us)
{
    char x;
    EXPECT(read(fd, &x, 1) == 1, "child died before its flush");
    usleep(us);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    close(fd);
}

/* Block i of the overwrite order: a permutation of [0, n) (7919 is prime
 * and does not divide n). */
static uint64_t nth(uint64_t i, uint64_t n)
{
    return i * 7919 % n;
}

/* 70,000 blocks written in 1 MiB requests (65,536 of their hashes merged
 * into `hashes`), then a child overwrites them one by one, flushing every
 * 500, and is killed.  Each overwrite frees a chunk whose hash is merged:
 * its deletion is staged in `dead`, and the journal replay redoes the
 * overwrites after the last checkpoint.  Then enough new chunks for a
 * merge pass, which applies the deletions. */
static void crash_merged(void)
{
    const uint64_t NS = 70000, FLUSHED = 2000;
    struct store *st;
    struct store_vol *v;
    uint8_t *buf = malloc(256 * STORE_BLOCK);
    struct store_create_opts o = {.size = 2 * NS * STORE_BLOCK};
    snprintf(t_img, sizeof t_img, "%s/merged.db", t_dir);
    OK(store_create(t_img, &o, &st));
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    t_write_run(v, buf, 1, 0, 0, NS);
    store_vol_close(v);
    store_close(st);
    int fd;
    pid_t pid = fork_writer(&fd, &st, &v);
    if (pid == 0) {
        for (uint64_t i = 0; i < NS; i++) {
            t_write_pat(v, 2, nth(i, NS));
            if (i % 500 == 499)
                OK(store_flush(st));
            if (i == FLUSHED - 1 && write(fd, "x", 1) != 1)
                _exit(1);
        }
        _exit(0);
    }
    kill_later(pid, fd, 800000); /* past a checkpoint: committed
                                        deletions too */
    t_open_clean(&st, &v);
    uint64_t newer = 0;
    for (uint64_t i = 0; i < NS; i++) {
        uint64_t b = nth(i, NS);
        int a = t_is_pat(v, 1, b), c = i < FLUSHED ? 0 : t_is_pat(v, 2, b);
        if (i < FLUSHED)
            EXPECT(t_is_pat(v, 2, b), "flushed block %llu lost",
                   (unsigned long long)b);
        else
            EXPECT(a || c, "block %llu is neither old nor new content",
                   (unsigned long long)b);
        newer += !a;
    }
    printf("after kill -9 (merged hashes): %llu of %llu blocks rewritten\n",
           (unsigned long long)newer, (unsigned long long)NS);
    t_write_run(v, buf, 3, 0, NS, NS); /* a merge pass */
    EXPECT_CLEAN(st);
    store_vol_close(v);
    store_close(st);
    OK(store_open(t_img, 0, &st));
    EXPECT_CLEAN(st);
    store_close(st);
    free(buf);
}

/* Zero the chunk file's log blocks (magic "BSNAPLOG"): how many. */
static unsigned erase_log(void)
{
    char cp[400];
    snprintf(cp, sizeof cp, "%s-chunks", t_img);
    int fd = open(cp, O_RDWR);
    EXPECT(fd >= 0, "open chunks");
    uint8_t b[STORE_BLOCK], z[STORE_BLOCK] = {0};
    unsigned n = 0;
    for (off_t s = 0; pread(fd, b, sizeof b, s * STORE_BLOCK) == sizeof b; s++)
        if (!memcmp(b, "BSNAPLOG", 8)) {
            EXPECT(pwrite(fd, z, sizeof z, s * STORE_BLOCK) == sizeof z,
                   "pwrite");
            n++;
        }
    close(fd);
    return n;
}

/* FUA writes, _exit (no close), the log erased: refused, then accepted. */
static void check_unclean(void)
{
    struct store *st;
    struct store_vol *v;
    setenv("BUSESNAP_CKPT_MS", "3600000", 1); /* the writes stay in the log */
    pid_t pid = fork();
    if (pid == 0) {
        OK(store_open(t_img, 0, &st));
        OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
        uint8_t buf[STORE_BLOCK];
        for (uint64_t b = 0; b < 20; b++) {
            t_pattern(buf, 11, b);
            OK(store_write(v, buf, b * STORE_BLOCK, STORE_BLOCK, STORE_FUA));
        }
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    unsetenv("BUSESNAP_CKPT_MS");
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed");
    unsigned n = erase_log();
    EXPECT(n >= 20, "%u log blocks erased, expected 20 or more", n);
    int rc = store_open(t_img, 0, &st);
    EXPECT(rc == -EUCLEAN && strstr(store_errmsg(), "not closed cleanly"),
           "open of an unclean image without its log: %d (%s)", rc,
           store_errmsg());
    rc = store_open(t_img, STORE_OPEN_RDONLY, &st);
    EXPECT(rc == -EUCLEAN, "read-only open of it: %d (%s)", rc, store_errmsg());
    OK(store_open(t_img, STORE_OPEN_ACCEPT_LOSS, &st));
    EXPECT_CLEAN(st);
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    for (uint64_t b = 0; b < 20; b++)
        EXPECT(!t_is_pat(v, 11, b), "block %llu: a lost write is served",
               (unsigned long long)b);
    store_vol_close(v);
    store_close(st);
    /* closed cleanly: nothing pending, the log is not needed */
    erase_log();
    OK(store_open(t_img, 0, &st));
    store_close(st);
}

int main(void)
{
    struct store *st;
    struct store_vol *v;
    t_setup("crash");
    struct store_create_opts o = {.size = SIZE};
    OK(store_create(t_img, &o, &st));
    store_close(st);

    int fd;
    pid_t pid = fork_writer(&fd, &st, &v);
    if (pid == 0) {
        for (uint64_t b = 0; b < NB; b++)
            t_write_pat(v, 1, b);
        for (uint64_t b = NB; b < NB + 100; b++) /* never rewritten */
            t_write_pat(v, 7, b);
        OK(store_flush(st));
        if (write(fd, "x", 1) != 1)
            _exit(1);
        /* overwrite forever (group commits happen meanwhile) */
        for (uint64_t i = 0;; i++) {
            t_write_pat(v, 2 + (i / NB) % 2, i % NB);
            if (i % 500 == 0)
                store_flush(st);
        }
    }
    kill_later(pid, fd, 300000); /* it writes and group-commits */
    t_open_clean(&st, &v);
    unsigned newer = 0;
    for (uint64_t b = 0; b < NB; b++) {
        int a = t_is_pat(v, 1, b), c = t_is_pat(v, 2, b), d = t_is_pat(v, 3, b);
        EXPECT(a || c || d, "block %llu is neither old nor new content",
               (unsigned long long)b);
        newer += !a;
    }
    for (uint64_t b = NB; b < NB + 100; b++)
        EXPECT(t_is_pat(v, 7, b), "flushed block %llu lost",
               (unsigned long long)b);
    printf("after kill -9: %u of %u blocks hold later writes\n", newer, NB);
    store_vol_close(v);
    store_close(st);

    char saved[sizeof t_img];
    memcpy(saved, t_img, sizeof saved);
    crash_merged();
    memcpy(t_img, saved, sizeof saved);

    /* a snapshot is durable when it returns */
    pid = fork();
    if (pid == 0) {
        OK(store_open(t_img, 0, &st));
        OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
        t_write_pat(v, 9, 0);
        OK(store_snapshot(st, STORE_DEFAULT_VOLUME, "snap", NULL));
        t_write_pat(v, 10, 0);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed");
    OK(store_open(t_img, 0, &st));
    EXPECT_CLEAN(st);
    OK(store_vol_open(st, "snap", &v));
    EXPECT_PAT(v, 9, 0);
    store_vol_close(v);

    /* corrupt one chunk on disk: the checker finds exactly that */
    struct store_info inf;
    OK(store_info(st, &inf));
    store_close(st);
    char cp[400];
    snprintf(cp, sizeof cp, "%s-chunks", t_img);
    fd = open(cp, O_RDWR);
    EXPECT(fd >= 0, "open chunks");
    /* a chunk still referenced whatever the killed child got to: block
     * NB + 50 was written once (pattern 7) and never rewritten; its slot
     * is where the chunk file holds those bytes */
    uint8_t want[STORE_BLOCK], got[STORE_BLOCK];
    t_pattern(want, 7, NB + 50);
    off_t slot = -1;
    for (off_t s = 0;
         pread(fd, got, sizeof got, s * STORE_BLOCK) == (ssize_t)sizeof got;
         s++)
        if (!memcmp(got, want, sizeof got)) {
            slot = s;
            break;
        }
    EXPECT(slot > 0, "block %d's chunk not found in the chunk file", NB + 50);
    EXPECT(pwrite(fd, "garbage", 7, slot * STORE_BLOCK + 100) == 7, "pwrite");
    close(fd);
    OK(store_open(t_img, STORE_OPEN_RDONLY, &st));
    int n = store_check(st, progress, NULL, NULL);
    EXPECT(n == 1, "check found %d problems in one corrupted chunk", n);
    EXPECT(prog[0] >= 2 && prog[1] == prog[2] && prog[2] > 0,
           "progress: %llu calls, ended at %llu of %llu",
           (unsigned long long)prog[0], (unsigned long long)prog[1],
           (unsigned long long)prog[2]);
    store_close(st);

    snprintf(t_img, sizeof t_img, "%s/unclean.db", t_dir);
    OK(store_create(t_img, &o, &st));
    store_close(st);
    check_unclean();
    return 0;
}
