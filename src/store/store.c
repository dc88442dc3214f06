/* store.c: opening, creating and closing an image; errors; the single
 * long-lived LMDB write txn and its group commit; the background thread.
 *
 * A commit is: write the counters (meta) and dirty node counts into the
 * txn, fdatasync the chunk file (new chunks are on disk before any index
 * that names them), mdb_txn_commit (LMDB's default durable sync), take the
 * slot gate in write mode and move st->gen on (slots freed by the committed
 * txn become reusable only now), begin the next txn.  Every function here
 * that ends in _l runs with st->mu held; the others take it.
 */
#include "store-int.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

static __thread char errbuf[512];

const char *store_errmsg(void)
{
    return errbuf;
}

/* Record "IMAGE: message" for this thread and return rc. */
int store_set_err(struct store *st, int rc, const char *fmt, ...)
{
    va_list ap;
    int n = 0;
    if (st)
        n = snprintf(errbuf, sizeof errbuf, "%s: ", st->name);
    va_start(ap, fmt);
    vsnprintf(errbuf + n, sizeof errbuf - n, fmt, ap);
    va_end(ap);
    return rc;
}

/* The one place LMDB return codes become errno values. */
int store_mdb_errno(int mrc)
{
    switch (mrc) {
    case 0:
        return 0;
    case MDB_NOTFOUND:
        return -ENOENT;
    case MDB_KEYEXIST:
        return -EEXIST;
    case MDB_MAP_FULL:
    case MDB_TXN_FULL:
    case MDB_PAGE_FULL:
    case MDB_DBS_FULL:
        return -ENOSPC;
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_INCOMPATIBLE:
        return -EPROTO;
    case MDB_READERS_FULL:
    case MDB_TLS_FULL:
        return -EAGAIN;
    case MDB_BAD_VALSIZE:
        return -EINVAL;
    default:
        if (mrc > 0)
            return -mrc;
        return -EIO;
    }
}

int store_mdb_err(struct store *st, int mrc, const char *what)
{
    int rc = store_set_err(st, store_mdb_errno(mrc), "%s: %s", what,
                           mdb_strerror(mrc));
    if (st && mrc != MDB_NOTFOUND && mrc != MDB_KEYEXIST && !st->txn_broken) {
        st->txn_broken = true; /* LMDB marks the txn failed */
        snprintf(st->broken_msg, sizeof st->broken_msg, "%s: %s", what,
                 mdb_strerror(mrc));
    }
    return rc;
}

void store_now(struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
}

/* Milliseconds since t0 (from store_now). */
long store_ms_since(const struct timespec *t0)
{
    struct timespec now;
    store_now(&now);
    return (now.tv_sec - t0->tv_sec) * 1000 +
           (now.tv_nsec - t0->tv_nsec) / 1000000;
}

static void (*hash_override)(const void *, uint8_t[16]);

void store_set_hash_for_testing(void (*hash)(const void *block,
                                             uint8_t out[16]))
{
    hash_override = hash;
}

void store_hash(const void *block, uint8_t out[16])
{
    if (hash_override) {
        hash_override(block, out);
        return;
    }
    XXH128_hash_t h = XXH3_128bits(block, STORE_BLOCK);
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    memcpy(out, c.digest, 16);
}

/* ---- meta ---- */

static int meta_put_l(struct store *st, const char *key, const void *v,
                      size_t n)
{
    MDB_val k = {strlen(key), (void *)key}, d = {n, (void *)v};
    int rc = mdb_put(st->txn, st->db_meta, &k, &d, 0);
    return rc ? store_mdb_err(st, rc, "meta") : 0;
}

static int meta_get_l(struct store *st, const char *key, void *v, size_t n)
{
    MDB_val k = {strlen(key), (void *)key}, d;
    int rc = mdb_get(st->txn, st->db_meta, &k, &d);
    if (rc == MDB_NOTFOUND || (rc == 0 && d.mv_size != n))
        return store_set_err(st, -EPROTO,
                             "not a busesnap image (meta \"%s\" missing)", key);
    if (rc)
        return store_mdb_err(st, rc, "meta");
    memcpy(v, d.mv_data, n);
    return 0;
}

static int counters_put_l(struct store *st, uint64_t gen)
{
    int rc;
    if ((rc = meta_put_l(st, "next_slot", &st->next_slot, 8)) ||
        (rc = meta_put_l(st, "next_node", &st->next_node, 4)) ||
        (rc = meta_put_l(st, "next_seq", &st->next_seq, 8)) ||
        (rc = meta_put_l(st, "refsum", &st->refsum, 8)) ||
        (rc = meta_put_l(st, "gen", &gen, 8)))
        return rc;
    uint64_t je = store_journal_next_epoch_l(st);
    return st->jfd >= 0 ? meta_put_l(st, "jepoch", &je, 8) : 0;
}

