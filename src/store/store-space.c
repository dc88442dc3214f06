/* store-space.c: a full disk or a full LMDB map must never cost a write
 * that was already acknowledged.
 *
 * Why this file exists: the store keeps one long-lived write txn that holds
 * up to a second of acknowledged (not yet flushed) writes.  If an LMDB
 * operation inside it failed with MDB_MAP_FULL, or its commit failed with
 * ENOSPC when LMDB extends its file, the txn would be lost and with it
 * writes the client was told were done: a file system on top would read
 * stale metadata.  So space is reserved before it is used:
 *
 *  - LMDB file: at every txn start the pages the txn may add past the end
 *    of the file are fallocate()d (FALLOC_FL_KEEP_SIZE: LMDB's view of the
 *    file does not change) and bounded by the map size; `room` is what the
 *    txn may dirty.  Writers check `room` before each block (with a reserve
 *    left for trims, deletes and the collector, which free space) and get
 *    ENOSPC, with the txn intact, when it is short; a txn close to its room
 *    is committed early (store_commit_due_l).
 *  - chunk file: new slots at its end are fallocate()d in steps before any
 *    byte is written to them, so a pwrite into a slot cannot fail for space;
 *    a slot that cannot be reserved is ENOSPC before the index changes.
 *
 * Reads go on when the disk is full; once space is freed (trim, delete +
 * collector) writes work again without a restart.  If a commit fails anyway
 * (a real I/O error), the acknowledged writes in it are gone: the store
 * then refuses all I/O (store_failed_l) rather than serve stale blocks.
 */
#include "store-int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/statvfs.h>

#define ROOM_STEP                                                              \
    STORE_ROOM_FULL         /* pages of LMDB file reserved ahead (128 MiB) */
#define ROOM_MIN 64u        /* smallest reservation tried */
#define SLOT_STEP_MIN 256u  /* chunk slots reserved ahead: 1 MiB ... */
#define SLOT_STEP_MAX 2048u /* ... to 8 MiB, 1/64 of the file */

/* Pages in LMDB's free list as of the last commit, but for those the last
 * txn freed (LMDB reuses a txn's pages only from the txn after next).  LMDB
 * lets only a read txn open a cursor on it; scanned when space is short. */
static uint64_t freelist_pages_l(struct store *st)
{
    MDB_txn *rt;
    MDB_cursor *c;
    MDB_val k, d;
    uint64_t n = 0, last = 0;
    if (mdb_txn_begin(st->env, NULL, MDB_RDONLY, &rt))
        return 0;
    if (mdb_cursor_open(rt, 0 /* FREE_DBI */, &c) == 0) {
        while (mdb_cursor_get(c, &k, &d, MDB_NEXT) == 0)
            if (d.mv_size >= sizeof(size_t)) {
                last = *(const size_t *)d.mv_data;
                n += last;
            }
        mdb_cursor_close(c);
    }
    n -= last;
    mdb_txn_abort(rt);
    return n;
}

static bool no_space(int e)
{
    return e == ENOSPC || e == EDQUOT || e == EFBIG;
}

/* Free bytes of fd's file system, and *size its total (large if unknown):
 * one fstatvfs. */
static uint64_t fs_free(int fd, uint64_t *size)
{
    struct statvfs sv;
    if (fstatvfs(fd, &sv) < 0) {
        if (size)
            *size = UINT64_MAX / 2;
        return UINT64_MAX / 2;
    }
    if (size)
        *size = (uint64_t)sv.f_blocks * sv.f_frsize;
    return (uint64_t)sv.f_bavail * sv.f_frsize;
}

/* Reserve [from, from + *n) pages of size unit in fd, halving *n on
 * ENOSPC down to min.  0 (with *n reserved), or -errno. */
static int reserve(struct store *st, int fd, uint64_t unit, uint64_t from,
                   uint64_t *n, uint64_t min)
{
    for (;;) {
        if (fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)(from * unit),
                      (off_t)(*n * unit)) == 0)
            return 0;
        int e = errno;
        if (e == EOPNOTSUPP || e == ENOSYS) {
            st->no_prealloc = true; /* tmpfs-less exotic fs: best effort */
            return 0;
        }
        if (!no_space(e) || *n <= min)
            return -e;
        *n /= 2;
    }
}

