/* store-space.c: which slots of the chunk file hold chunks, and where new
 * chunks go.
 *
 * Each segment (STORE_SEG_SLOTS slots) has two bitmaps: `live`, the slots
 * allocated now (chunks of the index, of the generations not yet
 * checkpointed, and of writes under way), and `dur`, the slots holding a
 * chunk as of the last checkpoint, which is what the `space` DB persists
 * (one record per segment that has any: segment u32 BE -> dur bitmap).  A
 * segment is FREE (nothing live), DATA, or LOG (summary blocks of the log,
 * store-log.c; never persisted: the log chain says which they are).
 *
 * Invariants (numbers as in doc/design.md):
 *  3. a slot is live iff it is named by a refs record of the index, by a
 *     new chunk of a generation, or by a write under way; slots 0 and 1
 *     are always live.
 *  4. a slot freed by a checkpoint stays live (not reusable) until that
 *     checkpoint's commit is durable and no operation that started before
 *     it is still running (store_space_release, under the gate).
 *
 * Allocation: one cursor in the open segment takes its free slots in
 * order (appending, in a fresh
 * segment), and when the segment is used up it takes a wholly free segment
 * if there is one (but the log's reserve), else the one with most free
 * slots once free slots are a 32nd of the file (F2FS's SSR: slots
 * freed by overwrites are reused rather than the file growing), else a new
 * segment at the end of the file, reserved in the file system first.  All
 * under space.mu, a leaf lock.
 *
 * The index has room too (store_room_refresh): LMDB's file is reserved
 * ahead of its end (fallocate, so that a commit cannot fail for space) and
 * bounded by the map size; writes are refused (ENOSPC) once what the
 * generations would take and a reserve no longer fit, so that
 * a checkpoint always has room and trims and deletes, which free space,
 * still go through.
 */
#include "store-int.h"

#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define SEG_LOG_RESERVE                                                        \
    2u /* free segments data may not take when the                             \
          file system is full: the log's */

int store_space_init(struct store *st, uint32_t nsegs)
{
    struct store_space *sp = &st->space;
    pthread_mutex_init(&sp->mu, NULL);
    sp->cap = nsegs < 16 ? 16 : nsegs;
    sp->segs = calloc(sp->cap, sizeof *sp->segs);
    if (!sp->segs)
        return store_set_err(st, -ENOMEM, "out of memory (space map)");
    sp->nsegs = nsegs ? nsegs : 1;
    /* slots 0 (the header) and 1 ("allocated zero") are never chunks */
    sp->segs[0].live[0] = sp->segs[0].dur[0] = 3;
    sp->segs[0].nlive = 2;
    sp->segs[0].state = sp->segs[0].state_dur = SEG_DATA;
    sp->nlive = 2;
    return 0;
}

void store_space_free(struct store *st)
{
    free(st->space.segs);
    free(st->space.release);
    free(st->space.undo);
    st->space.undo = NULL;
    st->space.segs = NULL;
    st->space.release = NULL;
    pthread_mutex_destroy(&st->space.mu);
}

static int grow_l(struct store *st, uint32_t n)
{
    struct store_space *sp = &st->space;
    if (n <= sp->cap)
        return 0;
    uint32_t cap = sp->cap;
    while (cap < n)
        cap *= 2;
    struct seg_info *s = realloc(sp->segs, (size_t)cap * sizeof *s);
    if (!s)
        return store_set_err(st, -ENOMEM, "out of memory (space map)");
    memset(s + sp->cap, 0, (size_t)(cap - sp->cap) * sizeof *s);
    sp->segs = s;
    sp->cap = cap;
    return 0;
}

static unsigned popcount_seg(const uint64_t *w)
{
    unsigned n = 0;
    for (unsigned i = 0; i < STORE_SEG_WORDS; i++)
        n += (unsigned)__builtin_popcountll(w[i]);
    return n;
}

