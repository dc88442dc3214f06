/* store-gc.c: the garbage collector and the consistency checker.
 *
 * Collector: a pass walks the whole map in batches (STORE_GC_BATCH keys per
 * hold of st->mu, so I/O goes on between batches).  Entry (b, n) is needed
 * iff n is LIVE or some LIVE node below n sees it (a DFS over n's children
 * that stops at children with their own entry for b).  Unneeded entries
 * are deleted and their chunks decref'd.  The verdict is stable across
 * batches because entries are only ever added to LIVE heads and a node
 * never comes back to life.  After a pass, nodes left without entries go:
 * DEAD ones are removed, HIDDEN ones spliced out of the tree.
 *
 * Checker: counts every reference with a temporary array indexed by slot
 * (one hold of the mutex), then rehashes the chunks in batches.
 */
#include "store-int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct group {
    uint32_t *node;
    uint64_t *val;
    size_t n, cap;
};

static int group_push(struct group *g, uint32_t node, uint64_t val)
{
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 64;
        uint32_t *a = realloc(g->node, cap * sizeof *a);
        if (!a)
            return -ENOMEM;
        g->node = a;
        uint64_t *b = realloc(g->val, cap * sizeof *b);
        if (!b)
            return -ENOMEM;
        g->val = b;
        g->cap = cap;
    }
    g->node[g->n] = node;
    g->val[g->n] = val;
    g->n++;
    return 0;
}

static bool group_has(const struct group *g, uint32_t node)
{
    for (size_t i = 0; i < g->n; i++)
        if (g->node[i] == node)
            return true;
    return false;
}

/* Does some LIVE node strictly below n see n's entry of this block? */
static bool seen_below_l(struct store *st, uint32_t n, const struct group *g)
{
    for (uint32_t c = st->nodes[n].first_child; c;
         c = st->nodes[c].next_sibling) {
        if (group_has(g, c))
            continue; /* shadowed by c's own entry */
        if (st->nodes[c].state == NODE_LIVE)
            return true;
        if (seen_below_l(st, c, g))
            return true;
    }
    return false;
}

static bool gc_needed_l(struct store *st)
{
    for (uint32_t i = 1; i < st->nodes_cap; i++)
        if (st->nodes[i].state && st->nodes[i].state != NODE_LIVE)
            return true;
    return false;
}

static bool has_children_l(struct store *st, uint32_t id)
{
    for (uint32_t j = id + 1; j < st->nodes_cap; j++)
        if (st->nodes[j].state && st->nodes[j].parent == id)
            return true;
    return false;
}

/* Remove DEAD nodes without entries or children, splice out HIDDEN ones
 * without entries.  Children first (descending ids). */
static int gc_prune_nodes_l(struct store *st)
{
    int rc = 0;
    bool changed = false;
    for (uint32_t i = st->nodes_cap; i-- > 1 && !rc;) {
        struct node *n = &st->nodes[i];
        if (!n->state || n->state == NODE_LIVE || n->entries)
            continue;
        if (n->state == NODE_DEAD && has_children_l(st, i))
            continue;
        if (n->state == NODE_HIDDEN) {
            for (uint32_t j = i + 1; j < st->nodes_cap && !rc; j++)
                if (st->nodes[j].state && st->nodes[j].parent == i) {
                    st->nodes[j].parent = n->parent;
                    rc = store_node_put_l(st, j);
                }
        }
        n->state = 0;
        if (!rc)
            rc = store_node_put_l(st, i);
        changed = true;
    }
    if (changed)
        store_tree_changed_l(st);
    return rc;
}

