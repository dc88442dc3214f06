/* store-io.c: block I/O on a volume or snapshot: read, write, zero and
 * extents, plus the chunk layer underneath (dedup, slots, refcounts).
 *
 * A block of node y reads from the first map entry (b, n) with n an
 * ancestor-or-self of y; entries of one block sort by node id descending,
 * so that is one MDB_SET_RANGE on (b, ~y) and usually no step further.
 * A write only ever adds or replaces the entry of the volume's head node:
 * older nodes are never touched (no copy-up).  New chunk bytes are pwritten
 * to a fresh slot before any index entry names the slot, and a freed slot
 * is reused only once the txn that freed it is durable (free DB keyed by
 * generation), so after a crash every block reads old or new content.
 * Index work happens under st->mu; chunk reads run outside it under the
 * slot gate (read mode).
 */
#include "store-int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- handles ---- */

int store_vol_open(struct store *st, const char *name_or_uuid,
                   struct store_vol **out)
{
    uint8_t u[16];
    struct obj_rec o;
    *out = NULL;
    struct store_vol *v = calloc(1, sizeof *v);
    if (!v)
        return store_set_err(st, -ENOMEM, "out of memory");
    pthread_mutex_lock(&st->mu);
    int rc = store_resolve_name_l(st, name_or_uuid, u, &o);
    if (rc) {
        pthread_mutex_unlock(&st->mu);
        free(v);
        return rc;
    }
    v->st = st;
    memcpy(v->uuid, u, 16);
    v->node = o.node;
    v->size = o.size;
    v->rdonly = o.kind == STORE_SNAPSHOT || st->rdonly;
    memcpy(v->name, o.name, sizeof v->name);
    v->name[STORE_NAME_MAX] = 0;
    v->next = st->vols;
    st->vols = v;
    pthread_mutex_unlock(&st->mu);
    *out = v;
    return 0;
}

void store_vol_close(struct store_vol *v)
{
    if (!v)
        return;
    struct store *st = v->st;
    pthread_mutex_lock(&st->mu);
    for (struct store_vol **p = &st->vols; *p; p = &(*p)->next)
        if (*p == v) {
            *p = v->next;
            break;
        }
    pthread_mutex_unlock(&st->mu);
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
    pthread_mutex_lock(&v->st->mu);
    memcpy(buf, v->name, STORE_NAME_MAX + 1);
    pthread_mutex_unlock(&v->st->mu);
}

/* ---- the chunk layer ---- */

static int map_cursor_l(struct store *st, MDB_cursor **c)
{
    int rc = mdb_cursor_open(st->txn, st->db_map, c);
    return rc ? store_mdb_err(st, rc, "map") : 0;
}

/* New chunks of one store_write whose slots follow each other, written by
 * one pwritev once the run ends, before the mutex is dropped and before
 * any commit (invariant 5: the index names them only inside the
 * uncommitted txn, which no reader sees until the mutex is released). */
#define WB_MAX 256u
struct wbatch {
    uint64_t first; /* slot of iov[0] */
    unsigned n;
    bool failed; /* the txn must be dropped (by the caller) */
    struct iovec iov[WB_MAX];
};

/* Write the pending run.  On failure the txn names slots whose bytes were
 * never written, so wb->failed tells the caller to drop it (once its
 * cursor is closed), which takes the image offline as a failed commit
 * does. */
static int wb_flush_l(struct store *st, struct wbatch *wb)
{
    if (!wb || wb->n == 0)
        return 0;
    size_t want = (size_t)wb->n * STORE_BLOCK;
    unsigned n = wb->n;
    wb->n = 0;
    ssize_t w = pwritev(st->chunk_fd, wb->iov, (int)n,
                        (off_t)(wb->first * STORE_BLOCK));
    if (w == (ssize_t)want) {
        st->chunk_dirty = true;
        st->chunks_unsynced += n;
        return 0;
    }
    int e = w < 0 ? errno : EIO;
    int rc = store_set_err(
        st, -e, "%s-chunks: write of slots %llu-%llu failed: %s", st->path,
        (unsigned long long)wb->first, (unsigned long long)(wb->first + n - 1),
        w < 0 ? strerror(e) : "short write");
    wb->failed = true;
    return rc;
}