/* At a txn start: how many pages may this txn dirty? */
void store_space_refresh_l(struct store *st)
{
    if (st->rdonly || !st->env)
        return;
    MDB_envinfo ei;
    if (mdb_env_info(st->env, &ei))
        return;
    uint64_t map_pages = st->map_size / st->psize;
    uint64_t base = ei.me_last_pgno + 1; /* pages in use in the file */
    uint64_t map_room = map_pages > base ? map_pages - base : 0;
    /* reserve ahead 128 MiB, or an eighth of the free space on a small or
     * nearly full disk, never more than the map allows */
    uint64_t fs_size;
    uint64_t want = fs_free(st->lock_fd, &fs_size) / 8 / st->psize;
    want = want < ROOM_MIN ? ROOM_MIN : want > ROOM_STEP ? ROOM_STEP : want;
    uint64_t have = st->idx_alloc > base ? st->idx_alloc - base : 0;
    if (!st->no_prealloc && have < want) {
        uint64_t n = want - have, from = base + have;
        if (reserve(st, st->lock_fd, st->psize, from, &n, ROOM_MIN) == 0)
            st->idx_alloc = from + n;
        have = st->idx_alloc > base ? st->idx_alloc - base : 0;
    }
    if (st->no_prealloc)
        have = ROOM_STEP;
    uint64_t room = have < map_room ? have : map_room;
    if (room < ROOM_STEP) /* tight: pages freed inside the file count too */
        room += freelist_pages_l(st);
    st->room = room;
    /* writes stop while this much is left, for what frees space */
    uint64_t r = map_pages / 64, fs = fs_size / 256 / st->psize;
    if (r > fs)
        r = fs;
    st->reserve = r < 128 ? 128 : r > 4096 ? 4096 : r;
}

/* Make room for need more pages (leaving reserve): commit the txn to learn
 * the real figure if the estimate says no.  0 or -ENOSPC. */
int store_room_l(struct store *st, uint64_t need, uint64_t reserve_pages)
{
    if (store_room_ok_l(st, need, reserve_pages))
        return 0;
    if (st->dirty) {
        int rc = store_commit_l(st);
        if (rc)
            return rc;
    } else {
        store_space_refresh_l(st);
    }
    if (store_room_ok_l(st, need, reserve_pages))
        return 0;
    MDB_envinfo ei;
    uint64_t map_pages = st->map_size / st->psize;
    if (mdb_env_info(st->env, &ei) == 0 &&
        map_pages < ei.me_last_pgno + 1 + need + reserve_pages)
        return store_set_err(st, -ENOSPC,
                             "%s: the index is full (map size %llu MiB; "
                             "free space with trim or delete, or serve with "
                             "a larger --map-size)",
                             st->path,
                             (unsigned long long)(st->map_size >> 20));
    return store_set_err(st, -ENOSPC,
                         "%s: no space left on the image's file system for "
                         "the index",
                         st->path);
}

/* Slot is about to get its first bytes: make sure the file system has the
 * block (reserving ahead in steps).  0 or -ENOSPC. */
int store_space_slot_l(struct store *st, uint64_t slot)
{
    if (st->no_prealloc || slot < st->chunk_alloc)
        return 0;
    uint64_t n = slot / 64;
    n = n < SLOT_STEP_MIN   ? SLOT_STEP_MIN
        : n > SLOT_STEP_MAX ? SLOT_STEP_MAX
                            : n;
    uint64_t eighth = fs_free(st->chunk_fd, NULL) / 8 / STORE_BLOCK;
    if (n > eighth)
        n = eighth ? eighth : 1;
    int rc = reserve(st, st->chunk_fd, STORE_BLOCK, slot, &n, 1);
    if (rc)
        return store_set_err(st, no_space(-rc) ? -ENOSPC : rc,
                             "%s-chunks: no space left for new chunks: %s",
                             st->path, strerror(-rc));
    st->chunk_alloc = slot + n;
    return 0;
}

/* Acknowledged writes were lost (err: -errno): from now on every request
 * is refused (store_failed_l) and nothing is committed; said once on
 * stderr as "IMAGE: what, image taken offline: why". */
void store_offline_l(struct store *st, int err, const char *what,
                     const char *why)
{
    if (st->failed)
        return;
    st->failed = err;
    fprintf(stderr, "%s: %s, image taken offline: %s\n", st->path, what, why);
}

/* Refuse I/O once acknowledged writes were lost (see the top). */
int store_failed_l(struct store *st)
{
    if (!st->failed)
        return 0;
    return store_set_err(st, -EIO,
                         "%s: a commit failed and writes acknowledged since "
                         "the last flush were lost (%s); restart to reopen "
                         "the image from its last durable state",
                         st->path, strerror(-st->failed));
}