/* Load the `space` DB (at open, before the replay). */
int store_space_load(struct store *st, MDB_txn *txn)
{
    struct store_space *sp = &st->space;
    MDB_cursor *c;
    MDB_val k, d;
    int rc = mdb_cursor_open(txn, st->idx.space, &c);
    if (rc)
        return store_mdb_err(st, rc, "space");
    for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        if (k.mv_size != 4 || d.mv_size != sizeof sp->segs[0].dur) {
            mdb_cursor_close(c);
            return store_set_err(st, -EIO, "space: malformed record");
        }
        uint32_t seg = get_be32(k.mv_data);
        if ((rc = grow_l(st, seg + 1))) {
            mdb_cursor_close(c);
            return rc;
        }
        if (seg >= sp->nsegs)
            sp->nsegs = seg + 1;
        struct seg_info *s = &sp->segs[seg];
        memcpy(s->dur, d.mv_data, sizeof s->dur);
        if (seg == 0)
            s->dur[0] |= 3;
        memcpy(s->live, s->dur, sizeof s->live);
        sp->nlive -= s->nlive;
        s->nlive = (uint16_t)popcount_seg(s->live);
        sp->nlive += s->nlive;
        s->state = s->state_dur = s->nlive ? SEG_DATA : SEG_FREE;
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND)
        return store_mdb_err(st, rc, "space");
    /* the file's own size says how many segments exist */
    uint64_t slots = store_space_slots(st);
    uint32_t fsegs =
        (uint32_t)((slots + STORE_SEG_SLOTS - 1) / STORE_SEG_SLOTS);
    if (fsegs > sp->nsegs) {
        if ((rc = grow_l(st, fsegs)))
            return rc;
        sp->nsegs = fsegs;
    }
    /* whole segments in the file have their space; a partial last one is
     * reserved when first used, and so is an empty one with a hole (it
     * was punched out: store_space_return) */
    sp->prealloc = (uint32_t)(slots / STORE_SEG_SLOTS);
    for (uint32_t i = 1; i < sp->nsegs; i++) {
        off_t off = (off_t)i * STORE_SEG_SLOTS * STORE_BLOCK;
        off_t hole =
            sp->segs[i].nlive ? -1 : lseek(st->chunk_fd, off, SEEK_HOLE);
        sp->segs[i].holed =
            !sp->segs[i].nlive &&
            (hole < 0 || hole < off + (off_t)STORE_SEG_SLOTS * STORE_BLOCK);
    }
    return 0;
}

/* Slots the chunk file spans now (its size). */
uint64_t store_space_slots(struct store *st)
{
    off_t end = lseek(st->chunk_fd, 0, SEEK_END);
    return end > 0 ? (uint64_t)end / STORE_BLOCK : 0;
}

static bool seg_usable_l(struct store_space *sp, uint32_t i)
{
    const struct seg_info *s = &sp->segs[i];
    return s->state != SEG_LOG && !s->owner && s->nlive < STORE_SEG_SLOTS;
}

/* A new segment at the end of the file, its space reserved. */
static int append_seg_l(struct store *st, uint32_t *seg)
{
    struct store_space *sp = &st->space;
    if (sp->nsegs >= (STORE_MAX_BLOCKS >> STORE_SEG_SHIFT))
        return store_set_err(st, -ENOSPC,
                             "%s-chunks: the file is at its "
                             "largest",
                             st->path);
    int rc = grow_l(st, sp->nsegs + 1);
    if (rc)
        return rc;
    if (sp->prealloc <= sp->nsegs) {
        if ((rc = store_seg_prealloc(st, sp->nsegs))) {
            sp->full = true;
            return rc;
        }
        sp->prealloc = sp->nsegs + 1;
    }
    sp->segs[sp->nsegs] = (struct seg_info){0};
    sp->full = false;
    *seg = sp->nsegs++;
    return 0;
}

