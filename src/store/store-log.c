/* store-log.c: the log, which makes writes durable without the index.
 *
 * Every change to a volume (a new chunk written, an existing chunk
 * referenced again, a range zeroed) is a 32-byte entry, appended in the
 * order the changes enter the memtables; entries gather in a 4 KiB summary
 * block, and a block is written to the next slot of the current log
 * segment when it is full or when a FLUSH seals it (a sealed block is never
 * written again: the next entries go to the next block).  Tree operations
 * (snapshot, clone, rollback, delete, rename) are blocks of their own.
 * Chunk bytes are not in the log: a write puts them in their slot before
 * its entry is appended, and the entry carries the chunk's XXH3-128, so one
 * fdatasync of the chunk file makes both durable (store_log_sync: one
 * device cache flush per FLUSH).
 *
 * Block: a 64-byte header {"BSNAPLOG", lsn, sum, image UUID, version,
 * kind, count, seg_next} and 126 entries {type, flags, block 40 bits,
 * slot (or block count) 40 bits, node, hash}.  lsn numbers blocks
 * consecutively; sum is XXH3-64 of the block (sum field zero) seeded with
 * the image's secret key (meta, never shown) and the lsn, so a block a
 * guest wrote as data cannot pass for one.  The last block of a segment
 * names the next log segment; every log segment is zeroed and synced
 * before it joins the chain (store_log_prepare), so what recovery reads
 * past the last written block is zeros or a block of the wrong lsn.
 *
 * Recovery (store_log_read_*) starts at the position the last checkpoint
 * committed and stops at the first block that is not the next lsn or does
 * not check; the caller also stops at the first entry whose chunk does not
 * hash to its recorded value (torn data).  Every block written before a
 * completed sync is read back: a sync covers every block handed to the
 * kernel before it (invariant 10, doc/design.md).
 *
 * The tail record (slot 1, issue 20): after each sync, the lsn it made
 * durable is written, with the identity of this run (the "open" marker in
 * the index), to one of two 512-byte copies in turn.  It is not synced
 * itself: the next sync (or writeback) makes it durable, so it never
 * claims more than a completed sync covered, costs a pwrite per FLUSH and
 * no LMDB commit, and survives a killed process at once.  An open that
 * finds the image was not closed cleanly compares how far the log reaches
 * with it: missing, truncated or foreign log blocks are then known, not
 * silently taken for the log's end.
 *
 * Locks: log.mu guards the block being filled and the position (callers of
 * *_l hold it); log.sync_mu makes syncs take turns, so that one fdatasync
 * serves every FLUSH waiting behind it (and orders the tail records).
 */
#include "store-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <xxhash.h>

#define LOG_MAGIC "BSNAPLOG"
#define TAIL_MAGIC "BSNAPEND"
#define TAIL_SLOT 1u
#define TAIL_COPY 512u /* copies in separate sectors: one torn, one kept */
#define LOG_HDR 64u
#define LOG_ENT 32u
#define LOG_NENT ((STORE_BLOCK - LOG_HDR) / LOG_ENT) /* 126 */
enum { LB_ENTRIES = 1, LB_TREE = 2 };

struct log_hdr {
    char magic[8];
    uint64_t lsn;
    uint64_t sum;
    uint8_t uuid[16];
    uint32_t version;
    uint32_t kind;
    uint32_t n; /* entries, or tree record bytes */
    uint32_t seg_next;
    uint8_t pad[8];
};
_Static_assert(sizeof(struct log_hdr) == LOG_HDR, "log header size");

struct log_tail {
    char magic[8];
    uint8_t uuid[16]; /* the image */
    uint8_t run[16];  /* the open that wrote it */
    uint64_t seq;     /* tail records written by that open */
    uint64_t lsn;     /* every log block up to here is durable */
    uint64_t sum;     /* XXH3-64, seeded with the log key */
};
_Static_assert(sizeof(struct log_tail) == 64, "tail record size");

static uint64_t tail_sum(const struct store *st, struct log_tail *t)
{
    uint64_t saved = t->sum;
    t->sum = 0;
    uint64_t s = XXH3_64bits_withSeed(t, sizeof *t, st->log.key);
    t->sum = saved;
    return s;
}

/* Write copy seq % 2 of the tail record (or both: start).  The caller
 * syncs when it must be durable (log.sync_mu held, or before threads). */