/* One collector pass; st->gc_mu held (one pass at a time). */
static int gc_pass_locked(struct store *st)
{
    int rc = 0;
    struct group g = {0};
    uint8_t kb[MAP_KEY];
    pthread_mutex_lock(&st->mu);
    if (!st->gc_wanted || st->rdonly) {
        pthread_mutex_unlock(&st->mu);
        return 0;
    }
    st->gc_wanted = false;
    /* empty HIDDEN nodes out of the way first: shorter DFS below */
    if ((rc = gc_prune_nodes_l(st))) {
        pthread_mutex_unlock(&st->mu);
        return rc;
    }
    uint64_t version0 = st->tree_version;
    uint64_t next_b = 0;
    bool done = !gc_needed_l(st);
    while (!done && !rc && !st->bg_stop) {
        /* deleting entries dirties pages too: on a full index or disk the
         * collector runs in the reserve writes leave (store-space.c) */
        if ((rc = store_room_l(st, 64, 16)))
            break;
        if (st->tree_dirty)
            store_tree_rebuild_l(st);
        MDB_cursor *c;
        int mrc = mdb_cursor_open(st->txn, st->db_map, &c);
        if (mrc) {
            rc = store_mdb_err(st, mrc, "map");
            break;
        }
        unsigned seen = 0;
        while (seen < STORE_GC_BATCH && !rc && store_room_ok_l(st, 16, 16)) {
            map_key(kb, next_b, UINT32_MAX);
            MDB_val k = {MAP_KEY, kb}, d;
            mrc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
            if (mrc) {
                if (mrc != MDB_NOTFOUND)
                    rc = store_mdb_err(st, mrc, "map");
                done = true;
                break;
            }
            uint64_t blk = map_key_block(&k);
            g.n = 0;
            bool all_live = true;
            for (; mrc == 0 && map_key_block(&k) == blk;
                 mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
                uint32_t n = map_key_node(&k);
                struct node *nd = store_node(st, n);
                if (!nd || nd->state != NODE_LIVE)
                    all_live = false;
                if (group_push(&g, n, val_u64(&d))) {
                    rc = store_set_err(st, -ENOMEM, "out of memory");
                    break;
                }
            }
            seen += g.n;
            next_b = blk + 1;
            if (all_live || rc)
                continue;
            for (size_t i = 0; i < g.n && !rc; i++) {
                struct node *nd = store_node(st, g.node[i]);
                if (nd && nd->state == NODE_LIVE)
                    continue;
                if (nd && nd->state == NODE_HIDDEN &&
                    seen_below_l(st, g.node[i], &g))
                    continue;
                map_key(kb, blk, g.node[i]);
                MDB_val dk = {MAP_KEY, kb};
                mrc = mdb_del(st->txn, st->db_map, &dk, NULL);
                if (mrc) {
                    rc = store_mdb_err(st, mrc, "map");
                    break;
                }
                st->dirty = true;
                st->txn_ops++;
                if (nd && nd->entries) {
                    nd->entries--;
                    nd->dirty = 1;
                }
                rc = store_decref_l(st, g.val[i]);
            }
        }
        mdb_cursor_close(c);
        if (st->txn_broken)
            store_abort_l(st);
        if (!rc && store_commit_due_l(st, 1))
            rc = store_commit_l(st);
        if (!done) {
            /* let I/O in between batches */
            pthread_mutex_unlock(&st->mu);
            sched_yield();
            pthread_mutex_lock(&st->mu);
        }
    }
    if (!rc && done) {
        if (st->tree_version != version0)
            st->gc_wanted = true; /* the tree changed under the pass */
        rc = gc_prune_nodes_l(st);
        if (!rc)
            rc = store_commit_l(st);
    } else {
        st->gc_wanted = true;
    }
    pthread_mutex_unlock(&st->mu);
    free(g.node);
    free(g.val);
    return rc;
}

int store_gc_pass(struct store *st)
{
    pthread_mutex_lock(&st->gc_mu);
    int rc = gc_pass_locked(st);
    pthread_mutex_unlock(&st->gc_mu);
    return rc;
}

/* Waits for a background pass in progress, then runs passes until nothing
 * is left to collect (bounded: the tree may keep changing under it). */
int store_gc(struct store *st)
{
    int rc = 0;
    if (st->rdonly)
        return store_set_err(st, -EROFS, "image is open read-only");
    pthread_mutex_lock(&st->gc_mu);
    for (int i = 0; i < 8 && !rc; i++) {
        pthread_mutex_lock(&st->mu);
        bool want = st->gc_wanted;
        pthread_mutex_unlock(&st->mu);
        if (!want)
            break;
        rc = gc_pass_locked(st);
    }
    /* then a checkpoint: what the journal holds goes into the index, and
     * the slots freed become reusable */
    pthread_mutex_lock(&st->mu);
    if (!rc)
        rc = store_commit_l(st);
    pthread_mutex_unlock(&st->mu);
    pthread_mutex_unlock(&st->gc_mu);
    return rc;
}

/* ---- check ---- */

#define PROBLEMS_KEPT 100