/* Pick the segment a cursor moves to.  For chunks (data): a wholly free
 * segment while more than SEG_LOG_RESERVE are free, else a new one at the
 * end of the file, else the one with most free slots (SSR), else -ENOSPC.
 * For the log: a free one, else a new one.  So the log always finds the
 * segments it needs to record trims and deletes on a full disk. */
static int pick_seg_l(struct store *st, bool data, uint32_t *out)
{
    struct store_space *sp = &st->space;
    uint32_t best = 0, best_free = 0, nfree = 0, first_free = 0;
    bool have_best = false;
    for (uint32_t i = 0; i < sp->nsegs; i++) {
        if (!seg_usable_l(sp, i))
            continue;
        uint32_t f = STORE_SEG_SLOTS - sp->segs[i].nlive;
        if (f == STORE_SEG_SLOTS) {
            if (!nfree++)
                first_free = i;
        } else if (f > best_free) {
            best_free = f;
            best = i;
            have_best = true;
        }
    }
    if (nfree && (!data || nfree > SEG_LOG_RESERVE)) {
        *out = first_free;
        return 0;
    }
    /* slots freed inside segments are reused before the file grows once
     * they are a 32nd of it (random overwrites scatter them) */
    uint64_t slots = (uint64_t)sp->nsegs * STORE_SEG_SLOTS;
    if (data && have_best && best_free >= 16 &&
        (slots - sp->nlive) * 32 >= slots) {
        *out = best;
        return 0;
    }
    int rc = append_seg_l(st, out);
    if (rc != -ENOSPC)
        return rc;
    if (data && have_best) {
        *out = best;
        return 0;
    }
    return store_set_err(st, -ENOSPC,
                         "%s-chunks: no space left on the file system for "
                         "new chunks (trim or delete to free some)",
                         st->path);
}

/* Keep SEG_LOG_RESERVE free segments for the log (at open, best effort). */
void store_space_reserve(struct store *st)
{
    struct store_space *sp = &st->space;
    pthread_mutex_lock(&sp->mu);
    uint32_t nfree = 0;
    for (uint32_t i = 0; i < sp->nsegs; i++)
        nfree += seg_usable_l(sp, i) && sp->segs[i].nlive == 0;
    for (uint32_t seg; nfree < SEG_LOG_RESERVE; nfree++)
        if (append_seg_l(st, &seg))
            break;
    pthread_mutex_unlock(&sp->mu);
}

/* The file system space of a segment the file does not cover whole yet. */
static int ensure_prealloc_l(struct store *st, uint32_t seg)
{
    struct store_space *sp = &st->space;
    if (seg < sp->prealloc && !sp->segs[seg].holed)
        return 0;
    int rc = store_seg_prealloc(st, seg);
    if (rc) {
        sp->full = true;
        return rc;
    }
    sp->segs[seg].holed = 0;
    if (seg + 1 > sp->prealloc && seg + 1 >= sp->nsegs)
        sp->prealloc = seg + 1;
    return 0;
}

static void set_live_l(struct store_space *sp, uint64_t slot)
{
    struct seg_info *s = &sp->segs[slot >> STORE_SEG_SHIFT];
    uint32_t i = slot & (STORE_SEG_SLOTS - 1);
    uint64_t bit = 1ULL << (i % 64);
    if (!(s->live[i / 64] & bit)) {
        s->live[i / 64] |= bit;
        s->nlive++;
        sp->nlive++;
        if (s->state == SEG_FREE)
            s->state = SEG_DATA;
    }
}

static void clear_live_l(struct store_space *sp, uint64_t slot)
{
    struct seg_info *s = &sp->segs[slot >> STORE_SEG_SHIFT];
    uint32_t i = slot & (STORE_SEG_SLOTS - 1);
    uint64_t bit = 1ULL << (i % 64);
    if (s->live[i / 64] & bit) {
        s->live[i / 64] &= ~bit;
        s->nlive--;
        sp->nlive--;
        if (!s->nlive && s->state == SEG_DATA)
            s->state = SEG_FREE;
    }
}

