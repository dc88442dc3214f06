/* test-store-threads.c: the store used from several threads at once, as
 * the server does: writers on two volumes, readers, flushes, snapshots and
 * deletes with the collector running.  Each writer owns its blocks, so
 * every read must return exactly what its writer last wrote. */
#include "store-test-util.h"

#include <pthread.h>

#define SIZE (32ull << 20)
#define NB 512
#define ROUNDS 6

static struct store *st;
static struct store_vol *vols[2];
static uint64_t seeds[2][NB];
static pthread_mutex_t seed_mu = PTHREAD_MUTEX_INITIALIZER;

static void *writer(void *arg)
{
    int w = (int)(intptr_t)arg;
    struct store_vol *v = vols[w / 2];
    for (int r = 1; r <= ROUNDS; r++)
        for (uint64_t b = w % 2; b < NB; b += 2) {
            uint64_t seed = (uint64_t)r * 10 + w;
            t_write_pat(v, seed, b);
            pthread_mutex_lock(&seed_mu);
            seeds[w / 2][b] = seed;
            pthread_mutex_unlock(&seed_mu);
            if (b % 97 == 0)
                OK(store_flush(st));
        }
    return NULL;
}

static void *reader(void *arg)
{
    uint8_t buf[8 * STORE_BLOCK];
    for (int i = 0; i < 3000; i++)
        OK(store_read(vols[i % 2], buf, (uint64_t)(i * 7 % (NB - 8)) * 4096,
                      sizeof buf));
    return NULL;
}

static void *snapper(void *arg)
{
    char name[32];
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof name, "s%d", i);
        OK(store_snapshot(st, "a", name, NULL));
        if (i >= 2) {
            snprintf(name, sizeof name, "s%d", i - 2);
            OK(store_delete(st, name));
        }
    }
    return NULL;
}

int main(void)
{
    t_setup("threads");
    struct store_create_opts o = {.size = SIZE, .volume_name = "a"};
    OK(store_create(t_img, &o, &st));
    OK(store_snapshot(st, "a", "base", NULL));
    OK(store_clone(st, "base", "b", NULL));
    OK(store_vol_open(st, "a", &vols[0]));
    OK(store_vol_open(st, "b", &vols[1]));
    pthread_t th[7];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, writer, (void *)(intptr_t)i);
    pthread_create(&th[4], NULL, reader, NULL);
    pthread_create(&th[5], NULL, reader, NULL);
    pthread_create(&th[6], NULL, snapper, NULL);
    for (int i = 0; i < 7; i++)
        pthread_join(th[i], NULL);
    for (int v = 0; v < 2; v++)
        for (uint64_t b = 0; b < NB; b++)
            EXPECT_PAT(vols[v], seeds[v][b], b);
    OK(store_gc(st));
    EXPECT_CLEAN(st);
    store_vol_close(vols[0]);
    store_vol_close(vols[1]);
    store_close(st);
    OK(store_open(t_img, 0, &st));
    EXPECT_CLEAN(st);
    store_close(st);
    return 0;
}