/* Before each block of a loop holding a map cursor: the group commit point
 * and the space check.  Up to STORE_COMMIT_OPS a writer leaves the commit
 * to store_presync() (chunk fdatasync outside the mutex); at twice that it
 * commits here.  Then there must be room for need more pages, leaving
 * reserve (store-space.c), which may commit too.  The cursor dies with the
 * txn, so it is closed and reopened around them. */
static int cursor_checkpoint_l(struct store *st, MDB_cursor **c,
                               struct wbatch *wb, uint64_t need,
                               uint64_t reserve)
{
    bool due = store_commit_due_l(st, 2);
    if (!due && store_room_ok_l(st, need, reserve))
        return 0;
    int rc = wb_flush_l(st, wb);
    if (rc)
        return rc;
    mdb_cursor_close(*c);
    *c = NULL;
    rc = due ? store_commit_l(st) : 0;
    if (!rc)
        rc = store_room_l(st, need, reserve);
    int rc2 = map_cursor_l(st, c);
    return rc ? rc : rc2;
}

static int read_slot(struct store *st, uint64_t slot, void *buf, size_t n)
{
    ssize_t r = pread(st->chunk_fd, buf, n, (off_t)(slot * STORE_BLOCK));
    if (r == (ssize_t)n)
        return 0;
    return store_set_err(st, r < 0 ? -errno : -EIO,
                         "%s-chunks: read of slot %llu failed: %s", st->path,
                         (unsigned long long)slot,
                         r < 0 ? strerror(errno) : "short read");
}

/* Value of block b as node y sees it: 0 hole, 1 allocated zero, else a
 * slot. */
int store_resolve_l(struct store *st, MDB_cursor *c, uint64_t b, uint32_t y,
                    uint64_t *val)
{
    uint8_t kb[MAP_KEY];
    map_key(kb, b, y);
    MDB_val k = {MAP_KEY, kb}, d;
    int rc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    for (; rc == 0 && map_key_block(&k) == b;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        if (store_is_anc_l(st, y, map_key_node(&k))) {
            *val = val_u64(&d);
            return 0;
        }
    }
    *val = 0;
    if (rc && rc != MDB_NOTFOUND)
        return store_mdb_err(st, rc, "map");
    return 0;
}

static int ref_get_l(struct store *st, uint64_t slot, struct ref_rec *r)
{
    uint8_t kb[8];
    put_be64(kb, slot);
    MDB_val k = {8, kb}, d;
    int rc = mdb_get(st->txn, st->db_refs, &k, &d);
    if (rc == MDB_NOTFOUND || (rc == 0 && d.mv_size != sizeof *r))
        return store_set_err(st, -EIO, "refs: slot %llu has no chunk record",
                             (unsigned long long)slot);
    if (rc)
        return store_mdb_err(st, rc, "refs");
    memcpy(r, d.mv_data, sizeof *r);
    return 0;
}

static int ref_put_l(struct store *st, uint64_t slot, const struct ref_rec *r)
{
    uint8_t kb[8];
    put_be64(kb, slot);
    MDB_val k = {8, kb}, d = {sizeof *r, (void *)r};
    int rc = mdb_put(st->txn, st->db_refs, &k, &d, 0);
    return rc ? store_mdb_err(st, rc, "refs") : 0;
}

static int incref_l(struct store *st, uint64_t slot)
{
    struct ref_rec r;
    int rc = ref_get_l(st, slot, &r);
    if (rc)
        return rc;
    r.refcount++;
    st->refsum++;
    store_touch_l(st, &st->last_ref, slot);
    return ref_put_l(st, slot, &r);
}

/* Drop one reference to slot (0 and 1 are not chunks).  The last one
 * deletes the chunk record and its hash, and frees the slot for reuse
 * after this txn is durable. */
