/* store-io.c: block I/O on a volume or snapshot: read, write, zero,
 * extents and flush, and the handles they take.
 *
 * A block of node y reads from the nearest ancestor-or-self of y that has
 * an entry for it, looked for in the active generation, the frozen one,
 * then the index (map keys sort by block, then node id descending, so that
 * is one MDB_SET_RANGE and usually no step further); an entry of a
 * generation beats the index's for the same node.  A write never looks at
 * the old entry (the checkpoint does): it hashes each block outside any
 * lock, finds an identical chunk (verified byte for byte, store-hash.c) or
 * writes the block to a fresh slot, and then, in one step under its shard
 * locks and the log's lock, puts the entries in the active generation and
 * appends them to the log in the same order (invariant 10).  Chunk bytes
 * are in their slot before any entry names it, and a slot is never written
 * while anything names it (invariants 4, 5).
 *
 * Every operation holds st->gate shared from start to end: a tree
 * operation or a checkpoint switch (exclusive) happens between operations,
 * never inside one, which is what keeps a snapshot from taking half a
 * write and a freed slot from being reused under a read.
 */
#include "store-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- handles ---- */

int store_vol_open(struct store *st, const char *name_or_uuid,
                   struct store_vol **out)
{
    *out = NULL;
    struct store_vol *v = calloc(1, sizeof *v);
    if (!v)
        return store_set_err(st, -ENOMEM, "out of memory");
    pthread_mutex_lock(&st->tree_mu);
    struct cobj *o;
    int rc = store_resolve_name(st, name_or_uuid, &o);
    if (rc) {
        pthread_mutex_unlock(&st->tree_mu);
        free(v);
        return rc;
    }
    v->st = st;
    memcpy(v->uuid, o->uuid, 16);
    v->node = o->rec.node;
    v->size = o->rec.size;
    v->rdonly = o->rec.kind == STORE_SNAPSHOT || st->rdonly;
    memcpy(v->name, o->rec.name, sizeof v->name);
    v->next = st->vols;
    st->vols = v;
    pthread_mutex_unlock(&st->tree_mu);
    *out = v;
    return 0;
}

void store_vol_close(struct store_vol *v)
{
    if (!v)
        return;
    struct store *st = v->st;
    pthread_mutex_lock(&st->tree_mu);
    for (struct store_vol **p = &st->vols; *p; p = &(*p)->next)
        if (*p == v) {
            *p = v->next;
            break;
        }
    pthread_mutex_unlock(&st->tree_mu);
    free(v);
}

uint64_t store_vol_size(const struct store_vol *v)
{
    return v->size;
}

int store_vol_readonly(const struct store_vol *v)
{
    return v->rdonly;
}

void store_vol_name(const struct store_vol *v, char buf[STORE_NAME_MAX + 1])
{
    pthread_mutex_lock(&v->st->tree_mu);
    memcpy(buf, v->name, STORE_NAME_MAX + 1);
    pthread_mutex_unlock(&v->st->tree_mu);
}

/* ---- resolving ---- */

/* What block b reads as from node y: 0 hole, 1 allocated zero, else a
 * slot.  c: a map cursor of a read txn (or of the checkpoint's txn), NULL
 * to consult the generations only.  shard_locked: the caller holds b's
 * shard lock.  *from_gen: the answer came from a generation (no index
 * entry needed). */
static int resolve(struct store *st, MDB_cursor *c, uint64_t b, uint32_t y,
                   bool shard_locked, uint64_t *val, bool *definitive)
{
    unsigned sh = store_shard_of(st, b);
    struct mt_cand best = {0}, fb;
    bool have;
    if (!shard_locked)
        pthread_mutex_lock(&st->shard[sh].mu);
    have = store_mt_best(st, st->active, sh, b, y, &best);
    if (!shard_locked)
        pthread_mutex_unlock(&st->shard[sh].mu);
    if (st->frozen && store_mt_best(st, st->frozen, sh, b, y, &fb) &&
        (!have || fb.node > best.node)) {
        best = fb;
        have = true;
    }
    *definitive = have && best.node == y;
    if (*definitive || !c) {
        *val = have ? best.val : 0;
        return 0;
    }
    uint8_t kb[MAP_KEY];
    map_key(kb, b, y);
    MDB_val k = {MAP_KEY, kb}, d;
    int rc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    for (; rc == 0 && map_key_block(&k) == b;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        uint32_t n = map_key_node(&k);
        if (have && n <= best.node)
            break; /* the generation's entry is nearer (or newer) */
        if (store_is_anc(st, y, n)) {
            *val = val_u64(&d);
            return 0;
        }
    }
    if (rc && rc != MDB_NOTFOUND)
        return store_mdb_err(st, rc, "map");
    *val = have ? best.val : 0;
    return 0;
}

