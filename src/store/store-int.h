/* store-int.h: private structures of the chunk store, shared by the
 * store-*.c files and nothing else (the server includes only store.h).
 *
 * Design in one paragraph (doc/design.md has the whole story): one mutex
 * (st->mu) guards the single long-lived LMDB write txn (st->txn), the
 * in-memory copy of the version tree (st->nodes) and every counter here.
 * Chunk reads happen outside the mutex under the slot gate (st->gate, read
 * mode); a commit takes the gate in write mode before slots freed by the
 * committed txn become reusable (st->gen moves on).  Functions named *_l
 * must be called with st->mu held.
 */
#ifndef STORE_INT_H
#define STORE_INT_H

#ifndef STORE_H
#include "store.h"
#endif

#include <lmdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

/* 3: the write-ahead journal (IMAGE-journal).  An image of version 2 is
 * opened and, by a read-write open, marked 3: a build from before the
 * journal would open an image with unreplayed records and ignore them.
 * 4: the `dead` DB (staged deletions from `hashes`, store-hash.c), created
 * by a read-write open of an image of version 2 or 3, which is then marked
 * 4: an older build would take the entries it lists for live chunks. */
#define STORE_FORMAT_VERSION 4u
#define STORE_FORMAT_OLDEST 2u
#define STORE_INDEX_MAGIC "BUSESNAP-INDEX"
#define STORE_CHUNKS_MAGIC "BUSESNAP-CHUNKS"
#define STORE_FIRST_SLOT 2u      /* 0: hole, 1: allocated zero */
#define STORE_COMMIT_OPS 16384u  /* soft; a writer commits inline at 2x */
#define STORE_COMMIT_PAGES 8192u /* soft; est. pages a txn dirties */
#define STORE_COMMIT_MS 1000u    /* commit (no journal) or sync the journal */
/* with a journal: a txn whose first record is this old is committed */
#define STORE_CHECKPOINT_MS 5000u
/* journal bytes that make a commit due */
#define STORE_JOURNAL_MAX (64u << 20)
/* Writes this big are not journaled: the next flush commits instead.  A
 * commit's three device flushes take about as long as writing 512 KiB
 * here (0.5 ms per fdatasync, 450 MB/s), and big writes are streams that
 * would otherwise reach the disk twice (1 MiB sequential writes, journaled:
 * 2.0x their bytes of disk writes; not journaled: 1.3x). */
#define STORE_JOURNAL_BIG (512u << 10)
/* A journal left empty by a checkpoint this long ago is given back to the
 * file system (truncated to its header): a served image that went idle and
 * a closed one do not keep the work area. */
#define STORE_JOURNAL_IDLE_MS 2000u
#define STORE_GC_BATCH 4096u
/* Staged hashes that start a merge pass (store-hash.c).  A pass dirties
 * each leaf of `hashes` about once whatever it moves, so the more staged,
 * the fewer leaf writes per chunk; the table costs 24 bytes per place
 * (HP_CAP).  8 GiB fill, 2 cores here: 32,768 staged and keys taken in
 * staging order 122 MiB/s, 30 MiB RssAnon; key ranges with 65,536 staged
 * 233 MiB/s, 41 MiB (33 MiB once the batch array stopped being sized for
 * every staged key); 131,072 staged 257 MiB/s, 54 MiB. */
#define STORE_HASH_MERGE 65536u
/* Hash leaves a merge txn may dirty: what bounds LMDB's dirty-page buffers
 * (kept for reuse, so resident).  A smaller bound means more txns per pass
 * but not more leaf writes, each txn taking a narrower key range. */
#define STORE_MERGE_PAGES 2048u

/* Node states (nodes DB and st->nodes). */
enum { NODE_LIVE = 1, NODE_HIDDEN = 2, NODE_DEAD = 3 };

/* On-disk records (native endian, fixed layout: the format is versioned). */
struct obj_rec {
    uint32_t kind; /* enum store_kind */
    uint32_t node; /* snapshot: its frozen node; volume: its head */
    uint64_t size;
    int64_t ctime;
    uint64_t seq; /* creation order */
    uint8_t parent[16];
    char name[STORE_NAME_MAX + 1];
    char pad[7];
};

struct node_rec {
    uint32_t parent; /* 0: root */
    uint32_t state;
    uint8_t obj[16];
    uint64_t entries; /* map entries (b, this node) */
};

struct ref_rec {
    uint32_t refcount;
    uint8_t hash[16];
};

/* In-memory copy of a node (authoritative for `entries`, which is written
 * back to the nodes DB at commit when dirty). */
struct node {
    uint32_t parent;
    uint8_t state; /* 0: no such node */
    uint8_t dirty;
    uint8_t obj[16];
    uint64_t entries;
    uint32_t first_child, next_sibling;
    uint32_t *anc; /* ancestors-or-self, ascending ids; NULL until needed */
    uint32_t nanc;
};

