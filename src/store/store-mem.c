/* store-mem.c: generations, the in-memory tables between the log and the
 * index.
 *
 * A generation holds what writes did since the last checkpoint froze the
 * one before it: per write shard a memtable (block, node) -> value with the
 * entry's log sequence number; ranges zeroed in one go (a TRIM of a whole
 * disk is one range, not a key per block); per hash shard the new chunks
 * (hash -> slot, for dedup against them before they reach the index) and
 * the dedup references (slots this generation referenced again, which a
 * checkpoint must not free: store-ckpt.c).  The active generation takes
 * writes under its shard locks; a frozen one is read-only and read without
 * locks.  Tables are open addressing with linear probing, never deleted
 * from (a generation dies whole), grown by doubling at half full.
 */
#include "store-int.h"

#include <errno.h>
#include <stdlib.h>

#define EMPTY UINT64_MAX
#define NC_DELETED (1ULL << 63)

struct gen *store_gen_new(void)
{
    struct gen *g = calloc(1, sizeof *g);
    if (g)
        pthread_mutex_init(&g->rmu, NULL);
    return g;
}

void store_gen_free(struct gen *g)
{
    if (!g)
        return;
    for (unsigned i = 0; i < STORE_NSHARD_MAX; i++)
        free(g->mt[i].e);
    for (unsigned i = 0; i < STORE_NHSHARD; i++) {
        free(g->nc[i].e);
        free(g->refd[i].slot);
        free(g->refd[i].cnt);
    }
    free(g->ranges);
    store_cat_delta_free(&g->cat);
    pthread_mutex_destroy(&g->rmu);
    free(g);
}

static inline size_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

/* ---- memtables ---- */

static int mt_grow(struct mt_table *t)
{
    size_t cap = t->cap ? 2 * t->cap : 1024;
    struct mt_ent *e = malloc(cap * sizeof *e);
    if (!e)
        return -ENOMEM;
    for (size_t i = 0; i < cap; i++)
        e[i].block = EMPTY;
    for (size_t i = 0; i < t->cap; i++) {
        if (t->e[i].block == EMPTY)
            continue;
        size_t j = mix(t->e[i].block) & (cap - 1);
        while (e[j].block != EMPTY)
            j = (j + 1) & (cap - 1);
        e[j] = t->e[i];
    }
    free(t->e);
    t->e = e;
    t->cap = cap;
    return 0;
}

/* Room for n more entries in a shard's table (its lock held): after this,
 * n puts cannot fail. */
int store_mt_reserve_l(struct gen *g, unsigned shard, size_t n)
{
    struct mt_table *t = &g->mt[shard];
    while ((t->used + n) * 2 > t->cap)
        if (mt_grow(t))
            return -ENOMEM;
    return 0;
}

/* (b, node) = val as of log sequence seq (the shard's lock held). */
int store_mt_put_l(struct store *st, struct gen *g, unsigned shard, uint64_t b,
                   uint32_t node, uint64_t val, uint64_t seq)
{
    struct mt_table *t = &g->mt[shard];
    if ((t->used + 1) * 2 > t->cap && mt_grow(t))
        return store_set_err(st, -ENOMEM, "out of memory (memtable)");
    size_t j = mix(b) & (t->cap - 1);
    while (t->e[j].block != EMPTY &&
           !(t->e[j].block == b && t->e[j].node == node))
        j = (j + 1) & (t->cap - 1);
    if (t->e[j].block == EMPTY) {
        t->used++;
        __atomic_fetch_add(&g->nents, 1, __ATOMIC_RELAXED);
    }
    t->e[j] = (struct mt_ent){.block = b, .node = node, .val = val, .seq = seq};
    if (!g->any) {
        g->any = true;
        store_now(&g->first);
    }
    return 0;
}

/* [b0, b1) of node zeroed as of seq (val 0: hole, 1: allocated zero); the
 * caller holds the shard locks and log.mu, which order it. */
int store_mt_range_l(struct store *st, struct gen *g, uint64_t b0, uint64_t b1,
                     uint32_t node, uint32_t val, uint64_t seq)
{
    pthread_mutex_lock(&g->rmu);
    if (g->nranges == g->rcap) {
        size_t cap = g->rcap ? 2 * g->rcap : 16;
        struct mt_range *r = realloc(g->ranges, cap * sizeof *r);
        if (!r) {
            pthread_mutex_unlock(&g->rmu);
            return store_set_err(st, -ENOMEM, "out of memory (memtable)");
        }
        g->ranges = r;
        g->rcap = cap;
    }
    g->ranges[g->nranges] = (struct mt_range){
        .b0 = b0, .b1 = b1, .seq = seq, .node = node, .val = val};
    __atomic_store_n(&g->nranges, g->nranges + 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g->rmu);
    __atomic_fetch_add(&g->nents, 1, __ATOMIC_RELAXED);
    if (!g->any) {
        g->any = true;
        store_now(&g->first);
    }
    return 0;
}