/* A map cursor of a pooled read txn, opened on first need. */
struct reader {
    MDB_txn *txn;
    MDB_cursor *c;
};

static int reader_cursor(struct store *st, struct reader *r)
{
    if (r->c)
        return 0;
    int rc = store_rtxn_get(st, &r->txn);
    if (rc)
        return rc;
    if ((rc = mdb_cursor_open(r->txn, st->idx.map, &r->c))) {
        store_rtxn_put(st, r->txn);
        r->txn = NULL;
        return store_mdb_err(st, rc, "map");
    }
    return 0;
}

static void reader_done(struct store *st, struct reader *r)
{
    if (r->c)
        mdb_cursor_close(r->c);
    if (r->txn)
        store_rtxn_put(st, r->txn);
    r->c = NULL;
    r->txn = NULL;
}

static int resolve_r(struct store *st, struct reader *r, uint64_t b, uint32_t y,
                     bool shard_locked, uint64_t *val)
{
    bool def;
    int rc = resolve(st, NULL, b, y, shard_locked, val, &def);
    if (rc || def)
        return rc;
    if ((rc = reader_cursor(st, r)))
        return rc;
    return resolve(st, r->c, b, y, shard_locked, val, &def);
}

/* For the checkpoint and the checker: resolve through cursor c. */
int store_resolve(struct store *st, MDB_cursor *c, uint64_t b, uint32_t y,
                  uint64_t *val)
{
    bool def;
    return resolve(st, c, b, y, false, val, &def);
}

static int check_range(struct store_vol *v, uint64_t off, uint64_t len,
                       bool write)
{
    struct store *st = v->st;
    if (write && v->rdonly)
        return store_set_err(st, -EROFS, "\"%s\" is read-only", v->name);
    if (off > v->size || len > v->size - off)
        return store_set_err(
            st, -EINVAL, "\"%s\": range %llu+%llu is past the end (%llu)",
            v->name, (unsigned long long)off, (unsigned long long)len,
            (unsigned long long)v->size);
    return store_failed(st);
}

/* A chunk read back that does not hash to the tag its map entry expects:
 * logged (rate-limited: a client can cause many), counted, and -EIO, so
 * that a client never gets wrong bytes. */
static int bad_chunk(struct store *st, const struct store_vol *v, uint64_t b,
                     uint64_t val, uint32_t got)
{
    uint64_t n = __atomic_add_fetch(&st->bad_reads, 1, __ATOMIC_RELAXED);
    if (n <= 16 || (n & (n - 1)) == 0)
        fprintf(stderr,
                "%s: volume \"%s\" offset %llu: chunk slot %llu does not "
                "match its map entry (tag %04x, read %04x): damaged chunk "
                "file or index, I/O error returned (%llu such reads so "
                "far; run busesnap check)\n",
                st->path, v ? v->name : "?",
                (unsigned long long)b * STORE_BLOCK,
                (unsigned long long)val_slot(val), val_chunk_tag(val, b), got,
                (unsigned long long)n);
    return store_set_err(st, -EIO,
                         "\"%s\" offset %llu: chunk slot %llu is damaged",
                         v ? v->name : "?", (unsigned long long)b * STORE_BLOCK,
                         (unsigned long long)val_slot(val));
}

/* Check n blocks read into buf against their map values vals (block b0
 * onwards): 0, or -EIO for the first that does not match. */
static int verify_run(struct store *st, const struct store_vol *v, uint64_t b0,
                      const uint64_t *vals, const uint8_t *buf, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        uint8_t h[16];
        store_hash(buf + i * STORE_BLOCK, h);
        if (store_hash_tag(h) != val_chunk_tag(vals[i], b0 + i))
            return bad_chunk(st, v, b0 + i, vals[i], store_hash_tag(h));
    }
    return 0;
}

/* Bytes of block b as node y reads it, verified. */
static int read_block(struct store *st, const struct store_vol *v,
                      struct reader *r, uint32_t y, uint64_t b,
                      bool shard_locked, void *buf)
{
    uint64_t val;
    int rc = resolve_r(st, r, b, y, shard_locked, &val);
    if (rc)
        return rc;
    if (val_slot(val) < STORE_FIRST_SLOT) {
        memset(buf, 0, STORE_BLOCK);
        return 0;
    }
    if ((rc = store_seg_read(st, val_slot(val), buf, STORE_BLOCK)))
        return rc;
    return verify_run(st, v, b, &val, buf, 1);
}

