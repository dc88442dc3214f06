/* store-open.c: creating, opening and closing an image, the recovery that
 * an open runs, and the pool of LMDB read txns the data path uses.
 *
 * Files: IMAGE (the LMDB index, MDB_NOSUBDIR, with LMDB's lock file
 * IMAGE-lock so that read txns run beside the checkpoint's write txn),
 * IMAGE-chunks (slots of chunk bytes and the log's segments).  IMAGE is
 * flock()ed by the process that has the image open: one at a time.
 *
 * A read-write open loads the catalogue and the space map, replays the log
 * from the position the index names (stopping at the first block that does
 * not check, or the first entry whose chunk does not hash to its recorded
 * value), starts the log afresh in a new zeroed segment (so that no block
 * of this run can be followed by a stale one of the last) and checkpoints;
 * the image is then as it was at the last completed FLUSH or later.  A
 * read-only open never writes: if the log holds entries, a read-write open
 * replays them first.
 *
 * Clean and unclean (issue 20): a read-write open writes the tail record
 * for a new run (store-log.c) and then the marker meta "open" {run, lsn,
 * time}; a clean close, after its checkpoint, deletes the marker.  An open
 * that finds the marker knows the last run did not close cleanly: its log
 * must reach the lsn the run's tail record says was made durable.  If it
 * does not (log blocks erased, truncated, of another image, damaged, or a
 * tail record that is not there), the open is refused with -EUCLEAN, the
 * files untouched, unless STORE_OPEN_ACCEPT_LOSS says to go on with what
 * the log holds (a line on stderr says what is lost).  Without the marker
 * nothing was pending: a lost log costs nothing.
 */
#include "store-int.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define STORE_MAP_SIZE_DEFAULT (1ULL << 40)
#define RTXN_KEEP 64u

/* ---- read txns ---- */

int store_rtxn_get(struct store *st, MDB_txn **txn)
{
    struct store_idx *ix = &st->idx;
    MDB_txn *t = NULL;
    pthread_mutex_lock(&ix->rtxn_mu);
    if (ix->nrtxn)
        t = ix->rtxn_pool[--ix->nrtxn];
    pthread_mutex_unlock(&ix->rtxn_mu);
    int rc =
        t ? mdb_txn_renew(t) : mdb_txn_begin(ix->env, NULL, MDB_RDONLY, &t);
    if (rc) {
        if (t)
            mdb_txn_abort(t);
        return store_mdb_err(st, rc, "read txn");
    }
    *txn = t;
    return 0;
}

/* Give back a read txn (reset: it pins no pages while pooled). */
void store_rtxn_put(struct store *st, MDB_txn *txn)
{
    struct store_idx *ix = &st->idx;
    mdb_txn_reset(txn);
    pthread_mutex_lock(&ix->rtxn_mu);
    if (ix->nrtxn == ix->rtxn_cap && ix->rtxn_cap < RTXN_KEEP) {
        unsigned cap = ix->rtxn_cap ? 2 * ix->rtxn_cap : 8;
        MDB_txn **p = realloc(ix->rtxn_pool, cap * sizeof *p);
        if (p) {
            ix->rtxn_pool = p;
            ix->rtxn_cap = cap;
        }
    }
    if (ix->nrtxn < ix->rtxn_cap) {
        ix->rtxn_pool[ix->nrtxn++] = txn;
        txn = NULL;
    }
    pthread_mutex_unlock(&ix->rtxn_mu);
    if (txn)
        mdb_txn_abort(txn);
}

/* ---- the store object ---- */