static void consider(struct store *st, uint32_t y, uint32_t node, uint64_t val,
                     uint64_t seq, struct mt_cand *best, bool *have)
{
    if (!store_is_anc(st, y, node))
        return;
    if (!*have || node > best->node ||
        (node == best->node && seq > best->seq)) {
        *best = (struct mt_cand){node, val, seq};
        *have = true;
    }
}

/* What the generation says block b reads as from node y: the entry (point
 * or range) of the nearest ancestor-or-self of y that has one, the newest
 * for that node; false if none.  The active generation needs the shard's
 * lock (ranges have their own); a frozen one none. */
bool store_mt_best(struct store *st, struct gen *g, unsigned shard, uint64_t b,
                   uint32_t y, struct mt_cand *best)
{
    bool have = false;
    const struct mt_table *t = &g->mt[shard];
    if (t->cap)
        for (size_t j = mix(b) & (t->cap - 1); t->e[j].block != EMPTY;
             j = (j + 1) & (t->cap - 1))
            if (t->e[j].block == b)
                consider(st, y, t->e[j].node, t->e[j].val, t->e[j].seq, best,
                         &have);
    size_t nr = __atomic_load_n(&g->nranges, __ATOMIC_ACQUIRE);
    if (!nr)
        return have;
    pthread_mutex_lock(&g->rmu);
    for (size_t i = 0; i < nr; i++) {
        const struct mt_range *r = &g->ranges[i];
        if (b >= r->b0 && b < r->b1)
            consider(st, y, r->node, r->val, r->seq, best, &have);
    }
    pthread_mutex_unlock(&g->rmu);
    return have;
}

/* The point entry (b, node), if the generation has one. */
bool store_mt_get(struct gen *g, unsigned shard, uint64_t b, uint32_t node,
                  struct mt_ent *out)
{
    const struct mt_table *t = &g->mt[shard];
    if (t->cap)
        for (size_t j = mix(b) & (t->cap - 1); t->e[j].block != EMPTY;
             j = (j + 1) & (t->cap - 1))
            if (t->e[j].block == b && t->e[j].node == node) {
                *out = t->e[j];
                return true;
            }
    return false;
}

/* Does the generation have a point entry for block b (any node)? */
bool store_mt_has_block(struct gen *g, unsigned shard, uint64_t b)
{
    const struct mt_table *t = &g->mt[shard];
    if (t->cap)
        for (size_t j = mix(b) & (t->cap - 1); t->e[j].block != EMPTY;
             j = (j + 1) & (t->cap - 1))
            if (t->e[j].block == b)
                return true;
    return false;
}

/* Point entries of one shard's table, for the checkpoint and extents:
 * calls fn for each (a frozen generation, or the shard's lock held). */
void store_mt_each(struct gen *g, unsigned shard,
                   void (*fn)(const struct mt_ent *e, void *arg), void *arg)
{
    const struct mt_table *t = &g->mt[shard];
    for (size_t j = 0; j < t->cap; j++)
        if (t->e[j].block != EMPTY)
            fn(&t->e[j], arg);
}

/* New chunks of one hash shard (a frozen generation). */
void store_nc_each(struct gen *g, unsigned hs,
                   void (*fn)(const struct nc_ent *e, void *arg), void *arg)
{
    const struct nc_table *t = &g->nc[hs];
    for (size_t j = 0; j < t->cap; j++)
        if (t->e[j].slot && !(t->e[j].slot & NC_DELETED))
            fn(&t->e[j], arg);
}

/* ---- new chunks ---- */

static int nc_grow(struct nc_table *t)
{
    size_t cap = t->cap ? 2 * t->cap : 256;
    struct nc_ent *e = calloc(cap, sizeof *e);
    if (!e)
        return -ENOMEM;
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->e[i].slot || (t->e[i].slot & NC_DELETED))
            continue;
        uint64_t x;
        memcpy(&x, t->e[i].hash + 8, 8);
        size_t j = mix(x) & (cap - 1);
        while (e[j].slot)
            j = (j + 1) & (cap - 1);
        e[j] = t->e[i];
    }
    free(t->e);
    t->e = e;
    t->cap = cap;
    return 0;
}

/* Room for n more new chunks in a hash shard's table (its lock held). */
int store_nc_reserve_l(struct gen *g, unsigned hs, size_t n)
{
    struct nc_table *t = &g->nc[hs];
    while ((t->used + n) * 2 > t->cap)
        if (nc_grow(t))
            return -ENOMEM;
    return 0;
}

/* A new chunk (the hash shard's lock held). */
int store_nc_put_l(struct gen *g, const uint8_t h[16], uint64_t slot)
{
    struct nc_table *t = &g->nc[store_hshard_of(h)];
    if ((t->used + 1) * 2 > t->cap && nc_grow(t))
        return -ENOMEM;
    uint64_t x;
    memcpy(&x, h + 8, 8);
    size_t j = mix(x) & (t->cap - 1);
    while (t->e[j].slot)
        j = (j + 1) & (t->cap - 1);
    memcpy(t->e[j].hash, h, 16);
    t->e[j].slot = slot;
    t->used++;
    g->new_bytes += STORE_BLOCK;
    return 0;
}

