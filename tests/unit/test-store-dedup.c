/* test-store-dedup.c: identical blocks are stored once (same data at many
 * offsets and into clones grows the chunk file by < 1%), and a forced hash
 * collision (constant hash) keeps different blocks apart: the bytes are
 * compared before sharing. */
#include "store-test-util.h"

#define SIZE (256ull << 20)
#define NB 2048 /* 8 MiB of distinct data */

static void const_hash(const void *block, uint8_t out[16])
{
    memset(out, 0x42, 16);
}

/* Check, close (a commit), reopen, check again. */
static void reopen_clean(struct store **st, struct store_vol **v)
{
    EXPECT_CLEAN(*st);
    store_vol_close(*v);
    store_close(*st);
    t_open_clean(st, v);
}

/* Block `at` holds block b of pattern seed (buf: 2 blocks of room). */
static void expect_copy(struct store_vol *v, uint8_t *buf, uint64_t seed,
                        uint64_t b, uint64_t at)
{
    t_pattern(buf, seed, b);
    OK(store_read(v, buf + STORE_BLOCK, at * STORE_BLOCK, STORE_BLOCK));
    EXPECT(!memcmp(buf, buf + STORE_BLOCK, STORE_BLOCK),
           "block %llu: not block %llu of pattern %llu", (unsigned long long)at,
           (unsigned long long)b, (unsigned long long)seed);
}

/* New hashes are staged and merged into the hash index once 65,536 are
 * staged: dedup must find chunks on both sides of a merge, frees must
 * reach both, and a reopen must reload the staged ones.  With
 * BUSESNAP_MERGE_PAGES small, a merge pass takes many txns, each a range
 * of the key space (the second merge of 140,000 blocks: about 80). */
static void check_staging(uint64_t NS, const char *merge_pages)
{
    if (merge_pages)
        setenv("BUSESNAP_MERGE_PAGES", merge_pages, 1);
    struct store *st;
    struct store_vol *v;
    struct store_info inf;
    uint8_t *buf = malloc(256 * STORE_BLOCK);
    struct store_create_opts o = {.size = 4ull * NS * STORE_BLOCK};
    snprintf(t_img, sizeof t_img, "%s/staging-%llu.db", t_dir,
             (unsigned long long)NS);
    OK(store_create(t_img, &o, &st));
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    for (int pass = 0; pass < 2; pass++) /* the second pass dedups */
        t_write_run(v, buf, 5, 0, pass * NS, NS);
    OK(store_info(st, &inf));
    EXPECT(inf.chunks == NS, "%llu chunks for %llu distinct blocks",
           (unsigned long long)inf.chunks, (unsigned long long)NS);
    uint64_t staged = inf.hashes_staged;
    reopen_clean(&st, &v);
    /* The close committed.  A commit with a pass due runs the whole pass
     * (all its txns), so none is ever left half done: the staged hashes
     * are all merged by the close if 65,536 were staged (nothing was freed,
     * so the table holds no tombstones), else the reopen reloads exactly
     * as many as there were. */
    OK(store_info(st, &inf));
    EXPECT(inf.hashes_staged == (staged >= 65536 ? 0 : staged),
           "%llu hashes staged after the close (%llu before)",
           (unsigned long long)inf.hashes_staged, (unsigned long long)staged);
    /* a third copy after the reopen still dedups against all of them */
    for (uint64_t b = 0; b < NS; b += 997) {
        t_pattern(buf, 5, b);
        OK(store_write(v, buf, (2 * NS + b) * STORE_BLOCK, STORE_BLOCK, 0));
    }
    OK(store_info(st, &inf));
    EXPECT(inf.chunks == NS, "%llu chunks after reopen",
           (unsigned long long)inf.chunks);
    /* free every chunk: merged and staged hashes all go */
    OK(store_zero(v, 0, o.size, 0));
    OK(store_info(st, &inf));
    EXPECT(inf.chunks == 0, "%llu chunks left", (unsigned long long)inf.chunks);
    EXPECT_CLEAN(st);
    store_vol_close(v);
    store_close(st);
    free(buf);
    unsetenv("BUSESNAP_MERGE_PAGES");
}

/* An index filled to its map size with unique data: a trim must free its
 * chunks and writes must work again, with no bigger map.  Two things made
 * every trim fail with MDB_MAP_FULL here (this test included): a merge
 * pass took the pages kept for trims (it now leaves the reserve), and
 * staged hash deletions took pages instead of freeing them (near a full
 * index they are deleted at once from `hashes`). */