/* The longest run of consecutive slots read with one pread. */
#define RUN_MAX 256u

/* Read n (may be 0) blocks from slot onwards into dst, blocks b0.. whose
 * map values are vals, and verify them. */
static int read_run(struct store *st, const struct store_vol *v, uint64_t slot,
                    uint8_t *dst, uint64_t n, uint64_t b0, const uint64_t *vals)
{
    if (!n)
        return 0;
    int rc = store_seg_read(st, slot, dst, n * STORE_BLOCK);
    return rc ? rc : verify_run(st, v, b0, vals, dst, n);
}

int store_read(struct store_vol *v, void *buf, uint64_t off, uint32_t len)
{
    struct store *st = v->st;
    int rc = check_range(v, off, len, false);
    if (rc || len == 0)
        return rc;
    struct reader r = {0};
    uint8_t tmp[STORE_BLOCK];
    uint64_t vals[RUN_MAX];
    uint8_t *out = buf;
    pthread_rwlock_rdlock(&st->gate);
    uint32_t y = v->node;
    uint64_t b = off / STORE_BLOCK, end = off + len;
    /* a run of blocks whose slots follow each other: one read, then each
     * block checked against its map value */
    uint64_t run_slot = 0, run_n = 0, run_b = 0;
    uint8_t *run_dst = NULL;
    for (uint64_t pos = off; pos < end && !rc; b++) {
        uint64_t bs = b * STORE_BLOCK;
        uint64_t s = pos - bs, n = STORE_BLOCK - s;
        if (n > end - pos)
            n = end - pos;
        if (s || n < STORE_BLOCK) { /* a partial block */
            if ((rc = read_run(st, v, run_slot, run_dst, run_n, run_b, vals)))
                break;
            run_n = 0;
            if ((rc = read_block(st, v, &r, y, b, false, tmp)))
                break;
            memcpy(out + (pos - off), tmp + s, n);
            pos += n;
            continue;
        }
        uint64_t val;
        if ((rc = resolve_r(st, &r, b, y, false, &val)))
            break;
        uint64_t slot = val_slot(val);
        if (slot >= STORE_FIRST_SLOT && run_n && slot == run_slot + run_n &&
            run_n < RUN_MAX) {
            vals[run_n++] = val;
        } else {
            if ((rc = read_run(st, v, run_slot, run_dst, run_n, run_b, vals)))
                break;
            run_n = 0;
            if (slot >= STORE_FIRST_SLOT) {
                run_slot = slot;
                run_b = b;
                vals[0] = val;
                run_n = 1;
                run_dst = out + (pos - off);
            } else {
                memset(out + (pos - off), 0, STORE_BLOCK);
            }
        }
        pos += STORE_BLOCK;
    }
    if (!rc)
        rc = read_run(st, v, run_slot, run_dst, run_n, run_b, vals);
    reader_done(st, &r);
    pthread_rwlock_unlock(&st->gate);
    if (rc == -EIO)
        memset(buf, 0, len); /* never hand back bytes that did not check */
    return rc;
}

/* ---- writing ---- */

/* What one block of a write becomes. */
enum { BW_ZERO = 1, BW_NEW = 2, BW_REF = 3 };
struct bw {
    uint8_t kind;
    uint8_t hash[16];
    uint64_t slot;
    const uint8_t *data;
};

/* Find a chunk with data's bytes (hash h): a slot recorded as referenced
 * by the active generation (the caller drops the reference if it does not
 * use it), or 0.  The gate is held shared. */