int store_decref_l(struct store *st, uint64_t slot)
{
    if (slot < STORE_FIRST_SLOT)
        return 0;
    struct ref_rec r;
    int rc = ref_get_l(st, slot, &r);
    if (rc)
        return rc;
    st->refsum--;
    st->dirty = true;
    store_touch_l(st, &st->last_ref, slot);
    if (--r.refcount > 0)
        return ref_put_l(st, slot, &r);
    uint8_t kb[16];
    put_be64(kb, slot);
    MDB_val k = {8, kb};
    if ((rc = mdb_del(st->txn, st->db_refs, &k, NULL)))
        return store_mdb_err(st, rc, "refs");
    if ((rc = store_hash_del_l(st, r.hash, slot)))
        return rc;
    put_be64(kb, st->gen);
    put_be64(kb + 8, slot);
    MDB_val fk = {16, kb}, fd = {0, NULL};
    if ((rc = mdb_put(st->txn, st->db_free, &fk, &fd, 0)))
        return store_mdb_err(st, rc, "free");
    return 0;
}

/* A slot at the end of the chunk file (map values hold 40-bit slots). */
static int new_slot_l(struct store *st, uint64_t *slot)
{
    if (st->next_slot > STORE_MAX_BLOCKS)
        return store_set_err(st, -ENOSPC, "%s-chunks: no slot left", st->path);
    int rc = store_space_slot_l(st, st->next_slot);
    if (rc)
        return rc;
    *slot = st->next_slot++;
    return 0;
}

/* A slot for a new chunk: the lowest freed slot whose freeing txn is
 * durable (gen < st->gen), else a new one at the end of the chunk file. */
static int alloc_slot_l(struct store *st, uint64_t *slot)
{
    MDB_cursor *c;
    MDB_val k, d;
    /* slots freed now carry the current generation: once none is
     * reusable, none becomes so before the generation moves on */
    if (st->free_none && st->free_none_gen == st->gen)
        return new_slot_l(st, slot);
    int rc = mdb_cursor_open(st->txn, st->db_free, &c);
    if (rc)
        return store_mdb_err(st, rc, "free");
    rc = mdb_cursor_get(c, &k, &d, MDB_FIRST);
    if (rc == 0 && k.mv_size == 16 && get_be64(k.mv_data) < st->gen) {
        *slot = get_be64((uint8_t *)k.mv_data + 8);
        rc = mdb_cursor_del(c, 0);
        mdb_cursor_close(c);
        return rc ? store_mdb_err(st, rc, "free") : 0;
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND)
        return store_mdb_err(st, rc, "free");
    st->free_none = true;
    st->free_none_gen = st->gen;
    return new_slot_l(st, slot);
}

/* Give back a slot from alloc_slot_l that was not used (write failed). */
static void release_slot_l(struct store *st, uint64_t s)
{
    if (s + 1 == st->next_slot) {
        st->next_slot--;
        return;
    }
    uint8_t kb[16];
    put_be64(kb, st->gen);
    put_be64(kb + 8, s);
    MDB_val fk = {16, kb}, fd = {0, NULL};
    mdb_put(st->txn, st->db_free, &fk, &fd, 0); /* else leaked until check */
}

/* Find or store the chunk for data (hash h); *slot gets a new reference.
 * With a batch, a new chunk's bytes join the pending run (written by
 * wb_flush_l); without one they are written at once. */