static struct store *store_alloc(const char *path, unsigned flags)
{
    struct store *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        store_set_err(NULL, -ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    st->name = st->path; /* messages name the path as the caller gave it */
    st->flags = flags;
    st->rdonly = flags & STORE_OPEN_RDONLY;
    st->lock_fd = st->chunk_fd = -1;
    /* BUSESNAP_SHARDS: write shards, for A/B measures (default: all) */
    const char *ns = getenv("BUSESNAP_SHARDS");
    int n = ns ? atoi(ns) : 0;
    st->nshard =
        n > 0 && n <= (int)STORE_NSHARD_MAX ? (unsigned)n : STORE_NSHARD_MAX;
    /* BUSESNAP_CKPT_MS: the checkpoint timer, for tests that need the
     * writes of a run to stay in the log (test-busesnap-unclean) */
    const char *cm = getenv("BUSESNAP_CKPT_MS");
    st->ckpt_ms = cm && atol(cm) > 0 ? atol(cm) : (long)STORE_CKPT_MS;
    pthread_mutex_init(&st->tree_mu, NULL);
    pthread_mutex_init(&st->ckpt_mu, NULL);
    pthread_mutex_init(&st->bg_mu, NULL);
    pthread_mutex_init(&st->idx.rtxn_mu, NULL);
    pthread_mutex_init(&st->bloom.mu, NULL);
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    /* a snapshot must not wait behind a stream of writes */
    pthread_rwlockattr_setkind_np(&ra,
                                  PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&st->gate, &ra);
    pthread_rwlockattr_destroy(&ra);
    for (unsigned i = 0; i < STORE_NSHARD_MAX; i++)
        pthread_mutex_init(&st->shard[i].mu, NULL);
    for (unsigned i = 0; i < STORE_NHSHARD; i++)
        pthread_mutex_init(&st->hshard[i].mu, NULL);
    pthread_cond_init(&st->bg_cond, NULL);
    pthread_cond_init(&st->bg_done, NULL);
    return st;
}

static void store_free(struct store *st)
{
    if (!st)
        return;
    if (st->idx.env) {
        for (unsigned i = 0; i < st->idx.nrtxn; i++)
            mdb_txn_abort(st->idx.rtxn_pool[i]);
        mdb_env_close(st->idx.env);
    }
    free(st->idx.rtxn_pool);
    if (st->chunk_fd >= 0)
        close(st->chunk_fd);
    if (st->lock_fd >= 0)
        close(st->lock_fd); /* releases the flock */
    store_gen_free(st->active);
    store_gen_free(st->frozen);
    for (unsigned i = 0; i < STORE_NHSHARD; i++)
        store_rs_clear(&st->dying[i]);
    store_cat_free(st);
    if (st->space.segs)
        store_space_free(st);
    if (st->log.blk)
        store_log_free(st);
    store_hash_bloom_free(st);
    pthread_rwlock_destroy(&st->gate);
    free(st->path);
    free(st);
}

/* Keep the message of a failure across store_free. */
static int fail_free(struct store *st, int rc)
{
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", store_errmsg());
    store_free(st);
    store_set_err(NULL, rc, "%s", msg);
    return rc;
}

/* Why path cannot be opened or created when open() said ENOENT: its
 * directory is missing (or is no directory), or the image itself is. */
static int missing(struct store *st, bool create)
{
    char *dir = strdup(st->path);
    struct stat sb;
    int r;
    if (!dir)
        return store_set_err(st, -ENOMEM, "out of memory");
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    if (slash && stat(dir, &sb) < 0)
        r = store_set_err(st, -ENOENT, "%s: directory %s: %s",
                          create ? "cannot create the image" : "no such image",
                          dir, strerror(errno));
    else if (slash && !S_ISDIR(sb.st_mode))
        r = store_set_err(st, -ENOTDIR, "%s: %s is not a directory",
                          create ? "cannot create the image" : "no such image",
                          dir);
    else
        r = store_set_err(st, -ENOENT, "no such image");
    free(dir);
    return r;
}

static int open_files(struct store *st, bool create)
{
    int oflags = st->rdonly ? O_RDONLY : O_RDWR;
    if (create)
        oflags |= O_CREAT | O_EXCL;
    st->lock_fd = open(st->path, oflags | O_CLOEXEC, 0644);
    if (st->lock_fd < 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR)
            return missing(st, create);
        if (e == EEXIST)
            return store_set_err(st, -EEXIST, "image already exists");
        return store_set_err(st, -e, "%s: %s",
                             create ? "cannot create the image" : "open",
                             strerror(e));
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

/* The env and the databases; v5 says whether space and zombie exist (a
 * read-write open creates them, for an upgrade). */
static int env_open(struct store *st, bool create)
{
    struct store_idx *ix = &st->idx;
    int rc = mdb_env_create(&ix->env);
    if (rc)
        return store_mdb_err(st, rc, "lmdb");
    mdb_env_set_maxdbs(ix->env, 16);
    if (!ix->map_size)
        ix->map_size = STORE_MAP_SIZE_DEFAULT;
    mdb_env_set_mapsize(ix->env, (size_t)ix->map_size);
    mdb_env_set_maxreaders(ix->env, 1024);
    unsigned fl = MDB_NOSUBDIR | MDB_NOTLS;
    if (st->rdonly)
        fl |= MDB_RDONLY | MDB_NOLOCK;
    rc = mdb_env_open(ix->env, st->path, fl, 0644);
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH)
        return store_set_err(st, -EPROTO,
                             "not a busesnap image (not an LMDB file: %s)",
                             mdb_strerror(rc));
    if (rc)
        return store_mdb_err(st, rc, "open");
    if (!st->rdonly) {
        int dead;
        mdb_reader_check(ix->env, &dead); /* a killed server's readers */
    }
    MDB_stat ms;
    MDB_envinfo ei;
    mdb_env_stat(ix->env, &ms);
    ix->psize = ms.ms_psize ? ms.ms_psize : 4096;
    if (mdb_env_info(ix->env, &ei) == 0 && ei.me_mapsize > ix->map_size)
        ix->map_size = ei.me_mapsize;
    MDB_txn *txn;
    if ((rc = mdb_txn_begin(ix->env, NULL, st->rdonly ? MDB_RDONLY : 0, &txn)))
        return store_mdb_err(st, rc, "begin");
    struct {
        const char *name;
        MDB_dbi *dbi;
        unsigned flags;
        bool v5; /* created by an upgrade */
    } dbs[] = {
        {"meta", &ix->meta, 0, false},
        {"objects", &ix->objects, 0, false},
        {"names", &ix->names, 0, false},
        {"nodes", &ix->nodes, 0, false},
        {"map", &ix->map, 0, false},
        {"refs", &ix->refs, 0, false},
        {"hashes", &ix->hashes, MDB_DUPSORT | MDB_DUPFIXED, false},
        {"space", &ix->space, 0, true},
        {"zombie", &ix->zombie, 0, true},
    };
    for (size_t i = 0; i < sizeof dbs / sizeof dbs[0]; i++) {
        unsigned f = dbs[i].flags;
        if (create || (dbs[i].v5 && !st->rdonly))
            f |= MDB_CREATE;
        rc = mdb_dbi_open(txn, dbs[i].name, f, dbs[i].dbi);
        if (rc == MDB_NOTFOUND && dbs[i].v5 && st->rdonly) {
            *dbs[i].dbi = 0; /* an old image: the open refuses it below */
            continue;
        }
        if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE) {
            mdb_txn_abort(txn);
            return store_set_err(st, -EPROTO,
                                 "not a busesnap image (no \"%s\" database)",
                                 dbs[i].name);
        }
        if (rc) {
            mdb_txn_abort(txn);
            return store_mdb_err(st, rc, dbs[i].name);
        }
    }
    if ((rc = mdb_txn_commit(txn))) /* keeps the handles, read-only too */
        return store_mdb_err(st, rc, "commit");
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

static int meta_get(struct store *st, MDB_txn *txn, const char *key, void *v,
                    size_t n)
{
    MDB_val k = {strlen(key), (void *)key}, d;
    int rc = mdb_get(txn, st->idx.meta, &k, &d);
    if (rc == MDB_NOTFOUND || (rc == 0 && d.mv_size != n))
        return store_set_err(st, -EPROTO,
                             "not a busesnap image (meta \"%s\" missing)", key);
    if (rc)
        return store_mdb_err(st, rc, "meta");
    memcpy(v, d.mv_data, n);
    return 0;
}

static int meta_put(struct store *st, MDB_txn *txn, const char *key,
                    const void *v, size_t n)
{
    MDB_val k = {strlen(key), (void *)key}, d = {n, (void *)v};
    int rc = mdb_put(txn, st->idx.meta, &k, &d, 0);
    return rc ? store_mdb_err(st, rc, "meta") : 0;
}

/* The marker of a read-write open (meta "open"): which run, from which
 * lsn, since when.  Present while an image is open read-write, and after
 * a run that did not close cleanly. */
struct open_marker {
    uint8_t run[16];
    uint64_t lsn;
    int64_t time;
};
_Static_assert(sizeof(struct open_marker) == 32, "marker size");

/* 1 and *m if the marker is there, 0 if not, or -errno. */
static int marker_get(struct store *st, MDB_txn *txn, struct open_marker *m)
{
    MDB_val k = {4, "open"}, d;
    int rc = mdb_get(txn, st->idx.meta, &k, &d);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return store_mdb_err(st, rc, "meta");
    if (d.mv_size != sizeof *m)
        return store_set_err(st, -EPROTO,
                             "meta \"open\" is damaged (%zu "
                             "bytes)",
                             d.mv_size);
    memcpy(m, d.mv_data, sizeof *m);
    return 1;
}

/* Put (m) or delete (NULL) the marker, in a txn of its own, durably. */
static int marker_set(struct store *st, const struct open_marker *m)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(st->idx.env, NULL, 0, &txn);
    if (rc)
        return store_mdb_err(st, rc, "begin");
    MDB_val k = {4, "open"}, d = {sizeof *m, (void *)m};
    rc = m ? mdb_put(txn, st->idx.meta, &k, &d, 0)
           : mdb_del(txn, st->idx.meta, &k, NULL);
    if (rc == MDB_NOTFOUND)
        rc = 0;
    if (rc) {
        mdb_txn_abort(txn);
        return store_mdb_err(st, rc, "meta");
    }
    if ((rc = mdb_txn_commit(txn)))
        return store_mdb_err(st, rc, "commit");
    return 0;
}