static int dedup_find(struct store *st, struct reader *r, const uint8_t h[16],
                      const uint8_t *data, uint64_t *out)
{
    unsigned hs = store_hshard_of(h);
    uint64_t cand[8];
    unsigned n = 0;
    uint8_t buf[STORE_BLOCK];
    *out = 0;
    pthread_mutex_lock(&st->hshard[hs].mu);
    n = store_nc_find(st->active, h, cand, 8);
    if (st->frozen)
        n += store_nc_find(st->frozen, h, cand + n, 8 - n);
    pthread_mutex_unlock(&st->hshard[hs].mu);
    bool index_looked = false;
    for (;;) {
        for (unsigned i = 0; i < n; i++) {
            pthread_mutex_lock(&st->hshard[hs].mu);
            bool ok = !store_rs_has(&st->dying[hs], cand[i]) &&
                      store_refd_add_l(st->active, hs, cand[i]) == 0;
            pthread_mutex_unlock(&st->hshard[hs].mu);
            if (!ok)
                continue;
            int rc = store_seg_read(st, cand[i], buf, STORE_BLOCK);
            if (!rc && !memcmp(buf, data, STORE_BLOCK)) {
                *out = cand[i];
                return 0;
            }
            pthread_mutex_lock(&st->hshard[hs].mu);
            store_refd_del_l(st->active, hs, cand[i]);
            pthread_mutex_unlock(&st->hshard[hs].mu);
            if (rc)
                return rc;
        }
        if (index_looked)
            return 0;
        index_looked = true;
        if (!store_hash_bloom_maybe(st, h))
            return 0;
        int rc = reader_cursor(st, r);
        if (rc)
            return rc;
        unsigned m;
        uint64_t found[8];
        if ((rc = store_hash_find(st, r->txn, h, found, 8, &m)))
            return rc;
        n = 0;
        for (unsigned i = 0; i < m; i++)
            if (store_space_is_live(st, found[i]))
                cand[n++] = found[i];
    }
}

static void drop_refs(struct store *st, struct bw *w, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (w[i].kind == BW_REF) {
            unsigned hs = store_hshard_of(w[i].hash);
            pthread_mutex_lock(&st->hshard[hs].mu);
            store_refd_del_l(st->active, hs, w[i].slot);
            pthread_mutex_unlock(&st->hshard[hs].mu);
        }
}

/* Decide each block (zero, reference, or new), allocate and write the new
 * ones.  w[i].data and, for non-zero blocks, w[i].hash are set.  On
 * failure nothing is left allocated or referenced. */
static int place_blocks(struct store *st, struct reader *r, unsigned shard,
                        struct bw *w, uint64_t n)
{
    int rc = 0;
    uint64_t nnew = 0;
    for (uint64_t i = 0; i < n && !rc; i++) {
        if (w[i].kind == BW_ZERO)
            continue;
        /* the same bytes earlier in this request */
        uint64_t j = 0;
        for (j = 0; j < i; j++)
            if (w[j].kind == BW_NEW && !memcmp(w[j].hash, w[i].hash, 16) &&
                !memcmp(w[j].data, w[i].data, STORE_BLOCK))
                break;
        if (j < i) {
            w[i].kind = BW_REF;
            w[i].slot = UINT64_MAX - j; /* resolved after allocation */
            continue;
        }
        uint64_t s;
        if ((rc = dedup_find(st, r, w[i].hash, w[i].data, &s)))
            break;
        if (s) {
            w[i].kind = BW_REF;
            w[i].slot = s;
        } else {
            w[i].kind = BW_NEW;
            nnew++;
        }
    }
    if (rc) {
        drop_refs(st, w, n);
        return rc;
    }
    if (!nnew)
        return 0;
    uint64_t *slots = malloc(nnew * sizeof *slots);
    struct iovec *iov = malloc(nnew * sizeof *iov);
    if (!slots || !iov) {
        free(slots);
        free(iov);
        drop_refs(st, w, n);
        return store_set_err(st, -ENOMEM, "out of memory");
    }
    if ((rc = store_space_alloc(st, shard, slots, (unsigned)nnew))) {
        free(slots);
        free(iov);
        drop_refs(st, w, n);
        return rc;
    }
    uint64_t k = 0;
    for (uint64_t i = 0; i < n; i++)
        if (w[i].kind == BW_NEW)
            w[i].slot = slots[k++];
    for (uint64_t i = 0; i < n; i++)
        if (w[i].kind == BW_REF && w[i].slot > UINT64_MAX - n)
            w[i].slot = w[UINT64_MAX - w[i].slot].slot;
    /* runs of consecutive slots, one write each */
    uint64_t first = 0, cnt = 0;
    for (uint64_t i = 0, m = 0; i <= n && !rc; i++) {
        bool isnew = i < n && w[i].kind == BW_NEW;
        if (isnew && cnt && w[i].slot == first + cnt) {
            iov[m++] = (struct iovec){(void *)w[i].data, STORE_BLOCK};
            cnt++;
            continue;
        }
        if (cnt)
            rc = store_seg_writev(st, first, iov, (int)m);
        cnt = m = 0;
        if (isnew) {
            first = w[i].slot;
            iov[m++] = (struct iovec){(void *)w[i].data, STORE_BLOCK};
            cnt = 1;
        }
    }
    if (rc) {
        store_space_unalloc(st, slots, (unsigned)nnew);
        drop_refs(st, w, n);
    }
    free(slots);
    free(iov);
    return rc;
}

