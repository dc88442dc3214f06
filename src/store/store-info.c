/* store-info.c: what an image holds: store_info's counts and store_diff's
 * changed blocks between two objects.  Both start with a checkpoint, so
 * that they read the index alone (operator commands: a checkpoint costs a
 * sync, not a wait of the data path), and read it through a read txn.
 */
#include "store-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

int store_info(struct store *st, struct store_info *out)
{
    memset(out, 0, sizeof *out);
    int rc = store_ckpt_run(st, false);
    if (rc)
        return rc;
    pthread_mutex_lock(&st->tree_mu);
    for (uint32_t i = 0; i < st->cat.nobjs; i++) {
        const struct cobj *o = &st->cat.objs[i];
        if (o->deleted)
            continue;
        if (o->rec.kind == STORE_VOLUME)
            out->volumes++;
        else
            out->snapshots++;
        if (!memcmp(o->uuid, st->cat.def, 16))
            out->size = o->rec.size;
    }
    for (uint32_t i = 1; i < st->cat.next_node; i++) {
        struct node *n = store_node(st, i);
        if (n && n->state == NODE_DEAD) /* HIDDEN: mostly needed */
            out->gc_pending += n->entries;
    }
    pthread_mutex_unlock(&st->tree_mu);
    memcpy(out->uuid, st->uuid, 16);
    out->format_version = st->version;
    out->bad_reads = __atomic_load_n(&st->bad_reads, __ATOMIC_RELAXED);
    MDB_txn *rt;
    if ((rc = store_rtxn_get(st, &rt)))
        return rc;
    MDB_stat ms;
    if (mdb_stat(rt, st->idx.refs, &ms) == 0)
        out->chunks = ms.ms_entries;
    store_rtxn_put(st, rt);
    out->chunk_bytes = out->chunks * STORE_BLOCK;
    out->referenced_bytes = st->refsum * STORE_BLOCK;
    pthread_mutex_lock(&st->space.mu);
    uint64_t slots = (uint64_t)st->space.nsegs * STORE_SEG_SLOTS, logsegs = 0;
    for (uint32_t i = 0; i < st->space.nsegs; i++) {
        const struct seg_info *g = &st->space.segs[i];
        logsegs += g->state == SEG_LOG;
        if (g->holed && !g->nlive)
            out->punched_bytes += (uint64_t)STORE_SEG_SLOTS * STORE_BLOCK;
    }
    out->return_ms = st->space.return_ms;
    out->free_slots = slots - st->space.nlive - logsegs * STORE_SEG_SLOTS;
    pthread_mutex_unlock(&st->space.mu);
    int fds[2] = {st->lock_fd, st->chunk_fd};
    for (int i = 0; i < 2; i++) {
        struct stat sb;
        if (fds[i] < 0 || fstat(fds[i], &sb))
            continue;
        uint64_t alloc = (uint64_t)sb.st_blocks * 512, size = sb.st_size;
        out->file_bytes += alloc < size ? alloc : size;
        out->reserved_bytes += alloc > size ? alloc - size : 0;
    }
    out->journal_bytes = logsegs * STORE_SEG_SLOTS * STORE_BLOCK;
    out->filter_bytes = st->bloom.bits / 8;
    out->filter_layers = st->bloom.n;
    out->hashes_staged = st->active->nents;
    out->index_room = st->idx.room * st->idx.psize;
    out->index_need = (store_room_estimate(st, st->active) +
                       store_room_estimate(st, st->frozen)) *
                      st->idx.psize;
    MDB_envinfo ei;
    out->map_size = st->idx.map_size;
    if (mdb_env_info(st->idx.env, &ei) == 0)
        out->map_used = (uint64_t)(ei.me_last_pgno + 1) * st->idx.psize;
    return 0;
}

/* ---- diff ---- */

struct run {
    uint64_t off, len;
};

