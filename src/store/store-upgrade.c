/* store-upgrade.c: a read-write open of an image of format version 2, 3 or
 * 4 makes it version 5.
 *
 * In one txn: the staged hashes (`recent`, slot -> hash) are merged into
 * `hashes` and the staged deletions (`dead`) applied; the `space` bitmaps
 * are built from `refs` (every chunk's slot); map values get their
 * chunk's tag (tag_map); `free`, `recent` and `dead`
 * are dropped; the log starts nowhere (position segment 0: nothing to
 * replay) with a new secret key; the version becomes 5.  Then the chunk
 * file's header says 5 (either order is safe: both versions are accepted
 * until both say 5, and this build upgrades whichever is older).  From
 * then on a build from before version 5 refuses the image.
 *
 * The write-ahead journal of versions 3 and 4 (IMAGE-journal) may still
 * hold records of the epoch the index names (an unclean stop):
 * store_upgrade_journal applies them through the ordinary write path and
 * the tree operations (snapshots and clones already present are skipped,
 * so a replay cut by a crash is simply done again), checkpoints, then
 * removes the journal and the old counters.
 */
#include "store-int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

static int drop_db(struct store *st, MDB_txn *txn, const char *name)
{
    MDB_dbi dbi;
    int rc = mdb_dbi_open(txn, name, 0, &dbi);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (!rc)
        rc = mdb_drop(txn, dbi, 1);
    return rc ? store_mdb_err(st, rc, name) : 0;
}

/* Merge `recent` into `hashes`, apply `dead`. */
static int merge_hashes(struct store *st, MDB_txn *txn)
{
    MDB_dbi recent, dead;
    MDB_cursor *c;
    MDB_val k, d;
    int rc = mdb_dbi_open(txn, "dead", 0, &dead);
    if (rc == 0) {
        if ((rc = mdb_cursor_open(txn, dead, &c)))
            return store_mdb_err(st, rc, "dead");
        for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0;
             rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
            if (k.mv_size != 24)
                continue;
            MDB_val hk = {16, k.mv_data}, hd = {8, (uint8_t *)k.mv_data + 16};
            int drc = mdb_del(txn, st->idx.hashes, &hk, &hd);
            if (drc && drc != MDB_NOTFOUND) {
                mdb_cursor_close(c);
                return store_mdb_err(st, drc, "hashes");
            }
        }
        mdb_cursor_close(c);
        if (rc != MDB_NOTFOUND)
            return store_mdb_err(st, rc, "dead");
    } else if (rc != MDB_NOTFOUND) {
        return store_mdb_err(st, rc, "dead");
    }
    rc = mdb_dbi_open(txn, "recent", 0, &recent);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc || (rc = mdb_cursor_open(txn, recent, &c)))
        return store_mdb_err(st, rc, "recent");
    for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        if (k.mv_size != 8 || d.mv_size != 16)
            continue;
        MDB_val hk = {16, d.mv_data}, hd = {8, k.mv_data};
        int prc = mdb_put(txn, st->idx.hashes, &hk, &hd, MDB_NODUPDATA);
        if (prc && prc != MDB_KEYEXIST) {
            mdb_cursor_close(c);
            return store_mdb_err(st, prc, "hashes");
        }
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : store_mdb_err(st, rc, "recent");
}

/* The `space` bitmaps from the slots of `refs`. */
static int build_space(struct store *st, MDB_txn *txn)
{
    MDB_cursor *c;
    MDB_val k, d;
    uint64_t w[STORE_SEG_WORDS];
    uint32_t cur = 0;
    bool any = false;
    int rc = mdb_cursor_open(txn, st->idx.refs, &c);
    if (rc)
        return store_mdb_err(st, rc, "refs");
    memset(w, 0, sizeof w);
    w[0] = 3; /* segment 0: the header and slot 1 */
    any = true;
    for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST);;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        uint64_t s = 0;
        if (rc == 0) {
            if (k.mv_size != 8)
                continue;
            s = get_be64(k.mv_data);
        }
        uint32_t seg = (uint32_t)(s >> STORE_SEG_SHIFT);
        if (rc || seg != cur) {
            if (any) {
                uint8_t kb[4];
                put_be32(kb, cur);
                MDB_val sk = {4, kb}, sd = {sizeof w, w};
                int prc = mdb_put(txn, st->idx.space, &sk, &sd, 0);
                if (prc) {
                    mdb_cursor_close(c);
                    return store_mdb_err(st, prc, "space");
                }
            }
            if (rc)
                break;
            memset(w, 0, sizeof w);
            cur = seg;
            any = false;
        }
        uint32_t i = s & (STORE_SEG_SLOTS - 1);
        w[i / 64] |= 1ULL << (i % 64);
        any = true;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : store_mdb_err(st, rc, "refs");
}