/* Undo a write that could not be entered: its new slots go back, its
 * dedup references are dropped. */
static void undo_blocks(struct store *st, struct bw *w, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (w[i].kind == BW_NEW)
            store_space_unalloc(st, &w[i].slot, 1);
    drop_refs(st, w, n);
}

/* Enter blocks [b0, b0 + n) of node: new chunks into the active
 * generation's tables, then every entry into its memtable and the log, in
 * one order.  Shard locks of the blocks held by the caller when
 * shards_locked, else taken here.  Out of memory, nothing is entered
 * (-ENOMEM; the caller undoes the rest). */
static int commit_blocks(struct store *st, uint32_t node, uint64_t b0,
                         struct bw *w, uint64_t n, bool shards_locked)
{
    int rc = 0;
    uint64_t done = 0;
    for (; done < n && !rc; done++)
        if (w[done].kind == BW_NEW) {
            unsigned hs = store_hshard_of(w[done].hash);
            pthread_mutex_lock(&st->hshard[hs].mu);
            rc = store_nc_put_l(st->active, w[done].hash, w[done].slot);
            pthread_mutex_unlock(&st->hshard[hs].mu);
        }
    bool lock[STORE_NSHARD_MAX] = {false};
    size_t count[STORE_NSHARD_MAX] = {0};
    for (uint64_t i = 0; i < n; i++) {
        unsigned sh = store_shard_of(st, b0 + i);
        lock[sh] = !shards_locked;
        count[sh]++;
    }
    for (unsigned s = 0; s < st->nshard; s++)
        if (lock[s])
            pthread_mutex_lock(&st->shard[s].mu);
    for (unsigned s = 0; s < st->nshard && !rc; s++)
        if (count[s] && store_mt_reserve_l(st->active, s, count[s]))
            rc = -ENOMEM;
    if (!rc) {
        pthread_mutex_lock(&st->log.mu);
        for (uint64_t i = 0; i < n; i++) {
            struct log_ent e = {.node = node, .block = b0 + i};
            uint64_t val = 0;
            if (w[i].kind == BW_ZERO) {
                e.type = LE_ZERO;
                e.slot = 1;
            } else {
                e.type = w[i].kind == BW_NEW ? LE_NEW : LE_REF;
                e.slot = w[i].slot;
                val = val_make(w[i].slot, w[i].hash, b0 + i);
                memcpy(e.hash, w[i].hash, 16);
            }
            store_mt_put_l(st, st->active, store_shard_of(st, b0 + i), b0 + i,
                           node, val, ++st->seq); /* reserved: no failure */
            store_log_add_l(st, &e);
        }
        pthread_mutex_unlock(&st->log.mu);
    }
    for (unsigned s = 0; s < st->nshard; s++)
        if (lock[s])
            pthread_mutex_unlock(&st->shard[s].mu);
    if (rc) { /* the new chunks entered so far go again */
        for (uint64_t i = 0; i < done; i++)
            if (w[i].kind == BW_NEW) {
                unsigned hs = store_hshard_of(w[i].hash);
                pthread_mutex_lock(&st->hshard[hs].mu);
                store_nc_del_l(st->active, w[i].hash, w[i].slot);
                pthread_mutex_unlock(&st->hshard[hs].mu);
            }
        return store_set_err(st, -ENOMEM, "out of memory (memtables)");
    }
    /* what the checkpoint will dirty: the request's keys are adjacent, its
     * new slots mostly too, each new hash lands anywhere */
    uint64_t nnew = 0, nref = 0;
    for (uint64_t i = 0; i < n; i++) {
        nnew += w[i].kind == BW_NEW;
        nref += w[i].kind == BW_REF;
    }
    __atomic_fetch_add(&st->active->est_map, n / 64 + 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&st->active->est_ref, 2 * (n / 64 + 1) + nref,
                       __ATOMIC_RELAXED);
    __atomic_fetch_add(&st->active->est_hash, nnew, __ATOMIC_RELAXED);
    return store_failed(st);
}

/* Read-modify-write of block b (bytes [s, s + n) from src, or zeros if src
 * is NULL), under b's shard lock so that two of them do not lose one
 * another's bytes. */