static int tail_write(struct store *st, uint64_t lsn, bool both)
{
    uint8_t buf[2 * TAIL_COPY] = {0};
    struct log_tail t = {.seq = ++st->tail_seq, .lsn = lsn};
    memcpy(t.magic, TAIL_MAGIC, 8);
    memcpy(t.uuid, st->uuid, 16);
    memcpy(t.run, st->run, 16);
    t.sum = tail_sum(st, &t);
    memcpy(buf, &t, sizeof t);
    memcpy(buf + TAIL_COPY, &t, sizeof t);
    off_t off = (off_t)TAIL_SLOT * STORE_BLOCK;
    size_t n = both ? sizeof buf : TAIL_COPY;
    if (!both)
        off += (off_t)(t.seq % 2) * TAIL_COPY;
    if (pwrite(st->chunk_fd, buf, n, off) == (ssize_t)n)
        return 0;
    int e = errno ? errno : EIO;
    return store_set_err(st, -e,
                         "%s-chunks: write of the log's tail record "
                         "failed: %s",
                         st->path, strerror(e));
}

/* A read-write open starts its run: the tail says "nothing of this run yet"
 * in both copies, durably, before the index names the run. */
int store_log_tail_start(struct store *st)
{
    pthread_mutex_lock(&st->log.sync_mu);
    int rc = tail_write(st, st->log.next.lsn - 1, true);
    pthread_mutex_unlock(&st->log.sync_mu);
    return rc ? rc : store_seg_sync(st);
}

int store_log_tail_read(struct store *st, const uint8_t run[16], uint64_t *lsn)
{
    uint8_t buf[2 * TAIL_COPY];
    if (pread(st->chunk_fd, buf, sizeof buf, (off_t)TAIL_SLOT * STORE_BLOCK) !=
        (ssize_t)sizeof buf)
        return -ENOENT;
    bool found = false;
    for (unsigned c = 0; c < 2; c++) {
        struct log_tail t;
        memcpy(&t, buf + c * TAIL_COPY, sizeof t);
        if (memcmp(t.magic, TAIL_MAGIC, 8) || memcmp(t.uuid, st->uuid, 16) ||
            memcmp(t.run, run, 16) || tail_sum(st, &t) != t.sum)
            continue;
        if (!found || t.lsn > *lsn)
            *lsn = t.lsn;
        found = true;
    }
    return found ? 0 : -ENOENT;
}

const char *store_log_end_str(enum log_end why)
{
    switch (why) {
    case LOG_END_NONE:
        return "the end of what was read";
    case LOG_END_NOWHERE:
        return "nowhere (the log was never started)";
    case LOG_END_EOF:
        return "the end of the file (truncated?)";
    case LOG_END_ZERO:
        return "zeros (erased?)";
    case LOG_END_FOREIGN:
        return "a log block of another image";
    case LOG_END_LSN:
        return "a log block of another point in the log (an older copy?)";
    case LOG_END_SUM:
        return "a log block that fails its checksum (damaged)";
    case LOG_END_JUNK:
        return "not a log block (overwritten?)";
    case LOG_END_CHUNK:
        return "a log block naming a chunk whose bytes do not match it "
               "(damaged chunk data)";
    }
    return "?";
}

static uint64_t block_sum(const struct store *st, uint8_t *blk, uint64_t lsn)
{
    struct log_hdr *h = (struct log_hdr *)blk;
    uint64_t saved = h->sum;
    h->sum = 0;
    uint64_t s = XXH3_64bits_withSeed(blk, STORE_BLOCK, st->log.key ^ lsn);
    h->sum = saved;
    return s;
}

int store_log_init(struct store *st, const struct log_pos *p, uint64_t key)
{
    struct store_log *lg = &st->log;
    pthread_mutex_init(&lg->mu, NULL);
    pthread_mutex_init(&lg->sync_mu, NULL);
    lg->blk = aligned_alloc(STORE_BLOCK, STORE_BLOCK);
    if (!lg->blk)
        return store_set_err(st, -ENOMEM, "out of memory");
    memset(lg->blk, 0, STORE_BLOCK);
    lg->next = *p;
    lg->key = key;
    lg->written_lsn = lg->synced_lsn = p->lsn - 1;
    return p->seg ? store_log_chain_add(st, p->seg) : 0;
}

static int prepare(struct store *st, uint32_t *out);