/* n slots for new chunks of write shard `shard`, in ascending order and as
 * contiguous as the free space allows.  0 or -ENOSPC (nothing taken). */
int store_space_alloc(struct store *st, unsigned shard, uint64_t *slots,
                      unsigned n)
{
    struct store_space *sp = &st->space;
    /* one cursor for all shards: concurrent writes share the open segment
     * (each shard with its own would keep up to 16 segments half filled:
     * 64 MiB of a small image) */
    struct alloc_cursor *c = &sp->cur[0];
    (void)shard;
    unsigned got = 0;
    int rc = 0;
    pthread_mutex_lock(&sp->mu);
    while (got < n) {
        if (!c->seg || sp->segs[c->seg - 1].state == SEG_LOG) {
            uint32_t seg;
            if ((rc = pick_seg_l(st, true, &seg)) ||
                (rc = ensure_prealloc_l(st, seg)))
                break;
            c->seg = seg + 1;
            c->pos = 0;
            sp->segs[seg].owner = 1;
            if (sp->segs[seg].state == SEG_FREE)
                sp->segs[seg].state = SEG_DATA;
        }
        uint32_t cseg = c->seg - 1;
        struct seg_info *s = &sp->segs[cseg];
        while (got < n && c->pos < STORE_SEG_SLOTS) {
            uint32_t w = c->pos / 64;
            uint64_t freebits = ~s->live[w] & (~0ULL << (c->pos % 64));
            if (!freebits) {
                c->pos = (w + 1) * 64;
                continue;
            }
            uint32_t i = w * 64 + (uint32_t)__builtin_ctzll(freebits);
            uint64_t slot = ((uint64_t)cseg << STORE_SEG_SHIFT) | i;
            set_live_l(sp, slot);
            slots[got++] = slot;
            c->pos = i + 1;
        }
        if (c->pos >= STORE_SEG_SLOTS) {
            s->owner = 0;
            c->seg = 0;
        }
    }
    if (rc && got) { /* all or nothing */
        for (unsigned i = 0; i < got; i++)
            clear_live_l(sp, slots[i]);
    }
    pthread_mutex_unlock(&sp->mu);
    return rc;
}

/* Give back slots that were allocated but never named (a failed write). */
void store_space_unalloc(struct store *st, const uint64_t *slots, unsigned n)
{
    pthread_mutex_lock(&st->space.mu);
    for (unsigned i = 0; i < n; i++)
        clear_live_l(&st->space, slots[i]);
    pthread_mutex_unlock(&st->space.mu);
}

/* A replayed new chunk's slot is live again. */
void store_space_mark(struct store *st, uint64_t slot)
{
    pthread_mutex_lock(&st->space.mu);
    if (grow_l(st, (uint32_t)(slot >> STORE_SEG_SHIFT) + 1) == 0) {
        if ((slot >> STORE_SEG_SHIFT) >= st->space.nsegs)
            st->space.nsegs = (uint32_t)(slot >> STORE_SEG_SHIFT) + 1;
        set_live_l(&st->space, slot);
    }
    pthread_mutex_unlock(&st->space.mu);
}

bool store_space_is_live(struct store *st, uint64_t slot)
{
    struct store_space *sp = &st->space;
    pthread_mutex_lock(&sp->mu);
    bool live = false;
    uint32_t seg = (uint32_t)(slot >> STORE_SEG_SHIFT);
    if (seg < sp->nsegs && sp->segs[seg].state == SEG_DATA) {
        uint32_t i = slot & (STORE_SEG_SLOTS - 1);
        live = sp->segs[seg].live[i / 64] >> (i % 64) & 1;
    }
    pthread_mutex_unlock(&sp->mu);
    return live;
}

