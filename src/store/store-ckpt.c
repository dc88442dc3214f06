/* store-ckpt.c: checkpoints, the one path by which the index changes, and
 * the background thread that runs them.
 *
 * A checkpoint: (1) freeze: under the gate held exclusive, the active
 * generation becomes the frozen one, a new one takes writes, the log's
 * partial block is sealed and the position after it noted, the catalogue's
 * changes copied; (2) sync the chunk file: every chunk and log block of the
 * frozen generation is durable before any index names them (invariant 5);
 * (3) one LMDB write txn applies the generation in key order: ranges, then
 * point entries sorted by (block, node) through one map cursor (the old
 * values found there are the decrefs: writes never looked them up), then
 * refcount changes sorted by slot through one refs cursor, then hash
 * insertions and deletions sorted by hash through one `hashes` cursor, the
 * segments' bitmaps, the catalogue, the node counts and the log position;
 * (4) commit; (5) under the gate exclusive again, the frozen generation is
 * dropped and the slots the txn freed become reusable (invariant 4).  A
 * checkpoint that fails (a full disk, a full map) aborts its txn and loses
 * nothing: the frozen generation stays, readers keep using it, and the
 * next attempt applies it again.
 *
 * Zombies: a chunk whose last reference the frozen generation drops may
 * meanwhile have been referenced again by a write to the active one (a
 * dedup hit on it).  The decision is taken under the chunk's hash shard
 * lock: if the active generation holds a reference (store-hash.c records
 * it before reading the candidate) the chunk is kept with count 0 and its
 * slot listed in the `zombie` DB, else the slot is added to st->dying,
 * which dedup passes over, and freed.  Each checkpoint looks at the
 * zombies again (count > 0: no longer a zombie; still 0 and unreferenced:
 * freed), so that a crash that loses the referencing write leaks nothing.
 *
 * Only the checkpoint thread (the background thread, or the caller of
 * store_ckpt_run under ckpt_mu) writes LMDB.
 */
#include "store-int.h"

#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

struct delta {
    uint64_t slot;
    int64_t d;
    uint8_t hash[16];
    bool isnew;
};

struct hop { /* a `hashes` insertion (put) or deletion */
    uint8_t hash[16];
    uint64_t slot;
    bool put;
};

/* What a checkpoint applies, collected once (its parts share it). */
struct plan {
    struct mt_ent *pts; /* point entries, sorted by (block, node) */
    size_t npts;
    struct nc_ent *nc; /* new chunks, sorted by slot */
    size_t nnc, nccap;
};

/* A node whose entries count the txn changed, and the count before (put
 * back if the txn aborts: no allocation or read is needed to undo). */
struct touched {
    uint32_t id;
    uint64_t entries;
};

struct ckpt {
    struct store *st;
    struct gen *f;
    const struct plan *plan; /* NULL for the collector */
    uint64_t lo, hi;         /* the part's blocks */
    bool first, last;        /* the part's place in the checkpoint */
    MDB_txn *txn;
    struct mt_ent *pts;
    size_t npts, ptcap;
    struct delta *dl;
    size_t ndl, dlcap;
    struct hop *hops;
    size_t nhops, hopcap;
    struct touched *nodes; /* nodes whose entries count changed */
    size_t nnodes, nodecap;
    int64_t refsum_delta;
    int err;
};

static int grow(struct store *st, void **a, size_t *cap, size_t n, size_t sz)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? 2 * *cap : 1024;
    void *p = realloc(*a, c * sz);
    if (!p)
        return store_set_err(st, -ENOMEM, "out of memory (checkpoint)");
    *a = p;
    *cap = c;
    return 0;
}

/* A refcount change of the slot of map value val (a tagged value). */
static int add_delta(struct ckpt *k, uint64_t val, int64_t d)
{
    uint64_t slot = val_slot(val);
    if (slot < STORE_FIRST_SLOT)
        return 0;
    int rc = grow(k->st, (void **)&k->dl, &k->dlcap, k->ndl, sizeof *k->dl);
    if (rc)
        return rc;
    k->dl[k->ndl++] = (struct delta){.slot = slot, .d = d};
    k->refsum_delta += d;
    return 0;
}

static int add_hop(struct ckpt *k, const uint8_t h[16], uint64_t slot, bool put)
{
    int rc =
        grow(k->st, (void **)&k->hops, &k->hopcap, k->nhops, sizeof *k->hops);
    if (rc)
        return rc;
    struct hop *o = &k->hops[k->nhops++];
    memcpy(o->hash, h, 16);
    o->slot = slot;
    o->put = put;
    return 0;
}

/* Node id gains d map entries in this txn: noted (once per txn) before the
 * count changes, so that an abort puts every changed count back. */
static int node_touch(struct ckpt *k, uint32_t id, int64_t d)
{
    struct node *n = store_node(k->st, id);
    if (!n)
        return 0;
    if (!n->touched) {
        int rc = grow(k->st, (void **)&k->nodes, &k->nodecap, k->nnodes,
                      sizeof *k->nodes);
        if (rc)
            return rc;
        k->nodes[k->nnodes++] = (struct touched){id, n->entries};
        n->touched = 1;
    }
    n->entries = (uint64_t)((int64_t)n->entries + d);
    return 0;
}

/* The txn is over: committed (keep the counts) or aborted (put them back). */
static void nodes_done(struct ckpt *k, bool aborted)
{
    for (size_t i = 0; i < k->nnodes; i++) {
        struct node *n = store_node(k->st, k->nodes[i].id);
        if (!n)
            continue;
        if (aborted)
            n->entries = k->nodes[i].entries;
        n->touched = 0;
    }
    k->nnodes = 0;
}

/* ---- applying map entries ---- */

/* Set the map so that (b, n) reads as val (0: hole, 1: zero, slot): the
 * entry is put, or deleted when what lies beneath reads as a hole anyway.
 * Decrefs the old value, increfs the new. */
