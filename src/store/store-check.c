/* store-check.c: the consistency checker, one function per database, each
 * naming the invariants (doc/design.md) it verifies.  It runs on the index
 * as of a checkpoint (a read-write open checkpoints first) through a read
 * txn, so it may run while the image is served: counts every reference
 * with a temporary array indexed by slot, then rehashes every chunk in
 * batches.  Problems are reported one line each, the first 100 kept.
 */
#include "store-int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define PROBLEMS_KEPT 100

typedef unsigned long long ull;

struct checker {
    struct store *st;
    MDB_txn *txn;
    char *msgs[PROBLEMS_KEPT];
    unsigned kept;
    int count;
    uint64_t nslots;
    uint32_t *counted; /* map references per slot */
    uint8_t *flags;    /* 1: has a refs record, 2: zombie */
    uint64_t *ncount;  /* map entries per node */
    uint32_t nnodes;
    uint64_t nrefs, refsum;
};

static void problem(struct checker *ck, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void problem(struct checker *ck, const char *fmt, ...)
{
    ck->count++;
    if (ck->kept >= PROBLEMS_KEPT)
        return;
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *m;
    if (asprintf(&m, "%s: %s", ck->st->name, buf) >= 0)
        ck->msgs[ck->kept++] = m;
}

static void flush_problems(struct checker *ck,
                           void (*cb)(const char *msg, void *arg), void *arg)
{
    for (unsigned i = 0; i < ck->kept; i++) {
        if (cb)
            cb(ck->msgs[i], arg);
        free(ck->msgs[i]);
    }
    ck->kept = 0;
}

#define WALK(ck, dbi, what, k, d, ...)                                         \
    do {                                                                       \
        MDB_cursor *c_;                                                        \
        int m_ = mdb_cursor_open((ck)->txn, (dbi), &c_);                       \
        if (m_)                                                                \
            return store_mdb_err((ck)->st, m_, what);                          \
        for (m_ = mdb_cursor_get(c_, &k, &d, MDB_FIRST); m_ == 0;              \
             m_ = mdb_cursor_get(c_, &k, &d, MDB_NEXT)) {                      \
            __VA_ARGS__                                                        \
        }                                                                      \
        mdb_cursor_close(c_);                                                  \
        if (m_ != MDB_NOTFOUND)                                                \
            return store_mdb_err((ck)->st, m_, what);                          \
    } while (0)

/* map: keys well formed, nodes exist (inv. 1, 8); counts references. */
static int check_map(struct checker *ck)
{
    struct store *st = ck->st;
    MDB_val k, d;
    WALK(ck, st->idx.map, "map", k, d, {
        if (k.mv_size != MAP_KEY || d.mv_size != MAP_VAL) {
            problem(ck, "map: malformed entry");
            continue;
        }
        uint64_t b = map_key_block(&k), v = val_u64(&d);
        uint32_t n = map_key_node(&k);
        if (!store_node(st, n) || n >= ck->nnodes)
            problem(ck, "map: block %llu names missing node %u (inv. 8)",
                    (ull)b, n);
        else
            ck->ncount[n]++;
        if (v < STORE_FIRST_SLOT)
            continue;
        if (v >= ck->nslots)
            problem(ck, "map: block %llu node %u: slot %llu beyond the end",
                    (ull)b, n, (ull)v);
        else
            ck->counted[v]++;
    });
    return 0;
}

/* zombie: listed slots have a record of count 0 (store-ckpt.c). */
static int check_zombies(struct checker *ck)
{
    MDB_val k, d;
    WALK(ck, ck->st->idx.zombie, "zombie", k, d, {
        if (k.mv_size != 8)
            continue;
        uint64_t s = get_be64(k.mv_data);
        if (s < ck->nslots)
            ck->flags[s] |= 2;
    });
    return 0;
}

/* refs: counts equal references (inv. 1), hashes listed (inv. 2), slots
 * allocated in the space map (inv. 3). */
static int check_refs(struct checker *ck)
{
    struct store *st = ck->st;
    MDB_val k, d;
    MDB_cursor *hc;
    int mrc = mdb_cursor_open(ck->txn, st->idx.hashes, &hc);
    if (mrc)
        return store_mdb_err(st, mrc, "hashes");
    WALK(ck, st->idx.refs, "refs", k, d, {
        struct ref_rec r;
        if (k.mv_size != 8 || d.mv_size != sizeof r) {
            problem(ck, "refs: malformed entry");
            continue;
        }
        memcpy(&r, d.mv_data, sizeof r);
        uint64_t s = get_be64(k.mv_data);
        ck->nrefs++;
        ck->refsum += r.refcount;
        if (s < STORE_FIRST_SLOT || s >= ck->nslots) {
            problem(ck, "refs: slot %llu out of range", (ull)s);
            continue;
        }
        ck->flags[s] |= 1;
        if (r.refcount != ck->counted[s])
            problem(ck, "slot %llu: refcount %u but %u map references (inv. 1)",
                    (ull)s, r.refcount, ck->counted[s]);
        if (r.refcount == 0 && !(ck->flags[s] & 2))
            problem(ck, "slot %llu: count 0 but not a zombie", (ull)s);
        uint8_t sb[8];
        put_be64(sb, s);
        MDB_val hk = {16, r.hash}, hd = {8, sb};
        if (mdb_cursor_get(hc, &hk, &hd, MDB_GET_BOTH))
            problem(ck, "slot %llu: missing from the hash index (inv. 2)",
                    (ull)s);
        if (!store_space_is_live(st, s))
            problem(ck,
                    "slot %llu: has a chunk but is free in the space map "
                    "(inv. 3)",
                    (ull)s);
    });
    mdb_cursor_close(hc);
    if (ck->refsum != st->refsum)
        problem(ck, "reference total %llu, counter says %llu", (ull)ck->refsum,
                (ull)st->refsum);
    for (uint64_t s = STORE_FIRST_SLOT; s < ck->nslots; s++) {
        if (ck->counted[s] && !(ck->flags[s] & 1))
            problem(ck,
                    "slot %llu: referenced %u times but has no chunk record "
                    "(inv. 1)",
                    (ull)s, ck->counted[s]);
        if ((ck->flags[s] & 2) && !(ck->flags[s] & 1))
            problem(ck, "zombie slot %llu has no chunk record", (ull)s);
    }
    return 0;
}

/* hashes: one entry per chunk, naming it (inv. 2). */
static int check_hashes(struct checker *ck)
{
    struct store *st = ck->st;
    MDB_val k, d;
    uint64_t n = 0;
    WALK(ck, st->idx.hashes, "hashes", k, d, {
        n++;
        if (k.mv_size != 16 || d.mv_size != 8) {
            problem(ck, "hashes: malformed entry");
            continue;
        }
        uint64_t s = get_be64(d.mv_data);
        if (s >= ck->nslots || !(ck->flags[s] & 1))
            problem(ck,
                    "hashes: entry for slot %llu, which has no chunk "
                    "(inv. 2)",
                    (ull)s);
    });
    if (n != ck->nrefs)
        problem(ck, "hash index has %llu entries for %llu chunks (inv. 2)",
                (ull)n, (ull)ck->nrefs);
    return 0;
}

/* space: the persisted bitmaps are exactly the chunks (inv. 3). */
static int check_space(struct checker *ck)
{
    struct store *st = ck->st;
    MDB_val k, d;
    uint8_t *seen = calloc(ck->nslots, 1);
    if (!seen)
        return store_set_err(st, -ENOMEM, "check: out of memory");
    int rc = 0;
    MDB_cursor *c;
    int mrc = mdb_cursor_open(ck->txn, st->idx.space, &c);
    if (mrc) {
        free(seen);
        return store_mdb_err(st, mrc, "space");
    }
    for (mrc = mdb_cursor_get(c, &k, &d, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        if (k.mv_size != 4 || d.mv_size != STORE_SEG_WORDS * 8) {
            problem(ck, "space: malformed entry");
            continue;
        }
        uint64_t base = (uint64_t)get_be32(k.mv_data) << STORE_SEG_SHIFT;
        /* LMDB aligns a value only to 2 bytes: copy the bitmap out. */
        uint64_t w[STORE_SEG_WORDS];
        memcpy(w, d.mv_data, sizeof w);
        for (unsigned i = 0; i < STORE_SEG_SLOTS; i++) {
            uint64_t s = base + i;
            if (!(w[i / 64] >> (i % 64) & 1) || s < STORE_FIRST_SLOT)
                continue;
            if (s >= ck->nslots || !(ck->flags[s] & 1))
                problem(ck,
                        "space: slot %llu marked used without a chunk "
                        "(inv. 3)",
                        (ull)s);
            else
                seen[s] = 1;
        }
    }
    mdb_cursor_close(c);
    if (mrc != MDB_NOTFOUND)
        rc = store_mdb_err(st, mrc, "space");
    for (uint64_t s = STORE_FIRST_SLOT; s < ck->nslots && !rc; s++)
        if ((ck->flags[s] & 1) && !seen[s])
            problem(ck,
                    "space: slot %llu has a chunk but is not marked used "
                    "(inv. 3)",
                    (ull)s);
    free(seen);
    return rc;
}

/* nodes: counts (inv. 8) and parents (inv. 7). */
static void check_nodes(struct checker *ck)
{
    struct store *st = ck->st;
    for (uint32_t i = 1; i < ck->nnodes; i++) {
        struct node *n = store_node(st, i);
        if (!n)
            continue;
        if (n->entries != ck->ncount[i])
            problem(ck, "node %u: %llu entries recorded, %llu found (inv. 8)",
                    i, (ull)n->entries, (ull)ck->ncount[i]);
        if (n->parent && (n->parent >= i || !store_node(st, n->parent)))
            problem(ck, "node %u: bad parent %u (inv. 7)", i, n->parent);
    }
}

/* objects and names agree, each object names its live node (inv. 8). */
static int check_objects(struct checker *ck)
{
    struct store *st = ck->st;
    MDB_val k, d;
    uint64_t nobj = 0;
    WALK(ck, st->idx.objects, "objects", k, d, {
        struct obj_rec o;
        if (k.mv_size != 16 || d.mv_size != sizeof o) {
            problem(ck, "objects: malformed entry");
            continue;
        }
        nobj++;
        memcpy(&o, d.mv_data, sizeof o);
        o.name[STORE_NAME_MAX] = 0;
        struct node *n = store_node(st, o.node);
        if (!n || n->state != NODE_LIVE || memcmp(n->obj, k.mv_data, 16))
            problem(ck, "%s \"%s\": node %u is not its live node (inv. 8)",
                    o.kind == STORE_SNAPSHOT ? "snapshot" : "volume", o.name,
                    o.node);
        MDB_val nk = {strlen(o.name), o.name}, nd;
        if (mdb_get(ck->txn, st->idx.names, &nk, &nd) || nd.mv_size != 16 ||
            memcmp(nd.mv_data, k.mv_data, 16))
            problem(ck, "object \"%s\": name index disagrees (inv. 8)", o.name);
    });
    MDB_stat ms;
    int mrc = mdb_stat(ck->txn, st->idx.names, &ms);
    if (mrc)
        return store_mdb_err(st, mrc, "names");
    if (ms.ms_entries != nobj)
        problem(ck, "%llu names for %llu objects (inv. 8)", (ull)ms.ms_entries,
                (ull)nobj);
    return 0;
}

static int check_index(struct checker *ck)
{
    int rc;
    if ((rc = check_map(ck)) || (rc = check_zombies(ck)) ||
        (rc = check_refs(ck)) || (rc = check_hashes(ck)) ||
        (rc = check_space(ck)) || (rc = check_objects(ck)))
        return rc;
    check_nodes(ck);
    return 0;
}

int store_check(struct store *st,
                void (*progress)(uint64_t done, uint64_t total, void *arg),
                void (*problem_cb)(const char *msg, void *arg), void *arg)
{
    int rc = store_ckpt_run(st, false);
    if (rc)
        return rc;
    struct checker ck = {.st = st};
    /* ckpt_mu: a checkpoint or collector batch changes the nodes' counts
     * and the space map before its commit, so none may run between the
     * read txn and the in-memory state it is compared with (writers that
     * must wait for a checkpoint wait for this phase too) */
    pthread_mutex_lock(&st->ckpt_mu);
    pthread_mutex_lock(&st->tree_mu);
    pthread_rwlock_rdlock(&st->gate);
    ck.nslots = (uint64_t)st->space.nsegs * STORE_SEG_SLOTS;
    ck.nnodes = st->cat.next_node;
    ck.counted = calloc(ck.nslots, sizeof *ck.counted);
    ck.flags = calloc(ck.nslots, 1);
    ck.ncount = calloc(ck.nnodes + 1, sizeof *ck.ncount);
    if (!ck.counted || !ck.flags || !ck.ncount)
        rc = store_set_err(st, -ENOMEM, "check: out of memory");
    if (!rc)
        rc = store_rtxn_get(st, &ck.txn);
    if (!rc) {
        rc = check_index(&ck);
        store_rtxn_put(st, ck.txn);
    }
    pthread_rwlock_unlock(&st->gate);
    pthread_mutex_unlock(&st->tree_mu);
    pthread_mutex_unlock(&st->ckpt_mu);
    free(ck.counted);
    free(ck.flags);
    free(ck.ncount);
    flush_problems(&ck, problem_cb, arg);
    if (rc)
        return rc;
    if (progress)
        progress(0, ck.nrefs, arg);
    /* every chunk's bytes hash to its key, in batches (inv. 2) */
    uint8_t kb[8], buf[STORE_BLOCK], h[16];
    uint64_t next = 0, done = 0;
    for (bool end = false; !end && !rc;) {
        MDB_txn *t;
        if ((rc = store_rtxn_get(st, &t)))
            break;
        MDB_cursor *c;
        MDB_val k, d;
        int mrc = mdb_cursor_open(t, st->idx.refs, &c);
        if (mrc) {
            rc = store_mdb_err(st, mrc, "refs");
            store_rtxn_put(st, t);
            break;
        }
        put_be64(kb, next);
        k = (MDB_val){8, kb};
        mrc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
        for (unsigned i = 0; i < 1024; i++) {
            if (mrc) {
                end = true;
                break;
            }
            struct ref_rec r;
            uint64_t s = get_be64(k.mv_data);
            if (d.mv_size == sizeof r) {
                memcpy(&r, d.mv_data, sizeof r);
                if (store_seg_read(st, s, buf, STORE_BLOCK))
                    problem(&ck, "slot %llu: cannot read the chunk", (ull)s);
                else {
                    store_hash(buf, h);
                    if (memcmp(h, r.hash, 16))
                        problem(&ck,
                                "slot %llu: chunk bytes do not match their "
                                "hash (inv. 2)",
                                (ull)s);
                }
            }
            done++;
            next = s + 1;
            mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT);
        }
        mdb_cursor_close(c);
        store_rtxn_put(st, t);
        flush_problems(&ck, problem_cb, arg);
        if (progress)
            progress(done, ck.nrefs, arg);
    }
    return rc ? rc : ck.count;
}
