/* store-journal.c: the write-ahead journal (IMAGE-journal), which makes a
 * FLUSH cost one fdatasync of an append instead of an index commit.
 *
 * Why: an LMDB commit writes every B-tree page the txn dirtied and flushes
 * the device three times (chunk file, LMDB data pages, LMDB meta page).  A
 * client that flushes every 32 random 4 KiB writes paid that 32 KiB later
 * again and again: most of the bytes written were index pages, not data.
 * With the journal, every client write and zero is also appended here as a
 * logical record (what the client asked: node, offset, length, bytes) and a
 * FLUSH or FUA writes the appended records and fdatasyncs this one file.
 * The index and chunk file are committed only by the group commit limits
 * (checkpoints, store.c), which then also empty the journal.
 *
 * Records are redo records of idempotent operations ("bytes [off, off+len)
 * of node n are now these"; "are now zero"): replaying them in order on the
 * index as of the last checkpoint gives the state the client was told was
 * durable, and replaying a prefix twice is harmless, so a checkpoint in the
 * middle of a replay needs no bookkeeping (it keeps the epoch, below).
 * Snapshots and clones are records too (JR_SNAPSHOT, JR_CLONE: the new
 * object's UUID, name, creation time, node id; store-tree.c), so that they
 * do not have to commit every write pending in the txn; their replay
 * checks that the node id is the next one.  Other tree operations commit.
 *
 * Layout: a 4 KiB header (magic, version, image UUID), then records from
 * JR_START, each {sum, epoch, off, len, node, type, flags} + data, padded
 * to 8 bytes.  `sum` is XXH3-64 of the rest of the header seeded with
 * XXH3-64 of the data seeded with the epoch.  The index's meta key "jepoch"
 * names the epoch whose records are not in the index yet; every checkpoint (and
 * every read-write open) moves it on and starts writing again at JR_START, so
 * records of older epochs left further in the file never match.  A scan stops
 * at the first record that does not check (end, torn or stale): the records
 * replayed are a prefix of those appended, and everything before the last
 * journal fdatasync is in that prefix.
 *
 * Writes of STORE_JOURNAL_BIG bytes or more are not journaled (they would
 * reach the disk twice); the next flush commits instead (st->jskip).
 *
 * If the journal cannot be written or synced (a full disk, an I/O error),
 * the epoch's journal is marked broken and FLUSH falls back to a full
 * commit, as without a journal (store-space.c keeps room for commits).
 * Functions named *_l run with st->mu held.
 */
#include "store-int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>

#define JR_MAGIC "BUSESNAP-JOURNAL"
#define JR_VERSION 1u
#define JR_START 4096u
#define JR_BUF (1u << 20)      /* records gathered before one pwrite */
#define JR_REC_MAX (64u << 20) /* larger than any request (32 MiB) */

struct jr_header {
    char magic[16];
    uint32_t version;
    uint8_t uuid[16];
};

struct jr_rec {
    uint64_t sum; /* XXH3-64 of the record after this field, seed epoch */
    uint64_t epoch;
    uint64_t off;
    uint64_t len; /* bytes (of data that follows, for JR_WRITE) */
    uint32_t node;
    uint16_t type; /* JR_WRITE, JR_ZERO */
    uint16_t flags;
};

static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

static uint64_t rec_sum(const struct jr_rec *r, const void *data, size_t dlen)
{
    uint64_t d = XXH3_64bits_withSeed(data, dlen, r->epoch);
    return XXH3_64bits_withSeed((const uint8_t *)r + 8, sizeof *r - 8, d);
}

/* Open (create) IMAGE-journal; check or write its header.  A missing
 * journal on a read-only open is an empty one. */