static int chunk_get_l(struct store *st, struct wbatch *wb, const void *data,
                       const uint8_t h[16], uint64_t *slot)
{
    uint8_t cmp[STORE_BLOCK];
    uint64_t cand[16];
    size_t nc;
    int rc = store_hash_lookup_l(st, h, cand, 16, &nc);
    if (rc)
        return rc;
    for (size_t i = 0; i < nc; i++) {
        const void *have = cmp;
        if (wb && wb->n && cand[i] >= wb->first && cand[i] - wb->first < wb->n)
            have = wb->iov[cand[i] - wb->first].iov_base; /* not yet written */
        else if (read_slot(st, cand[i], cmp, STORE_BLOCK))
            continue;
        if (!memcmp(have, data, STORE_BLOCK)) {
            *slot = cand[i];
            return incref_l(st, cand[i]);
        }
    }
    /* new chunk (or a real hash collision: both are kept) */
    uint64_t s = 0;
    if ((rc = alloc_slot_l(st, &s)))
        return rc;
    if (wb) {
        if (wb->n && (s != wb->first + wb->n || wb->n == WB_MAX) &&
            (rc = wb_flush_l(st, wb)))
            return rc; /* the txn is dropped, slot s with it */
        if (wb->n == 0)
            wb->first = s;
        wb->iov[wb->n++] = (struct iovec){(void *)data, STORE_BLOCK};
    } else {
        ssize_t w =
            pwrite(st->chunk_fd, data, STORE_BLOCK, (off_t)(s * STORE_BLOCK));
        if (w != STORE_BLOCK) {
            int e = w < 0 ? errno : EIO;
            release_slot_l(st, s);
            return store_set_err(
                st, -e, "%s-chunks: write of slot %llu failed: %s", st->path,
                (unsigned long long)s, w < 0 ? strerror(e) : "short write");
        }
        st->chunk_dirty = true;
        st->chunks_unsynced++;
    }
    if ((rc = store_hash_add_l(st, h, s)))
        return rc;
    struct ref_rec r = {.refcount = 1};
    memcpy(r.hash, h, 16);
    store_touch_l(st, &st->last_new, s);
    if ((rc = ref_put_l(st, s, &r)))
        return rc;
    st->refsum++;
    *slot = s;
    return 0;
}

/* Set map entry (b, node) to val, releasing the value it replaces.  With
 * the map cursor c: a failed MDB_NOOVERWRITE put leaves it on the existing
 * entry, which MDB_CURRENT then replaces without a second search. */
static int map_set_l(struct store *st, MDB_cursor *c, uint64_t b, uint32_t node,
                     uint64_t val)
{
    uint8_t kb[MAP_KEY], vb[MAP_VAL];
    map_key(kb, b, node);
    put_be40(vb, val);
    MDB_val k = {MAP_KEY, kb}, d = {MAP_VAL, vb};
    int rc = mdb_cursor_put(c, &k, &d, MDB_NOOVERWRITE);
    st->dirty = true;
    st->txn_ops++;
    store_touch_l(st, &st->last_map, b);
    if (rc == 0) {
        struct node *n = store_node(st, node);
        if (n) {
            n->entries++;
            n->dirty = 1;
        }
        return 0;
    }
    if (rc != MDB_KEYEXIST)
        return store_mdb_err(st, rc, "map");
    uint64_t old = val_u64(&d);
    if (old == val) /* same chunk: drop the reference just taken */
        return store_decref_l(st, val);
    d = (MDB_val){MAP_VAL, vb};
    if ((rc = mdb_cursor_put(c, &k, &d, MDB_CURRENT)))
        return store_mdb_err(st, rc, "map");
    return store_decref_l(st, old);
}

/* Delete map entry (b, node) holding val (the cursor's current entry, or
 * looked up by key if c is NULL). */
static int map_del_key_l(struct store *st, uint64_t b, uint32_t node,
                         uint64_t val)
{
    uint8_t kb[MAP_KEY];
    map_key(kb, b, node);
    MDB_val k = {MAP_KEY, kb};
    int rc = mdb_del(st->txn, st->db_map, &k, NULL);
    if (rc)
        return store_mdb_err(st, rc, "map");
    st->dirty = true;
    st->txn_ops++;
    store_touch_l(st, &st->last_map, b);
    struct node *n = store_node(st, node);
    if (n && n->entries) {
        n->entries--;
        n->dirty = 1;
    }
    return store_decref_l(st, val);
}

int store_map_del_l(struct store *st, MDB_cursor *c, uint32_t node,
                    uint64_t val)
{
    int rc = mdb_cursor_del(c, 0);
    if (rc)
        return store_mdb_err(st, rc, "map");
    st->dirty = true;
    st->txn_ops++;
    struct node *n = store_node(st, node);
    if (n && n->entries) {
        n->entries--;
        n->dirty = 1;
    }
    return store_decref_l(st, val);
}