static int map_set(struct ckpt *k, MDB_cursor *c, uint64_t b, uint32_t n,
                   uint64_t val)
{
    struct store *st = k->st;
    uint8_t kb[MAP_KEY];
    map_key(kb, b, n);
    MDB_val key = {MAP_KEY, kb}, d;
    bool own = false;
    uint64_t old = 0;
    int rc = mdb_cursor_get(c, &key, &d, MDB_SET_RANGE);
    if (rc && rc != MDB_NOTFOUND)
        return store_mdb_err(st, rc, "map");
    if (rc == 0 && map_key_block(&key) == b && map_key_node(&key) == n) {
        own = true;
        old = val_u64(&d);
    }
    if (val == 0) { /* a hole: only if something beneath shows through */
        bool below = false;
        uint64_t bval = 0;
        int r2 = rc;
        if (own)
            r2 = mdb_cursor_get(c, &key, &d, MDB_NEXT);
        for (; r2 == 0 && map_key_block(&key) == b;
             r2 = mdb_cursor_get(c, &key, &d, MDB_NEXT))
            if (store_is_anc(st, n, map_key_node(&key))) {
                below = true;
                bval = val_u64(&d);
                break;
            }
        if (r2 && r2 != MDB_NOTFOUND)
            return store_mdb_err(st, r2, "map");
        if (!below || bval == 0) {
            if (!own)
                return 0;
            key = (MDB_val){MAP_KEY, kb};
            if ((rc = mdb_del(k->txn, st->idx.map, &key, NULL)))
                return store_mdb_err(st, rc, "map");
            if ((rc = node_touch(k, n, -1)))
                return rc;
            return add_delta(k, old, -1);
        }
    }
    if (own && old == val)
        return 0;
    uint8_t vb[MAP_VAL];
    val_put(vb, val);
    key = (MDB_val){MAP_KEY, kb};
    d = (MDB_val){MAP_VAL, vb};
    if ((rc = mdb_put(k->txn, st->idx.map, &key, &d, 0)))
        return store_mdb_err(st, rc, "map");
    if (!own && (rc = node_touch(k, n, +1)))
        return rc;
    if ((rc = add_delta(k, old, -1)))
        return rc;
    return add_delta(k, val, +1);
}

static bool node_gone(struct store *st, uint32_t id)
{
    struct node *n = store_node(st, id);
    return !n || n->ck_state == NODE_DEAD || n->ck_state == 0;
}

/* Does node n have a point entry for b newer than seq in the generation? */
static bool newer_point(struct store *st, struct gen *f, uint64_t b, uint32_t n,
                        uint64_t seq)
{
    struct mt_ent e;
    return store_mt_get(f, store_shard_of(st, b), b, n, &e) && e.seq > seq;
}

/* A range zeroed: every block of [b0, b1) with map keys, and (val 1)
 * every block, made to read as val from node n, but where n has a later
 * point entry. */
static int apply_range(struct ckpt *k, MDB_cursor *c, const struct mt_range *r)
{
    struct store *st = k->st;
    int rc = 0;
    if (node_gone(st, r->node))
        return 0;
    if (r->val == 1) {
        for (uint64_t b = r->b0; b < r->b1 && !rc; b++)
            if (!newer_point(st, k->f, b, r->node, r->seq))
                rc = map_set(k, c, b, r->node, 1);
        return rc;
    }
    uint8_t kb[MAP_KEY];
    for (uint64_t b = r->b0; b < r->b1 && !rc;) {
        map_key(kb, b, UINT32_MAX);
        MDB_val key = {MAP_KEY, kb}, d;
        int mrc = mdb_cursor_get(c, &key, &d, MDB_SET_RANGE);
        if (mrc == MDB_NOTFOUND)
            break;
        if (mrc)
            return store_mdb_err(st, mrc, "map");
        uint64_t blk = map_key_block(&key);
        if (blk >= r->b1)
            break;
        if (!newer_point(st, k->f, blk, r->node, r->seq))
            rc = map_set(k, c, blk, r->node, 0);
        b = blk + 1;
    }
    return rc;
}

static void collect_pt(const struct mt_ent *e, void *arg)
{
    struct ckpt *k = arg;
    if (k->err)
        return;
    if ((k->err =
             grow(k->st, (void **)&k->pts, &k->ptcap, k->npts, sizeof *k->pts)))
        return;
    k->pts[k->npts++] = *e;
}

/* By block, then node ascending: an ancestor's entry is in the index
 * before a descendant's zero asks what lies beneath it. */
static int cmp_pt(const void *a, const void *b)
{
    const struct mt_ent *x = a, *y = b;
    if (x->block != y->block)
        return x->block < y->block ? -1 : 1;
    return x->node < y->node ? -1 : x->node > y->node;
}

/* Superseded by a later range of the same node? */
static bool shadowed(const struct gen *f, const struct mt_ent *e)
{
    for (size_t i = 0; i < f->nranges; i++) {
        const struct mt_range *r = &f->ranges[i];
        if (r->node == e->node && e->block >= r->b0 && e->block < r->b1 &&
            r->seq > e->seq)
            return true;
    }
    return false;
}

/* Point entries first, sorted (block, then node ascending), skipping those
 * a later range of their node shadows; then the ranges in log order, each
 * skipping the blocks where its node has a later point entry.  Ranges go
 * last because a range asks what lies beneath it, which may be an
 * ancestor's point entry of the same generation (an ancestor's entries
 * are all older than a descendant's range: a node is frozen before it has
 * descendants). */