/* A free segment for state (the log's), taken whole. */
int store_space_take_seg(struct store *st, uint8_t state, uint32_t *seg)
{
    struct store_space *sp = &st->space;
    pthread_mutex_lock(&sp->mu);
    int rc = pick_seg_l(st, false, seg);
    if (!rc)
        rc = ensure_prealloc_l(st, *seg);
    if (!rc) {
        sp->segs[*seg].state = state;
        sp->segs[*seg].owner = 0;
    }
    pthread_mutex_unlock(&sp->mu);
    return rc;
}

/* A segment's state, as the log or the replay knows it. */
void store_space_set_state(struct store *st, uint32_t seg, uint8_t state)
{
    struct store_space *sp = &st->space;
    pthread_mutex_lock(&sp->mu);
    if (grow_l(st, seg + 1) == 0) {
        if (seg >= sp->nsegs)
            sp->nsegs = seg + 1;
        struct seg_info *s = &sp->segs[seg];
        s->state = state == SEG_FREE && s->nlive ? SEG_DATA : state;
        for (unsigned i = 0; i < STORE_NSHARD_MAX; i++)
            if (sp->cur[i].seg == seg + 1 && state == SEG_LOG)
                sp->cur[i].seg = 0;
        if (state == SEG_LOG)
            s->owner = 0;
    }
    pthread_mutex_unlock(&sp->mu);
}

/* The checkpoint's view (its thread only): slot holds a chunk of the index
 * being committed, or no longer. */
int store_space_dur(struct store *st, uint64_t slot, bool live)
{
    struct store_space *sp = &st->space;
    uint32_t i = slot & (STORE_SEG_SLOTS - 1);
    uint64_t bit = 1ULL << (i % 64);
    /* sp->segs is read under sp->mu only: a writer taking a new segment
     * may move the array (grow_l), and a bit set in the old one is lost */
    pthread_mutex_lock(&sp->mu);
    struct seg_info *s = &sp->segs[slot >> STORE_SEG_SHIFT];
    if (!(s->dur[i / 64] & bit) == !live) {
        pthread_mutex_unlock(&sp->mu);
        return 0;
    }
    /* the change is noted first, so that a failed txn can undo it */
    if (sp->nundo == sp->undo_cap) {
        size_t cap = sp->undo_cap ? 2 * sp->undo_cap : 1024;
        uint64_t *u = realloc(sp->undo, cap * sizeof *u);
        if (!u) {
            pthread_mutex_unlock(&sp->mu);
            return store_set_err(st, -ENOMEM, "out of memory");
        }
        sp->undo = u;
        sp->undo_cap = cap;
    }
    sp->undo[sp->nundo++] = slot;
    s->dur[i / 64] ^= bit;
    s->dirty = 1;
    pthread_mutex_unlock(&sp->mu);
    return 0;
}

/* Slot is freed by the checkpoint being built: reusable after its commit
 * (store_space_release). */
int store_space_free_later(struct store *st, uint64_t slot)
{
    struct store_space *sp = &st->space;
    if (sp->nrelease == sp->release_cap) {
        size_t cap = sp->release_cap ? 2 * sp->release_cap : 4096;
        uint64_t *r = realloc(sp->release, cap * sizeof *r);
        if (!r)
            return store_set_err(st, -ENOMEM, "out of memory");
        sp->release = r;
        sp->release_cap = cap;
    }
    sp->release[sp->nrelease++] = slot;
    return 0;
}

/* After the commit, under the gate held exclusive (invariant 4). */
void store_space_release(struct store *st)
{
    struct store_space *sp = &st->space;
    pthread_mutex_lock(&sp->mu);
    for (size_t i = 0; i < sp->nrelease; i++)
        clear_live_l(sp, sp->release[i]);
    sp->nrelease = 0;
    if (sp->release_cap > 65536) {
        free(sp->release);
        sp->release = NULL;
        sp->release_cap = 0;
    }
    pthread_mutex_unlock(&sp->mu);
}