/* Log segment seg joins the chain (log.mu held, or before threads start). */
int store_log_chain_add(struct store *st, uint32_t seg)
{
    struct store_log *lg = &st->log;
    if (lg->nchain && lg->chain[lg->nchain - 1] == seg)
        return 0;
    if (lg->nchain == lg->chain_cap) {
        size_t cap = lg->chain_cap ? 2 * lg->chain_cap : 8;
        uint32_t *c = realloc(lg->chain, cap * sizeof *c);
        if (!c)
            return store_set_err(st, -ENOMEM, "out of memory");
        lg->chain = c;
        lg->chain_cap = cap;
    }
    lg->chain[lg->nchain++] = seg;
    store_space_set_state(st, seg, SEG_LOG);
    return 0;
}

/* A checkpoint committed position pos: log segments before pos.seg hold
 * nothing needed any more and are free. */
void store_log_release(struct store *st, const struct log_pos *pos)
{
    struct store_log *lg = &st->log;
    pthread_mutex_lock(&lg->mu);
    size_t k = 0;
    while (k < lg->nchain && lg->chain[k] != pos->seg)
        k++;
    if (k < lg->nchain) {
        for (size_t i = 0; i < k; i++)
            store_space_set_state(st, lg->chain[i], SEG_FREE);
        memmove(lg->chain, lg->chain + k, (lg->nchain - k) * sizeof *lg->chain);
        lg->nchain -= k;
    }
    pthread_mutex_unlock(&lg->mu);
}

/* Start the log afresh in a new zeroed segment (after an open): nothing of
 * an earlier run's blocks can follow what is written from now on. */
int store_log_restart(struct store *st)
{
    struct store_log *lg = &st->log;
    uint32_t seg;
    int rc = prepare(st, &seg);
    if (rc)
        return rc;
    pthread_mutex_lock(&lg->mu);
    lg->next.seg = seg;
    lg->next.idx = 0;
    rc = store_log_chain_add(st, seg);
    pthread_mutex_unlock(&lg->mu);
    return rc;
}

void store_log_free(struct store *st)
{
    free(st->log.blk);
    free(st->log.chain);
    st->log.chain = NULL;
    st->log.blk = NULL;
    pthread_mutex_destroy(&st->log.mu);
    pthread_mutex_destroy(&st->log.sync_mu);
}

/* Zero a new log segment and make that durable (see the top). */
static int zero_seg(struct store *st, uint32_t seg)
{
    static const uint8_t zeros[64 * 1024];
    struct iovec iov[STORE_SEG_SLOTS * STORE_BLOCK / sizeof zeros];
    for (size_t i = 0; i < sizeof iov / sizeof iov[0]; i++)
        iov[i] = (struct iovec){(void *)zeros, sizeof zeros};
    int rc = store_seg_writev(st, (uint64_t)seg << STORE_SEG_SHIFT, iov,
                              (int)(sizeof iov / sizeof iov[0]));
    return rc ? rc : store_seg_sync(st);
}

/* A zeroed log segment for after the current one (the background thread
 * calls this ahead of need; the log does it itself if it must). */
static int prepare(struct store *st, uint32_t *out)
{
    uint32_t seg;
    int rc = store_space_take_seg(st, SEG_LOG, &seg);
    if (!rc && (rc = zero_seg(st, seg)))
        store_space_set_state(st, seg, SEG_FREE);
    if (!rc)
        *out = seg;
    return rc;
}

void store_log_prepare(struct store *st)
{
    struct store_log *lg = &st->log;
    pthread_mutex_lock(&lg->mu);
    bool need = !lg->next_seg && lg->next.idx >= STORE_SEG_SLOTS / 2;
    pthread_mutex_unlock(&lg->mu);
    uint32_t seg;
    if (!need || prepare(st, &seg))
        return;
    pthread_mutex_lock(&lg->mu);
    if (!lg->next_seg)
        lg->next_seg = seg;
    else
        store_space_set_state(st, seg, SEG_FREE);
    pthread_mutex_unlock(&lg->mu);
}