/* Make block b of head read as zeros: drop head's own entry if what lies
 * beneath is a hole, else hide it with a tombstone (0); NO_HOLE stores 1. */
static int zero_block_l(struct store *st, MDB_cursor *c, uint32_t head,
                        uint64_t b, bool nohole)
{
    uint8_t kb[MAP_KEY];
    map_key(kb, b, head);
    MDB_val k = {MAP_KEY, kb}, d;
    bool own = false, below = false;
    uint64_t ownval = 0, belowval = 0;
    int rc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    for (; rc == 0 && map_key_block(&k) == b;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        uint32_t n = map_key_node(&k);
        if (n == head) {
            own = true;
            ownval = val_u64(&d);
        } else if (store_is_anc_l(st, head, n)) {
            below = true;
            belowval = val_u64(&d);
            break;
        }
    }
    if (rc && rc != MDB_NOTFOUND)
        return store_mdb_err(st, rc, "map");
    if (!nohole && (!below || belowval == 0)) {
        if (!own)
            return 0;
        return map_del_key_l(st, b, head, ownval);
    }
    uint64_t v = nohole ? 1 : 0;
    if (own && ownval == v)
        return 0;
    return map_set_l(st, c, b, head, v);
}

static bool all_zero(const void *p)
{
    const uint64_t *w = p;
    for (size_t i = 0; i < STORE_BLOCK / 8; i++)
        if (w[i])
            return false;
    return true;
}

/* Write one whole block; zero and h (XXH3-128) were computed by the caller,
 * outside the mutex when it could. */
static int write_block_l(struct store *st, MDB_cursor *c, struct wbatch *wb,
                         uint32_t head, uint64_t b, const void *data, bool zero,
                         const uint8_t h[16])
{
    if (zero)
        return zero_block_l(st, c, head, b, false);
    uint64_t slot;
    int rc = chunk_get_l(st, wb, data, h, &slot);
    if (rc)
        return rc;
    return map_set_l(st, c, b, head, slot);
}

static int write_block_hash_l(struct store *st, MDB_cursor *c, uint32_t head,
                              uint64_t b, const void *data)
{
    uint8_t h[16];
    bool zero = all_zero(data);
    if (!zero)
        store_hash(data, h);
    return write_block_l(st, c, NULL, head, b, data, zero, h);
}

/* Current bytes of block b as node y sees it (under the mutex). */
static int read_block_l(struct store *st, MDB_cursor *c, uint32_t y, uint64_t b,
                        void *buf)
{
    uint64_t v;
    int rc = store_resolve_l(st, c, b, y, &v);
    if (rc)
        return rc;
    if (v < STORE_FIRST_SLOT) {
        memset(buf, 0, STORE_BLOCK);
        return 0;
    }
    return read_slot(st, v, buf, STORE_BLOCK);
}

static int check_range(struct store_vol *v, uint64_t off, uint64_t len,
                       bool write)
{
    struct store *st = v->st;
    if (write && v->rdonly)
        return store_set_err(st, -EROFS, "%s \"%s\" is read-only",
                             st->rdonly ? "image; object" : "snapshot",
                             v->name);
    if (off > v->size || len > v->size - off)
        return store_set_err(st, -EINVAL,
                             "\"%s\": range %llu+%llu is beyond the size "
                             "%llu",
                             v->name, (unsigned long long)off,
                             (unsigned long long)len,
                             (unsigned long long)v->size);
    return 0;
}

/* ---- public I/O ---- */