/* A read-write open begins its run: the tail record, then the marker that
 * names it (so a marker never names a run without a tail). */
static int run_start(struct store *st)
{
    struct open_marker m = {.lsn = st->log.next.lsn, .time = time(NULL)};
    uuid_generate_random(st->run);
    memcpy(m.run, st->run, 16);
    int rc = store_log_tail_start(st);
    return rc ? rc : marker_set(st, &m);
}

static int write_chunk_header(struct store *st, bool create)
{
    struct chunk_header h = {.version = STORE_FORMAT_VERSION};
    memcpy(h.magic, STORE_CHUNKS_MAGIC, sizeof STORE_CHUNKS_MAGIC);
    memcpy(h.uuid, st->uuid, 16);
    uint8_t page[STORE_BLOCK] = {0};
    memcpy(page, &h, sizeof h);
    size_t n = create ? sizeof page : sizeof h;
    if (pwrite(st->chunk_fd, page, n, 0) != (ssize_t)n ||
        fdatasync(st->chunk_fd) < 0)
        return store_set_err(st, -errno, "%s-chunks: write header: %s",
                             st->path, strerror(errno));
    return 0;
}

/* Space, log and the first generation of a new or opened image. */
static int runtime_init(struct store *st, const struct log_pos *pos,
                        uint64_t key)
{
    int rc;
    if (!(st->active = store_gen_new()))
        return store_set_err(st, -ENOMEM, "out of memory");
    if ((rc = store_log_init(st, pos, key)))
        return rc;
    st->ckpt_pos = *pos;
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
    st->idx.map_size = opts ? opts->map_size : 0;
    const char *vname =
        opts && opts->volume_name ? opts->volume_name : STORE_DEFAULT_VOLUME;
    uint64_t size = opts ? opts->size : 0;
    if ((rc = store_check_name(st, vname)))
        return fail_free(st, rc);
    if (size == 0 || size % STORE_BLOCK)
        return fail_free(st,
                         store_set_err(st, -EINVAL,
                                       "size %llu is not a positive "
                                       "multiple of %u",
                                       (unsigned long long)size, STORE_BLOCK));
    if (size / STORE_BLOCK > STORE_MAX_BLOCKS)
        return fail_free(
            st, store_set_err(
                    st, -EFBIG, "size %llu is over the maximum of %llu",
                    (unsigned long long)size,
                    (unsigned long long)(STORE_MAX_BLOCKS * STORE_BLOCK)));
    char *cp = store_side_path(path, "-chunks");
    if (!cp)
        return fail_free(st, store_set_err(st, -ENOMEM, "out of memory"));
    struct stat sb;
    if (stat(cp, &sb) == 0) {
        free(cp);
        return fail_free(
            st, store_set_err(st, -EEXIST, "%s-chunks already exists", path));
    }
    if ((rc = open_files(st, true)))
        goto fail_nofiles;
    uuid_generate(st->uuid);
    st->version = STORE_FORMAT_VERSION;
    uint64_t key;
    uuid_t rnd;
    uuid_generate_random(rnd);
    memcpy(&key, rnd, 8);
    if ((rc = write_chunk_header(st, true)) || (rc = env_open(st, true)) ||
        (rc = store_space_init(st, 1)) ||
        (rc = runtime_init(st, &(struct log_pos){1, 0, 0}, key)) ||
        (rc = store_log_restart(st)))
        goto fail;
    store_hash_bloom_build(st, NULL);
    {
        MDB_txn *txn;
        int64_t now = time(NULL);
        uint32_t ver = STORE_FORMAT_VERSION;
        if ((rc = mdb_txn_begin(st->idx.env, NULL, 0, &txn))) {
            rc = store_mdb_err(st, rc, "begin");
            goto fail;
        }
        if ((rc = meta_put(st, txn, "magic", STORE_INDEX_MAGIC,
                           sizeof STORE_INDEX_MAGIC)) ||
            (rc = meta_put(st, txn, "version", &ver, 4)) ||
            (rc = meta_put(st, txn, "uuid", st->uuid, 16)) ||
            (rc = meta_put(st, txn, "created", &now, 8)) ||
            (rc = meta_put(st, txn, "logkey", &key, 8))) {
            mdb_txn_abort(txn);
            goto fail;
        }
        if ((rc = mdb_txn_commit(txn))) {
            rc = store_mdb_err(st, rc, "commit");
            goto fail;
        }
        /* the default volume: object + node 1, written by a checkpoint */
        uint8_t vu[16];
        uuid_generate(vu);
        struct obj_rec o = {.kind = STORE_VOLUME,
                            .node = 1,
                            .size = size,
                            .ctime = now,
                            .seq = 1};
        snprintf(o.name, sizeof o.name, "%s", vname);
        st->cat.next_node = 1;
        st->cat.next_seq = 2;
        if ((rc = store_cat_new_node(st, 0, vu, 1)) ||
            (rc = store_cat_put(st, vu, &o)))
            goto fail;
        memcpy(st->cat.def, vu, 16);
        st->cat.def_dirty = true;
        if ((rc = store_ckpt_run(st, false)) || (rc = run_start(st)))
            goto fail;
    }
    fsync_dir(path);
    store_space_reserve(st);
    if ((rc = store_bg_start(st)))
        goto fail;
    free(cp);
    *out = st;
    return 0;
fail:
    if (st->lock_fd >= 0) /* we created it (O_EXCL) */
        unlink(path);
    if (st->chunk_fd >= 0)
        unlink(cp);
    {
        char *lp = store_side_path(path, "-lock");
        if (lp)
            unlink(lp);
        free(lp);
    }
fail_nofiles:
    free(cp);
    return fail_free(st, rc);
}

