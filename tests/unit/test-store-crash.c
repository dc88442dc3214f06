/* test-store-crash.c: durability and the checker.  A child writes, flushes,
 * keeps writing and is killed with SIGKILL (no close); another child
 * _exits right after a snapshot.  Reopened, the image holds every flushed
 * block and the snapshot, every block reads old or new content, and
 * store_check is clean.  Then a deliberately corrupted chunk is found by
 * store_check. */
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

int main(void)
{
    struct store *st;
    struct store_vol *v;
    int pfd[2];
    t_setup("crash");
    struct store_create_opts o = {.size = SIZE};
    OK(store_create(t_img, &o, &st));
    store_close(st);

    if (pipe(pfd) < 0)
        FAIL("pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        OK(store_open(t_img, 0, &st));
        OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
        for (uint64_t b = 0; b < NB; b++)
            t_write_pat(v, 1, b);
        for (uint64_t b = NB; b < NB + 100; b++) /* never rewritten */
            t_write_pat(v, 7, b);
        OK(store_flush(st));
        if (write(pfd[1], "x", 1) != 1)
            _exit(1);
        /* overwrite forever (group commits happen meanwhile) */
        for (uint64_t i = 0;; i++) {
            t_write_pat(v, 2 + (i / NB) % 2, i % NB);
            if (i % 500 == 0)
                store_flush(st);
        }
    }
    close(pfd[1]);
    char x;
    EXPECT(read(pfd[0], &x, 1) == 1, "child died before its flush");
    usleep(300000); /* let it write (and group-commit) for a while */
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    close(pfd[0]);

    OK(store_open(t_img, 0, &st));
    EXPECT_CLEAN(st);
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
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
    int fd = open(cp, O_RDWR);
    EXPECT(fd >= 0, "open chunks");
    /* a chunk still referenced whatever the killed child got to: blocks
     * NB.. were written once, in order, on a fresh image, after blocks
     * 0..NB-1 took slots 2..NB+1 (the first slots may since have been
     * freed by the overwrites, so the corruption must not be there) */
    uint64_t slot = 2 + NB + 50;
    EXPECT(pwrite(fd, "garbage", 7, (off_t)(slot * STORE_BLOCK + 100)) == 7,
           "pwrite");
    close(fd);
    OK(store_open(t_img, STORE_OPEN_RDONLY, &st));
    int n = store_check(st, progress, NULL, NULL);
    EXPECT(n == 1, "check found %d problems in one corrupted chunk", n);
    EXPECT(prog[0] >= 2 && prog[1] == prog[2] && prog[2] > 0,
           "progress: %llu calls, ended at %llu of %llu",
           (unsigned long long)prog[0], (unsigned long long)prog[1],
           (unsigned long long)prog[2]);
    store_close(st);
    return 0;
}