/* A segment whose space may go back to the file system: nothing in it,
 * now or as of the last commit, and nobody allocating or logging in it. */
static bool seg_empty_l(const struct seg_info *s)
{
    if (s->nlive || s->state != SEG_FREE || s->owner)
        return false;
    for (unsigned w = 0; w < STORE_SEG_WORDS; w++)
        if (s->dur[w])
            return false;
    return true;
}

#define OWNER_RETURNING 0xff /* seg_info.owner: being punched out */
#define RETURN_BATCH 256u    /* segments punched per call (1 GiB) */

/* Give the space of empty segments back to the file system: those inside
 * the chunk file are punched out (FALLOC_FL_PUNCH_HOLE; reserved again
 * when next used: ensure_prealloc_l), then empty segments at its end are
 * truncated away; the first SEG_LOG_RESERVE empty ones are kept for the
 * log.  Called by the checkpoint thread after store_space_release, so a
 * segment's freeing is durable (the commit names none of its slots) and
 * no operation that could read it is running before its bytes go.  The
 * punches run outside space.mu (writers allocate meanwhile; the segments
 * are marked so that nobody takes them), at most RETURN_BATCH per call;
 * a failure (a file system that cannot punch) leaves the space in use. */
void store_space_return(struct store *st)
{
    struct store_space *sp = &st->space;
    uint32_t punch[RETURN_BATCH];
    unsigned npunch = 0;
    pthread_mutex_lock(&sp->mu);
    uint32_t kept = 0;
    for (uint32_t i = 1; i < sp->nsegs && npunch < RETURN_BATCH; i++) {
        struct seg_info *s = &sp->segs[i];
        if (!seg_empty_l(s) || s->holed)
            continue;
        if (kept < SEG_LOG_RESERVE) {
            kept++;
            continue;
        }
        s->owner = OWNER_RETURNING;
        punch[npunch++] = i;
    }
    pthread_mutex_unlock(&sp->mu);
    bool ok[RETURN_BATCH];
    struct timespec t0;
    store_now(&t0);
    for (unsigned j = 0; j < npunch; j++)
        ok[j] =
            fallocate(st->chunk_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      (off_t)punch[j] * STORE_SEG_SLOTS * STORE_BLOCK,
                      (off_t)STORE_SEG_SLOTS * STORE_BLOCK) == 0;
    long ms = store_ms_since(&t0);
    pthread_mutex_lock(&sp->mu);
    for (unsigned j = 0; j < npunch; j++) {
        struct seg_info *s = &sp->segs[punch[j]];
        s->owner = 0;
        if (ok[j])
            s->holed = 1;
    }
    sp->return_ms += (uint64_t)ms;
    /* the tail: empty segments past the last one in use, punched already
     * (so the log's reserve, which is not punched, stays) */
    uint32_t n = sp->nsegs;
    while (n > 1 && seg_empty_l(&sp->segs[n - 1]) && sp->segs[n - 1].holed)
        n--;
    if (n < sp->nsegs && ftruncate(st->chunk_fd, (off_t)n * STORE_SEG_SLOTS *
                                                     STORE_BLOCK) == 0) {
        for (uint32_t i = n; i < sp->nsegs; i++)
            sp->segs[i] = (struct seg_info){0};
        for (unsigned c = 0; c < STORE_NSHARD_MAX; c++)
            if (sp->cur[c].seg > n)
                sp->cur[c].seg = 0;
        sp->nsegs = n;
        if (sp->prealloc > n)
            sp->prealloc = n;
    }
    pthread_mutex_unlock(&sp->mu);
}

/* After a failed txn: the dur bits it changed go back (its decisions may
 * differ when it is tried again), newest first. */