/* Map values of versions 2-4 are the slot alone (5 bytes): each gets the
 * tag of its chunk's hash (from `refs`), so that reads verify it.  A value
 * whose slot has no record keeps tag 0: its reads fail rather than return
 * bytes nothing vouches for. */
static int tag_map(struct store *st, MDB_txn *txn)
{
    MDB_cursor *c;
    MDB_val k, d;
    int rc = mdb_cursor_open(txn, st->idx.map, &c);
    if (rc)
        return store_mdb_err(st, rc, "map");
    for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        if (d.mv_size != 5)
            continue;
        uint64_t slot = get_be40(d.mv_data), val = slot;
        if (slot >= STORE_FIRST_SLOT) {
            uint8_t sb[8];
            put_be64(sb, slot);
            MDB_val rk = {8, sb}, rd;
            struct ref_rec r;
            if (!mdb_get(txn, st->idx.refs, &rk, &rd) &&
                rd.mv_size == sizeof r) {
                memcpy(&r, rd.mv_data, sizeof r);
                val = val_make(slot, r.hash, get_be40(k.mv_data));
            }
        }
        uint8_t vb[MAP_VAL], kb[MAP_KEY];
        if (k.mv_size != MAP_KEY)
            continue;
        memcpy(kb, k.mv_data, MAP_KEY);
        val_put(vb, val);
        MDB_val nk = {MAP_KEY, kb}, nd = {MAP_VAL, vb};
        /* a put that resizes a value may move the cursor: put by key, then
         * find the key again */
        int prc = mdb_put(txn, st->idx.map, &nk, &nd, 0);
        if (!prc)
            prc = mdb_cursor_get(c, &nk, &d, MDB_SET);
        k = nk;
        if (prc) {
            mdb_cursor_close(c);
            return store_mdb_err(st, prc, "map");
        }
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : store_mdb_err(st, rc, "map");
}

int store_upgrade(struct store *st, struct chunk_header *h)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(st->idx.env, NULL, 0, &txn);
    if (rc)
        return store_mdb_err(st, rc, "begin");
    uint8_t pos[16] = {0};
    uint64_t one = 1, key;
    uint32_t ver = STORE_FORMAT_VERSION;
    uuid_t rnd;
    uuid_generate_random(rnd);
    memcpy(&key, rnd, 8);
    memcpy(pos, &one, 8); /* lsn 1, segment 0: no log yet */
    MDB_val lk = {3, "log"}, ld = {16, pos}, kk = {6, "logkey"}, kd = {8, &key},
            vk = {7, "version"}, vd = {4, &ver};
    if ((rc = merge_hashes(st, txn)) || (rc = build_space(st, txn)) ||
        (rc = tag_map(st, txn)) || (rc = drop_db(st, txn, "free")) ||
        (rc = drop_db(st, txn, "recent")) || (rc = drop_db(st, txn, "dead")))
        goto fail;
    if ((rc = mdb_put(txn, st->idx.meta, &lk, &ld, 0)) ||
        (rc = mdb_put(txn, st->idx.meta, &kk, &kd, 0)) ||
        (rc = mdb_put(txn, st->idx.meta, &vk, &vd, 0))) {
        rc = store_mdb_err(st, rc, "meta");
        goto fail;
    }
    if ((rc = mdb_txn_commit(txn)))
        return store_mdb_err(st, rc, "commit");
    if (h->version != ver) {
        h->version = ver;
        if (pwrite(st->chunk_fd, h, sizeof *h, 0) != sizeof *h ||
            fdatasync(st->chunk_fd) < 0)
            return store_set_err(st, -errno,
                                 "%s-chunks: upgrade to format version %u: %s",
                                 st->path, ver, strerror(errno));
    }
    fprintf(stderr,
            "%s: format version %u -> %u (a build from before %u no longer "
            "opens it)\n",
            st->path, st->version, ver, ver);
    st->version = ver;
    return 0;
fail:
    mdb_txn_abort(txn);
    return rc;
}

/* ---- the version 3/4 journal ---- */

#define JR_MAGIC "BUSESNAP-JOURNAL"
#define JR_START 4096u
#define JR_REC_MAX (64u << 20)
enum { JR_WRITE = 1, JR_ZERO = 2, JR_SNAPSHOT = 3, JR_CLONE = 4 };

struct jr_rec {
    uint64_t sum; /* XXH3-64 of the record after this field, seed: data */
    uint64_t epoch;
    uint64_t off;
    uint64_t len;
    uint32_t node;
    uint16_t type;
    uint16_t flags;
};