static int rmw_block(struct store *st, const struct store_vol *v,
                     struct reader *r, uint32_t node, uint64_t b, uint64_t s,
                     uint64_t n, const uint8_t *src, bool nohole)
{
    uint8_t tmp[STORE_BLOCK];
    unsigned sh = store_shard_of(st, b);
    pthread_mutex_lock(&st->shard[sh].mu);
    int rc = read_block(st, v, r, node, b, true, tmp);
    if (!rc) {
        if (src)
            memcpy(tmp + s, src, n);
        else
            memset(tmp + s, 0, n);
        struct bw w = {.data = tmp};
        if (store_all_zero(tmp)) {
            w.kind = BW_ZERO;
            (void)nohole; /* a partial zero that leaves zeros: a hole,
                             as a full-block write of zeros is */
        } else {
            w.kind = BW_NEW;
            store_hash(tmp, w.hash);
            rc = place_blocks(st, r, sh, &w, 1);
        }
        if (!rc && (rc = commit_blocks(st, node, b, &w, 1, true)) == -ENOMEM)
            undo_blocks(st, &w, 1);
    }
    pthread_mutex_unlock(&st->shard[sh].mu);
    return rc;
}

int store_write(struct store_vol *v, const void *buf, uint64_t off,
                uint32_t len, unsigned flags)
{
    struct store *st = v->st;
    int rc = check_range(v, off, len, true);
    if (rc || len == 0)
        return rc;
    if ((rc = store_ckpt_room(st)))
        return rc;
    const uint8_t *src = buf;
    uint64_t end = off + len;
    uint64_t fb0 = (off + STORE_BLOCK - 1) / STORE_BLOCK,
             fb1 = end / STORE_BLOCK;
    uint64_t nfull = fb1 > fb0 ? fb1 - fb0 : 0;
    struct bw stackw[4], *w = stackw;
    if (nfull > 4 && !(w = calloc(nfull, sizeof *w)))
        return store_set_err(st, -ENOMEM, "out of memory");
    if (nfull <= 4)
        memset(stackw, 0, sizeof stackw);
    /* hashing and the zero test need no lock */
    for (uint64_t i = 0; i < nfull; i++) {
        w[i].data = src + ((fb0 + i) * STORE_BLOCK - off);
        if (store_all_zero(w[i].data))
            w[i].kind = BW_ZERO;
        else
            store_hash(w[i].data, w[i].hash);
    }
    store_ckpt_backpressure(st);
    struct reader r = {0};
    pthread_rwlock_rdlock(&st->gate);
    uint32_t node = v->node;
    /* partial blocks at either end */
    uint64_t parts[2] = {off / STORE_BLOCK, (end - 1) / STORE_BLOCK};
    for (int i = 0; i < 2 && !rc; i++) {
        uint64_t b = parts[i];
        if (i == 1 && b == parts[0])
            break;
        uint64_t bs = b * STORE_BLOCK, be = bs + STORE_BLOCK;
        if (bs >= off && be <= end)
            continue;
        uint64_t s = bs > off ? bs : off, e = be < end ? be : end;
        rc = rmw_block(st, v, &r, node, b, s - bs, e - s, src + (s - off),
                       false);
    }
    if (!rc && nfull) {
        rc = place_blocks(st, &r, store_shard_of(st, fb0), w, nfull);
        if (!rc &&
            (rc = commit_blocks(st, node, fb0, w, nfull, false)) == -ENOMEM)
            undo_blocks(st, w, nfull);
    }
    reader_done(st, &r);
    pthread_rwlock_unlock(&st->gate);
    if (w != stackw)
        free(w);
    if (!rc && (flags & STORE_FUA))
        rc = store_log_flush(st);
    return rc;
}

/* Zero ranges up to this many blocks are entered block by block (their
 * entries go through the shard tables); longer ones as one range. */
#define ZERO_POINT_MAX 256u

int store_zero(struct store_vol *v, uint64_t off, uint64_t len, unsigned flags)
{
    struct store *st = v->st;
    int rc = check_range(v, off, len, true);
    if (rc || len == 0)
        return rc;
    bool nohole = flags & STORE_NO_HOLE;
    uint64_t end = off + len;
    uint64_t fb0 = (off + STORE_BLOCK - 1) / STORE_BLOCK,
             fb1 = end / STORE_BLOCK;
    store_ckpt_backpressure(st);
    struct reader r = {0};
    pthread_rwlock_rdlock(&st->gate);
    uint32_t node = v->node;
    uint64_t parts[2] = {off / STORE_BLOCK, (end - 1) / STORE_BLOCK};
    for (int i = 0; i < 2 && !rc; i++) {
        uint64_t b = parts[i];
        if (i == 1 && b == parts[0])
            break;
        uint64_t bs = b * STORE_BLOCK, be = bs + STORE_BLOCK;
        if (bs >= off && be <= end)
            continue;
        uint64_t s = bs > off ? bs : off, e = be < end ? be : end;
        rc = rmw_block(st, v, &r, node, b, s - bs, e - s, NULL, nohole);
    }
    if (!rc && fb1 > fb0) {
        struct log_ent e = {.type = LE_ZERO,
                            .flags = nohole ? LE_NOHOLE : 0,
                            .node = node,
                            .block = fb0,
                            .slot = fb1 - fb0};
        rc = store_apply_ent(st, &e, false);
    }
    reader_done(st, &r);
    pthread_rwlock_unlock(&st->gate);
    if (!rc && (flags & STORE_FUA))
        rc = store_log_flush(st);
    return rc;
}