/* Write the block being filled (kind, n) at the log's next position. */
static int write_block_l(struct store *st, uint32_t kind, uint32_t n)
{
    struct store_log *lg = &st->log;
    if (lg->broken)
        return lg->broken;
    struct log_hdr *h = (struct log_hdr *)lg->blk;
    memcpy(h->magic, LOG_MAGIC, 8);
    h->lsn = lg->next.lsn;
    memcpy(h->uuid, st->uuid, 16);
    h->version = STORE_FORMAT_VERSION;
    h->kind = kind;
    h->n = n;
    h->seg_next = 0;
    int rc = 0;
    if (lg->next.idx == STORE_SEG_SLOTS - 1) {
        if (!lg->next_seg && (rc = prepare(st, &lg->next_seg)))
            goto fail;
        h->seg_next = lg->next_seg;
    }
    h->sum = block_sum(st, lg->blk, h->lsn);
    struct iovec iov = {lg->blk, STORE_BLOCK};
    rc = store_seg_writev(
        st, ((uint64_t)lg->next.seg << STORE_SEG_SHIFT) | lg->next.idx, &iov,
        1);
    if (rc)
        goto fail;
    __atomic_store_n(&lg->written_lsn, lg->next.lsn, __ATOMIC_RELEASE);
    lg->next.lsn++;
    if (lg->next.idx == STORE_SEG_SLOTS - 1) {
        lg->next.seg = lg->next_seg;
        lg->next.idx = 0;
        lg->next_seg = 0;
        store_log_chain_add(st, lg->next.seg); /* memory only: cannot fail
                                                  once the array has room */
    } else {
        lg->next.idx++;
    }
    memset(lg->blk, 0, STORE_BLOCK);
    lg->nent = 0;
    return 0;
fail:
    /* entries the block held were acknowledged: the image goes offline */
    lg->broken = rc;
    store_offline(st, rc, "a log write failed", store_errmsg());
    return rc;
}

/* Append an entry (log.mu held).  A failure to write a full block takes the
 * image offline (store_failed reports it). */
void store_log_add_l(struct store *st, const struct log_ent *e)
{
    struct store_log *lg = &st->log;
    uint8_t *p = lg->blk + LOG_HDR + lg->nent * LOG_ENT;
    p[0] = e->type;
    p[1] = e->flags;
    put_be40(p + 2, e->block);
    put_be40(p + 7, e->slot);
    memcpy(p + 12, &e->node, 4);
    memcpy(p + 16, e->hash, 16);
    if (lg->nent++ == 0)
        store_now(&lg->first_unsynced);
    if (lg->nent == LOG_NENT)
        write_block_l(st, LB_ENTRIES, lg->nent);
}

/* A tree record as a block of its own, after the entries before it. */
int store_log_add_tree_l(struct store *st, const void *rec, size_t len)
{
    struct store_log *lg = &st->log;
    if (len > STORE_BLOCK - LOG_HDR)
        return store_set_err(st, -EINVAL, "tree record too big");
    int rc = 0;
    if (lg->nent && (rc = write_block_l(st, LB_ENTRIES, lg->nent)))
        return rc;
    memcpy(lg->blk + LOG_HDR, rec, len);
    return write_block_l(st, LB_TREE, (uint32_t)len);
}

/* Hand the partial block to the kernel; *ticket: the lsn a sync must
 * reach for everything appended so far to be durable. */
int store_log_seal_l(struct store *st, uint64_t *ticket)
{
    struct store_log *lg = &st->log;
    int rc = 0;
    if (lg->nent)
        rc = write_block_l(st, LB_ENTRIES, lg->nent);
    *ticket = lg->written_lsn;
    return rc ? rc : lg->broken;
}

/* Make the log durable up to ticket: one fdatasync serves every caller
 * waiting behind it. */
int store_log_sync(struct store *st, uint64_t ticket)
{
    struct store_log *lg = &st->log;
    if (__atomic_load_n(&lg->synced_lsn, __ATOMIC_ACQUIRE) >= ticket)
        return 0;
    pthread_mutex_lock(&lg->sync_mu);
    int rc = 0;
    if (__atomic_load_n(&lg->synced_lsn, __ATOMIC_ACQUIRE) < ticket) {
        uint64_t upto = __atomic_load_n(&lg->written_lsn, __ATOMIC_ACQUIRE);
        if ((rc = store_seg_sync(st)) == 0) {
            __atomic_store_n(&lg->synced_lsn, upto, __ATOMIC_RELEASE);
            /* not synced: the next sync or writeback makes it durable, and
             * it claims only what this one covered (see the top) */
            if (tail_write(st, upto, false) && !st->tail_warned) {
                st->tail_warned = true;
                fprintf(stderr, "%s (an unclean stop may then go unnoticed)\n",
                        store_errmsg());
            }
        } else {
            store_offline(st, rc, "a log sync failed", store_errmsg());
        }
    }
    pthread_mutex_unlock(&lg->sync_mu);
    return rc;
}