static int apply_map(struct ckpt *k, size_t i0, size_t i1)
{
    struct store *st = k->st;
    struct gen *f = k->f;
    MDB_cursor *c;
    int rc = mdb_cursor_open(k->txn, st->idx.map, &c);
    if (rc)
        return store_mdb_err(st, rc, "map");
    for (size_t i = i0; i < i1 && !rc; i++) {
        const struct mt_ent *e = &k->plan->pts[i];
        if (node_gone(st, e->node) || (f->nranges && shadowed(f, e)))
            continue;
        rc = map_set(k, c, e->block, e->node, e->val);
    }
    for (size_t i = 0; i < f->nranges && !rc; i++) {
        struct mt_range r = f->ranges[i];
        if (r.b0 < k->lo)
            r.b0 = k->lo;
        if (r.b1 > k->hi)
            r.b1 = k->hi;
        if (r.b0 < r.b1)
            rc = apply_range(k, c, &r);
    }
    mdb_cursor_close(c);
    return rc;
}

static void collect_nc(const struct nc_ent *e, void *arg)
{
    struct ckpt *k = arg;
    struct plan *p = (struct plan *)k->plan;
    if (k->err)
        return;
    if ((k->err =
             grow(k->st, (void **)&p->nc, &p->nccap, p->nnc, sizeof *p->nc)))
        return;
    p->nc[p->nnc++] = *e;
}

static int cmp_nc(const void *a, const void *b)
{
    const struct nc_ent *x = a, *y = b;
    return x->slot < y->slot ? -1 : x->slot > y->slot;
}

/* Collect the frozen generation's point entries and new chunks, sorted. */
static int plan_make(struct store *st, struct gen *f, struct plan *p)
{
    struct ckpt k = {.st = st, .f = f, .plan = p};
    memset(p, 0, sizeof *p);
    for (unsigned s = 0; s < STORE_NSHARD_MAX && !k.err; s++)
        store_mt_each(f, s, collect_pt, &k);
    for (unsigned hs = 0; hs < STORE_NHSHARD && !k.err; hs++)
        store_nc_each(f, hs, collect_nc, &k);
    p->pts = k.pts;
    p->npts = k.npts;
    if (k.err)
        return k.err;
    if (p->npts)
        qsort(p->pts, p->npts, sizeof *p->pts, cmp_pt);
    if (p->nnc)
        qsort(p->nc, p->nnc, sizeof *p->nc, cmp_nc);
    return 0;
}

static void plan_free(struct plan *p)
{
    free(p->pts);
    free(p->nc);
}

/* The new chunk at slot s, if the checkpoint's generation made it. */
static const struct nc_ent *plan_new(const struct plan *p, uint64_t s)
{
    size_t a = 0, b = p ? p->nnc : 0;
    while (a < b) {
        size_t m = (a + b) / 2;
        if (p->nc[m].slot < s)
            a = m + 1;
        else
            b = m;
    }
    return p && a < p->nnc && p->nc[a].slot == s ? &p->nc[a] : NULL;
}

/* ---- refcounts ---- */

static int cmp_dl(const void *a, const void *b)
{
    const struct delta *x = a, *y = b;
    if (x->slot != y->slot)
        return x->slot < y->slot ? -1 : 1;
    return y->isnew - x->isnew; /* the new chunk's record first */
}

/* Slot s (hash h) drops to no reference: zombie or free (see the top). */
static int release_chunk(struct ckpt *k, MDB_cursor *rc_cur, uint64_t s,
                         const uint8_t h[16], bool in_index, bool *zombie)
{
    struct store *st = k->st;
    unsigned hs = store_hshard_of(h);
    pthread_mutex_lock(&st->hshard[hs].mu);
    *zombie = store_refd_has_l(st->active, hs, s);
    int rc = *zombie ? 0 : store_rs_add(&st->dying[hs], s);
    pthread_mutex_unlock(&st->hshard[hs].mu);
    if (rc)
        return store_set_err(st, -ENOMEM, "out of memory");
    (void)rc_cur;
    if (*zombie) {
        /* kept: its slot stays used (a new chunk's becomes so) */
        if ((rc = store_space_dur(st, s, true)))
            return rc;
        uint8_t kb[8];
        put_be64(kb, s);
        MDB_val key = {8, kb}, d = {0, ""};
        int mrc = mdb_put(k->txn, st->idx.zombie, &key, &d, 0);
        return mrc ? store_mdb_err(st, mrc, "zombie") : 0;
    }
    if (in_index) {
        if ((rc = add_hop(k, h, s, false)) ||
            (rc = store_space_dur(st, s, false)))
            return rc;
    }
    return store_space_free_later(st, s);
}

static int ref_put(struct ckpt *k, uint64_t s, const struct ref_rec *r)
{
    uint8_t kb[8];
    put_be64(kb, s);
    MDB_val key = {8, kb}, d = {sizeof *r, (void *)r};
    int rc = mdb_put(k->txn, k->st->idx.refs, &key, &d, 0);
    return rc ? store_mdb_err(k->st, rc, "refs") : 0;
}

static int ref_get(struct ckpt *k, uint64_t s, struct ref_rec *r, bool *found)
{
    uint8_t kb[8];
    put_be64(kb, s);
    MDB_val key = {8, kb}, d;
    int rc = mdb_get(k->txn, k->st->idx.refs, &key, &d);
    *found = rc == 0 && d.mv_size == sizeof *r;
    if (*found)
        memcpy(r, d.mv_data, sizeof *r);
    if (rc && rc != MDB_NOTFOUND)
        return store_mdb_err(k->st, rc, "refs");
    return 0;
}

static int ref_del(struct ckpt *k, uint64_t s)
{
    uint8_t kb[8];
    put_be64(kb, s);
    MDB_val key = {8, kb};
    int rc = mdb_del(k->txn, k->st->idx.refs, &key, NULL);
    return rc && rc != MDB_NOTFOUND ? store_mdb_err(k->st, rc, "refs") : 0;
}