struct store {
    char *path;
    const char *name; /* basename of path, for messages */
    unsigned flags;
    bool rdonly;
    int lock_fd;  /* IMAGE, flock()ed */
    int chunk_fd; /* IMAGE-chunks */
    MDB_env *env;
    MDB_dbi db_meta, db_objects, db_names, db_nodes, db_map, db_hashes, db_refs,
        db_free, db_recent, db_dead;
    bool dead_ok; /* db_dead is open (not on a read-only open of an image
                     from before format version 4) */

    pthread_mutex_t mu;
    pthread_rwlock_t gate;
    MDB_txn *txn; /* the one txn; write txn unless rdonly */
    uint64_t txn_ops;
    uint64_t txn_pages; /* estimate of the pages the txn dirtied */
    uint64_t last_map, last_ref, last_new; /* last keys touched (estimate) */
    /* random touches of the big B-trees and their leaf counts at the txn
     * start: distinct dirty pages saturate at the leaf count */
    uint64_t touch_map, touch_ref, touch_hash, touch_dead;
    uint64_t leaves_map, leaves_ref, leaves_hash;
    struct timespec txn_start;
    bool dirty;       /* txn has changes */
    bool chunk_dirty; /* chunk file written since last fdatasync */
    int failed; /* -errno: acknowledged writes were lost; all I/O refused */
    bool txn_writes;      /* the txn holds client writes (not only metadata) */
    bool txn_broken;      /* an LMDB call failed: the txn can only be aborted */
    char broken_msg[160]; /* what broke it */
    unsigned chunks_unsynced; /* new chunks since the last writeback kick */
    bool presync_busy;        /* a store_presync() is under way */
    bool free_none;           /* no reusable free slot at free_none_gen */
    uint64_t free_none_gen;

    /* space (store-space.c): pages the txn may still dirty without a full
     * map or a full file system failing it mid-way */
    uint64_t map_size;    /* bytes (LMDB map) */
    unsigned psize;       /* LMDB page size */
    uint64_t room;        /* pages usable by this txn (map and disk) */
    uint64_t reserve;     /* pages writes leave to trims, deletes and GC */
    uint64_t idx_alloc;   /* LMDB file preallocated up to this page */
    uint64_t chunk_alloc; /* chunk file preallocated up to this slot */
    bool no_prealloc;     /* the file system cannot fallocate */

    /* persisted counters (meta), current values */
    uint64_t gen, next_slot, next_seq, refsum;
    uint32_t next_node;
    uint8_t uuid[16];
    uint32_t version; /* the image's format version */

    /* the journal (store-journal.c) */
    int jfd;       /* IMAGE-journal, -1: none (read-only open) */
    uint8_t *jbuf; /* records not yet handed to the kernel */
    size_t jbuf_used;
    uint64_t jbuf_off;        /* file offset of jbuf[0] */
    uint64_t jepoch;          /* epoch of the records not in the index */
    uint64_t jwritten;        /* bytes ever written to the file (atomic) */
    uint64_t jsynced;         /* of which durable (atomic) */
    uint64_t jrecs;           /* records this epoch */
    struct timespec jckpt;    /* when the last checkpoint emptied it */
    struct timespec jfirst;   /* when the epoch's first record came */
    bool jbroken;             /* a write or sync failed: flushes commit */
    bool jskip;               /* a big write was not journaled: ditto */
    bool jreplay;             /* replaying: no records, epoch kept */
    pthread_mutex_t jsync_mu; /* one journal fdatasync at a time */

    /* staged hashes and the filter of `hashes` (store-hash.c) */
    struct hp_entry *hp;
    uint32_t hp_used, hp_tomb;
    uint64_t dead_n;      /* entries of `dead` (deletions not yet merged) */
    uint64_t merge_from;  /* key position where the merge pass goes on */
    unsigned merge_pages; /* STORE_MERGE_PAGES (BUSESNAP_MERGE_PAGES) */
    struct bloom_layer {
        uint64_t *w;
        uint64_t bits, keys;
    } bloom[16];         /* oldest first; [bloom_n - 1] takes new keys */
    unsigned bloom_n;    /* 0: no filter */
    uint64_t bloom_bits; /* of all layers */

    /* version tree */
    struct node *nodes; /* indexed by node id, [0, nodes_cap) */
    uint32_t nodes_cap;
    bool tree_dirty;       /* children lists / ancestors need rebuilding */
    uint64_t tree_version; /* bumped at every structural change */

    /* open handles (list, under mu) */
    struct store_vol *vols;