/* Enter one zero entry (a store_zero, or a replayed LE_ZERO): blocks one by
 * one up to ZERO_POINT_MAX, else a range; and in the log unless replay. */
static int enter_zero(struct store *st, const struct log_ent *e, bool replay)
{
    uint64_t val = e->flags & LE_NOHOLE ? 1 : 0;
    uint64_t n = e->slot, b0 = e->block;
    int rc = 0;
    bool lock[STORE_NSHARD_MAX] = {false};
    size_t count[STORE_NSHARD_MAX] = {0};
    if (n <= ZERO_POINT_MAX) {
        for (uint64_t i = 0; i < n; i++) {
            lock[store_shard_of(st, b0 + i)] = true;
            count[store_shard_of(st, b0 + i)]++;
        }
        for (unsigned s = 0; s < st->nshard; s++)
            if (lock[s])
                pthread_mutex_lock(&st->shard[s].mu);
        for (unsigned s = 0; s < st->nshard && !rc; s++)
            if (count[s] && store_mt_reserve_l(st->active, s, count[s]))
                rc = store_set_err(st, -ENOMEM, "out of memory (memtables)");
    }
    if (!rc) {
        pthread_mutex_lock(&st->log.mu);
        uint64_t seq = ++st->seq;
        if (n <= ZERO_POINT_MAX)
            for (uint64_t i = 0; i < n; i++) /* reserved: no failure */
                store_mt_put_l(st, st->active, store_shard_of(st, b0 + i),
                               b0 + i, e->node, val, seq);
        else
            rc = store_mt_range_l(st, st->active, b0, b0 + n, e->node,
                                  (uint32_t)val, seq);
        if (!rc && !replay)
            store_log_add_l(st, e);
        pthread_mutex_unlock(&st->log.mu);
    }
    for (unsigned s = 0; s < st->nshard; s++)
        if (lock[s])
            pthread_mutex_unlock(&st->shard[s].mu);
    if (rc)
        return rc;
    __atomic_fetch_add(&st->active->est_map, n / 64 + 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&st->active->est_ref, 2 * (n / 64 + 1),
                       __ATOMIC_RELAXED);
    return store_failed(st);
}

/* Enter a log entry into the active generation: a store_zero's range, or
 * (replay) an entry read back from the log, whose chunk the caller
 * verified. */
int store_apply_ent(struct store *st, const struct log_ent *e, bool replay)
{
    if (e->type == LE_ZERO)
        return enter_zero(st, e, replay);
    unsigned hs = store_hshard_of(e->hash);
    pthread_mutex_lock(&st->hshard[hs].mu);
    int rc = e->type == LE_NEW ? store_nc_put_l(st->active, e->hash, e->slot)
                               : store_refd_add_l(st->active, hs, e->slot);
    pthread_mutex_unlock(&st->hshard[hs].mu);
    if (rc)
        return store_set_err(st, -ENOMEM, "out of memory");
    if (e->type == LE_NEW)
        store_space_mark(st, e->slot);
    unsigned sh = store_shard_of(st, e->block);
    pthread_mutex_lock(&st->shard[sh].mu);
    pthread_mutex_lock(&st->log.mu);
    rc = store_mt_put_l(st, st->active, sh, e->block, e->node,
                        val_make(e->slot, e->hash, e->block), ++st->seq);
    pthread_mutex_unlock(&st->log.mu);
    pthread_mutex_unlock(&st->shard[sh].mu);
    return rc;
}

int store_flush(struct store *st)
{
    int rc = store_failed(st);
    return rc ? rc : store_log_flush(st);
}

/* ---- extents ---- */

#define EXT_MAX 1024u
#define EXT_SCAN_BLOCKS 65536u /* blocks resolved per call at most */

struct ext {
    uint64_t off, len;
    unsigned flags;
};