/* One slot's changes: dl[i..j) (sorted, the new chunk's record first). */
static int apply_slot(struct ckpt *k, struct delta *dl, size_t n)
{
    struct store *st = k->st;
    uint64_t s = dl[0].slot;
    int64_t d = 0;
    for (size_t i = 0; i < n; i++)
        d += dl[i].d;
    struct ref_rec r;
    bool found, zombie;
    int rc;
    if (dl[0].isnew) {
        if ((rc = ref_get(k, s, &r, &found)))
            return rc;
        if (found && d == 0)
            return 0; /* entered by an earlier part, unchanged here */
        if (!found && d == 0 && !k->last)
            return 0; /* a later part may reference it */
        if (found)    /* entered by an earlier part (or its replay) */
            d += r.refcount;
        memcpy(r.hash, dl[0].hash, 16);
        if (d > 0) {
            r.refcount = (uint32_t)d;
            if ((rc = store_space_dur(st, s, true)) ||
                (rc = add_hop(k, r.hash, s, true)))
                return rc;
            return ref_put(k, s, &r);
        }
        if ((rc = release_chunk(k, NULL, s, r.hash, false, &zombie)))
            return rc;
        if (!zombie)
            return 0;
        r.refcount = 0;
        if ((rc = store_space_dur(st, s, true)) ||
            (rc = add_hop(k, r.hash, s, true)))
            return rc;
        return ref_put(k, s, &r);
    }
    if (d == 0)
        return 0;
    if ((rc = ref_get(k, s, &r, &found)))
        return rc;
    if (!found)
        return store_set_err(st, -EIO,
                             "refs: slot %llu has no chunk record (the index "
                             "is damaged: busesnap check)",
                             (unsigned long long)s);
    int64_t c = (int64_t)r.refcount + d;
    if (c < 0)
        return store_set_err(st, -EIO,
                             "refs: slot %llu's count would go below zero",
                             (unsigned long long)s);
    if (c > 0) {
        r.refcount = (uint32_t)c;
        return ref_put(k, s, &r);
    }
    if ((rc = release_chunk(k, NULL, s, r.hash, true, &zombie)))
        return rc;
    if (zombie) {
        r.refcount = 0;
        return ref_put(k, s, &r);
    }
    return ref_del(k, s);
}

/* Zombies of earlier checkpoints: referenced now, or freed. */
static int apply_zombies(struct ckpt *k)
{
    struct store *st = k->st;
    MDB_cursor *c;
    MDB_val key, d;
    int rc = mdb_cursor_open(k->txn, st->idx.zombie, &c);
    if (rc)
        return store_mdb_err(st, rc, "zombie");
    uint64_t *z = NULL;
    size_t nz = 0, cap = 0;
    for (rc = mdb_cursor_get(c, &key, &d, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &key, &d, MDB_NEXT)) {
        if (key.mv_size != 8)
            continue;
        if (grow(st, (void **)&z, &cap, nz, sizeof *z)) {
            mdb_cursor_close(c);
            free(z);
            return -ENOMEM;
        }
        z[nz++] = get_be64(key.mv_data);
    }
    mdb_cursor_close(c);
    rc = 0;
    for (size_t i = 0; i < nz && !rc; i++) {
        struct ref_rec r;
        bool found, zombie;
        if ((rc = ref_get(k, z[i], &r, &found)))
            break;
        uint8_t kb[8];
        put_be64(kb, z[i]);
        key = (MDB_val){8, kb};
        if (found && r.refcount == 0) {
            /* still unreferenced by the index */
            if ((rc = mdb_del(k->txn, st->idx.zombie, &key, NULL)))
                rc = store_mdb_err(st, rc, "zombie");
            if (!rc)
                rc = release_chunk(k, NULL, z[i], r.hash, true, &zombie);
            if (!rc && !zombie)
                rc = ref_del(k, z[i]);
            continue;
        }
        if ((rc = mdb_del(k->txn, st->idx.zombie, &key, NULL)))
            rc = store_mdb_err(st, rc, "zombie");
    }
    free(z);
    return rc;
}

static int apply_refs(struct ckpt *k)
{
    int rc = 0;
    for (size_t i = 0, n = k->ndl; i < n && !rc; i++) {
        const struct nc_ent *e = plan_new(k->plan, k->dl[i].slot);
        if (e) {
            k->dl[i].isnew = true;
            memcpy(k->dl[i].hash, e->hash, 16);
        }
    }
    /* the last part sees every new chunk, referenced or not */
    for (size_t i = 0; k->last && k->plan && i < k->plan->nnc && !rc; i++) {
        if ((rc = grow(k->st, (void **)&k->dl, &k->dlcap, k->ndl,
                       sizeof *k->dl)))
            break;
        struct delta *d = &k->dl[k->ndl++];
        *d = (struct delta){.slot = k->plan->nc[i].slot, .isnew = true};
        memcpy(d->hash, k->plan->nc[i].hash, 16);
    }
    if (rc)
        return rc;
    if (k->ndl)
        qsort(k->dl, k->ndl, sizeof *k->dl, cmp_dl);
    for (size_t i = 0; i < k->ndl && !rc;) {
        size_t j = i + 1;
        while (j < k->ndl && k->dl[j].slot == k->dl[i].slot)
            j++;
        rc = apply_slot(k, &k->dl[i], j - i);
        i = j;
    }
    if (!rc && k->last)
        rc = apply_zombies(k);
    return rc;
}

/* ---- hashes ---- */

static int cmp_hop(const void *a, const void *b)
{
    const struct hop *x = a, *y = b;
    int c = memcmp(x->hash, y->hash, 16);
    if (c)
        return c;
    if (x->slot != y->slot)
        return x->slot < y->slot ? -1 : 1;
    return x->put - y->put; /* a deletion before a put of the same pair */
}