int store_journal_open(struct store *st, bool create)
{
    st->jfd = -1;
    char *jp = store_side_path(st->path, "-journal");
    if (!jp)
        return store_set_err(st, -ENOMEM, "out of memory");
    int fl = st->rdonly ? O_RDONLY : O_RDWR | O_CREAT;
    if (create) { /* a journal left by an earlier image of that name */
        unlink(jp);
        fl |= O_EXCL;
    }
    int fd = open(jp, fl | O_CLOEXEC, 0644);
    int e = errno;
    free(jp);
    if (fd < 0) {
        if (e == ENOENT && st->rdonly)
            return 0;
        return store_set_err(st, -e, "%s-journal: %s", st->path, strerror(e));
    }
    struct jr_header h;
    ssize_t r = pread(fd, &h, sizeof h, 0);
    if (r == 0 && !st->rdonly) { /* new (or from before the journal) */
        uint8_t page[JR_START] = {0};
        struct jr_header nh = {.version = JR_VERSION};
        memcpy(nh.magic, JR_MAGIC, 16);
        memcpy(nh.uuid, st->uuid, 16);
        memcpy(page, &nh, sizeof nh);
        if (pwrite(fd, page, sizeof page, 0) != sizeof page || fsync(fd)) {
            e = errno;
            close(fd);
            return store_set_err(st, -e, "%s-journal: write header: %s",
                                 st->path, strerror(e));
        }
    } else if (r == 0) {
        close(fd); /* read-only and empty: nothing to replay */
        return 0;
    } else if (r != sizeof h || memcmp(h.magic, JR_MAGIC, 16) ||
               h.version != JR_VERSION || memcmp(h.uuid, st->uuid, 16)) {
        close(fd);
        return store_set_err(st, -EPROTO,
                             "%s-journal is not this image's journal (bad "
                             "magic, version or UUID)",
                             st->path);
    }
    st->jfd = fd;
    if (!st->rdonly && !(st->jbuf = malloc(JR_BUF))) {
        close(fd);
        st->jfd = -1;
        return store_set_err(st, -ENOMEM, "out of memory");
    }
    st->jbuf_off = JR_START;
    st->jbuf_used = 0;
    store_now(&st->jckpt);
    return 0;
}

void store_journal_close(struct store *st)
{
    if (st->jfd >= 0)
        close(st->jfd);
    st->jfd = -1;
    free(st->jbuf);
    st->jbuf = NULL;
}

/* Can the journal make writes durable now?  Not while a big write since
 * the last checkpoint went unjournaled (st->jskip): the next flush commits
 * that anyway, so records appended meanwhile would be copies for nothing. */
bool store_journal_usable_l(const struct store *st)
{
    return st->jfd >= 0 && st->jbuf && !st->jbroken && !st->jskip &&
           !st->jreplay && !st->failed;
}

static void journal_broken_l(struct store *st, int e, const char *what)
{
    if (!st->jbroken)
        fprintf(stderr,
                "%s: journal %s failed (%s); flushes commit the index until "
                "the next checkpoint\n",
                st->path, what, strerror(e));
    st->jbroken = true;
}

/* Write total bytes of records at the journal's end; on failure the
 * journal is broken for the rest of the epoch. */
static int journal_pwritev_l(struct store *st, const struct iovec *iov, int n,
                             size_t total)
{
    ssize_t w = pwritev(st->jfd, iov, n, (off_t)st->jbuf_off);
    if (w != (ssize_t)total) {
        journal_broken_l(st, w < 0 ? errno : ENOSPC, "write");
        return -EIO;
    }
    st->jbuf_off += total;
    __atomic_add_fetch(&st->jwritten, total, __ATOMIC_RELEASE);
    return 0;
}

/* Hand the gathered records to the kernel; *upto gets the journal position
 * (bytes ever appended) that an fdatasync after this makes durable. */
int store_journal_write_l(struct store *st, uint64_t *upto)
{
    if (!store_journal_usable_l(st))
        return -EIO;
    if (st->jbuf_used) {
        struct iovec iov = {st->jbuf, st->jbuf_used};
        if (journal_pwritev_l(st, &iov, 1, st->jbuf_used))
            return -EIO;
        st->jbuf_used = 0;
    }
    if (upto)
        *upto = __atomic_load_n(&st->jwritten, __ATOMIC_ACQUIRE);
    return 0;
}

/* Append one record (after the operation it describes succeeded).  Never
 * fails the operation: a journal that cannot take it is marked broken and
 * the next flush commits instead. */
void store_journal_add_l(struct store *st, uint32_t type, uint32_t node,
                         uint64_t off, uint64_t len, uint32_t flags,
                         const void *data)
{
    if (!store_journal_usable_l(st))
        return;
    size_t dlen = type == JR_ZERO ? 0 : len;
    struct jr_rec r = {.epoch = st->jepoch,
                       .off = off,
                       .len = len,
                       .node = node,
                       .type = (uint16_t)type,
                       .flags = (uint16_t)flags};
    r.sum = rec_sum(&r, data, dlen);
    if (st->jrecs == 0)
        store_now(&st->jfirst);
    size_t total = pad8(sizeof r + dlen);
    if (st->jbuf_used + total > JR_BUF && store_journal_write_l(st, NULL))
        return;
    if (total <= JR_BUF) {
        uint8_t *p = st->jbuf + st->jbuf_used;
        memcpy(p, &r, sizeof r);
        if (dlen)
            memcpy(p + sizeof r, data, dlen);
        memset(p + sizeof r + dlen, 0, total - sizeof r - dlen);
        st->jbuf_used += total;
    } else { /* a big request: straight to the file */
        static const uint8_t zeros[8];
        struct iovec iov[3] = {{&r, sizeof r},
                               {(void *)data, dlen},
                               {(void *)zeros, total - sizeof r - dlen}};
        if (journal_pwritev_l(st, iov, 3, total))
            return;
    }
    st->jrecs++;
}