static int counters_get_l(struct store *st)
{
    int rc;
    if ((rc = meta_get_l(st, "next_slot", &st->next_slot, 8)) ||
        (rc = meta_get_l(st, "next_node", &st->next_node, 4)) ||
        (rc = meta_get_l(st, "next_seq", &st->next_seq, 8)) ||
        (rc = meta_get_l(st, "refsum", &st->refsum, 8)) ||
        (rc = meta_get_l(st, "gen", &st->gen, 8)))
        return rc;
    /* images from before the journal have no "jepoch": epoch 0 */
    MDB_val k = {6, "jepoch"}, d;
    if (mdb_get(st->txn, st->db_meta, &k, &d) == 0 && d.mv_size == 8)
        memcpy(&st->jepoch, d.mv_data, 8);
    return 0;
}

/* ---- the version tree in memory ---- */

struct node *store_node(struct store *st, uint32_t id)
{
    if (id == 0 || id >= st->nodes_cap || !st->nodes[id].state)
        return NULL;
    return &st->nodes[id];
}

static int nodes_grow(struct store *st, uint32_t need)
{
    if (need <= st->nodes_cap)
        return 0;
    uint32_t cap = st->nodes_cap ? st->nodes_cap : 64;
    while (cap < need)
        cap *= 2;
    struct node *n = realloc(st->nodes, (size_t)cap * sizeof *n);
    if (!n)
        return store_set_err(st, -ENOMEM, "out of memory (nodes)");
    memset(n + st->nodes_cap, 0, (size_t)(cap - st->nodes_cap) * sizeof *n);
    st->nodes = n;
    st->nodes_cap = cap;
    return 0;
}

/* Write node id (from memory) to the nodes DB, or delete it if its state
 * is 0.  Structural changes must also call store_tree_changed_l(). */
int store_node_put_l(struct store *st, uint32_t id)
{
    uint8_t kb[4];
    put_be32(kb, id);
    MDB_val k = {4, kb};
    int rc;
    int err = nodes_grow(st, id + 1);
    if (err)
        return err;
    struct node *n = &st->nodes[id];
    if (!n->state) {
        rc = mdb_del(st->txn, st->db_nodes, &k, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    } else {
        struct node_rec r = {
            .parent = n->parent, .state = n->state, .entries = n->entries};
        memcpy(r.obj, n->obj, 16);
        MDB_val d = {sizeof r, &r};
        rc = mdb_put(st->txn, st->db_nodes, &k, &d, 0);
    }
    if (rc)
        return store_mdb_err(st, rc, "nodes");
    n->dirty = 0;
    st->dirty = true;
    return 0;
}

static void tree_free_anc(struct store *st)
{
    for (uint32_t i = 0; i < st->nodes_cap; i++) {
        free(st->nodes[i].anc);
        st->nodes[i].anc = NULL;
        st->nodes[i].nanc = 0;
    }
}

/* Rebuild children lists and drop cached ancestor arrays. */
int store_tree_rebuild_l(struct store *st)
{
    tree_free_anc(st);
    for (uint32_t i = 0; i < st->nodes_cap; i++)
        st->nodes[i].first_child = st->nodes[i].next_sibling = 0;
    /* descending order so children lists come out ascending */
    for (uint32_t i = st->nodes_cap; i-- > 1;) {
        struct node *n = &st->nodes[i];
        struct node *p = store_node(st, n->parent);
        if (!n->state || !p)
            continue;
        n->next_sibling = p->first_child;
        p->first_child = i;
    }
    st->tree_dirty = false;
    return 0;
}

static int load_nodes_l(struct store *st)
{
    MDB_cursor *c;
    MDB_val k, d;
    int rc = mdb_cursor_open(st->txn, st->db_nodes, &c);
    if (rc)
        return store_mdb_err(st, rc, "nodes");
    tree_free_anc(st);
    if (st->nodes)
        memset(st->nodes, 0, st->nodes_cap * sizeof *st->nodes);
    int err = nodes_grow(st, st->next_node + 1);
    for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0 && !err;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        struct node_rec r;
        if (k.mv_size != 4 || d.mv_size != sizeof r) {
            err = store_set_err(st, -EIO, "nodes: malformed record");
            break;
        }
        uint32_t id = get_be32(k.mv_data);
        memcpy(&r, d.mv_data, sizeof r);
        if ((err = nodes_grow(st, id + 1)))
            break;
        struct node *n = &st->nodes[id];
        n->parent = r.parent;
        n->state = (uint8_t)r.state;
        n->entries = r.entries;
        memcpy(n->obj, r.obj, 16);
    }
    mdb_cursor_close(c);
    if (err)
        return err;
    if (rc && rc != MDB_NOTFOUND)
        return store_mdb_err(st, rc, "nodes");
    return store_tree_rebuild_l(st);
}