/* Take back a new chunk put by a write that could not be entered: its
 * place stays taken (probing goes on past it), marked deleted. */
void store_nc_del_l(struct gen *g, const uint8_t h[16], uint64_t slot)
{
    struct nc_table *t = &g->nc[store_hshard_of(h)];
    uint64_t x;
    memcpy(&x, h + 8, 8);
    for (size_t j = mix(x) & (t->cap - 1); t->cap && t->e[j].slot;
         j = (j + 1) & (t->cap - 1))
        if (t->e[j].slot == slot && !memcmp(t->e[j].hash, h, 16)) {
            t->e[j].slot |= NC_DELETED;
            t->used--;
            g->new_bytes -= STORE_BLOCK;
            return;
        }
}

/* Slots of the generation's new chunks with hash h (up to max). */
unsigned store_nc_find(struct gen *g, const uint8_t h[16], uint64_t *out,
                       unsigned max)
{
    const struct nc_table *t = &g->nc[store_hshard_of(h)];
    unsigned n = 0;
    if (!t->cap)
        return 0;
    uint64_t x;
    memcpy(&x, h + 8, 8);
    for (size_t j = mix(x) & (t->cap - 1); t->e[j].slot;
         j = (j + 1) & (t->cap - 1))
        if (!(t->e[j].slot & NC_DELETED) && !memcmp(t->e[j].hash, h, 16) &&
            n < max)
            out[n++] = t->e[j].slot;
    return n;
}

bool store_nc_has_slot(struct gen *g, const uint8_t h[16], uint64_t slot)
{
    uint64_t s[16];
    unsigned n = store_nc_find(g, h, s, 16);
    for (unsigned i = 0; i < n; i++)
        if (s[i] == slot)
            return true;
    return false;
}

/* ---- sets of slots (dedup references, dying slots) ---- */

static int rs_grow(struct ref_set *r)
{
    size_t cap = r->cap ? 2 * r->cap : 256;
    uint64_t *s = calloc(cap, sizeof *s);
    uint32_t *c = calloc(cap, sizeof *c);
    if (!s || !c) {
        free(s);
        free(c);
        return -ENOMEM;
    }
    for (size_t i = 0; i < r->cap; i++) {
        if (!r->slot[i])
            continue;
        size_t j = mix(r->slot[i]) & (cap - 1);
        while (s[j])
            j = (j + 1) & (cap - 1);
        s[j] = r->slot[i];
        c[j] = r->cnt[i];
    }
    free(r->slot);
    free(r->cnt);
    r->slot = s;
    r->cnt = c;
    r->cap = cap;
    return 0;
}

static size_t rs_find(const struct ref_set *r, uint64_t slot)
{
    if (!r->cap)
        return SIZE_MAX;
    for (size_t j = mix(slot) & (r->cap - 1); r->slot[j];
         j = (j + 1) & (r->cap - 1))
        if (r->slot[j] == slot)
            return j;
    return SIZE_MAX;
}

/* Count one more for slot (the set's lock held). */
int store_rs_add(struct ref_set *r, uint64_t slot)
{
    size_t j = rs_find(r, slot);
    if (j != SIZE_MAX) {
        r->cnt[j]++;
        return 0;
    }
    if ((r->used + 1) * 2 > r->cap && rs_grow(r))
        return -ENOMEM;
    j = mix(slot) & (r->cap - 1);
    while (r->slot[j])
        j = (j + 1) & (r->cap - 1);
    r->slot[j] = slot;
    r->cnt[j] = 1;
    r->used++;
    return 0;
}

void store_rs_del(struct ref_set *r, uint64_t slot)
{
    size_t j = rs_find(r, slot);
    if (j != SIZE_MAX && r->cnt[j])
        r->cnt[j]--;
}

bool store_rs_has(const struct ref_set *r, uint64_t slot)
{
    size_t j = rs_find(r, slot);
    return j != SIZE_MAX && r->cnt[j] > 0;
}

void store_rs_clear(struct ref_set *r)
{
    free(r->slot);
    free(r->cnt);
    memset(r, 0, sizeof *r);
}

/* The generation references slot again (hash shard hs's lock held). */
int store_refd_add_l(struct gen *g, unsigned hs, uint64_t slot)
{
    return store_rs_add(&g->refd[hs], slot);
}

void store_refd_del_l(struct gen *g, unsigned hs, uint64_t slot)
{
    store_rs_del(&g->refd[hs], slot);
}

bool store_refd_has_l(struct gen *g, unsigned hs, uint64_t slot)
{
    return store_rs_has(&g->refd[hs], slot);
}