/* FLUSH: everything appended so far made durable. */
int store_log_flush(struct store *st)
{
    uint64_t t;
    pthread_mutex_lock(&st->log.mu);
    int rc = store_log_seal_l(st, &t);
    pthread_mutex_unlock(&st->log.mu);
    return rc ? rc : store_log_sync(st, t);
}

/* ---- reading (recovery) ---- */

int store_log_read_open(struct store *st, const struct log_pos *from,
                        struct log_reader *r)
{
    memset(r, 0, sizeof *r);
    r->st = st;
    r->pos = *from;
    r->blk = aligned_alloc(STORE_BLOCK, STORE_BLOCK);
    if (!r->blk)
        return store_set_err(st, -ENOMEM, "out of memory");
    return 0;
}

void store_log_read_close(struct log_reader *r)
{
    free(r->blk);
    free(r->segs);
    r->blk = NULL;
    r->segs = NULL;
}

static int note_seg(struct log_reader *r, uint32_t seg)
{
    if (r->nsegs && r->segs[r->nsegs - 1] == seg)
        return 0;
    uint32_t *s = realloc(r->segs, (r->nsegs + 1) * sizeof *s);
    if (!s)
        return store_set_err(r->st, -ENOMEM, "out of memory");
    r->segs = s;
    r->segs[r->nsegs++] = seg;
    return 0;
}

/* Load the block at r->pos: 1 if it is the next one, 0 at the log's end. */
static int load_block(struct log_reader *r)
{
    struct store *st = r->st;
    uint64_t slot = ((uint64_t)r->pos.seg << STORE_SEG_SHIFT) | r->pos.idx;
    r->end_slot = slot;
    if (r->pos.seg == 0) {
        r->end = LOG_END_NOWHERE;
        return 0;
    }
    if ((slot + 1) > store_space_slots(st)) {
        r->end = LOG_END_EOF;
        return 0;
    }
    int rc = store_seg_read(st, slot, r->blk, STORE_BLOCK);
    if (rc)
        return rc;
    if ((rc = note_seg(r, r->pos.seg)))
        return rc;
    const struct log_hdr *h = (const struct log_hdr *)r->blk;
    if (memcmp(h->magic, LOG_MAGIC, 8)) {
        bool zero = true;
        for (size_t i = 0; i < STORE_BLOCK && zero; i++)
            zero = r->blk[i] == 0;
        r->end = zero ? LOG_END_ZERO : LOG_END_JUNK;
        return 0;
    }
    if (memcmp(h->uuid, st->uuid, 16)) {
        r->end = LOG_END_FOREIGN;
        return 0;
    }
    if (h->lsn != r->pos.lsn) {
        r->end = LOG_END_LSN;
        return 0;
    }
    if (h->version != STORE_FORMAT_VERSION ||
        block_sum(st, r->blk, h->lsn) != h->sum ||
        (h->kind == LB_ENTRIES && h->n > LOG_NENT) ||
        (h->kind == LB_TREE && h->n > STORE_BLOCK - LOG_HDR) ||
        (h->kind != LB_ENTRIES && h->kind != LB_TREE) ||
        (r->pos.idx == STORE_SEG_SLOTS - 1 && h->seg_next == 0)) {
        r->end = LOG_END_SUM;
        return 0;
    }
    r->end = LOG_END_NONE;
    r->tree = h->kind == LB_TREE;
    r->n = h->n;
    r->i = 0;
    r->pos.lsn++;
    if (r->pos.idx == STORE_SEG_SLOTS - 1) {
        r->pos.seg = h->seg_next;
        r->pos.idx = 0;
    } else {
        r->pos.idx++;
    }
    return 1;
}

/* The next entry (1, *e), or tree record (2, *tree of *tree_len bytes,
 * valid until the next call), or 0 at the end, or -errno. */
int store_log_read_next(struct log_reader *r, struct log_ent *e,
                        const void **tree, size_t *tree_len)
{
    for (;;) {
        if (!r->tree && r->i < r->n) {
            const uint8_t *p = r->blk + LOG_HDR + r->i++ * LOG_ENT;
            e->type = p[0];
            e->flags = p[1];
            e->block = get_be40(p + 2);
            e->slot = get_be40(p + 7);
            memcpy(&e->node, p + 12, 4);
            memcpy(e->hash, p + 16, 16);
            return 1;
        }
        int rc = load_block(r);
        if (rc <= 0)
            return rc;
        if (r->tree) {
            *tree = r->blk + LOG_HDR;
            *tree_len = r->n;
            r->n = 0;
            r->tree = false;
            return 2;
        }
    }
}