static int apply_hashes(struct ckpt *k)
{
    struct store *st = k->st;
    if (k->nhops)
        qsort(k->hops, k->nhops, sizeof *k->hops, cmp_hop);
    MDB_cursor *c;
    int rc = mdb_cursor_open(k->txn, st->idx.hashes, &c);
    if (rc)
        return store_mdb_err(st, rc, "hashes");
    for (size_t i = 0; i < k->nhops && !rc; i++) {
        struct hop *o = &k->hops[i];
        uint8_t sb[8];
        put_be64(sb, o->slot);
        MDB_val key = {16, o->hash}, d = {8, sb};
        int mrc;
        if (o->put) {
            mrc = mdb_cursor_put(c, &key, &d, MDB_NODUPDATA);
            if (mrc == MDB_KEYEXIST)
                mrc = 0;
            if (!mrc)
                store_hash_bloom_add(st, o->hash);
        } else {
            mrc = mdb_cursor_get(c, &key, &d, MDB_GET_BOTH);
            if (mrc == 0)
                mrc = mdb_cursor_del(c, 0);
            if (mrc == MDB_NOTFOUND)
                mrc = 0;
        }
        if (mrc)
            rc = store_mdb_err(st, mrc, "hashes");
    }
    mdb_cursor_close(c);
    return rc;
}

/* ---- the checkpoint ---- */

static int meta_put(struct store *st, MDB_txn *txn, const char *key,
                    const void *v, size_t n)
{
    MDB_val k = {strlen(key), (void *)key}, d = {n, (void *)v};
    int rc = mdb_put(txn, st->idx.meta, &k, &d, 0);
    return rc ? store_mdb_err(st, rc, "meta") : 0;
}

static void ckpt_free(struct ckpt *k)
{
    nodes_done(k, false); /* committed (an abort has put them back) */
    free(k->dl);
    free(k->hops);
    free(k->nodes);
}

static void clear_dying(struct store *st)
{
    for (unsigned hs = 0; hs < STORE_NHSHARD; hs++) {
        pthread_mutex_lock(&st->hshard[hs].mu);
        store_rs_clear(&st->dying[hs]);
        pthread_mutex_unlock(&st->hshard[hs].mu);
    }
}

/* One txn of a checkpoint: the plan's points [i0, i1) and the ranges'
 * blocks in [lo, hi), with their refcount, hash and space consequences;
 * the first part writes the catalogue, the last the log position. */
static int apply_part(struct store *st, struct gen *f, const struct plan *p,
                      size_t i0, size_t i1, uint64_t lo, uint64_t hi,
                      bool first, bool last)
{
    struct ckpt k = {.st = st,
                     .f = f,
                     .plan = p,
                     .lo = lo,
                     .hi = hi,
                     .first = first,
                     .last = last};
    int rc = mdb_txn_begin(st->idx.env, NULL, 0, &k.txn);
    if (rc)
        return store_mdb_err(st, rc, "begin");
    rc = apply_map(&k, i0, i1);
    if (!rc)
        rc = apply_refs(&k);
    if (!rc)
        rc = apply_hashes(&k);
    if (!rc && first)
        rc = store_cat_persist(st, k.txn, &f->cat);
    for (size_t i = 0; i < k.nnodes && !rc; i++)
        rc = store_cat_put_node(st, k.txn, k.nodes[i].id);
    if (!rc)
        rc = store_space_persist(st, k.txn);
    uint64_t refsum = st->refsum + (uint64_t)k.refsum_delta;
    if (!rc)
        rc = meta_put(st, k.txn, "refsum", &refsum, 8);
    if (!rc && last) {
        uint8_t pos[16];
        memcpy(pos, &f->pos.lsn, 8);
        memcpy(pos + 8, &f->pos.seg, 4);
        memcpy(pos + 12, &f->pos.idx, 4);
        rc = meta_put(st, k.txn, "log", pos, 16);
    }
    if (!rc && (rc = mdb_txn_commit(k.txn)))
        rc = store_mdb_err(st, rc, "commit");
    else if (rc)
        mdb_txn_abort(k.txn);
    if (rc) {
        /* nothing lost: what this txn did is undone, the node counts it
         * changed included */
        st->space.nrelease = 0;
        store_space_revert(st);
        nodes_done(&k, true);
        clear_dying(st);
        ckpt_free(&k);
        return rc;
    }
    st->refsum = refsum;
    store_space_persisted(st);
    ckpt_free(&k);
    if (!last) { /* what this part freed is reusable now */
        pthread_rwlock_wrlock(&st->gate);
        store_space_release(st);
        pthread_rwlock_unlock(&st->gate);
        clear_dying(st);
        store_space_return(st);
    }
    return 0;
}

/* Apply points [i0, i1) (blocks [lo, hi)) in one txn, or, if the index has
 * no room for it (a full map or disk), in halves, recursively: each
 * committed half frees the pages it replaced for the ones after it (trims
 * on a full index get through).  *first: the catalogue is still to be
 * written. */
static int apply_split(struct store *st, struct gen *f, const struct plan *p,
                       size_t i0, size_t i1, uint64_t lo, uint64_t hi,
                       bool *first, bool last)
{
    int rc = apply_part(st, f, p, i0, i1, lo, hi, *first, last);
    if (rc != -ENOSPC)
        goto out;
    /* split at the middle point's block, or, with one point or none, at
     * the middle of what the ranges cover here */
    uint64_t split = 0;
    size_t mid = i0 + (i1 - i0) / 2;
    while (mid < i1 && mid > i0 && p->pts[mid].block == p->pts[mid - 1].block)
        mid++; /* a block's entries stay together */
    if (i1 - i0 >= 2 && mid < i1) {
        split = p->pts[mid].block;
    } else {
        uint64_t a = UINT64_MAX, b = 0;
        for (size_t i = 0; i < f->nranges; i++) {
            uint64_t r0 = f->ranges[i].b0 > lo ? f->ranges[i].b0 : lo;
            uint64_t r1 = f->ranges[i].b1 < hi ? f->ranges[i].b1 : hi;
            if (r0 < r1) {
                a = r0 < a ? r0 : a;
                b = r1 > b ? r1 : b;
            }
        }
        if (a == UINT64_MAX || b - a < 2)
            goto out;
        split = a + (b - a) / 2;
        mid = i0;
        while (mid < i1 && p->pts[mid].block < split)
            mid++;
    }
    if ((rc = apply_split(st, f, p, i0, mid, lo, split, first, false)))
        return rc;
    return apply_split(st, f, p, mid, i1, split, hi, first, last);
out:
    if (!rc)
        *first = false;
    return rc;
}