int store_open(const char *path, unsigned flags, struct store **out)
{
    return store_open_map(path, flags, 0, out);
}

/* Verify an entry's chunk against its recorded hash (replay). */
static bool chunk_matches(struct store *st, const struct log_ent *e)
{
    uint8_t buf[STORE_BLOCK], h[16];
    if (e->slot < STORE_FIRST_SLOT ||
        store_seg_read(st, e->slot, buf, STORE_BLOCK))
        return false;
    store_hash(buf, h);
    return !memcmp(h, e->hash, 16);
}

/* How far a replay got: every block up to lsn `done` applied whole; it
 * stopped at slot `slot` for `why`. */
struct reach {
    uint64_t done, slot, chunk;
    enum log_end why;
};

/* Replay the log from pos into the active generation; *n entries. */
static int replay(struct store *st, const struct log_pos *pos, uint64_t *n,
                  uint64_t *trees, struct reach *out)
{
    struct log_reader r;
    int rc = store_log_read_open(st, pos, &r);
    if (rc)
        return rc;
    st->replaying = true;
    struct log_ent e;
    const void *tree;
    size_t tlen;
    bool partial = false;
    *n = *trees = 0;
    while ((rc = store_log_read_next(&r, &e, &tree, &tlen)) > 0) {
        if (rc == 2) {
            if ((rc = store_tree_replay(st, tree, tlen)))
                break;
            (*trees)++;
            continue;
        }
        struct node *nd = store_node(st, e.node);
        if (!nd || nd->state != NODE_LIVE) {
            rc = store_set_err(st, -EPROTO,
                               "log: entry %llu names node %u, which is not "
                               "a volume head",
                               (unsigned long long)*n, e.node);
            break;
        }
        if ((e.type != LE_NEW && e.type != LE_REF && e.type != LE_ZERO) ||
            (e.type != LE_ZERO && !chunk_matches(st, &e))) {
            /* torn data: the log ends here, inside the block just read */
            partial = true;
            break;
        }
        if ((rc = store_apply_ent(st, &e, true)))
            break;
        (*n)++;
    }
    st->replaying = false;
    /* r.pos is the block after the one read last (or the one that did not
     * load) */
    out->done = r.pos.lsn - 1 - partial;
    out->why = partial ? LOG_END_CHUNK : r.end;
    out->slot = r.end_slot;
    out->chunk = partial ? e.slot : 0;
    for (size_t i = 0; rc >= 0 && i < r.nsegs; i++)
        store_log_chain_add(st, r.segs[i]);
    store_log_read_close(&r);
    return rc < 0 ? rc : 0;
}