struct jr_tree {
    uint8_t src[16];
    uint8_t obj[16];
    int64_t ctime;
    uint64_t seq;
    uint32_t node;
    char name[STORE_NAME_MAX + 1];
    char pad[3];
};

static int journal_apply(struct store *st, const struct jr_rec *r, void *data)
{
    if (r->type == JR_SNAPSHOT || r->type == JR_CLONE) {
        struct jr_tree t;
        if (r->len != sizeof t)
            return store_set_err(st, -EPROTO, "journal: bad tree record");
        memcpy(&t, data, sizeof t);
        t.name[STORE_NAME_MAX] = 0;
        return store_tree_import(st, r->type == JR_SNAPSHOT, t.src, t.obj,
                                 t.ctime, t.seq, t.node, t.name);
    }
    struct node *n = store_node(st, r->node);
    if (!n || n->state != NODE_LIVE)
        return store_set_err(st, -EPROTO,
                             "journal: a record names node %u, which is not a "
                             "volume head",
                             r->node);
    struct store_vol v = {
        .st = st, .node = r->node, .size = STORE_MAX_BLOCKS * STORE_BLOCK};
    snprintf(v.name, sizeof v.name, "node %u", r->node);
    return r->type == JR_WRITE
               ? store_write(&v, data, r->off, (uint32_t)r->len, 0)
               : store_zero(&v, r->off, r->len, r->flags);
}

int store_upgrade_journal(struct store *st)
{
    char *jp = store_side_path(st->path, "-journal");
    if (!jp)
        return store_set_err(st, -ENOMEM, "out of memory");
    int fd = open(jp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        free(jp);
        return 0; /* version 2, or done before */
    }
    struct {
        char magic[16];
        uint32_t version;
        uint8_t uuid[16];
    } h;
    uint64_t epoch = 0, nrec = 0;
    MDB_txn *txn;
    int rc = 0;
    if (!mdb_txn_begin(st->idx.env, NULL, MDB_RDONLY, &txn)) {
        MDB_val k = {6, "jepoch"}, d;
        if (mdb_get(txn, st->idx.meta, &k, &d) == 0 && d.mv_size == 8)
            memcpy(&epoch, d.mv_data, 8);
        mdb_txn_abort(txn);
    }
    ssize_t n = pread(fd, &h, sizeof h, 0);
    if (n == sizeof h && (memcmp(h.magic, JR_MAGIC, 16) || h.version != 1 ||
                          memcmp(h.uuid, st->uuid, 16))) {
        rc = store_set_err(st, -EPROTO,
                           "%s-journal is not this image's journal (bad "
                           "magic, version or UUID)",
                           st->path);
    }
    uint64_t pos = JR_START;
    void *data = NULL;
    size_t cap = 0;
    while (!rc && n == sizeof h) {
        struct jr_rec r;
        if (pread(fd, &r, sizeof r, (off_t)pos) != sizeof r ||
            r.epoch != epoch || r.len == 0 || r.type < JR_WRITE ||
            r.type > JR_CLONE || (r.type != JR_ZERO && r.len > JR_REC_MAX))
            break;
        size_t dlen = r.type == JR_ZERO ? 0 : r.len;
        if (dlen > cap) {
            void *p = realloc(data, dlen);
            if (!p) {
                rc = store_set_err(st, -ENOMEM, "out of memory");
                break;
            }
            data = p;
            cap = dlen;
        }
        if (dlen &&
            pread(fd, data, dlen, (off_t)(pos + sizeof r)) != (ssize_t)dlen)
            break;
        uint64_t dsum = XXH3_64bits_withSeed(data, dlen, r.epoch);
        if (XXH3_64bits_withSeed((const uint8_t *)&r + 8, sizeof r - 8, dsum) !=
            r.sum)
            break;
        if ((rc = journal_apply(st, &r, data)))
            break;
        nrec++;
        pos += (sizeof r + dlen + 7) & ~(size_t)7;
    }
    free(data);
    close(fd);
    if (!rc)
        rc = store_ckpt_run(st, false);
    if (!rc) {
        unlink(jp);
        if (!mdb_txn_begin(st->idx.env, NULL, 0, &txn)) {
            const char *old[] = {"jepoch", "next_slot", "gen"};
            for (int i = 0; i < 3; i++) {
                MDB_val k = {strlen(old[i]), (void *)old[i]};
                mdb_del(txn, st->idx.meta, &k, NULL);
            }
            if (mdb_txn_commit(txn))
                rc = store_set_err(st, -EIO,
                                   "meta: cannot drop the journal "
                                   "epoch");
        }
        if (nrec)
            fprintf(stderr,
                    "%s: upgrade: replayed %llu records of the "
                    "version 4 journal\n",
                    st->path, (unsigned long long)nrec);
    }
    free(jp);
    return rc;
}