static void (*ckpt_hook)(struct store *, void *);
static void *ckpt_hook_arg;

void store_set_ckpt_hook_for_testing(void (*hook)(struct store *st, void *arg),
                                     void *arg)
{
    ckpt_hook = hook;
    ckpt_hook_arg = arg;
}

/* Steps 3 to 5 for the frozen generation f. */
static int apply_frozen(struct store *st, struct gen *f)
{
    struct plan p;
    if (ckpt_hook)
        ckpt_hook(st, ckpt_hook_arg);
    int rc = plan_make(st, f, &p);
    bool first = true;
    if (!rc)
        rc = apply_split(st, f, &p, 0, p.npts, 0, UINT64_MAX, &first, true);
    plan_free(&p);
    return rc;
}

static bool worth_freezing(struct store *st)
{
    bool cat = st->cat.ndirty_nodes || st->cat.ndead || st->cat.def_dirty;
    for (uint32_t i = 0; !cat && i < st->cat.nobjs; i++)
        cat = st->cat.objs[i].dirty;
    return st->active->any || cat || st->log.nent ||
           st->log.next.lsn != st->ckpt_pos.lsn ||
           st->log.next.seg != st->ckpt_pos.seg ||
           st->log.next.idx != st->ckpt_pos.idx;
}

/* The in-memory invariants that must hold between checkpoints (SQLite's
 * assert_pager_state is the model): nothing frozen, nothing waiting to be
 * released or undone, no dying slot; every segment's persisted bits are
 * among its allocated ones (inv. 3) and its count is right; the index's
 * log position is in the log chain.  O(segments): cheap next to a
 * checkpoint.  The checkpoint thread, ckpt_mu held. */
static bool ckpt_invariants(struct store *st)
{
    struct store_space *sp = &st->space;
    bool ok = !st->frozen && !sp->nrelease && !sp->nundo;
    for (unsigned hs = 0; hs < STORE_NHSHARD; hs++)
        ok &= st->dying[hs].used == 0;
    pthread_mutex_lock(&sp->mu);
    uint64_t total = 0;
    for (uint32_t i = 0; i < sp->nsegs && ok; i++) {
        const struct seg_info *g = &sp->segs[i];
        unsigned n = 0;
        for (unsigned w = 0; w < STORE_SEG_WORDS; w++) {
            ok &= (g->dur[w] & ~g->live[w]) == 0;
            n += (unsigned)__builtin_popcountll(g->live[w]);
        }
        ok &= n == g->nlive;
        total += n;
    }
    ok &= total == sp->nlive;
    if (!ok)
        fprintf(stderr,
                "%s: checkpoint invariants: frozen %d, to release %zu, to "
                "undo %zu, slots counted %llu of %llu\n",
                st->path, st->frozen != NULL, sp->nrelease, sp->nundo,
                (unsigned long long)total, (unsigned long long)sp->nlive);
    pthread_mutex_unlock(&sp->mu);
    pthread_mutex_lock(&st->log.mu);
    bool in_chain = st->ckpt_pos.seg == 0;
    for (size_t i = 0; i < st->log.nchain; i++)
        in_chain |= st->log.chain[i] == st->ckpt_pos.seg;
    if (!in_chain)
        fprintf(stderr,
                "%s: checkpoint invariants: log segment %u not in "
                "the chain\n",
                st->path, st->ckpt_pos.seg);
    pthread_mutex_unlock(&st->log.mu);
    return ok && in_chain;
}

/* Run one checkpoint now (and, with gc, collector passes after it).
 * 0 or -errno (the index is unchanged then). */
static int checkpoint(struct store *st)
{
    int rc = 0;
    if (!st->frozen) {
        struct gen *g = store_gen_new();
        if (!g)
            return store_set_err(st, -ENOMEM, "out of memory");
        /* tree_mu: the catalogue's array is compacted by the freeze, which
         * lookups (under tree_mu alone) must not see half done */
        pthread_mutex_lock(&st->tree_mu);
        pthread_rwlock_wrlock(&st->gate);
        pthread_mutex_lock(&st->log.mu);
        struct gen *f = st->active;
        uint64_t ticket = 0;
        /* the seal first: a freeze takes the catalogue's changes, which
         * only a generation switched to may hold (a failed freeze changes
         * nothing) */
        rc = store_log_seal_l(st, &ticket);
        if (!rc)
            rc = store_cat_freeze(st, &f->cat);
        f->pos = st->log.next;
        if (!rc) {
            st->active = g;
            st->frozen = f;
        }
        pthread_mutex_unlock(&st->log.mu);
        pthread_rwlock_unlock(&st->gate);
        pthread_mutex_unlock(&st->tree_mu);
        if (rc) {
            store_gen_free(g);
            return rc;
        }
        if ((rc = store_log_sync(st, ticket)))
            return rc;
    } else if ((rc = store_seg_sync(st))) {
        return rc;
    }
    struct gen *f = st->frozen;
    if ((rc = apply_frozen(st, f)))
        return rc;
    st->ckpt_pos = f->pos;
    pthread_rwlock_wrlock(&st->gate);
    st->frozen = NULL;
    store_space_release(st);
    pthread_rwlock_unlock(&st->gate);
    clear_dying(st);
    store_log_release(st, &f->pos);
    store_space_return(st);
    store_gen_free(f);
    return 0;
}

/* One collector batch of up to `batch` map keys: drop what store_gc_scan
 * found, in one txn. */