static void check_full_index(void)
{
    struct store *st;
    struct store_vol *v;
    struct store_info inf;
    uint8_t *buf = malloc(256 * STORE_BLOCK);
    struct store_create_opts o = {.size = 8ull << 30, .map_size = 48u << 20};
    snprintf(t_img, sizeof t_img, "%s/full.db", t_dir);
    OK(store_create(t_img, &o, &st));
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    uint64_t b = 0;
    int rc = 0;
    for (; b < o.size / STORE_BLOCK && !rc; b += 64) {
        for (int i = 0; i < 64; i++)
            t_pattern(buf + i * STORE_BLOCK, 6, b + i);
        rc = store_write(v, buf, b * STORE_BLOCK, 64 * STORE_BLOCK, 0);
    }
    EXPECT(rc == -ENOSPC, "filling a 48 MiB index: %d after %llu blocks", rc,
           (unsigned long long)b);
    OK(store_info(st, &inf));
    uint64_t before = inf.chunks, cut = b / 10 / 64 * 64;
    EXPECT(before > 131072, "%llu chunks: no merge pass before full",
           (unsigned long long)before);
    OK(store_zero(v, 0, cut * STORE_BLOCK, 0)); /* one request */
    OK(store_info(st, &inf));
    EXPECT(inf.chunks + cut <= before,
           "%llu chunks after trimming %llu of %llu",
           (unsigned long long)inf.chunks, (unsigned long long)cut,
           (unsigned long long)before);
    /* new data fits again where the trim freed room */
    t_write_run(v, buf, 7, 0, 0, 1024);
    for (uint64_t c = 0; c < 1024; c += 97)
        EXPECT_PAT(v, 7, c);
    EXPECT_PAT(v, 6, b - 100);
    EXPECT_CLEAN(st);
    store_vol_close(v);
    store_close(st);
    free(buf);
}

/* Freeing a chunk whose hash is merged stages its deletion in `dead`:
 * a lookup must not offer that slot (its bytes are still there, but it
 * has no chunk record), and a slot given the same bytes again must keep
 * its entry when the merge applies the deletion. */
static void check_dead(void)
{
    const uint64_t NS = 70000, NZ = 1000;
    struct store *st;
    struct store_vol *v;
    struct store_info inf;
    uint8_t *buf = malloc(256 * STORE_BLOCK);
    struct store_create_opts o = {.size = 4 * NS * STORE_BLOCK};
    snprintf(t_img, sizeof t_img, "%s/dead.db", t_dir);
    OK(store_create(t_img, &o, &st));
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    t_write_run(v, buf, 7, 0, 0, NS); /* 65,536 of them merged */
    /* free the first NZ (merged): deletions staged */
    OK(store_zero(v, 0, NZ * STORE_BLOCK, 0));
    /* after the commit the freed slots are reused, in the order freed:
     * the same (hash, slot) pairs are staged again while their deletions
     * wait */
    reopen_clean(&st, &v);
    for (uint64_t b = 0; b < NZ - 8; b++)
        t_write_run(v, buf, 7, b, b, 1);
    /* the last 8 elsewhere: the index still lists their freed slots, which
     * a lookup must pass over (their bytes are there, their records not) */
    for (uint64_t b = NZ - 8; b < NZ; b++)
        t_write_run(v, buf, 7, b, NS + b, 1);
    EXPECT_CLEAN(st);
    /* enough new chunks for a merge pass, which applies the deletions */
    t_write_run(v, buf, 8, 0, 2 * NS, NS);
    reopen_clean(&st, &v);
    OK(store_info(st, &inf));
    EXPECT(inf.chunks == 2 * NS, "%llu chunks, expected %llu",
           (unsigned long long)inf.chunks, (unsigned long long)(2 * NS));
    for (uint64_t b = 0; b < NS; b += 61) {
        expect_copy(v, buf, 7, b, b >= NZ - 8 && b < NZ ? NS + b : b);
        expect_copy(v, buf, 8, b, 2 * NS + b);
    }
    /* and they all dedup against the merged index */
    t_write_run(v, buf, 7, 0, 3 * NS, NZ);
    OK(store_info(st, &inf));
    EXPECT(inf.chunks == 2 * NS, "%llu chunks after a copy",
           (unsigned long long)inf.chunks);
    EXPECT_CLEAN(st);
    store_vol_close(v);
    store_close(st);
    free(buf);
}