/* Make the journal durable up to upto (from store_journal_write_l).  Runs
 * without st->mu: one fdatasync covers every flush waiting behind it. */
int store_journal_sync(struct store *st, uint64_t upto)
{
    pthread_mutex_lock(&st->jsync_mu);
    if (__atomic_load_n(&st->jsynced, __ATOMIC_ACQUIRE) < upto) {
        uint64_t w = __atomic_load_n(&st->jwritten, __ATOMIC_ACQUIRE);
        if (fdatasync(st->jfd) < 0) {
            int e = errno;
            pthread_mutex_unlock(&st->jsync_mu);
            pthread_mutex_lock(&st->mu);
            journal_broken_l(st, e, "fdatasync");
            pthread_mutex_unlock(&st->mu);
            return -EIO;
        }
        uint64_t s = __atomic_load_n(&st->jsynced, __ATOMIC_ACQUIRE);
        if (w > s)
            __atomic_store_n(&st->jsynced, w, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&st->jsync_mu);
    return 0;
}

/* Make the client's writes so far durable, in two steps so that the device
 * flush happens without st->mu: store_sync_begin_l (mutex held) hands the
 * journal records to the kernel and returns 1 with *upto set, or, with no
 * usable journal, commits and returns 0 or -errno; after a 1 the caller
 * drops the mutex and calls store_sync_end, which falls back to a commit
 * if the journal cannot be synced. */
int store_sync_begin_l(struct store *st, uint64_t *upto)
{
    int rc = store_failed_l(st);
    if (rc)
        return rc;
    if (store_journal_write_l(st, upto) == 0) /* -EIO if unusable */
        return 1;
    return store_commit_l(st);
}

int store_sync_end(struct store *st, uint64_t upto)
{
    if (store_journal_sync(st, upto) == 0)
        return 0;
    pthread_mutex_lock(&st->mu);
    int rc = store_commit_l(st);
    pthread_mutex_unlock(&st->mu);
    return rc;
}

/* The index was just committed durably with meta "jepoch" = epoch + 1 (see
 * store_commit_l): every record so far is in it; start the next epoch at
 * the beginning of the file. */
void store_journal_checkpointed_l(struct store *st)
{
    if (st->jreplay || st->jfd < 0 || !st->jbuf)
        return;
    st->jepoch++;
    __atomic_add_fetch(&st->jwritten, st->jbuf_used, __ATOMIC_RELEASE);
    __atomic_store_n(&st->jsynced, st->jwritten, __ATOMIC_RELEASE);
    st->jbuf_used = 0;
    st->jbuf_off = JR_START;
    st->jbroken = false;
    st->jskip = false;
    st->jrecs = 0;
    store_now(&st->jckpt);
}

/* Give the journal's work area back to the file system once a checkpoint
 * has emptied it and no record came since: at close (now), or when the
 * image has been idle STORE_JOURNAL_IDLE_MS.  While writes go on the file
 * keeps its high-water size, since a flush's fdatasync of records
 * rewritten in place costs about half that of an appending one.  Nothing
 * of the current epoch lies past the header, so nothing is lost; a failed
 * truncate only keeps the space. */
void store_journal_release_l(struct store *st, bool now)
{
    if (st->jfd < 0 || !st->jbuf || st->jreplay || st->jrecs || st->jbuf_used ||
        st->jbuf_off != JR_START)
        return;
    if (!now && store_ms_since(&st->jckpt) < (long)STORE_JOURNAL_IDLE_MS)
        return;
    struct stat sb;
    if (fstat(st->jfd, &sb) == 0 && sb.st_size > JR_START)
        (void)!ftruncate(st->jfd, JR_START);
}

/* The epoch the next commit records in meta "jepoch". */
uint64_t store_journal_next_epoch_l(const struct store *st)
{
    return st->jreplay ? st->jepoch : st->jepoch + 1;
}

/* Read the record at *pos; 1 and *pos moved on if it checks, 0 at the end
 * of the epoch's records, -errno on a read error or no memory. */
static int read_rec(struct store *st, uint64_t *pos, struct jr_rec *r,
                    void **data, size_t *cap)
{
    ssize_t n = pread(st->jfd, r, sizeof *r, (off_t)*pos);
    if (n < 0)
        return store_set_err(st, -errno, "%s-journal: read: %s", st->path,
                             strerror(errno));
    if (n != sizeof *r || r->epoch != st->jepoch || r->len == 0 ||
        r->type < JR_WRITE || r->type > JR_CLONE ||
        (r->type != JR_ZERO && r->len > JR_REC_MAX))
        return 0;
    size_t dlen = r->type == JR_ZERO ? 0 : r->len;
    if (dlen > *cap) {
        void *p = realloc(*data, dlen);
        if (!p)
            return store_set_err(st, -ENOMEM, "out of memory");
        *data = p;
        *cap = dlen;
    }
    if (dlen) {
        n = pread(st->jfd, *data, dlen, (off_t)(*pos + sizeof *r));
        if (n < 0)
            return store_set_err(st, -errno, "%s-journal: read: %s", st->path,
                                 strerror(errno));
        if ((size_t)n != dlen)
            return 0;
    }
    if (rec_sum(r, *data, dlen) != r->sum)
        return 0;
    *pos += pad8(sizeof *r + dlen);
    return 1;
}

/* Does the journal hold records of the current epoch (a read-only open
 * must have them replayed first)? */
bool store_journal_pending(struct store *st)
{
    if (st->jfd < 0)
        return false;
    struct jr_rec r;
    void *data = NULL;
    size_t cap = 0;
    uint64_t pos = JR_START;
    int n = read_rec(st, &pos, &r, &data, &cap);
    free(data);
    return n != 0; /* an error: let the read-write open report it */
}

/* Apply the current epoch's records to the index (at a read-write open,
 * before anything else runs), then checkpoint: the next epoch starts
 * empty.  The open fails if a record cannot be applied: it describes a
 * write the client was told is durable. */
int store_journal_replay(struct store *st)
{
    struct timespec t0;
    store_now(&t0);
    st->jreplay = true;
    uint64_t pos = JR_START, nrec = 0, bytes = 0;
    void *data = NULL;
    size_t cap = 0;
    struct jr_rec r;
    int rc;
    while ((rc = read_rec(st, &pos, &r, &data, &cap)) == 1) {
        if (r.type == JR_SNAPSHOT || r.type == JR_CLONE) {
            if ((rc = store_tree_replay(st, r.type, data, r.len)))
                break;
            nrec++;
            continue;
        }
        struct node *n = store_node(st, r.node);
        if (!n || n->state != NODE_LIVE) {
            rc = store_set_err(st, -EPROTO,
                               "%s-journal: record %llu names node %u, which "
                               "is not a volume head",
                               st->path, (unsigned long long)nrec, r.node);
            break;
        }
        struct store_vol v = {
            .st = st, .node = r.node, .size = STORE_MAX_BLOCKS * STORE_BLOCK};
        rc = r.type == JR_WRITE
                 ? store_write(&v, data, r.off, (uint32_t)r.len, 0)
                 : store_zero(&v, r.off, r.len, r.flags);
        if (rc)
            break;
        nrec++;
        bytes += r.len;
    }
    free(data);
    pthread_mutex_lock(&st->mu);
    st->jreplay = false;
    if (rc == 0) {
        st->dirty = true; /* always a new epoch: see the file comment */
        rc = store_commit_l(st);
    }
    pthread_mutex_unlock(&st->mu);
    if (rc) {
        /* Say what the operator must know: records are kept, so the next
         * open replays them again from the start (writes and zeros are
         * idempotent, snapshot and clone records are matched by UUID). */
        char why[400];
        const char *m = store_errmsg();
        size_t skip = strlen(st->name);
        if (!strncmp(m, st->name, skip) && !strncmp(m + skip, ": ", 2))
            m += skip + 2; /* store_set_err's "IMAGE: " is added again */
        snprintf(why, sizeof why, "%s", m);
        store_set_err(st, rc,
                      "cannot replay the journal (writes from before an "
                      "unclean stop; %llu record%s replayed before this): "
                      "%s; the journal is kept and nothing is lost: open the "
                      "image again once that is fixed",
                      (unsigned long long)nrec, nrec == 1 ? "" : "s", why);
    } else if (nrec) {
        long ms = store_ms_since(&t0);
        fprintf(stderr,
                "%s: journal: replayed %llu record%s (%.1f MiB) in %ld ms\n",
                st->path, (unsigned long long)nrec, nrec == 1 ? "" : "s",
                (double)bytes / (1 << 20), ms);
    }
    return rc;
}