int store_diff(struct store *st, const char *from, const char *to,
               int (*cb)(uint64_t offset, uint64_t length, void *arg),
               void *arg)
{
    struct cobj *a, *b;
    int rc = store_ckpt_run(st, false);
    if (rc)
        return rc;
    pthread_mutex_lock(&st->tree_mu);
    if ((rc = store_resolve_name(st, from, &a)) ||
        (rc = store_resolve_name(st, to, &b))) {
        pthread_mutex_unlock(&st->tree_mu);
        return rc;
    }
    uint8_t fu[16], tu[16];
    memcpy(fu, a->uuid, 16);
    memcpy(tu, b->uuid, 16);
    uint64_t limit =
        (a->rec.size > b->rec.size ? a->rec.size : b->rec.size) / STORE_BLOCK;
    pthread_mutex_unlock(&st->tree_mu);
    uint64_t next_b = 0;
    struct run pend = {0, 0};
    uint8_t kb[MAP_KEY];
    bool done = false;
    while (!done) {
        size_t cap = 256, nr = 0;
        struct run *runs = malloc(cap * sizeof *runs);
        if (!runs)
            return store_set_err(st, -ENOMEM, "out of memory");
        /* objects may change between batches: nodes resolved each time;
         * what a checkpoint has not reached is not compared (a diff is of
         * the index as of the checkpoint above) */
        pthread_rwlock_rdlock(&st->gate);
        struct cobj *x = store_cat_by_uuid(st, fu),
                    *y = store_cat_by_uuid(st, tu);
        if (!x || !y) {
            pthread_rwlock_unlock(&st->gate);
            free(runs);
            return store_set_err(
                st, -ENOENT, "diff: \"%s\" or \"%s\" was deleted", from, to);
        }
        uint32_t na = x->rec.node, nb = y->rec.node;
        MDB_txn *rt;
        MDB_cursor *c;
        MDB_val k, d;
        if ((rc = store_rtxn_get(st, &rt))) {
            pthread_rwlock_unlock(&st->gate);
            free(runs);
            return rc;
        }
        int mrc = mdb_cursor_open(rt, st->idx.map, &c);
        if (mrc) {
            rc = store_mdb_err(st, mrc, "map");
            store_rtxn_put(st, rt);
            pthread_rwlock_unlock(&st->gate);
            free(runs);
            return rc;
        }
        map_key(kb, next_b, UINT32_MAX);
        k = (MDB_val){MAP_KEY, kb};
        mrc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
        unsigned seen = 0;
        while (!rc) {
            if (mrc || seen >= STORE_GC_BATCH) {
                done = mrc != 0;
                break;
            }
            uint64_t blk = map_key_block(&k);
            if (blk >= limit) {
                done = true;
                break;
            }
            uint64_t va = 0, vb = 0;
            bool fa = false, fb = false;
            while (mrc == 0 && map_key_block(&k) == blk) {
                uint32_t n = map_key_node(&k);
                if (!fa && store_is_anc(st, na, n)) {
                    fa = true;
                    va = val_u64(&d);
                }
                if (!fb && store_is_anc(st, nb, n)) {
                    fb = true;
                    vb = val_u64(&d);
                }
                seen++;
                mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT);
            }
            next_b = blk + 1;
            if (val_slot(va) < STORE_FIRST_SLOT)
                va = 0;
            if (val_slot(vb) < STORE_FIRST_SLOT)
                vb = 0;
            if (va == vb)
                continue;
            uint64_t off = blk * STORE_BLOCK;
            if (nr && runs[nr - 1].off + runs[nr - 1].len == off) {
                runs[nr - 1].len += STORE_BLOCK;
                continue;
            }
            if (nr == cap) {
                struct run *r2 = realloc(runs, (cap *= 2) * sizeof *runs);
                if (!r2) {
                    rc = store_set_err(st, -ENOMEM, "out of memory");
                    break;
                }
                runs = r2;
            }
            runs[nr++] = (struct run){off, STORE_BLOCK};
        }
        mdb_cursor_close(c);
        store_rtxn_put(st, rt);
        pthread_rwlock_unlock(&st->gate);
        for (size_t i = 0; i < nr && !rc; i++) {
            if (pend.len && pend.off + pend.len == runs[i].off) {
                pend.len += runs[i].len;
                continue;
            }
            if (pend.len)
                rc = cb(pend.off, pend.len, arg);
            pend = runs[i];
        }
        free(runs);
        if (rc)
            return rc;
    }
    if (pend.len)
        rc = cb(pend.off, pend.len, arg);
    return rc;
}