int main(void)
{
    struct store *st;
    struct store_vol *v, *c;
    struct store_info inf;
    char cp[400];
    t_setup("dedup");
    struct store_create_opts o = {.size = SIZE};
    OK(store_create(t_img, &o, &st));
    snprintf(cp, sizeof cp, "%s-chunks", t_img);
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    for (uint64_t b = 0; b < NB; b++)
        t_write_pat(v, 1, b);
    OK(store_flush(st));
    uint64_t base = t_file_bytes(cp);
    /* the same 8 MiB at 5 other offsets, and into a clone */
    uint8_t buf[STORE_BLOCK];
    for (uint64_t copy = 1; copy <= 5; copy++)
        for (uint64_t b = 0; b < NB; b++) {
            t_pattern(buf, 1, b);
            OK(store_write(v, buf, (copy * NB + b) * STORE_BLOCK, STORE_BLOCK,
                           0));
        }
    OK(store_snapshot(st, STORE_DEFAULT_VOLUME, "s", NULL));
    OK(store_clone(st, "s", "c", NULL));
    OK(store_vol_open(st, "c", &c));
    for (uint64_t b = 0; b < NB; b++) {
        t_pattern(buf, 1, b);
        OK(store_write(c, buf, (40000 + b) * STORE_BLOCK, STORE_BLOCK, 0));
    }
    OK(store_flush(st));
    uint64_t after = t_file_bytes(cp);
    EXPECT(after < base + base / 100,
           "chunk file grew from %llu to %llu bytes for duplicate data",
           (unsigned long long)base, (unsigned long long)after);
    OK(store_info(st, &inf));
    EXPECT(inf.chunks == NB, "%llu chunks for %u distinct blocks",
           (unsigned long long)inf.chunks, NB);
    EXPECT(inf.referenced_bytes == 7ull * NB * STORE_BLOCK,
           "referenced bytes %llu", (unsigned long long)inf.referenced_bytes);
    uint8_t rb[STORE_BLOCK];
    for (uint64_t b = 0; b < NB; b += 97) {
        t_pattern(buf, 1, b);
        OK(store_read(c, rb, (40000 + b) * STORE_BLOCK, STORE_BLOCK));
        EXPECT(!memcmp(rb, buf, STORE_BLOCK), "clone copy of block %llu",
               (unsigned long long)b);
        OK(store_read(v, rb, (3 * NB + b) * STORE_BLOCK, STORE_BLOCK));
        EXPECT(!memcmp(rb, buf, STORE_BLOCK), "volume copy of block %llu",
               (unsigned long long)b);
    }
    store_vol_close(c);
    store_vol_close(v);
    EXPECT_CLEAN(st);
    store_close(st);

    /* forced collisions: every block hashes the same */
    snprintf(t_img, sizeof t_img, "%s/collide.db", t_dir);
    store_set_hash_for_testing(const_hash);
    OK(store_create(t_img, &o, &st));
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    for (uint64_t b = 0; b < 64; b++)
        t_write_pat(v, 2, b);
    for (uint64_t b = 0; b < 64; b++) /* duplicates of the same blocks */
        t_write_pat(v, 2, b);
    t_pattern(buf, 2, 3);
    OK(store_write(v, buf, 100 * STORE_BLOCK, STORE_BLOCK, 0));
    for (uint64_t b = 0; b < 64; b++)
        EXPECT_PAT(v, 2, b);
    OK(store_read(v, rb, 100 * STORE_BLOCK, STORE_BLOCK));
    EXPECT(!memcmp(rb, buf, STORE_BLOCK), "collided dedup block");
    OK(store_info(st, &inf));
    EXPECT(inf.chunks == 64, "%llu chunks under collisions, expected 64",
           (unsigned long long)inf.chunks);
    /* free some colliding chunks and check the hash dups stay consistent */
    OK(store_zero(v, 0, 32 * STORE_BLOCK, 0));
    for (uint64_t b = 32; b < 64; b++)
        EXPECT_PAT(v, 2, b);
    store_vol_close(v);
    EXPECT_CLEAN(st);
    store_close(st);
    store_set_hash_for_testing(NULL);
    char saved[sizeof t_img];
    memcpy(saved, t_img, sizeof saved);
    check_staging(70000, NULL);
    check_staging(140000, "8");
    check_dead();
    check_full_index();
    memcpy(t_img, saved, sizeof saved);
    /* reopened with the real hash, the check reports the fake hashes */
    OK(store_open(t_img, 0, &st));
    int n = store_check(st, NULL, NULL, NULL);
    EXPECT(n == 33,
           "check found %d problems with the real hash, expected "
           "33 (blocks 32-63, and block 3 still used at 100)",
           n);
    store_close(st);
    return 0;
}