static int collect_batch(struct store *st, unsigned batch, bool *done)
{
    struct ckpt k = {.st = st};
    struct gc_drop *drops = NULL;
    size_t nd = 0;
    int rc = mdb_txn_begin(st->idx.env, NULL, 0, &k.txn);
    if (rc)
        return store_mdb_err(st, rc, "begin");
    uint64_t next = st->gc_next;
    rc = store_gc_scan(st, k.txn, &next, batch, &drops, &nd, done);
    for (size_t i = 0; i < nd && !rc; i++) {
        uint8_t kb[MAP_KEY];
        map_key(kb, drops[i].block, drops[i].node);
        MDB_val key = {MAP_KEY, kb};
        int mrc = mdb_del(k.txn, st->idx.map, &key, NULL);
        if (mrc) {
            rc = store_mdb_err(st, mrc, "map");
            break;
        }
        if (!(rc = node_touch(&k, drops[i].node, -1)))
            rc = add_delta(&k, drops[i].val, -1);
    }
    st->gc_ops += nd;
    free(drops);
    if (!rc)
        rc = apply_refs(&k);
    if (!rc)
        rc = apply_hashes(&k);
    for (size_t i = 0; i < k.nnodes && !rc; i++)
        rc = store_cat_put_node(st, k.txn, k.nodes[i].id);
    if (!rc)
        rc = store_space_persist(st, k.txn);
    uint64_t refsum = st->refsum + (uint64_t)k.refsum_delta;
    if (!rc)
        rc = meta_put(st, k.txn, "refsum", &refsum, 8);
    if (!rc && (rc = mdb_txn_commit(k.txn)))
        rc = store_mdb_err(st, rc, "commit");
    else if (rc)
        mdb_txn_abort(k.txn);
    if (rc) {
        st->space.nrelease = 0;
        store_space_revert(st);
        nodes_done(&k, true);
        clear_dying(st);
        ckpt_free(&k);
        return rc;
    }
    st->refsum = refsum;
    st->gc_next = next;
    store_space_persisted(st);
    pthread_rwlock_wrlock(&st->gate);
    store_space_release(st);
    pthread_rwlock_unlock(&st->gate);
    clear_dying(st);
    store_space_return(st);
    ckpt_free(&k);
    return 0;
}

/* A whole collector pass, then the nodes left empty leave the tree (their
 * records go with the next checkpoint). */
static int collect(struct store *st)
{
    int rc = 0;
    bool done = false;
    if (!store_gc_needed(st))
        return 0;
    st->gc_next = 0;
    /* on a full index a batch is halved until it fits: each one committed
     * frees pages for the next */
    unsigned batch = STORE_GC_BATCH;
    while (!done && !st->bg_stop) {
        rc = collect_batch(st, batch, &done);
        if (rc == -ENOSPC && batch > 16) {
            batch /= 2;
            continue;
        }
        if (rc)
            break;
    }
    if (rc || !done)
        return rc;
    pthread_mutex_lock(&st->tree_mu);
    pthread_rwlock_wrlock(&st->gate);
    bool pruned = store_gc_prune(st);
    pthread_rwlock_unlock(&st->gate);
    pthread_mutex_unlock(&st->tree_mu);
    if (pruned)
        rc = checkpoint(st);
    return rc;
}

int store_ckpt_run(struct store *st, bool with_gc)
{
    if (st->rdonly)
        return 0;
    pthread_mutex_lock(&st->ckpt_mu);
    pthread_mutex_lock(&st->bg_mu);
    st->ckpt_busy = true;
    pthread_mutex_unlock(&st->bg_mu);
    int rc = 0;
    if (st->frozen || worth_freezing(st))
        rc = checkpoint(st);
    if (!rc && with_gc && st->gc_wanted) {
        st->gc_wanted = false;
        rc = collect(st);
        if (rc)
            st->gc_wanted = true;
    }
    assert(rc || ckpt_invariants(st));
    pthread_mutex_lock(&st->bg_mu);
    st->ckpt_busy = false;
    st->ckpt_count++;
    store_room_refresh(st);
    if (rc) {
        if (!st->ckpt_err)
            fprintf(stderr,
                    "%s: checkpoint failed (retried; nothing is lost): "
                    "%s\n",
                    st->path, store_errmsg());
        st->ckpt_err = rc;
        snprintf(st->ckpt_msg, sizeof st->ckpt_msg, "%s", store_errmsg());
        st->index_full = rc == -ENOSPC;
    } else {
        st->ckpt_err = 0;
        st->index_full = false;
    }
    pthread_cond_broadcast(&st->bg_done);
    pthread_mutex_unlock(&st->bg_mu);
    pthread_mutex_unlock(&st->ckpt_mu);
    return rc;
}

/* ---- the background thread ---- */

/* New chunk bytes that make a checkpoint due: the slots the generations'
 * overwrites free come back only with checkpoints, so the image holds up
 * to about three times this beyond its live data under random overwrites
 * (the frozen generation, and the active one at twice it): a 32nd of the
 * live data keeps that under a tenth, 64 MiB at least keeps checkpoints of
 * small images from rewriting their whole index too often. */
static uint64_t ckpt_bytes(struct store *st)
{
    uint64_t live = st->space.nlive * STORE_BLOCK / 32;
    return live > (64u << 20) ? live : (64u << 20);
}

/* Is generation g at mult times the size that makes a checkpoint due? */
static bool gen_full(struct store *st, struct gen *g, unsigned mult)
{
    return __atomic_load_n(&g->nents, __ATOMIC_RELAXED) >=
               mult * STORE_CKPT_OPS ||
           __atomic_load_n(&g->new_bytes, __ATOMIC_RELAXED) >=
               mult * ckpt_bytes(st);
}

static bool ckpt_due(struct store *st)
{
    struct gen *a = st->active;
    return st->ckpt_wanted || gen_full(st, a, 1) ||
           (a->any && store_ms_since(&a->first) >= st->ckpt_ms) || st->frozen ||
           st->gc_wanted;
}