void store_space_revert(struct store *st)
{
    struct store_space *sp = &st->space;
    pthread_mutex_lock(&sp->mu);
    while (sp->nundo) {
        uint64_t slot = sp->undo[--sp->nundo];
        uint32_t i = slot & (STORE_SEG_SLOTS - 1);
        sp->segs[slot >> STORE_SEG_SHIFT].dur[i / 64] ^= 1ULL << (i % 64);
    }
    pthread_mutex_unlock(&sp->mu);
}

/* Write the `space` records of the segments whose dur bitmap changed (the
 * flags are cleared once the txn commits: store_space_persisted). */
int store_space_persist(struct store *st, MDB_txn *txn)
{
    struct store_space *sp = &st->space;
    int rc = 0;
    pthread_mutex_lock(&sp->mu);
    for (uint32_t i = 0; i < sp->nsegs && !rc; i++) {
        struct seg_info *s = &sp->segs[i];
        if (!s->dirty)
            continue;
        uint8_t kb[4];
        put_be32(kb, i);
        MDB_val k = {4, kb}, d = {sizeof s->dur, s->dur};
        bool any = false;
        for (unsigned w = 0; w < STORE_SEG_WORDS; w++)
            any |= s->dur[w] != 0;
        int mrc = any ? mdb_put(txn, st->idx.space, &k, &d, 0)
                      : mdb_del(txn, st->idx.space, &k, NULL);
        if (mrc && mrc != MDB_NOTFOUND)
            rc = store_mdb_err(st, mrc, "space");
    }
    pthread_mutex_unlock(&sp->mu);
    return rc;
}

void store_space_persisted(struct store *st)
{
    struct store_space *sp = &st->space;
    pthread_mutex_lock(&sp->mu);
    for (uint32_t i = 0; i < sp->nsegs; i++)
        sp->segs[i].dirty = 0;
    sp->nundo = 0;
    if (sp->undo_cap > 65536) {
        free(sp->undo);
        sp->undo = NULL;
        sp->undo_cap = 0;
    }
    pthread_mutex_unlock(&sp->mu);
}

/* ---- the index's room ---- */

#define ROOM_STEP 32768u /* pages of LMDB file reserved ahead (128 MiB) */
#define ROOM_MIN 64u

/* Pages on LMDB's free list, but those the last txn freed (LMDB reuses a
 * txn's pages only from the txn after next).  An estimate: a checkpoint
 * that finds less room than this says is split (store-ckpt.c). */
static uint64_t freelist_pages(struct store *st)
{
    MDB_txn *rt;
    MDB_cursor *c;
    MDB_val k, d;
    uint64_t n = 0, last = 0;
    if (mdb_txn_begin(st->idx.env, NULL, MDB_RDONLY, &rt))
        return 0;
    if (mdb_cursor_open(rt, 0 /* FREE_DBI */, &c) == 0) {
        while (mdb_cursor_get(c, &k, &d, MDB_NEXT) == 0)
            if (d.mv_size >= sizeof(size_t)) {
                last = *(const size_t *)d.mv_data;
                n += last;
            }
        mdb_cursor_close(c);
    }
    mdb_txn_abort(rt);
    return n - last;
}

static uint64_t fs_free(int fd, uint64_t *size)
{
    struct statvfs sv;
    if (fstatvfs(fd, &sv) < 0) {
        *size = UINT64_MAX / 2;
        return UINT64_MAX / 2;
    }
    *size = (uint64_t)sv.f_blocks * sv.f_frsize;
    return (uint64_t)sv.f_bavail * sv.f_frsize;
}

/* After a checkpoint (its thread) and at open: reserve LMDB file space
 * ahead, measure the room, the reserve, and the tree sizes the estimates
 * cap at. */