/* The last run did not close cleanly (marker m): does the log reach what
 * that run made durable?  0 if so (or if the caller accepts the loss: a
 * line on stderr says what is lost), else -EUCLEAN and a message. */
static int check_reach(struct store *st, const struct log_pos *pos,
                       const struct open_marker *m, const struct reach *r,
                       uint64_t nent)
{
    uint64_t q = 0;
    bool no_tail = store_log_tail_read(st, m->run, &q) != 0;
    if (!no_tail && (q < pos->lsn || r->done >= q))
        return 0; /* nothing pending, or all of it read back */
    char where[240], held[80];
    if (r->why == LOG_END_CHUNK)
        snprintf(where, sizeof where,
                 "the log block at %s-chunks slot %llu names chunk slot "
                 "%llu, whose bytes do not match it (damaged chunk data)",
                 st->name, (unsigned long long)r->slot,
                 (unsigned long long)r->chunk);
    else
        snprintf(where, sizeof where,
                 "the log stops at %s-chunks slot %llu: %s", st->name,
                 (unsigned long long)r->slot, store_log_end_str(r->why));
    if (r->done < pos->lsn)
        snprintf(held, sizeof held, "none of them can be read");
    else
        snprintf(held, sizeof held, "only blocks %llu to %llu can be read",
                 (unsigned long long)pos->lsn, (unsigned long long)r->done);
    bool accept = st->flags & STORE_OPEN_ACCEPT_LOSS;
    if (no_tail) {
        char msg[600], got[80];
        if (r->done < pos->lsn)
            snprintf(got, sizeof got, "no log block can be read");
        else
            snprintf(got, sizeof got, "the log holds blocks %llu to %llu",
                     (unsigned long long)pos->lsn, (unsigned long long)r->done);
        snprintf(msg, sizeof msg,
                 "the record of how far its log was made durable (%s-chunks "
                 "slot 1) is missing or damaged, so whether acknowledged "
                 "writes are lost cannot be told (%s; %s)",
                 st->name, got, where);
        if (!accept)
            return store_set_err(
                st, -EUCLEAN,
                "not closed cleanly, and %s.  Put back the %s-chunks this "
                "image was using, or open it with --accept-data-loss to keep "
                "what the log holds",
                msg, st->name);
        fprintf(stderr,
                "%s: accepting possible data loss (--accept-data-loss): %s; "
                "%llu entries replayed\n",
                st->path, msg, (unsigned long long)nent);
        return 0;
    }
    uint64_t lost = q - (r->done < pos->lsn ? pos->lsn - 1 : r->done);
    if (!accept)
        return store_set_err(
            st, -EUCLEAN,
            "not closed cleanly, and its log does not reach what was made "
            "durable: log blocks %llu to %llu were synced (by a FLUSH, a FUA "
            "write or a tree operation) but %s (%s).  The writes of %llu log "
            "block%s, acknowledged since the last checkpoint, would be lost.  "
            "Put back the %s-chunks this image was using, or open it with "
            "--accept-data-loss to keep what the log holds",
            (unsigned long long)pos->lsn, (unsigned long long)q, held, where,
            (unsigned long long)lost, lost == 1 ? "" : "s", st->name);
    fprintf(stderr,
            "%s: accepting data loss (--accept-data-loss): log blocks %llu to "
            "%llu were synced but %s (%s): the writes of %llu log block%s, "
            "acknowledged since the last checkpoint, are lost; %llu entries "
            "replayed\n",
            st->path, (unsigned long long)pos->lsn, (unsigned long long)q, held,
            where, (unsigned long long)lost, lost == 1 ? "" : "s",
            (unsigned long long)nent);
    return 0;
}