struct checker {
    struct store *st;
    char *msgs[PROBLEMS_KEPT];
    unsigned kept;
    int count;
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

typedef unsigned long long ull;

static int read_slot_for_check(struct store *st, uint64_t s, void *buf)
{
    ssize_t r = pread(st->chunk_fd, buf, STORE_BLOCK, (off_t)(s * STORE_BLOCK));
    return r == STORE_BLOCK ? 0 : -EIO;
}

/* Phase 1, under the mutex: map, refs, hashes, free, nodes, objects. */
static int check_index_l(struct store *st, struct checker *ck, uint64_t *nrefs)
{
    uint64_t nslots = st->next_slot;
    uint32_t *counted = calloc(nslots, sizeof *counted);
    uint8_t *flags = calloc(nslots, 1); /* 1: has refs, 2: free */
    uint64_t *ncount = calloc(st->nodes_cap, sizeof *ncount);
    MDB_cursor *c = NULL;
    MDB_val k, d;
    int rc = 0, mrc;
    if (!counted || !flags || !ncount) {
        rc = store_set_err(st, -ENOMEM, "check: out of memory");
        goto out;
    }
    /* map */
    if ((mrc = mdb_cursor_open(st->txn, st->db_map, &c)))
        goto mdb_fail;
    for (mrc = mdb_cursor_get(c, &k, &d, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        if (k.mv_size != MAP_KEY || d.mv_size != MAP_VAL) {
            problem(ck, "map: malformed entry");
            continue;
        }
        uint64_t b = map_key_block(&k), v = val_u64(&d);
        uint32_t n = map_key_node(&k);
        if (!store_node(st, n))
            problem(ck, "map: block %llu names missing node %u", (ull)b, n);
        else
            ncount[n]++;
        if (v < STORE_FIRST_SLOT)
            continue;
        if (v >= nslots)
            problem(ck, "map: block %llu node %u: slot %llu beyond the end",
                    (ull)b, n, (ull)v);
        else
            counted[v]++;
    }
    mdb_cursor_close(c);
    c = NULL;
    /* refs */
    uint64_t refsum = 0;
    *nrefs = 0;
    if ((mrc = mdb_cursor_open(st->txn, st->db_refs, &c)))
        goto mdb_fail;
    for (mrc = mdb_cursor_get(c, &k, &d, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        struct ref_rec r;
        if (k.mv_size != 8 || d.mv_size != sizeof r) {
            problem(ck, "refs: malformed entry");
            continue;
        }
        memcpy(&r, d.mv_data, sizeof r);
        uint64_t s = get_be64(k.mv_data);
        (*nrefs)++;
        refsum += r.refcount;
        if (s < STORE_FIRST_SLOT || s >= nslots) {
            problem(ck, "refs: slot %llu out of range", (ull)s);
            continue;
        }
        flags[s] |= 1;
        if (r.refcount != counted[s])
            problem(ck, "slot %llu: refcount %u but %u map references", (ull)s,
                    r.refcount, counted[s]);
        if (!store_hash_has_l(st, r.hash, s))
            problem(ck, "slot %llu: missing from the hash index", (ull)s);
    }
    mdb_cursor_close(c);
    c = NULL;
    if (refsum != st->refsum)
        problem(ck, "reference total %llu, counter says %llu", (ull)refsum,
                (ull)st->refsum);
    for (uint64_t s = STORE_FIRST_SLOT; s < nslots; s++)
        if (counted[s] && !(flags[s] & 1))
            problem(ck,
                    "slot %llu: referenced %u times but has no chunk "
                    "record",
                    (ull)s, counted[s]);
    /* hashes */
    MDB_stat ms;
    MDB_stat ms2;
    if ((mrc = mdb_stat(st->txn, st->db_hashes, &ms)) ||
        (mrc = mdb_stat(st->txn, st->db_recent, &ms2)))
        goto mdb_fail;
    /* staged deletions: each one an entry of `hashes` */
    uint64_t ndead = 0;
    if (st->dead_ok) {
        MDB_cursor *hc;
        if ((mrc = mdb_cursor_open(st->txn, st->db_dead, &c)))
            goto mdb_fail;
        if ((mrc = mdb_cursor_open(st->txn, st->db_hashes, &hc)))
            goto mdb_fail;
        for (mrc = mdb_cursor_get(c, &k, &d, MDB_FIRST); mrc == 0;
             mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
            ndead++;
            if (k.mv_size != 24) {
                problem(ck, "dead: malformed entry");
                continue;
            }
            MDB_val hk = {16, k.mv_data}, hd = {8, (uint8_t *)k.mv_data + 16};
            if (mdb_cursor_get(hc, &hk, &hd, MDB_GET_BOTH))
                problem(ck, "dead: slot %llu not in the hash index",
                        (ull)get_be64(hd.mv_data));
        }
        mdb_cursor_close(hc);
        mdb_cursor_close(c);
        c = NULL;
        if (mrc != MDB_NOTFOUND)
            goto mdb_fail;
    }
    if (ndead != st->dead_n)
        problem(ck, "%llu staged deletions, counter says %llu", (ull)ndead,
                (ull)st->dead_n);
    if (ms.ms_entries - ndead + ms2.ms_entries != *nrefs)
        problem(ck,
                "hash index has %llu - %llu deleted + %llu staged entries "
                "for %llu chunks",
                (ull)ms.ms_entries, (ull)ndead, (ull)ms2.ms_entries,
                (ull)*nrefs);
    if (ms2.ms_entries != st->hp_used)
        problem(ck, "%llu staged hashes, %u in memory", (ull)ms2.ms_entries,
                st->hp_used);
    /* free */
    if ((mrc = mdb_cursor_open(st->txn, st->db_free, &c)))
        goto mdb_fail;
    for (mrc = mdb_cursor_get(c, &k, &d, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        if (k.mv_size != 16) {
            problem(ck, "free: malformed entry");
            continue;
        }
        uint64_t gen = get_be64(k.mv_data);
        uint64_t s = get_be64((uint8_t *)k.mv_data + 8);
        if (s < STORE_FIRST_SLOT || s >= nslots) {
            problem(ck, "free: slot %llu out of range", (ull)s);
            continue;
        }
        if (gen > st->gen)
            problem(ck, "free: slot %llu from future generation %llu", (ull)s,
                    (ull)gen);
        if (flags[s] & 2)
            problem(ck, "free: slot %llu listed twice", (ull)s);
        if ((flags[s] & 1) || counted[s])
            problem(ck, "free: slot %llu is in use", (ull)s);
        flags[s] |= 2;
    }
    mdb_cursor_close(c);
    c = NULL;
    for (uint64_t s = STORE_FIRST_SLOT; s < nslots; s++)
        if (!flags[s] && !counted[s])
            problem(ck, "slot %llu is neither in use nor free (leaked)",
                    (ull)s);
    /* nodes */
    for (uint32_t i = 1; i < st->nodes_cap; i++) {
        struct node *n = &st->nodes[i];
        if (!n->state)
            continue;
        if (n->entries != ncount[i])
            problem(ck, "node %u: %llu entries recorded, %llu found", i,
                    (ull)n->entries, (ull)ncount[i]);
        if (n->parent && (n->parent >= i || !store_node(st, n->parent)))
            problem(ck, "node %u: bad parent %u", i, n->parent);
    }
    /* objects and names */
    if ((mrc = mdb_cursor_open(st->txn, st->db_objects, &c)))
        goto mdb_fail;
    uint64_t nobj = 0;
    for (mrc = mdb_cursor_get(c, &k, &d, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
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
            problem(ck, "%s \"%s\": node %u is not its live node",
                    o.kind == STORE_SNAPSHOT ? "snapshot" : "volume", o.name,
                    o.node);
        MDB_val nk = {strlen(o.name), o.name}, nd;
        if (mdb_get(st->txn, st->db_names, &nk, &nd) || nd.mv_size != 16 ||
            memcmp(nd.mv_data, k.mv_data, 16))
            problem(ck, "object \"%s\": name index disagrees", o.name);
    }
    mdb_cursor_close(c);
    c = NULL;
    if ((mrc = mdb_stat(st->txn, st->db_names, &ms)))
        goto mdb_fail;
    if (ms.ms_entries != nobj)
        problem(ck, "%llu names for %llu objects", (ull)ms.ms_entries,
                (ull)nobj);
    goto out;
mdb_fail:
    rc = store_mdb_err(st, mrc, "check");
out:
    if (c)
        mdb_cursor_close(c);
    free(counted);
    free(flags);
    free(ncount);
    return rc;
}

int store_check(struct store *st,
                void (*progress)(uint64_t done, uint64_t total, void *arg),
                void (*problem_cb)(const char *msg, void *arg), void *arg)
{
    struct checker ck = {.st = st};
    uint64_t nrefs = 0, done = 0;
    pthread_mutex_lock(&st->mu);
    int rc = check_index_l(st, &ck, &nrefs);
    pthread_mutex_unlock(&st->mu);
    flush_problems(&ck, problem_cb, arg);
    if (rc)
        return rc;
    if (progress)
        progress(0, nrefs, arg);
    /* phase 2: every chunk's bytes hash to its key, in batches */
    uint8_t kb[8], buf[STORE_BLOCK], h[16];
    uint64_t next = 0;
    for (bool end = false; !end && !rc;) {
        pthread_mutex_lock(&st->mu);
        MDB_cursor *c;
        MDB_val k, d;
        int mrc = mdb_cursor_open(st->txn, st->db_refs, &c);
        if (mrc) {
            rc = store_mdb_err(st, mrc, "refs");
            pthread_mutex_unlock(&st->mu);
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
                if (read_slot_for_check(st, s, buf))
                    problem(&ck, "slot %llu: cannot read the chunk", (ull)s);
                else {
                    store_hash(buf, h);
                    if (memcmp(h, r.hash, 16))
                        problem(&ck,
                                "slot %llu: chunk bytes do not match their "
                                "hash",
                                (ull)s);
                }
            }
            done++;
            next = s + 1;
            mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT);
        }
        mdb_cursor_close(c);
        pthread_mutex_unlock(&st->mu);
        flush_problems(&ck, problem_cb, arg);
        if (progress)
            progress(done, nrefs, arg);
    }
    return rc ? rc : ck.count;
}