static const uint32_t *node_anc(struct store *st, uint32_t y, uint32_t *n)
{
    struct node *ny = store_node(st, y);
    if (!ny) {
        *n = 0;
        return NULL;
    }
    if (!ny->anc) {
        uint32_t depth = 0;
        for (uint32_t x = y; x && store_node(st, x); x = st->nodes[x].parent)
            depth++;
        uint32_t *a = malloc((size_t)depth * sizeof *a);
        if (!a) {
            *n = 0;
            return NULL;
        }
        uint32_t i = depth;
        for (uint32_t x = y; x && i; x = st->nodes[x].parent)
            a[--i] = x;
        ny->anc = a;
        ny->nanc = depth;
    }
    *n = ny->nanc;
    return ny->anc;
}

/* Is n an ancestor of y, or y itself? */
bool store_is_anc_l(struct store *st, uint32_t y, uint32_t n)
{
    if (n == y)
        return true;
    if (n > y || n == 0)
        return false;
    if (st->tree_dirty)
        store_tree_rebuild_l(st);
    uint32_t cnt;
    const uint32_t *a = node_anc(st, y, &cnt);
    if (!a) { /* out of memory: walk */
        for (uint32_t x = y; x && x >= n; x = st->nodes[x].parent)
            if (x == n)
                return true;
        return false;
    }
    uint32_t lo = 0, hi = cnt;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (a[mid] == n)
            return true;
        if (a[mid] < n)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* ---- the txn ---- */

static int txn_begin_l(struct store *st)
{
    int rc =
        mdb_txn_begin(st->env, NULL, st->rdonly ? MDB_RDONLY : 0, &st->txn);
    if (rc) {
        st->txn = NULL;
        return store_mdb_err(st, rc, "begin transaction");
    }
    st->txn_ops = 0;
    st->txn_pages = 0;
    st->touch_map = st->touch_ref = st->touch_hash = st->touch_dead = 0;
    if (!st->rdonly && st->db_map) { /* 0 while env_open opens the DBs */
        MDB_stat ms;
        st->leaves_map =
            mdb_stat(st->txn, st->db_map, &ms) ? 0 : ms.ms_leaf_pages;
        st->leaves_ref =
            mdb_stat(st->txn, st->db_refs, &ms) ? 0 : ms.ms_leaf_pages;
        st->leaves_hash =
            mdb_stat(st->txn, st->db_hashes, &ms) ? 0 : ms.ms_leaf_pages;
    }
    st->dirty = false;
    st->txn_writes = false;
    st->txn_broken = false;
    store_now(&st->txn_start);
    store_space_refresh_l(st);
    return 0;
}

/* Reload the in-memory state from the txn (after an abort).  If that
 * fails (ENOMEM), memory no longer matches the index and a later commit
 * would write wrong counts: the store goes offline. */
static int reload_l(struct store *st)
{
    int rc = counters_get_l(st);
    if (!rc)
        rc = load_nodes_l(st);
    if (!rc)
        rc = store_hash_load_l(st);
    st->chunk_dirty = true; /* fdatasync anyway at the next commit */
    st->free_none = false;  /* the free DB is the durable one again */
    if (rc)
        store_offline_l(st, rc, "cannot reload after a failed txn",
                        store_errmsg());
    return rc;
}

/* One commit of the txn (store_commit_l without the merge passes); *done
 * tells whether there was one to make. */
static int commit_once_l(struct store *st, bool *done)
{
    int rc, err = 0;
    *done = false;
    if (st->rdonly || !st->txn)
        return st->txn ? 0 : store_set_err(st, -EIO, "no transaction");
    if (st->failed) /* offline: what is in memory may be wrong; never write */
        return store_failed_l(st);
    if (!st->dirty && !st->chunk_dirty)
        return 0;
    *done = true;
    for (uint32_t i = 1; i < st->nodes_cap && !err; i++) {
        if (st->nodes[i].dirty && st->nodes[i].state) {
            err = store_node_put_l(st, i);
        }
    }
    if (!err)
        err = counters_put_l(st, st->gen + 1);
    if (!err && st->chunk_dirty && fdatasync(st->chunk_fd) < 0)
        err = store_set_err(st, -errno, "%s-chunks: fdatasync: %s", st->path,
                            strerror(errno));
    if (err) {
        mdb_txn_abort(st->txn);
    } else {
        st->chunk_dirty = false;
        rc = mdb_txn_commit(st->txn);
        if (rc)
            err = store_mdb_err(st, rc, "commit");
    }
    st->txn = NULL;
    if (err && st->txn_writes) /* acknowledged writes are gone */
        store_offline_l(st, err, "commit failed", store_errmsg());
    if (!err) {
        /* No pread of a slot freed by the txn just committed may still be
         * in flight once those slots become reusable. */
        pthread_rwlock_wrlock(&st->gate);
        st->gen++;
        pthread_rwlock_unlock(&st->gate);
        store_journal_checkpointed_l(st);
    }
    rc = txn_begin_l(st);
    if (err && !rc)
        reload_l(st);
    return err ? err : rc;
}

/* Make everything done so far durable.  On failure the uncommitted changes
 * are lost (the txn is aborted and the in-memory state reloaded from the
 * last durable index) and -errno is returned.  Then, while a merge of the
 * staged hashes is due, its txns follow, each in a fresh txn so that its
 * dirty pages stay within limits (store-hash.c), each committed. */
int store_commit_l(struct store *st)
{
    bool done;
    int rc = commit_once_l(st, &done);
    while (!rc && done && store_hash_merge_due_l(st)) {
        rc = store_hash_merge_l(st);
        if (rc) {
            store_abort_l(st);
            break;
        }
        rc = commit_once_l(st, &done);
    }
    return rc;
}

/* Drop every change since the last commit (after a failure mid-way).  If
 * the txn held client writes, those were acknowledged: the store goes
 * offline (store_failed_l) rather than serve older blocks. */
int store_abort_l(struct store *st)
{
    if (st->txn_writes && !st->rdonly)
        store_offline_l(st, -EIO, "a write txn failed",
                        st->txn_broken ? st->broken_msg : store_errmsg());
    if (st->txn)
        mdb_txn_abort(st->txn);
    st->txn = NULL;
    int rc = txn_begin_l(st);
    if (!rc)
        rc = reload_l(st);
    return rc;
}

/* Group commit with most of the chunk fdatasync done outside the mutex:
 * the chunks written so far are flushed while writers go on adding to the
 * txn, then the commit (under the mutex) fdatasyncs only what came in
 * meanwhile.  The caller has set st->presync_busy (one at a time) and does
 * not hold st->mu. */
int store_presync(struct store *st)
{
    fdatasync(st->chunk_fd); /* errors: the commit's fdatasync reports */
    pthread_mutex_lock(&st->mu);
    st->presync_busy = false;
    int rc = store_commit_l(st);
    pthread_mutex_unlock(&st->mu);
    return rc;
}

/* Commit if the txn is big or old enough (group commit). */
int store_maybe_commit_l(struct store *st)
{
    if (store_commit_due_l(st, 1))
        return store_commit_l(st);
    return 0;
}

/* ---- background thread ---- */

static void *bg_main(void *arg)
{
    struct store *st = arg;
    pthread_mutex_lock(&st->mu);
    while (!st->bg_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += STORE_COMMIT_MS * 1000000L / 2;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&st->bg_cond, &st->mu, &ts);
        if (st->bg_stop)
            break;
        /* Writes reach the disk within about a second even if the client
         * never flushes: by a journal sync, or a commit without one.  With
         * the journal, older txns are committed too (checkpoints bound the
         * replay and let freed slots be reused). */
        bool journal = store_journal_usable_l(st);
        if ((st->dirty || st->chunk_dirty) && !st->presync_busy) {
            long ms = store_ms_since(journal && st->jrecs ? &st->jfirst
                                                          : &st->txn_start);
            if (ms >= (long)(journal ? STORE_CHECKPOINT_MS : STORE_COMMIT_MS)) {
                st->presync_busy = true;
                pthread_mutex_unlock(&st->mu);
                store_presync(st);
                pthread_mutex_lock(&st->mu);
                journal = false; /* committed */
            }
        }
        uint64_t upto;
        if (journal && st->jwritten + st->jbuf_used > st->jsynced &&
            store_journal_write_l(st, &upto) == 0) {
            pthread_mutex_unlock(&st->mu);
            store_journal_sync(st, upto);
            pthread_mutex_lock(&st->mu);
        }
        if (st->gc_wanted) {
            pthread_mutex_unlock(&st->mu);
            store_gc_pass(st);
            pthread_mutex_lock(&st->mu);
        }
        store_journal_release_l(st, false);
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

void store_wake_bg(struct store *st)
{
    pthread_cond_signal(&st->bg_cond);
}

/* ---- open / create / close ---- */

static struct store *store_alloc(const char *path, unsigned flags)
{
    struct store *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        store_set_err(NULL, -ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    const char *slash = strrchr(st->path, '/');
    st->name = slash ? slash + 1 : st->path;
    st->flags = flags;
    st->rdonly = flags & STORE_OPEN_RDONLY;
    st->lock_fd = st->chunk_fd = st->jfd = -1;
    /* tests shrink the merge txns to make small images take many of them */
    const char *mp = getenv("BUSESNAP_MERGE_PAGES");
    int pages = mp ? atoi(mp) : 0;
    st->merge_pages = pages > 0 ? (unsigned)pages : STORE_MERGE_PAGES;
    pthread_mutex_init(&st->mu, NULL);
    pthread_mutex_init(&st->jsync_mu, NULL);
    pthread_mutex_init(&st->gc_mu, NULL);
    pthread_rwlock_init(&st->gate, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_cond_init(&st->bg_cond, &ca);
    pthread_condattr_destroy(&ca);
    return st;
}

static void store_free(struct store *st)
{
    if (!st)
        return;
    if (st->txn)
        mdb_txn_abort(st->txn);
    if (st->env)
        mdb_env_close(st->env);
    if (st->chunk_fd >= 0)
        close(st->chunk_fd);
    store_journal_close(st);
    if (st->lock_fd >= 0)
        close(st->lock_fd); /* releases the flock */
    if (st->nodes) {
        tree_free_anc(st);
        free(st->nodes);
    }
    free(st->hp);
    store_bloom_free(st);
    pthread_mutex_destroy(&st->mu);
    pthread_mutex_destroy(&st->gc_mu);
    pthread_mutex_destroy(&st->jsync_mu);
    pthread_rwlock_destroy(&st->gate);
    pthread_cond_destroy(&st->bg_cond);
    free(st->path);
    free(st);
}

/* IMAGE-chunks, IMAGE-journal: path with suffix (NULL: no memory). */
char *store_side_path(const char *path, const char *suffix)
{
    char *p;
    if (asprintf(&p, "%s%s", path, suffix) < 0)
        return NULL;
    return p;
}

/* Open the env on st->path and the databases (creating them if create). */
static int env_open(struct store *st, bool create)
{
    int rc = mdb_env_create(&st->env);
    if (rc)
        return store_mdb_err(st, rc, "lmdb");
    mdb_env_set_maxdbs(st->env, 10);
    if (!st->map_size)
        st->map_size = STORE_MAP_SIZE_DEFAULT;
    mdb_env_set_mapsize(st->env, (size_t)st->map_size);
    unsigned fl = MDB_NOSUBDIR | MDB_NOLOCK | MDB_NOTLS;
    if (st->rdonly)
        fl |= MDB_RDONLY;
    rc = mdb_env_open(st->env, st->path, fl, 0644);
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH)
        return store_set_err(st, -EPROTO,
                             "not a busesnap image (not an LMDB file: %s)",
                             mdb_strerror(rc));
    if (rc)
        return store_mdb_err(st, rc, "open");
    MDB_stat ms;
    MDB_envinfo ei;
    mdb_env_stat(st->env, &ms);
    st->psize = ms.ms_psize ? ms.ms_psize : 4096;
    if (mdb_env_info(st->env, &ei) == 0 && ei.me_mapsize > st->map_size)
        st->map_size = ei.me_mapsize; /* the file is already bigger */
    struct stat sb;
    if (fstat(st->chunk_fd, &sb) == 0)
        st->chunk_alloc = (uint64_t)sb.st_size / STORE_BLOCK;
    if ((rc = txn_begin_l(st)))
        return rc;
    struct {
        const char *name;
        MDB_dbi *dbi;
        unsigned flags;
    } dbs[] = {
        {"meta", &st->db_meta, 0},
        {"objects", &st->db_objects, 0},
        {"names", &st->db_names, 0},
        {"nodes", &st->db_nodes, 0},
        {"map", &st->db_map, 0},
        {"refs", &st->db_refs, 0},
        {"free", &st->db_free, 0},
        {"hashes", &st->db_hashes, MDB_DUPSORT | MDB_DUPFIXED},
        {"recent", &st->db_recent, 0},
    };
    for (size_t i = 0; i < sizeof dbs / sizeof dbs[0]; i++) {
        rc = mdb_dbi_open(st->txn, dbs[i].name,
                          dbs[i].flags | (create ? MDB_CREATE : 0), dbs[i].dbi);
        if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE)
            return store_set_err(st, -EPROTO,
                                 "not a busesnap image (no \"%s\" database)",
                                 dbs[i].name);
        if (rc)
            return store_mdb_err(st, rc, dbs[i].name);
    }
    /* `dead` came with format version 4: a read-write open of an older
     * image creates it (the open's upgrade commits it); a read-only one
     * does without (such an image has no deletions pending) */
    rc = mdb_dbi_open(st->txn, "dead", st->rdonly ? 0 : MDB_CREATE,
                      &st->db_dead);
    if (rc && rc != MDB_NOTFOUND)
        return store_mdb_err(st, rc, "dead");
    st->dead_ok = rc == 0;
    return 0;
}

struct chunk_header {
    char magic[16];
    uint32_t version;
    uint8_t uuid[16];
};

static int open_files(struct store *st, bool create)
{
    int oflags = st->rdonly ? O_RDONLY : O_RDWR;
    if (create)
        oflags |= O_CREAT | O_EXCL;
    st->lock_fd = open(st->path, oflags | O_CLOEXEC, 0644);
    if (st->lock_fd < 0) {
        int e = errno;
        if (e == ENOENT)
            return store_set_err(st, -ENOENT, "no such image");
        if (e == EEXIST)
            return store_set_err(st, -EEXIST, "image already exists");
        return store_set_err(st, -e, "open: %s", strerror(e));
    }
    if (flock(st->lock_fd, (st->rdonly ? LOCK_SH : LOCK_EX) | LOCK_NB) < 0) {
        int e = errno;
        if (e == EWOULDBLOCK)
            return store_set_err(st, -EBUSY,
                                 "image is in use by another process");
        return store_set_err(st, -e, "flock: %s", strerror(e));
    }
    if (!create) {
        struct stat sb;
        if (fstat(st->lock_fd, &sb) == 0 && sb.st_size == 0)
            return store_set_err(st, -EPROTO,
                                 "not a busesnap image (empty file)");
    }
    char *cp = store_side_path(st->path, "-chunks");
    if (!cp)
        return store_set_err(st, -ENOMEM, "out of memory");
    st->chunk_fd = open(cp, oflags | O_CLOEXEC, 0644);
    int e = errno;
    free(cp);
    if (st->chunk_fd < 0) {
        if (e == ENOENT)
            return store_set_err(st, -EPROTO, "chunk file %s-chunks is missing",
                                 st->path);
        return store_set_err(st, -e, "%s-chunks: %s", st->path, strerror(e));
    }
    return 0;
}

static void fsync_dir(const char *path)
{
    char *d = strdup(path);
    if (!d)
        return;
    int fd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(d);
}

static int start_bg(struct store *st)
{
    if (st->rdonly)
        return 0;
    int e = pthread_create(&st->bg, NULL, bg_main, st);
    if (e)
        return store_set_err(st, -e, "cannot start background thread: %s",
                             strerror(e));
    st->bg_running = true;
    return 0;
}

int store_create(const char *path, const struct store_create_opts *opts,
                 struct store **out)
{
    int rc;
    *out = NULL;
    struct store *st = store_alloc(path, 0);
    if (!st)
        return -ENOMEM;
    st->map_size = opts ? opts->map_size : 0;
    const char *vname =
        opts && opts->volume_name ? opts->volume_name : STORE_DEFAULT_VOLUME;
    uint64_t size = opts ? opts->size : 0;
    if ((rc = store_check_name(st, vname)))
        goto fail_nofiles;
    if (size == 0 || size % STORE_BLOCK) {
        rc = store_set_err(st, -EINVAL,
                           "size %llu is not a positive multiple of %u",
                           (unsigned long long)size, STORE_BLOCK);
        goto fail_nofiles;
    }
    if (size / STORE_BLOCK > STORE_MAX_BLOCKS) {
        rc =
            store_set_err(st, -EFBIG, "size %llu is over the maximum of %llu",
                          (unsigned long long)size,
                          (unsigned long long)(STORE_MAX_BLOCKS * STORE_BLOCK));
        goto fail_nofiles;
    }
    {
        char *cp = store_side_path(path, "-chunks");
        if (!cp) {
            rc = store_set_err(st, -ENOMEM, "out of memory");
            goto fail_nofiles;
        }
        struct stat sb;
        bool exists = stat(cp, &sb) == 0;
        free(cp);
        if (exists) {
            rc = store_set_err(st, -EEXIST, "%s-chunks already exists", path);
            goto fail_nofiles;
        }
    }
    if ((rc = open_files(st, true)))
        goto fail_nofiles;
    uuid_generate(st->uuid);
    struct chunk_header h = {.version = STORE_FORMAT_VERSION};
    memcpy(h.magic, STORE_CHUNKS_MAGIC, sizeof STORE_CHUNKS_MAGIC);
    memcpy(h.uuid, st->uuid, 16);
    uint8_t page[STORE_BLOCK] = {0};
    memcpy(page, &h, sizeof h);
    if (pwrite(st->chunk_fd, page, sizeof page, 0) != sizeof page ||
        fsync(st->chunk_fd) < 0) {
        rc = store_set_err(st, -errno, "%s-chunks: write header: %s", path,
                           strerror(errno));
        goto fail;
    }
    if ((rc = store_journal_open(st, true)) || (rc = env_open(st, true)) ||
        (rc = store_hash_load_l(st)))
        goto fail;
    store_bloom_build_l(st);
    uint32_t ver = STORE_FORMAT_VERSION;
    st->version = ver;
    int64_t now = time(NULL);
    st->next_slot = STORE_FIRST_SLOT;
    st->next_node = 2;
    st->next_seq = 1;
    st->gen = 1;
    if ((rc = meta_put_l(st, "magic", STORE_INDEX_MAGIC,
                         sizeof STORE_INDEX_MAGIC)) ||
        (rc = meta_put_l(st, "version", &ver, 4)) ||
        (rc = meta_put_l(st, "uuid", st->uuid, 16)) ||
        (rc = meta_put_l(st, "created", &now, 8)))
        goto fail;
    /* the default volume: object + node 1 */
    uint8_t vu[16];
    uuid_generate(vu);
    struct obj_rec o = {.kind = STORE_VOLUME,
                        .node = 1,
                        .size = size,
                        .ctime = now,
                        .seq = st->next_seq++};

    strcpy(o.name, vname);
    if ((rc = nodes_grow(st, 2)))
        goto fail;
    st->nodes[1].state = NODE_LIVE;
    memcpy(st->nodes[1].obj, vu, 16);
    MDB_val k = {strlen(vname), (void *)vname}, d = {16, vu};
    int mrc = mdb_put(st->txn, st->db_names, &k, &d, 0);
    if (mrc) {
        rc = store_mdb_err(st, mrc, "names");
        goto fail;
    }
    if ((rc = store_obj_put_l(st, vu, &o)) || (rc = store_node_put_l(st, 1)) ||
        (rc = meta_put_l(st, "default", vu, 16)))
        goto fail;
    st->dirty = true;
    if ((rc = store_commit_l(st)))
        goto fail;
    store_tree_rebuild_l(st);
    fsync_dir(path);
    if ((rc = start_bg(st)))
        goto fail;
    *out = st;
    return 0;
fail : {
    char *cp = store_side_path(path, "-chunks");
    if (st->lock_fd >= 0) /* we created it (O_EXCL) */
        unlink(path);
    if (cp && st->chunk_fd >= 0)
        unlink(cp);
    free(cp);
    if (st->jfd >= 0 && (cp = store_side_path(path, "-journal"))) {
        unlink(cp);
        free(cp);
    }
    char msg[sizeof errbuf];
    strcpy(msg, errbuf);
    store_free(st);
    strcpy(errbuf, msg);
    return rc;
}
fail_nofiles : {
    char msg[sizeof errbuf];
    strcpy(msg, errbuf);
    store_free(st);
    strcpy(errbuf, msg);
    return rc;
}
}

int store_open(const char *path, unsigned flags, struct store **out)
{
    return store_open_map(path, flags, 0, out);
}

/* Mark an image of an older format version as the current one (read-write
 * opens).  Version 2 differs by having no journal, which
 * store_journal_open creates, and versions 2 and 3 by having no `dead` DB,
 * which env_open creates; what marks the change is that a build from
 * before them refuses the image from now on (an older build would take
 * the entries `dead` lists for live ones).  The chunk header is
 * rewritten and synced first, the index's "version" goes with the commit
 * that ends the open; either order is safe, both versions being accepted
 * until both say the current one. */
static int upgrade_l(struct store *st, struct chunk_header *h)
{
    uint32_t ver = STORE_FORMAT_VERSION;
    if (h->version != ver) {
        h->version = ver;
        if (pwrite(st->chunk_fd, h, sizeof *h, 0) != sizeof *h ||
            fdatasync(st->chunk_fd) < 0)
            return store_set_err(st, -errno,
                                 "%s-chunks: upgrade to format version %u: %s",
                                 st->path, ver, strerror(errno));
    }
    int rc = meta_put_l(st, "version", &ver, 4);
    if (rc)
        return rc;
    fprintf(stderr,
            "%s: format version %u -> %u (a build from before %u "
            "no longer opens it)\n",
            st->path, st->version, ver, ver);
    st->version = ver;
    st->dirty = true;
    return 0;
}

int store_open_map(const char *path, unsigned flags, uint64_t map_size,
                   struct store **out)
{
    int rc;
    *out = NULL;
    struct store *st = store_alloc(path, flags);
    if (!st)
        return -ENOMEM;
    st->map_size = map_size;
    if ((rc = open_files(st, false)) || (rc = env_open(st, false)))
        goto fail;
    char magic[sizeof STORE_INDEX_MAGIC];
    uint32_t ver;
    if ((rc = meta_get_l(st, "magic", magic, sizeof magic)))
        goto fail;
    if (memcmp(magic, STORE_INDEX_MAGIC, sizeof magic)) {
        rc = store_set_err(st, -EPROTO, "not a busesnap image (bad magic)");
        goto fail;
    }
    if ((rc = meta_get_l(st, "version", &ver, 4)))
        goto fail;
    if (ver < STORE_FORMAT_OLDEST || ver > STORE_FORMAT_VERSION) {
        rc = store_set_err(st, -EPROTO,
                           "unsupported format version %u (this build "
                           "reads versions %u to %u)",
                           ver, STORE_FORMAT_OLDEST, STORE_FORMAT_VERSION);
        goto fail;
    }
    st->version = ver;
    if ((rc = meta_get_l(st, "uuid", st->uuid, 16)) ||
        (rc = counters_get_l(st)))
        goto fail;
    struct chunk_header h;
    if (pread(st->chunk_fd, &h, sizeof h, 0) != sizeof h ||
        memcmp(h.magic, STORE_CHUNKS_MAGIC, sizeof STORE_CHUNKS_MAGIC)) {
        rc = store_set_err(st, -EPROTO,
                           "%s-chunks: not a busesnap chunk file (bad magic)",
                           path);
        goto fail;
    }
    if (h.version < STORE_FORMAT_OLDEST || h.version > STORE_FORMAT_VERSION) {
        rc = store_set_err(st, -EPROTO,
                           "%s-chunks: unsupported format version %u", path,
                           h.version);
        goto fail;
    }
    if (memcmp(h.uuid, st->uuid, 16)) {
        rc = store_set_err(st, -EPROTO,
                           "%s-chunks belongs to another image (UUID "
                           "differs)",
                           path);
        goto fail;
    }
    if (!st->rdonly &&
        (st->version < STORE_FORMAT_VERSION ||
         h.version < STORE_FORMAT_VERSION) &&
        (rc = upgrade_l(st, &h)))
        goto fail;
    if ((rc = load_nodes_l(st)) || (rc = store_hash_load_l(st)) ||
        (rc = store_journal_open(st, false)))
        goto fail;
    store_bloom_build_l(st);
    if (st->rdonly && store_journal_pending(st)) {
        /* writes the journal holds are part of the image: a read-write
         * open replays them, then this one starts again */
        store_free(st);
        struct store *rw;
        if ((rc = store_open_map(path, flags & ~STORE_OPEN_RDONLY, map_size,
                                 &rw)))
            return rc;
        store_close(rw);
        return store_open_map(path, flags, map_size, out);
    }
    if (!st->rdonly && (rc = store_journal_replay(st)))
        goto fail;
    for (uint32_t i = 1; i < st->nodes_cap; i++)
        if (st->nodes[i].state && st->nodes[i].state != NODE_LIVE)
            st->gc_wanted = true;
    if ((rc = start_bg(st)))
        goto fail;
    *out = st;
    return 0;
fail : {
    char msg[sizeof errbuf];
    strcpy(msg, errbuf);
    store_free(st);
    strcpy(errbuf, msg);
    return rc;
}
}

void store_close(struct store *st)
{
    if (!st)
        return;
    pthread_mutex_lock(&st->mu);
    st->bg_stop = true;
    pthread_cond_broadcast(&st->bg_cond);
    pthread_mutex_unlock(&st->mu);
    if (st->bg_running)
        pthread_join(st->bg, NULL);
    pthread_mutex_lock(&st->mu);
    if (store_commit_l(st) == 0)
        store_journal_release_l(st, true);
    pthread_mutex_unlock(&st->mu);
    store_free(st);
}

int store_flush(struct store *st)
{
    uint64_t upto = 0;
    pthread_mutex_lock(&st->mu);
    int rc = store_sync_begin_l(st, &upto); /* EIO once offline */
    pthread_mutex_unlock(&st->mu);
    return rc == 1 ? store_sync_end(st, upto) : rc;
}
