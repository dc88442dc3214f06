/* store-hash.c: dedup lookups: is there a chunk with these bytes already?
 *
 * A chunk may be found in three places: the new chunks of the active or
 * the frozen generation (store-mem.c), or the index's `hashes` DB (hash ->
 * slot, DUPSORT: several slots only after a real collision), read through
 * a read txn.  Every candidate is verified byte for byte (XXH3 is not
 * meant to resist crafted collisions: a guest must not be able to make
 * another disk read its bytes), and before it is read it is recorded as
 * referenced by the active generation (under its hash shard's lock), so
 * that a checkpoint freeing that slot meanwhile keeps it (store-ckpt.c:
 * zombies); slots a checkpoint is about to free (st->dying) are passed
 * over.
 *
 * Most writes store new data, and looking a new hash up in `hashes` is a
 * B-tree descent that finds nothing: a Bloom filter over the keys of
 * `hashes`, built at a read-write open and fed by every checkpoint, answers
 * most of those from memory (4 bit positions taken from the key itself, 16
 * bits per key when built: about 0.2% false positives).  Deletions leave
 * their bits (more false positives, never a wrong answer).  It grows in
 * layers: once the newest holds a key per 10 bits, a new one twice as big
 * takes the keys that follow, and a lookup asks every layer; rebuilding one
 * bigger filter would scan all of `hashes` (60-74 ms with 1M chunks).
 * Layers are only added (by the checkpoint thread, under bloom.mu) and
 * never freed before close, so lookups need no lock.
 */
#include "store-int.h"

#include <errno.h>
#include <stdlib.h>

#define BLOOM_MIN_BITS (1ULL << 20) /* 128 KiB */
#define BLOOM_MAX_BITS (1ULL << 28) /* 32 MiB in all */
#define BLOOM_LAYERS 16u

static void bloom_pos(const uint8_t h[16], uint64_t bits, uint64_t pos[4])
{
    uint64_t a, b;
    memcpy(&a, h, 8);
    memcpy(&b, h + 8, 8);
    b |= 1;
    for (int i = 0; i < 4; i++)
        pos[i] = (a + (uint64_t)i * b) & (bits - 1);
}

static bool layer_add(struct store *st, uint64_t bits)
{
    struct store_bloom *bl = &st->bloom;
    if (bl->n >= BLOOM_LAYERS)
        return false;
    uint64_t *w = calloc(bits / 64, 8);
    if (!w)
        return false;
    bl->layer[bl->n] = (struct bloom_layer){.w = w, .bits = bits};
    bl->bits += bits;
    __atomic_store_n(&bl->n, bl->n + 1, __ATOMIC_RELEASE);
    return true;
}

/* A key of `hashes` (the checkpoint thread, or the open). */
void store_hash_bloom_add(struct store *st, const uint8_t h[16])
{
    struct store_bloom *bl = &st->bloom;
    unsigned n = __atomic_load_n(&bl->n, __ATOMIC_ACQUIRE);
    if (!n)
        return;
    struct bloom_layer *l = &bl->layer[n - 1];
    uint64_t pos[4];
    bloom_pos(h, l->bits, pos);
    for (int i = 0; i < 4; i++)
        __atomic_fetch_or(&l->w[pos[i] / 64], 1ULL << (pos[i] % 64),
                          __ATOMIC_RELAXED);
    if (++l->keys * 10 > l->bits && bl->bits + 2 * l->bits <= BLOOM_MAX_BITS) {
        pthread_mutex_lock(&bl->mu);
        layer_add(st, 2 * l->bits);
        pthread_mutex_unlock(&bl->mu);
    }
}

/* false: h is certainly not a key of `hashes`. */
bool store_hash_bloom_maybe(struct store *st, const uint8_t h[16])
{
    struct store_bloom *bl = &st->bloom;
    unsigned n = __atomic_load_n(&bl->n, __ATOMIC_ACQUIRE);
    if (!n)
        return true;
    for (unsigned j = n; j-- > 0;) {
        const struct bloom_layer *l = &bl->layer[j];
        uint64_t pos[4];
        bloom_pos(h, l->bits, pos);
        int i = 0;
        while (i < 4 && (__atomic_load_n(&l->w[pos[i] / 64], __ATOMIC_RELAXED) &
                         1ULL << (pos[i] % 64)))
            i++;
        if (i == 4)
            return true;
    }
    return false;
}

void store_hash_bloom_free(struct store *st)
{
    struct store_bloom *bl = &st->bloom;
    for (unsigned j = 0; j < bl->n; j++)
        free(bl->layer[j].w);
    bl->n = 0;
    bl->bits = 0;
}

/* Build the filter from `hashes`, one layer (read-write opens).  Without
 * memory there is simply no filter. */
int store_hash_bloom_build(struct store *st, MDB_txn *txn)
{
    MDB_stat ms = {0};
    store_hash_bloom_free(st);
    if (st->rdonly || (txn && mdb_stat(txn, st->idx.hashes, &ms)))
        return 0;
    uint64_t bits = BLOOM_MIN_BITS;
    while (bits < 16 * (uint64_t)ms.ms_entries && bits < BLOOM_MAX_BITS)
        bits <<= 1;
    if (!layer_add(st, bits) || !txn)
        return 0;
    MDB_cursor *c;
    MDB_val k, d;
    int mrc = mdb_cursor_open(txn, st->idx.hashes, &c);
    if (mrc) {
        store_hash_bloom_free(st);
        return store_mdb_err(st, mrc, "hashes");
    }
    for (mrc = mdb_cursor_get(c, &k, &d, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT_NODUP))
        if (k.mv_size == 16)
            store_hash_bloom_add(st, k.mv_data);
    mdb_cursor_close(c);
    if (mrc != MDB_NOTFOUND) {
        store_hash_bloom_free(st);
        return store_mdb_err(st, mrc, "hashes");
    }
    return 0;
}

/* Slots `hashes` lists for h in rtxn (up to max). */
int store_hash_find(struct store *st, MDB_txn *rtxn, const uint8_t h[16],
                    uint64_t *out, unsigned max, unsigned *n)
{
    *n = 0;
    if (!store_hash_bloom_maybe(st, h))
        return 0;
    MDB_val k = {16, (void *)h}, d;
    int rc = mdb_get(rtxn, st->idx.hashes, &k, &d); /* most: no cursor */
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return store_mdb_err(st, rc, "hashes");
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(rtxn, st->idx.hashes, &c)))
        return store_mdb_err(st, rc, "hashes");
    for (rc = mdb_cursor_get(c, &k, &d, MDB_SET_KEY); rc == 0 && *n < max;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT_DUP))
        if (d.mv_size == 8)
            out[(*n)++] = get_be64(d.mv_data);
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND)
        return store_mdb_err(st, rc, "hashes");
    return 0;
}
