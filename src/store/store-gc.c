/* store-gc.c: the collector: which map entries no live node needs any more,
 * and which nodes can leave the tree.
 *
 * An entry (b, n) is needed iff n is LIVE or some LIVE node below n sees it
 * (a DFS over n's children that stops at children with their own entry for
 * b).  Node states are those of the last checkpoint (ck_state): a node
 * deleted since then keeps its entries until the next one, which is what
 * a crash before that checkpoint needs; a node newer than it counts as
 * LIVE.  The verdict is stable across batches because entries are only
 * ever added to LIVE heads and a node never comes back to life
 * (invariant 6).  The checkpoint thread calls store_gc_scan batch by batch
 * (store-ckpt.c deletes what it returns, in txns of their own); after a
 * pass, nodes left without entries go: DEAD ones are removed, HIDDEN ones
 * spliced out of the tree (store_gc_prune, under the gate held exclusive).
 */
#include "store-int.h"

#include <errno.h>
#include <stdlib.h>

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

/* The state the collector judges by. */
static int gc_state(struct store *st, uint32_t id)
{
    struct node *n = store_node(st, id);
    if (!n)
        return 0;
    return n->ck_state ? n->ck_state : NODE_LIVE;
}

/* Does some LIVE node strictly below n see n's entry of this block? */
static bool seen_below(struct store *st, uint32_t n, const struct group *g)
{
    struct node *nd = store_node(st, n);
    for (uint32_t c = nd ? nd->first_child : 0; c;
         c = store_node(st, c)->next_sibling) {
        if (group_has(g, c))
            continue; /* shadowed by c's own entry */
        if (gc_state(st, c) == NODE_LIVE)
            return true;
        if (seen_below(st, c, g))
            return true;
    }
    return false;
}

bool store_gc_needed(struct store *st)
{
    for (uint32_t i = 1; i < st->cat.next_node; i++) {
        struct node *n = store_node(st, i);
        if (n && n->ck_state && n->ck_state != NODE_LIVE)
            return true;
    }
    return false;
}

/* Up to batch map keys from block *next on: the entries nobody
 * needs go to *drops (malloc'ed, the caller frees); *done at the map's end. */
int store_gc_scan(struct store *st, MDB_txn *txn, uint64_t *next,
                  unsigned batch, struct gc_drop **drops, size_t *ndrops,
                  bool *done)
{
    struct group g = {0};
    struct gc_drop *d = NULL;
    size_t nd = 0, cap = 0;
    uint8_t kb[MAP_KEY];
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, st->idx.map, &c);
    if (rc)
        return store_mdb_err(st, rc, "map");
    *done = false;
    unsigned seen = 0;
    rc = 0;
    while (seen < batch && !rc) {
        map_key(kb, *next, UINT32_MAX);
        MDB_val k = {MAP_KEY, kb}, v;
        int mrc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        if (mrc) {
            if (mrc != MDB_NOTFOUND)
                rc = store_mdb_err(st, mrc, "map");
            *done = true;
            break;
        }
        uint64_t blk = map_key_block(&k);
        g.n = 0;
        bool all_live = true;
        for (; mrc == 0 && map_key_block(&k) == blk;
             mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            uint32_t n = map_key_node(&k);
            if (gc_state(st, n) != NODE_LIVE)
                all_live = false;
            if (group_push(&g, n, val_u64(&v))) {
                rc = store_set_err(st, -ENOMEM, "out of memory");
                break;
            }
        }
        if (mrc && mrc != MDB_NOTFOUND)
            rc = store_mdb_err(st, mrc, "map");
        seen += (unsigned)g.n;
        *next = blk + 1;
        if (all_live || rc)
            continue;
        for (size_t i = 0; i < g.n && !rc; i++) {
            int s = gc_state(st, g.node[i]);
            if (s == NODE_LIVE)
                continue;
            if (s == NODE_HIDDEN && seen_below(st, g.node[i], &g))
                continue;
            if (nd == cap) {
                size_t nc = cap ? 2 * cap : 256;
                struct gc_drop *a = realloc(d, nc * sizeof *a);
                if (!a) {
                    rc = store_set_err(st, -ENOMEM, "out of memory");
                    break;
                }
                d = a;
                cap = nc;
            }
            d[nd++] = (struct gc_drop){blk, g.node[i], g.val[i]};
        }
    }
    mdb_cursor_close(c);
    free(g.node);
    free(g.val);
    if (rc) {
        free(d);
        return rc;
    }
    *drops = d;
    *ndrops = nd;
    return 0;
}

/* Remove DEAD nodes without entries or children and splice out HIDDEN ones
 * without entries (children first); the gate is held exclusive.  The
 * records change with the next checkpoint.  true if anything changed. */
bool store_gc_prune(struct store *st)
{
    bool changed = false;
    for (uint32_t i = st->cat.next_node; i-- > 1;) {
        struct node *n = store_node(st, i);
        if (!n || n->entries || !n->ck_state || n->ck_state == NODE_LIVE ||
            n->state == NODE_LIVE)
            continue;
        if (n->ck_state == NODE_DEAD && n->first_child)
            continue;
        if (n->ck_state == NODE_HIDDEN)
            while (n->first_child)
                store_cat_set_parent(st, n->first_child, n->parent);
        store_cat_remove_node(st, i);
        changed = true;
    }
    return changed;
}