    /* background thread: timed commits and garbage collection */
    pthread_t bg;
    bool bg_running, bg_stop;
    pthread_cond_t bg_cond;
    bool gc_wanted;
    pthread_mutex_t gc_mu; /* one collector pass at a time */
};

struct store_vol {
    struct store *st;
    struct store_vol *next;
    uint8_t uuid[16];
    uint32_t node; /* current node (changes on rollback) */
    uint64_t size;
    bool rdonly;
    char name[STORE_NAME_MAX + 1];
};

/* ---- store.c: errors, txn, meta, objects, tree ---- */
int store_set_err(struct store *st, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int store_mdb_err(struct store *st, int mrc, const char *what);
int store_mdb_errno(int mrc);
int store_commit_l(struct store *st);
int store_abort_l(struct store *st);
int store_maybe_commit_l(struct store *st);
int store_presync(struct store *st);
void store_now(struct timespec *ts);
long store_ms_since(const struct timespec *t0);
char *store_side_path(const char *path, const char *suffix);
void store_hash(const void *block, uint8_t out[16]);

int store_node_put_l(struct store *st, uint32_t id);
struct node *store_node(struct store *st, uint32_t id);
int store_tree_rebuild_l(struct store *st);
static inline void store_tree_changed_l(struct store *st)
{
    st->tree_dirty = true;
    st->tree_version++;
}
bool store_is_anc_l(struct store *st, uint32_t y, uint32_t n);
int store_check_name(struct store *st, const char *name);
int store_obj_get_l(struct store *st, const uint8_t uuid[16],
                    struct obj_rec *out);
int store_obj_put_l(struct store *st, const uint8_t uuid[16],
                    const struct obj_rec *rec);
int store_resolve_name_l(struct store *st, const char *name_or_uuid,
                         uint8_t uuid[16], struct obj_rec *rec);
void store_wake_bg(struct store *st);
int store_gc_pass(struct store *st);

/* ---- store-space.c ---- */
#define STORE_MAP_SIZE_DEFAULT (1ULL << 40)
#define STORE_ROOM_FULL 32768u /* pages reserved ahead with space to spare */
void store_space_refresh_l(struct store *st);
int store_space_slot_l(struct store *st, uint64_t slot);
int store_room_l(struct store *st, uint64_t need, uint64_t reserve);
int store_failed_l(struct store *st);
void store_offline_l(struct store *st, int err, const char *what,
                     const char *why);

/* ---- store-hash.c ---- */
int store_hash_lookup_l(struct store *st, const uint8_t h[16], uint64_t *out,
                        size_t max, size_t *n);
int store_hash_add_l(struct store *st, const uint8_t h[16], uint64_t slot);
int store_hash_del_l(struct store *st, const uint8_t h[16], uint64_t slot);
bool store_hash_has_l(struct store *st, const uint8_t h[16], uint64_t slot);
int store_hash_load_l(struct store *st);
void store_bloom_build_l(struct store *st);
void store_bloom_free(struct store *st);
bool store_hash_merge_due_l(struct store *st);
int store_hash_merge_l(struct store *st);

/* ---- store-journal.c ---- */
enum { JR_WRITE = 1, JR_ZERO = 2, JR_SNAPSHOT = 3, JR_CLONE = 4 };
int store_journal_open(struct store *st, bool create);
void store_journal_close(struct store *st);
bool store_journal_usable_l(const struct store *st);
int store_journal_write_l(struct store *st, uint64_t *upto);
void store_journal_add_l(struct store *st, uint32_t type, uint32_t node,
                         uint64_t off, uint64_t len, uint32_t flags,
                         const void *data);
int store_journal_sync(struct store *st, uint64_t upto);
int store_sync_begin_l(struct store *st, uint64_t *upto);
int store_sync_end(struct store *st, uint64_t upto);
void store_journal_checkpointed_l(struct store *st);
void store_journal_release_l(struct store *st, bool now);
uint64_t store_journal_next_epoch_l(const struct store *st);
bool store_journal_pending(struct store *st);
int store_journal_replay(struct store *st);
int store_tree_replay(struct store *st, uint32_t type, const void *data,
                      uint64_t len); /* store-tree.c */

/* ---- store-io.c ---- */
int store_resolve_l(struct store *st, MDB_cursor *c, uint64_t b, uint32_t y,
                    uint64_t *val);
int store_decref_l(struct store *st, uint64_t slot);
int store_map_del_l(struct store *st, MDB_cursor *c, uint32_t node,
                    uint64_t val);

/* Count a page for the txn's dirty-page estimate unless key is next to the
 * last key of its kind (then it most likely shares that key's leaf). */
static inline void store_touch_l(struct store *st, uint64_t *last, uint64_t key)
{
    if (key != *last && key != *last + 1) {
        st->txn_pages++;
        if (last == &st->last_map)
            st->touch_map++;
        else /* last_ref, last_new: both in `refs` (reused slots are
                random) */
            st->touch_ref++;
    }
    *last = key;
}

/* Distinct pages among k random touches of a B-tree with l leaves: about
 * l (1 - e^(-k/l)); k l / (k + l), scaled by 4/3 and capped by k and l, is
 * within ~10% of it without libm. */
static inline uint64_t store_saturate(uint64_t k, uint64_t l)
{
    if (l == 0 || k == 0)
        return k;
    uint64_t d = k * l / (k + l) * 4 / 3;
    d = d < k ? d : k;
    return d < l ? d : l;
}

/* Estimate of the pages the txn has dirtied (what its commit writes and
 * LMDB keeps in memory until then), as opposed to txn_pages, an upper
 * bound used for space.  Random overwrites of a 1 GiB volume touch every
 * leaf within a few thousand writes: counting touches, as txn_pages does,
 * committed 3x as often, each commit rewriting nearly the whole index. */
static inline uint64_t store_dirty_est_l(const struct store *st)
{
    uint64_t rand =
        st->touch_map + st->touch_ref + st->touch_hash + st->touch_dead;
    uint64_t rest = st->txn_pages > rand ? st->txn_pages - rand : 0;
    return rest + store_saturate(st->touch_map, st->leaves_map) +
           store_saturate(st->touch_ref, st->leaves_ref) +
           store_saturate(st->touch_hash, st->leaves_hash) +
           store_saturate(st->touch_dead, st->dead_n / 64 + 1);
}

/* Can the txn take need more pages and still leave reserve (store-space.c)?
 * txn_pages misses runs of adjacent keys, so 1/16 page per op counts too
 * (measured: 200 pages for 8,192 sequential block writes).  With room to
 * spare (the usual case) the saturating estimate is used with a factor 2,
 * so that space never commits earlier than the group commit limits; when
 * space is short, the upper bound txn_pages with a factor 3 (branch pages,
 * the free list, estimate error). */
/* The txn has less than STORE_ROOM_FULL pages of room: a nearly full index
 * or disk, where estimates turn careful and frees must free pages. */
static inline bool store_room_short_l(const struct store *st)
{
    return st->room < STORE_ROOM_FULL;
}

static inline bool store_room_ok_l(const struct store *st, uint64_t need,
                                   uint64_t reserve)
{
    uint64_t used = !store_room_short_l(st)
                        ? 2 * (store_dirty_est_l(st) + st->txn_ops / 16)
                        : 3 * (st->txn_pages + st->txn_ops / 16);
    return used + need + reserve <= st->room;
}

/* Is the txn due for a group commit (soft limits; hard = 2x)? */
static inline bool store_commit_due_l(const struct store *st, unsigned x)
{
    return st->txn_ops >= x * STORE_COMMIT_OPS ||
           st->jbuf_off + st->jbuf_used >= x * (uint64_t)STORE_JOURNAL_MAX ||
           store_dirty_est_l(st) >= x * STORE_COMMIT_PAGES ||
           (st->dirty && !store_room_ok_l(st, 64, st->reserve / 2));
}

/* ---- encodings ---- */
static inline void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}
static inline uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}
static inline void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}
static inline uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