int store_read(struct store_vol *v, void *buf, uint64_t off, uint32_t len)
{
    struct store *st = v->st;
    int rc = check_range(v, off, len, false);
    if (rc || len == 0)
        return rc;
    uint64_t b0 = off / STORE_BLOCK;
    uint64_t b1 = (off + len + STORE_BLOCK - 1) / STORE_BLOCK;
    size_t nb = b1 - b0;
    bool aligned = off % STORE_BLOCK == 0 && len % STORE_BLOCK == 0;
    uint8_t *dst = aligned ? buf : malloc(nb * STORE_BLOCK);
    uint64_t small[64];
    uint64_t *slots = nb <= 64 ? small : malloc(nb * sizeof *slots);
    if (!dst || !slots) {
        rc = store_set_err(st, -ENOMEM, "out of memory");
        goto out;
    }
    pthread_mutex_lock(&st->mu);
    MDB_cursor *c;
    if ((rc = store_failed_l(st)) || (rc = map_cursor_l(st, &c))) {
        pthread_mutex_unlock(&st->mu);
        goto out;
    }
    for (size_t i = 0; i < nb && !rc; i++)
        rc = store_resolve_l(st, c, b0 + i, v->node, &slots[i]);
    mdb_cursor_close(c);
    /* chunk reads outside the mutex, under the gate */
    pthread_rwlock_rdlock(&st->gate);
    pthread_mutex_unlock(&st->mu);
    for (size_t i = 0; i < nb && !rc;) {
        if (slots[i] < STORE_FIRST_SLOT) {
            memset(dst + i * STORE_BLOCK, 0, STORE_BLOCK);
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < nb && slots[j] == slots[j - 1] + 1)
            j++;
        rc = read_slot(st, slots[i], dst + i * STORE_BLOCK,
                       (j - i) * STORE_BLOCK);
        i = j;
    }
    pthread_rwlock_unlock(&st->gate);
    if (!rc && !aligned)
        memcpy(buf, dst + off % STORE_BLOCK, len);
out:
    if (!aligned)
        free(dst);
    if (slots != small)
        free(slots);
    return rc;
}

/* Per-block facts computed before the mutex is taken. */
struct blk_pre {
    uint8_t h[16];
    bool zero;
};