static void ext_add(struct ext *e, unsigned *n, uint64_t off, uint64_t len,
                    unsigned flags)
{
    if (*n && e[*n - 1].flags == flags &&
        e[*n - 1].off + e[*n - 1].len == off) {
        e[*n - 1].len += len;
        return;
    }
    e[*n] = (struct ext){off, len, flags};
    (*n)++;
}

/* The next block >= b below end that some generation has an entry or a
 * range for (end if none): probed block by block, at most `budget`. */
static uint64_t next_gen_block(struct store *st, uint64_t b, uint64_t end,
                               unsigned *budget)
{
    struct gen *g[2] = {st->active, st->frozen};
    for (int i = 0; i < 2; i++) {
        if (!g[i])
            continue;
        size_t nr = __atomic_load_n(&g[i]->nranges, __ATOMIC_ACQUIRE);
        if (!nr)
            continue;
        pthread_mutex_lock(&g[i]->rmu);
        for (size_t j = 0; j < nr; j++)
            if (g[i]->ranges[j].b1 > b && g[i]->ranges[j].b0 < end)
                end = g[i]->ranges[j].b0 > b ? g[i]->ranges[j].b0 : b;
        pthread_mutex_unlock(&g[i]->rmu);
    }
    uint64_t ents = st->active->nents + (st->frozen ? st->frozen->nents : 0);
    if (!ents)
        return end;
    for (; b < end && *budget; b++, (*budget)--) {
        unsigned sh = store_shard_of(st, b);
        pthread_mutex_lock(&st->shard[sh].mu);
        bool has = store_mt_has_block(st->active, sh, b);
        pthread_mutex_unlock(&st->shard[sh].mu);
        if (has || (st->frozen && store_mt_has_block(st->frozen, sh, b)))
            return b;
    }
    return b;
}

int store_extents(struct store_vol *v, uint64_t off, uint64_t len,
                  int (*cb)(uint64_t off, uint64_t len, unsigned flags,
                            void *arg),
                  void *arg)
{
    struct store *st = v->st;
    int rc = check_range(v, off, len, false);
    if (rc || len == 0)
        return rc;
    struct ext *e = malloc(EXT_MAX * sizeof *e);
    if (!e)
        return store_set_err(st, -ENOMEM, "out of memory");
    unsigned n = 0, scanned = 0, budget = 4 * EXT_SCAN_BLOCKS;
    uint64_t b0 = off / STORE_BLOCK;
    uint64_t b1 = (off + len + STORE_BLOCK - 1) / STORE_BLOCK;
    uint64_t cur = b0;
    const unsigned hz = STORE_EXT_HOLE | STORE_EXT_ZERO;
    uint8_t kb[MAP_KEY];
    struct reader r = {0};
    pthread_rwlock_rdlock(&st->gate);
    uint32_t y = v->node;
    if ((rc = reader_cursor(st, &r)))
        goto out;
    while (cur < b1 && n < EXT_MAX - 1 && scanned < EXT_SCAN_BLOCKS && budget) {
        map_key(kb, cur, UINT32_MAX);
        MDB_val k = {MAP_KEY, kb}, d;
        int mrc = mdb_cursor_get(r.c, &k, &d, MDB_SET_RANGE);
        if (mrc && mrc != MDB_NOTFOUND) {
            rc = store_mdb_err(st, mrc, "map");
            break;
        }
        uint64_t blk = mrc ? b1 : map_key_block(&k);
        if (blk > b1)
            blk = b1;
        blk = next_gen_block(st, cur, blk, &budget);
        if (blk > cur) {
            ext_add(e, &n, cur * STORE_BLOCK, (blk - cur) * STORE_BLOCK, hz);
            cur = blk;
            continue;
        }
        uint64_t val;
        if ((rc = resolve_r(st, &r, blk, y, false, &val)))
            break;
        unsigned fl = val == 0 ? hz : val == 1 ? STORE_EXT_ZERO : 0;
        ext_add(e, &n, blk * STORE_BLOCK, STORE_BLOCK, fl);
        cur = blk + 1;
        scanned++;
    }
out:
    reader_done(st, &r);
    pthread_rwlock_unlock(&st->gate);
    /* clip to [off, off+len) and report */
    for (unsigned i = 0; i < n && !rc; i++) {
        uint64_t s = e[i].off, t = e[i].off + e[i].len;
        if (s < off)
            s = off;
        if (t > off + len)
            t = off + len;
        if (t > s && cb(s, t - s, e[i].flags, arg))
            break;
    }
    free(e);
    return rc;
}