/* 40-bit big-endian integers: block numbers in map keys and slots in map
 * values.  Volumes hold at most STORE_MAX_BLOCKS blocks (4 PiB) and the
 * chunk file at most as many slots. */
#define STORE_MAX_BLOCKS ((1ULL << 40) - 2)
static inline void put_be40(uint8_t *p, uint64_t v)
{
    for (int i = 4; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}
static inline uint64_t get_be40(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 5; i++)
        v = v << 8 | p[i];
    return v;
}

/* map key: block (40 bits BE), ~node (u32 BE): for one block, entries sort
 * by node id descending.  Map value: slot (40 bits BE).  Kept small because
 * every written block of every node costs one entry: 9 + 5 bytes plus
 * LMDB's 8-byte node header and 2-byte pointer is 24 bytes of leaf page
 * (with a u64 block and slot it was 30), which is what a duplicated block
 * costs (format version 2). */
#define MAP_KEY 9
#define MAP_VAL 5
static inline void map_key(uint8_t k[MAP_KEY], uint64_t b, uint32_t node)
{
    put_be40(k, b);
    put_be32(k + 5, ~node);
}
static inline uint64_t map_key_block(const MDB_val *k)
{
    return get_be40(k->mv_data);
}
static inline uint32_t map_key_node(const MDB_val *k)
{
    return ~get_be32((const uint8_t *)k->mv_data + 5);
}
/* The slot of a map value (0 for a malformed one). */
static inline uint64_t val_u64(const MDB_val *v)
{
    return v->mv_size == MAP_VAL ? get_be40(v->mv_data) : 0;
}

#endif