int store_write(struct store_vol *v, const void *buf, uint64_t off,
                uint32_t len, unsigned flags)
{
    struct store *st = v->st;
    int rc = check_range(v, off, len, true);
    if (rc || len == 0)
        return rc;
    const uint8_t *src = buf;
    uint8_t tmp[2][STORE_BLOCK]; /* a head and a tail partial block */
    uint64_t b0 = off / STORE_BLOCK;
    size_t nb = (off + len + STORE_BLOCK - 1) / STORE_BLOCK - b0;
    struct blk_pre small[16];
    struct blk_pre *pre = nb <= 16 ? small : malloc(nb * sizeof *pre);
    struct wbatch *wb = malloc(sizeof *wb);
    if (!pre || !wb) {
        rc = store_set_err(st, -ENOMEM, "out of memory");
        goto out_free;
    }
    wb->n = 0;
    wb->failed = false;
    /* all-zero test and hash of whole blocks: no lock needed */
    uint64_t end = off + len;
    for (uint64_t pos = off; pos < end;) {
        uint64_t boff = pos % STORE_BLOCK, n = STORE_BLOCK - boff;
        if (n > end - pos)
            n = end - pos;
        if (n == STORE_BLOCK) {
            struct blk_pre *p = &pre[pos / STORE_BLOCK - b0];
            p->zero = all_zero(src + (pos - off));
            if (!p->zero)
                store_hash(src + (pos - off), p->h);
        }
        pos += n;
    }
    MDB_cursor *c;
    bool presync = false, fua = false;
    uint64_t fua_upto = 0;
    unsigned kick = 0;
    pthread_mutex_lock(&st->mu);
    c = NULL;
    if ((rc = store_failed_l(st)) || (rc = map_cursor_l(st, &c)))
        goto out;
    st->txn_writes = true;
    for (uint64_t pos = off; pos < end && !rc;) {
        uint64_t b = pos / STORE_BLOCK, boff = pos % STORE_BLOCK;
        uint64_t n = STORE_BLOCK - boff;
        if (n > end - pos)
            n = end - pos;
        struct blk_pre *p = &pre[b - b0];
        /* a block dirties at most a map, a refs and a free-list leaf */
        if ((rc = cursor_checkpoint_l(st, &c, wb, 8, st->reserve)))
            break;
        if (n == STORE_BLOCK) {
            rc = write_block_l(st, c, wb, v->node, b, src + (pos - off),
                               p->zero, p->h);
        } else {
            uint8_t *t = tmp[pos == off ? 0 : 1];
            rc = read_block_l(st, c, v->node, b, t);
            if (!rc) {
                memcpy(t + boff, src + (pos - off), n);
                p->zero = all_zero(t);
                if (!p->zero)
                    store_hash(t, p->h);
                rc = write_block_l(st, c, wb, v->node, b, t, p->zero, p->h);
            }
        }
        pos += n;
    }
    /* always: the txn names the pending run's slots even if a later block
     * failed (say, ENOSPC) */
    int wrc = wb_flush_l(st, wb);
    if (!rc)
        rc = wrc;
    if (c)
        mdb_cursor_close(c);
    if (wb->failed || st->txn_broken)
        store_abort_l(st); /* acknowledged writes went with the txn */
    if (!rc && len >= STORE_JOURNAL_BIG && !st->jreplay)
        st->jskip = true;
    else if (!rc)
        store_journal_add_l(st, JR_WRITE, v->node, off, len, 0, buf);
    if (!rc && (flags & STORE_FUA))
        rc = store_sync_begin_l(st, &fua_upto);
    if (rc == 1) {
        fua = true;
        rc = 0;
    }
    if (!rc && store_commit_due_l(st, 1) && !st->presync_busy)
        presync = st->presync_busy = true;
    /* A kick can block in the block layer for as long as the device
     * queue is busy (measured: up to 350 ms); a 1 MiB request pays it
     * once per 1 MiB and gets a shorter commit fdatasync for it, while
     * 4 KiB writes paid it as their slowest 0.1% (p99.9 of random writes
     * at QD16: 125-150 ms with kicks, 25 ms without). */
    if (len >= STORE_JOURNAL_BIG && st->chunks_unsynced >= 256) {
        kick = st->chunks_unsynced;
        st->chunks_unsynced = 0;
    }
out:
    pthread_mutex_unlock(&st->mu);
    /* start writeback early so that the commit's fdatasync waits less */
    if (kick)
        sync_file_range(st->chunk_fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    if (presync) {
        int rc2 = store_presync(st);
        if (!rc)
            rc = rc2;
    }
    if (fua && !rc)
        rc = store_sync_end(st, fua_upto);
out_free:
    if (pre != small)
        free(pre);
    free(wb);
    return rc;
}

/* Zero whole blocks [b0, b1) of head, touching only existing map keys
 * unless nohole (which must store an entry per block). */
static int zero_range_l(struct store *st, MDB_cursor **c, uint32_t head,
                        uint64_t b0, uint64_t b1, bool nohole)
{
    int rc = 0;
    if (nohole) {
        for (uint64_t b = b0; b < b1 && !rc; b++) {
            if ((rc = cursor_checkpoint_l(st, c, NULL, 8, st->reserve / 4)))
                break;
            rc = zero_block_l(st, *c, head, b, true);
        }
        return rc;
    }
    uint8_t kb[MAP_KEY];
    for (uint64_t b = b0; b < b1 && !rc;) {
        map_key(kb, b, UINT32_MAX);
        MDB_val k = {MAP_KEY, kb}, d;
        int mrc = mdb_cursor_get(*c, &k, &d, MDB_SET_RANGE);
        if (mrc == MDB_NOTFOUND)
            break;
        if (mrc)
            return store_mdb_err(st, mrc, "map");
        uint64_t blk = map_key_block(&k);
        if (blk >= b1)
            break;
        if ((rc = cursor_checkpoint_l(st, c, NULL, 8, st->reserve / 8)))
            break;
        rc = zero_block_l(st, *c, head, blk, false);
        st->txn_ops++;
        b = blk + 1;
    }
    return rc;
}

int store_zero(struct store_vol *v, uint64_t off, uint64_t len, unsigned flags)
{
    struct store *st = v->st;
    int rc = check_range(v, off, len, true);
    if (rc || len == 0)
        return rc;
    bool nohole = flags & STORE_NO_HOLE;
    uint8_t tmp[STORE_BLOCK];
    MDB_cursor *c;
    pthread_mutex_lock(&st->mu);
    c = NULL;
    if ((rc = store_failed_l(st)) ||
        (rc = store_room_l(st, 16, st->reserve / 4)) ||
        (rc = map_cursor_l(st, &c)))
        goto out;
    st->txn_writes = true;
    uint64_t end = off + len;
    uint64_t fb0 = (off + STORE_BLOCK - 1) / STORE_BLOCK; /* full blocks */
    uint64_t fb1 = end / STORE_BLOCK;
    /* partial blocks at either end: read-modify-write */
    uint64_t parts[2] = {off / STORE_BLOCK, (end - 1) / STORE_BLOCK};
    for (int i = 0; i < 2 && !rc; i++) {
        uint64_t b = parts[i];
        if (i == 1 && b == parts[0])
            break;
        uint64_t s = b * STORE_BLOCK, e = s + STORE_BLOCK;
        if (s >= off && e <= end)
            continue; /* a full block */
        uint64_t zs = s > off ? s : off, ze = e < end ? e : end;
        rc = read_block_l(st, c, v->node, b, tmp);
        if (!rc) {
            memset(tmp + (zs - s), 0, ze - zs);
            if (nohole && all_zero(tmp))
                rc = zero_block_l(st, c, v->node, b, true);
            else
                rc = write_block_hash_l(st, c, v->node, b, tmp);
        }
    }
    if (!rc && fb0 < fb1)
        rc = zero_range_l(st, &c, v->node, fb0, fb1, nohole);
    if (c)
        mdb_cursor_close(c);
    if (st->txn_broken)
        store_abort_l(st);
    if (!rc)
        store_journal_add_l(st, JR_ZERO, v->node, off, len,
                            flags & STORE_NO_HOLE, NULL);
    uint64_t fua_upto = 0;
    if (!rc && (flags & STORE_FUA))
        rc = store_sync_begin_l(st, &fua_upto);
out:
    pthread_mutex_unlock(&st->mu);
    if (rc == 1)
        rc = store_sync_end(st, fua_upto);
    return rc;
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
    unsigned n = 0, scanned = 0;
    uint64_t b0 = off / STORE_BLOCK;
    uint64_t b1 = (off + len + STORE_BLOCK - 1) / STORE_BLOCK;
    uint64_t cur = b0;
    const unsigned hz = STORE_EXT_HOLE | STORE_EXT_ZERO;
    uint8_t kb[MAP_KEY];
    MDB_cursor *c;
    pthread_mutex_lock(&st->mu);
    if ((rc = map_cursor_l(st, &c))) {
        pthread_mutex_unlock(&st->mu);
        free(e);
        return rc;
    }
    while (cur < b1 && n < EXT_MAX - 1 && scanned < EXT_SCAN_BLOCKS) {
        map_key(kb, cur, UINT32_MAX);
        MDB_val k = {MAP_KEY, kb}, d;
        int mrc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
        if (mrc && mrc != MDB_NOTFOUND) {
            rc = store_mdb_err(st, mrc, "map");
            break;
        }
        uint64_t blk = mrc ? b1 : map_key_block(&k);
        if (blk > b1)
            blk = b1;
        if (blk > cur) {
            ext_add(e, &n, cur * STORE_BLOCK, (blk - cur) * STORE_BLOCK, hz);
            cur = blk;
            continue;
        }
        uint64_t val;
        if ((rc = store_resolve_l(st, c, blk, v->node, &val)))
            break;
        unsigned fl = val == 0 ? hz : val == 1 ? STORE_EXT_ZERO : 0;
        ext_add(e, &n, blk * STORE_BLOCK, STORE_BLOCK, fl);
        cur = blk + 1;
        scanned++;
    }
    mdb_cursor_close(c);
    pthread_mutex_unlock(&st->mu);
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