void store_room_refresh(struct store *st)
{
    struct store_idx *ix = &st->idx;
    MDB_envinfo ei;
    if (st->rdonly || mdb_env_info(ix->env, &ei))
        return;
    uint64_t map_pages = ix->map_size / ix->psize;
    uint64_t base = ei.me_last_pgno + 1;
    uint64_t map_room = map_pages > base ? map_pages - base : 0;
    uint64_t fs_size, want = fs_free(st->lock_fd, &fs_size) / 8 / ix->psize;
    want = want < ROOM_MIN ? ROOM_MIN : want > ROOM_STEP ? ROOM_STEP : want;
    if (want > map_room)
        want = map_room;
    uint64_t have = ix->alloc > base ? ix->alloc - base : 0;
    while (!ix->no_prealloc && have < want) {
        uint64_t n = want - have;
        if (fallocate(st->lock_fd, FALLOC_FL_KEEP_SIZE,
                      (off_t)((base + have) * ix->psize),
                      (off_t)(n * ix->psize)) == 0) {
            ix->alloc = base + have + n;
            have += n;
            break;
        }
        if (errno == EOPNOTSUPP || errno == ENOSYS) {
            ix->no_prealloc = true;
            break;
        }
        if (errno != ENOSPC && errno != EDQUOT)
            break;
        want = have + (want - have) / 2;
        if (want - have < ROOM_MIN)
            break;
    }
    if (ix->no_prealloc)
        have = map_room;
    uint64_t room = (have < map_room ? have : map_room) + freelist_pages(st);
    uint64_t r = map_pages / 64, fs = fs_size / 256 / ix->psize;
    if (r > fs)
        r = fs;
    r = r < 64 ? 64 : r > 4096 ? 4096 : r;
    MDB_txn *rt;
    MDB_stat ms;
    if (!mdb_txn_begin(ix->env, NULL, MDB_RDONLY, &rt)) {
        if (!mdb_stat(rt, ix->map, &ms))
            ix->leaves[0] = ms.ms_leaf_pages + ms.ms_branch_pages;
        if (!mdb_stat(rt, ix->refs, &ms))
            ix->leaves[1] = ms.ms_leaf_pages + ms.ms_branch_pages;
        if (!mdb_stat(rt, ix->hashes, &ms))
            ix->leaves[2] = ms.ms_leaf_pages + ms.ms_branch_pages;
        mdb_txn_abort(rt);
    }
    __atomic_store_n(&ix->reserve, r, __ATOMIC_RELAXED);
    __atomic_store_n(&ix->room, room, __ATOMIC_RELAXED);
}

static uint64_t cap(uint64_t touches, uint64_t leaves)
{
    return touches < leaves ? touches : leaves;
}

/* Pages a checkpoint of g may dirty, at most: the existing leaves it
 * touches (counted as writes enter it, capped by each tree's size: a txn
 * dirties a page once) and the new leaves its new entries fill (map 24,
 * refs 38, hashes 34 bytes an entry, pages three quarters full). */
uint64_t store_room_estimate(struct store *st, const struct gen *g)
{
    if (!g)
        return 0;
    const uint64_t *l = st->idx.leaves;
    uint64_t m = __atomic_load_n(&g->est_map, __ATOMIC_RELAXED);
    uint64_t r = __atomic_load_n(&g->est_ref, __ATOMIC_RELAXED);
    uint64_t h = __atomic_load_n(&g->est_hash, __ATOMIC_RELAXED);
    uint64_t n = __atomic_load_n(&g->nents, __ATOMIC_RELAXED);
    uint64_t nnew =
        __atomic_load_n(&g->new_bytes, __ATOMIC_RELAXED) / STORE_BLOCK;
    return cap(m, l[0]) + cap(r, l[1]) + cap(h, l[2]) +
           (n * 24 + nnew * (38 + 34)) / 3072 + 16;
}

/* May writes add to the index?  (Trims and deletes always may.) */
bool store_room_ok(struct store *st)
{
    uint64_t need = store_room_estimate(st, st->active) +
                    store_room_estimate(st, st->frozen);
    return need + __atomic_load_n(&st->idx.reserve, __ATOMIC_RELAXED) <=
           __atomic_load_n(&st->idx.room, __ATOMIC_RELAXED);
}