static void *bg_main(void *arg)
{
    struct store *st = arg;
    pthread_mutex_lock(&st->bg_mu);
    while (!st->bg_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&st->bg_cond, &st->bg_mu, &ts);
        if (st->bg_stop)
            break;
        bool due = ckpt_due(st);
        st->ckpt_wanted = false;
        pthread_mutex_unlock(&st->bg_mu);
        /* what a client that never flushes can lose is bounded */
        if (st->log.nent &&
            store_ms_since(&st->log.first_unsynced) >= (long)STORE_SYNC_MS)
            store_log_flush(st);
        store_log_prepare(st);
        if (due && !st->failed) {
            int rc = store_ckpt_run(st, true);
            if (rc) { /* retried, not in a tight loop */
                struct timespec d = {0, 200 * 1000000L};
                nanosleep(&d, NULL);
            }
        }
        pthread_mutex_lock(&st->bg_mu);
    }
    pthread_mutex_unlock(&st->bg_mu);
    return NULL;
}

int store_bg_start(struct store *st)
{
    if (st->rdonly)
        return 0;
    /* the thread takes no signals: a process-directed SIGTERM goes to a
     * thread of the application, which may be handling it (or holding it
     * until its handler is in place), never to this one, whose default
     * action would kill the process mid-write */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int e = pthread_create(&st->bg, NULL, bg_main, st);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e)
        return store_set_err(st, -e, "cannot start background thread: %s",
                             strerror(e));
    st->bg_running = true;
    return 0;
}

void store_bg_stop(struct store *st)
{
    pthread_mutex_lock(&st->bg_mu);
    st->bg_stop = true;
    pthread_cond_broadcast(&st->bg_cond);
    pthread_cond_broadcast(&st->bg_done);
    pthread_mutex_unlock(&st->bg_mu);
    if (st->bg_running)
        pthread_join(st->bg, NULL);
    st->bg_running = false;
}

void store_bg_wake(struct store *st)
{
    pthread_mutex_lock(&st->bg_mu);
    st->ckpt_wanted = true;
    pthread_cond_broadcast(&st->bg_cond);
    pthread_mutex_unlock(&st->bg_mu);
}

/* Writers wait here (no lock held) while the active generation is at its
 * bound and a checkpoint is making room. */
void store_ckpt_backpressure(struct store *st)
{
    struct gen *a = st->active;
    if (!gen_full(st, a, 2))
        return;
    if (!st->bg_running) { /* the open's replay: no thread yet */
        store_ckpt_run(st, false);
        return;
    }
    pthread_mutex_lock(&st->bg_mu);
    st->ckpt_wanted = true;
    pthread_cond_broadcast(&st->bg_cond);
    uint64_t seen = st->ckpt_count;
    while (!st->bg_stop && st->ckpt_count == seen &&
           gen_full(st, st->active, 2))
        pthread_cond_wait(&st->bg_done, &st->bg_mu);
    pthread_mutex_unlock(&st->bg_mu);
}

/* Room in the index for a write (store-space.c): when the estimate of
 * what the generations will take says no, the write waits for checkpoints
 * (which measure what they really took and free what they replaced), and
 * is refused only if the index stays full with nothing left to apply. */
int store_ckpt_room(struct store *st)
{
    for (int tries = 0;; tries++) {
        if (!st->index_full && store_room_ok(st))
            return 0;
        if (tries == 3 || st->bg_stop ||
            (!st->active->any && !st->frozen && tries))
            return store_set_err(st, -ENOSPC,
                                 "%s: the index is full (free space with "
                                 "trim or delete, or serve with a larger "
                                 "--map-size)",
                                 st->path);
        if (!st->bg_running) { /* the open's replay: no thread yet */
            store_ckpt_run(st, false);
            continue;
        }
        pthread_mutex_lock(&st->bg_mu);
        uint64_t seen = st->ckpt_count;
        st->ckpt_wanted = true;
        pthread_cond_broadcast(&st->bg_cond);
        while (!st->bg_stop && st->ckpt_count == seen)
            pthread_cond_wait(&st->bg_done, &st->bg_mu);
        pthread_mutex_unlock(&st->bg_mu);
    }
}

/* ---- failures that cost acknowledged writes ---- */

/* From now on every request is refused (store_failed) and nothing is
 * checkpointed; said once on stderr as "IMAGE: what, image taken offline:
 * why". */
void store_offline(struct store *st, int err, const char *what, const char *why)
{
    if (__atomic_load_n(&st->failed, __ATOMIC_ACQUIRE))
        return;
    snprintf(st->failed_msg, sizeof st->failed_msg, "%s", why);
    __atomic_store_n(&st->failed, err, __ATOMIC_RELEASE);
    fprintf(stderr, "%s: %s, image taken offline: %s\n", st->path, what, why);
}

int store_failed(struct store *st)
{
    int f = __atomic_load_n(&st->failed, __ATOMIC_ACQUIRE);
    if (!f)
        return 0;
    return store_set_err(st, -EIO,
                         "%s: a write to the image failed and acknowledged "
                         "writes may be lost (%s); restart to reopen the "
                         "image from its last durable state",
                         st->path, st->failed_msg);
}

int store_checkpoint(struct store *st)
{
    if (st->rdonly)
        return 0;
    int rc = store_failed(st);
    return rc ? rc : store_ckpt_run(st, false);
}

/* Collect now: a checkpoint (node states of the last tree operations
 * become the collector's), then whole passes until nothing is left to
 * collect (bounded: the tree may keep changing). */
int store_gc(struct store *st)
{
    if (st->rdonly)
        return store_set_err(st, -EROFS, "image is open read-only");
    int rc = 0;
    for (int i = 0; i < 4 && !rc; i++) {
        st->gc_wanted = true;
        rc = store_ckpt_run(st, true);
        if (!store_gc_needed(st))
            break;
    }
    return rc;
}