/* Does the log hold anything after pos (a read-only open must have it
 * replayed first)? */
static bool log_pending(struct store *st, const struct log_pos *pos)
{
    struct log_reader r;
    if (store_log_read_open(st, pos, &r))
        return false;
    struct log_ent e;
    const void *tree;
    size_t tlen;
    int rc = store_log_read_next(&r, &e, &tree, &tlen);
    store_log_read_close(&r);
    return rc != 0;
}

int store_open_map(const char *path, unsigned flags, uint64_t map_size,
                   struct store **out)
{
    int rc;
    *out = NULL;
    struct store *st = store_alloc(path, flags);
    if (!st)
        return -ENOMEM;
    st->idx.map_size = map_size;
    if ((rc = open_files(st, false)) || (rc = store_index_validate(st)) ||
        (rc = env_open(st, false)))
        return fail_free(st, rc);
    MDB_txn *txn;
    if ((rc = mdb_txn_begin(st->idx.env, NULL, MDB_RDONLY, &txn)))
        return fail_free(st, store_mdb_err(st, rc, "begin"));
    char magic[sizeof STORE_INDEX_MAGIC];
    uint32_t ver = 0;
    struct chunk_header h;
    if ((rc = meta_get(st, txn, "magic", magic, sizeof magic)))
        goto fail_txn;
    if (memcmp(magic, STORE_INDEX_MAGIC, sizeof magic)) {
        rc = store_set_err(st, -EPROTO, "not a busesnap image (bad magic)");
        goto fail_txn;
    }
    if ((rc = meta_get(st, txn, "version", &ver, 4)))
        goto fail_txn;
    if (ver < STORE_FORMAT_OLDEST || ver > STORE_FORMAT_VERSION) {
        rc = store_set_err(st, -EPROTO,
                           "unsupported format version %u (this build "
                           "reads versions %u to %u)",
                           ver, STORE_FORMAT_OLDEST, STORE_FORMAT_VERSION);
        goto fail_txn;
    }
    st->version = ver;
    if ((rc = meta_get(st, txn, "uuid", st->uuid, 16)))
        goto fail_txn;
    if (pread(st->chunk_fd, &h, sizeof h, 0) != sizeof h ||
        memcmp(h.magic, STORE_CHUNKS_MAGIC, sizeof STORE_CHUNKS_MAGIC)) {
        rc = store_set_err(st, -EPROTO,
                           "%s-chunks: not a busesnap chunk file (bad magic)",
                           path);
        goto fail_txn;
    }
    if (h.version < STORE_FORMAT_OLDEST || h.version > STORE_FORMAT_VERSION) {
        rc = store_set_err(st, -EPROTO,
                           "%s-chunks: unsupported format version %u", path,
                           h.version);
        goto fail_txn;
    }
    if (memcmp(h.uuid, st->uuid, 16)) {
        rc = store_set_err(st, -EPROTO,
                           "%s-chunks belongs to another image (UUID "
                           "differs)",
                           path);
        goto fail_txn;
    }
    mdb_txn_abort(txn);
    bool upgraded = false;
    if (ver < STORE_FORMAT_VERSION || h.version < STORE_FORMAT_VERSION) {
        if (st->rdonly)
            return fail_free(
                st, store_set_err(st, -EPROTO,
                                  "format version %u: serve it (or open it "
                                  "read-write) once to upgrade it to version "
                                  "%u",
                                  ver, STORE_FORMAT_VERSION));
        if ((rc = store_upgrade(st, &h)))
            return fail_free(st, rc);
        upgraded = true;
    }
    /* load what the index has */
    if ((rc = mdb_txn_begin(st->idx.env, NULL, MDB_RDONLY, &txn)))
        return fail_free(st, store_mdb_err(st, rc, "begin"));
    uint8_t posb[16];
    struct log_pos pos;
    uint64_t key;
    if ((rc = meta_get(st, txn, "log", posb, 16)) ||
        (rc = meta_get(st, txn, "logkey", &key, 8)) ||
        (rc = meta_get(st, txn, "refsum", &st->refsum, 8)))
        goto fail_txn;
    memcpy(&pos.lsn, posb, 8);
    memcpy(&pos.seg, posb + 8, 4);
    memcpy(&pos.idx, posb + 12, 4);
    struct open_marker mk;
    int unclean = marker_get(st, txn, &mk);
    if (unclean < 0) {
        rc = unclean;
        goto fail_txn;
    }
    if ((rc = store_cat_load(st, txn)) || (rc = store_space_init(st, 1)) ||
        (rc = store_space_load(st, txn)) ||
        (rc = store_hash_bloom_build(st, txn)) ||
        (rc = runtime_init(st, &pos, key)))
        goto fail_txn;
    mdb_txn_abort(txn);
    if (st->rdonly) {
        uint64_t q = 0;
        if (log_pending(st, &pos) ||
            (unclean &&
             (store_log_tail_read(st, mk.run, &q) || q >= pos.lsn))) {
            /* writes the log holds are part of the image: a read-write
             * open replays them, then this one starts again */
            store_free(st);
            struct store *rw;
            if ((rc = store_open_map(path, flags & ~STORE_OPEN_RDONLY, map_size,
                                     &rw)))
                return rc;
            store_close(rw);
            return store_open_map(path, flags, map_size, out);
        }
        *out = st;
        return 0;
    }
    store_room_refresh(st);
    struct timespec t0;
    store_now(&t0);
    uint64_t nent = 0, ntree = 0;
    struct reach rch;
    rc = replay(st, &pos, &nent, &ntree, &rch);
    if (!rc && unclean && (rc = check_reach(st, &pos, &mk, &rch, nent)))
        return fail_free(st, rc); /* nothing written: the files as they were */
    if (!rc)
        rc = store_log_restart(st);
    if (!rc && upgraded)
        rc = store_upgrade_journal(st);
    if (!rc)
        rc = store_ckpt_run(st, false);
    /* the last run's log is in the index now: its marker goes before the
     * new run's tail overwrites that run's (a crash in between must not
     * leave a marker without its tail) */
    if (!rc && unclean)
        rc = marker_set(st, NULL);
    if (!rc)
        rc = run_start(st);
    if (rc) {
        /* the index and the log are as they were: the next open replays
         * the same entries from the same position */
        char why[400];
        const char *m = store_errmsg();
        size_t skip = strlen(st->name);
        if (!strncmp(m, st->name, skip) && !strncmp(m + skip, ": ", 2))
            m += skip + 2;
        snprintf(why, sizeof why, "%s", m);
        return fail_free(
            st, store_set_err(st, rc,
                              "cannot replay the log (writes from before an "
                              "unclean stop; %llu entries read): %s; the log "
                              "is kept and nothing is lost: open the image "
                              "again once that is fixed",
                              (unsigned long long)nent, why));
    }
    if (nent || ntree)
        fprintf(stderr,
                "%s: log: replayed %llu entries and %llu tree "
                "records in %ld ms\n",
                path, (unsigned long long)nent, (unsigned long long)ntree,
                store_ms_since(&t0));
    st->gc_wanted = store_gc_needed(st);
    store_space_reserve(st);
    if ((rc = store_bg_start(st)))
        return fail_free(st, rc);
    *out = st;
    return 0;
fail_txn:
    mdb_txn_abort(txn);
    return fail_free(st, rc);
}

void store_close(struct store *st)
{
    if (!st)
        return;
    store_bg_stop(st);
    /* a clean close: everything is in the index, the marker goes (if the
     * checkpoint fails, the next open replays the log and checks it) */
    if (!st->rdonly && !store_failed(st) && store_ckpt_run(st, false) == 0 &&
        marker_set(st, NULL))
        fprintf(stderr, "%s\n", store_errmsg());
    store_free(st);
}
