/* store-int.h: the private structures of the chunk store, shared by the
 * store-*.c files and nothing else (the server includes only store.h).
 *
 * The store in one paragraph (doc/design.md has the whole story).  Chunk
 * bytes are written once, into the chunk file, which is cut in segments of
 * 4 MiB; a write is acknowledged once its bytes are there and its map entry
 * is in an in-memory table (the active *generation*, store-mem.c) and in
 * the *log*: 32-byte entries gathered in 4 KiB summary blocks written to
 * log segments of the same chunk file (store-log.c), so that one
 * fdatasync makes data and log durable (FLUSH).  A background *checkpoint*
 * (store-ckpt.c) freezes the active generation, applies it to the LMDB
 * index in key order through one cursor per database, and commits with the
 * log position; recovery replays the log from there (store-open.c).  Reads
 * look in the active, then the frozen generation, then LMDB through a read
 * txn, so they never wait for a checkpoint.
 *
 * Layers, lowest first; a file calls only files of its layer or below:
 *   store-util.c   errors, time, the chunk hash
 *   store-seg.c    segment I/O: the chunk file behind a small interface
 *   store-space.c  which slots and segments are free, allocation, room
 *   store-log.c    summary blocks, durability tickets, the log chain
 *   store-cat.c    the catalogue: objects, names and the node tree
 *   store-mem.c    generations: memtables, new chunks, dedup references
 *   store-hash.c   dedup lookups: Bloom filter, LMDB `hashes`
 *   store-ckpt.c   checkpoints and the background thread; store-gc.c
 *   store-tree.c   snapshot, clone, rollback, delete, rename, list
 *   store-io.c     read, write, zero, extents, flush
 *   store-open.c   create, open, replay, close; store-upgrade.c
 *   store-check.c  the checker; store-validate.c, a damaged index refused
 *
 * Locks, in the order they nest: st->tree_mu (one tree operation at a
 * time), st->gate (rwlock: every data operation holds it shared for its
 * duration; tree operations and the checkpoint's two switches take it
 * exclusive, briefly), a write shard's mu (its memtable), a hash shard's
 * mu (new chunks, dedup references), st->log.mu (the summary block being
 * filled), st->space.mu.  Functions named *_l say which lock in their
 * comment.
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
#include <sys/uio.h>
#include <time.h>

struct gen;

/* 5: the chunk log (summary blocks in log segments of IMAGE-chunks, no
 * IMAGE-journal), the `space` and `zombie` DBs instead of `free`, `recent`
 * and `dead`; LMDB opened with its lock file (IMAGE-lock) so that reads run
 * in read txns beside the checkpoint's write txn.  A read-write open of an
 * image of version 2 to 4 converts it (store-upgrade.c), after which a
 * build from before 5 refuses it.  4: the `dead` DB.  3: IMAGE-journal. */
#define STORE_FORMAT_VERSION 5u
#define STORE_FORMAT_OLDEST 2u
#define STORE_INDEX_MAGIC "BUSESNAP-INDEX"
#define STORE_CHUNKS_MAGIC "BUSESNAP-CHUNKS"
#define STORE_FIRST_SLOT 2u /* 0: hole, 1: allocated zero */

/* Segments: STORE_SEG_SLOTS slots of STORE_BLOCK bytes (4 MiB, RBD's object
 * size).  Segment 0 holds the header (slot 0) and slot 1, which never holds
 * a chunk: it keeps the log's tail record (store-log.c). */
#define STORE_SEG_SHIFT 10u
#define STORE_SEG_SLOTS (1u << STORE_SEG_SHIFT)
#define STORE_SEG_WORDS (STORE_SEG_SLOTS / 64)

/* Write shards: block stripes of 2^STORE_STRIPE_SHIFT blocks (1 MiB) go to
 * shard (stripe % nshard), so that a 1 MiB aligned write takes one. */
#define STORE_NSHARD_MAX 16u
#define STORE_STRIPE_SHIFT 8u
#define STORE_NHSHARD 16u /* hash shards: by the hash's first byte */

/* A checkpoint is due at this many entries in the active generation (or
 * so many new chunk bytes: store-ckpt.c), or STORE_CKPT_MS after its first
 * one; writers wait while the active generation holds twice that and a
 * checkpoint is running. */
#define STORE_CKPT_OPS 65536u
#define STORE_CKPT_MS 5000u
/* Unflushed log older than this is synced by the background thread: what a
 * client that never flushes can lose. */
#define STORE_SYNC_MS 500u
#define STORE_GC_BATCH 4096u

enum { NODE_LIVE = 1, NODE_HIDDEN = 2, NODE_DEAD = 3 };

/* ---- on-disk records (native endian, fixed layout: the format is
 * versioned) ---- */
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
    uint32_t refcount; /* 0 only for a zombie (store-ckpt.c) */
    uint8_t hash[16];
};

struct chunk_header {
    char magic[16];
    uint32_t version;
    uint8_t uuid[16];
};

/* ---- store-util.c ---- */
int store_set_err(struct store *st, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int store_mdb_err(struct store *st, int mrc, const char *what);
int store_mdb_errno(int mrc);
void store_now(struct timespec *ts);
long store_ms_since(const struct timespec *t0);
char *store_side_path(const char *path, const char *suffix);
void store_hash(const void *block, uint8_t out[16]);
bool store_all_zero(const void *p);

/* ---- the node tree, in memory (store-cat.c) ----
 * Nodes live in pages that never move, so that the checkpoint thread and
 * readers may follow parents without a lock while tree operations add
 * nodes.  depth and jump (a skew-binary jump pointer, Myers 1983) make the
 * ancestor test O(log depth) whatever the history: is_anc walks from y up
 * to n's depth.  Fields change under st->gate exclusive only, except
 * `entries` (the checkpoint thread's alone). */
struct node {
    uint32_t parent;
    uint8_t state;    /* 0: no such node */
    uint8_t dirty;    /* changed since the last freeze */
    uint8_t ck_state; /* state, parent and obj as of the last freeze: what */
    uint8_t touched;  /* the checkpoint writes and the collector uses;
                       * touched: entries changed by the txn being built */
    uint32_t ck_parent;
    uint8_t obj[16];
    uint8_t ck_obj[16];
    uint64_t entries; /* map entries in LMDB (checkpoint thread) */
    uint32_t depth, jump;
    uint32_t first_child, next_sibling;
};
#define STORE_NODE_PAGE 4096u

/* An object of the catalogue (volumes and snapshots). */
struct cobj {
    uint8_t uuid[16];
    struct obj_rec rec;
    bool dirty;   /* to be written by the next checkpoint */
    bool deleted; /* gone; kept until a checkpoint deletes it */
};

/* What a checkpoint writes of the catalogue, copied at the freeze (nodes
 * carry their own copy: struct node's ck_* fields). */
struct cat_delta {
    struct cat_obj_copy {
        uint8_t uuid[16];
        struct obj_rec rec;
        bool deleted;
    } * objs;
    size_t nobjs;
    char (*dead_names)[STORE_NAME_MAX + 1];
    size_t ndead;
    uint32_t *nodes; /* ids whose record changed */
    size_t nnodes;
    uint8_t def[16];
    bool def_set;
    uint32_t next_node;
    uint64_t next_seq;
};

struct store_cat {
    struct node **pages; /* pages[id / STORE_NODE_PAGE] */
    uint32_t npages;
    uint32_t next_node;
    uint64_t next_seq;
    struct cobj *objs; /* dense; indexes below point into it */
    uint32_t nobjs, cap;
    uint32_t *by_uuid, *by_name; /* open addressing: index + 1, 0 empty */
    uint32_t hcap;
    uint8_t def[16]; /* the default volume */
    bool def_dirty;
    uint32_t *dirty_nodes;
    size_t ndirty_nodes, dirty_cap;
    char (*dead_names)[STORE_NAME_MAX + 1]; /* removed since the freeze */
    size_t ndead, dead_cap;
};

struct node *store_node(struct store *st, uint32_t id);
bool store_is_anc(struct store *st, uint32_t y, uint32_t n);
int store_cat_load(struct store *st, MDB_txn *txn);
void store_cat_free(struct store *st);
int store_cat_new_node(struct store *st, uint32_t parent, const uint8_t obj[16],
                       uint32_t id);
void store_cat_node_dirty(struct store *st, uint32_t id);
void store_cat_set_parent(struct store *st, uint32_t id, uint32_t parent);
void store_cat_remove_node(struct store *st, uint32_t id);
struct cobj *store_cat_by_uuid(struct store *st, const uint8_t uuid[16]);
struct cobj *store_cat_by_name(struct store *st, const char *name);
int store_cat_put(struct store *st, const uint8_t uuid[16],
                  const struct obj_rec *rec);
void store_cat_del(struct store *st, const uint8_t uuid[16]);
int store_cat_freeze(struct store *st, struct cat_delta *d);
int store_cat_persist(struct store *st, MDB_txn *txn,
                      const struct cat_delta *d);
int store_cat_put_node(struct store *st, MDB_txn *txn, uint32_t id);
void store_cat_delta_free(struct cat_delta *d);
bool store_cat_has_children(struct store *st, uint32_t id);

/* ---- segment I/O (store-seg.c): the one place chunk-file bytes move.
 * Slots are the identity of chunks (slot s at byte s * STORE_BLOCK), so a
 * later backend may put segments in objects of a distributed store. ---- */
int store_seg_read(struct store *st, uint64_t slot, void *buf, size_t n);
int store_seg_writev(struct store *st, uint64_t slot, const struct iovec *iov,
                     int iovcnt);
int store_seg_sync(struct store *st);
int store_seg_prealloc(struct store *st, uint32_t seg);

/* ---- space (store-space.c) ---- */
enum { SEG_FREE = 0, SEG_DATA = 1, SEG_LOG = 2 };

struct seg_info {
    uint64_t live[STORE_SEG_WORDS]; /* slot allocated (in memory) */
    uint64_t dur[STORE_SEG_WORDS];  /* slot holds a chunk of the last
                                       checkpoint (as persisted) */
    uint16_t nlive;
    uint8_t state, state_dur;
    uint8_t owner; /* write shard + 1 allocating in it, 0 none */
    uint8_t dirty; /* the checkpoint must write its `space` record */
    uint8_t holed; /* punched out of the file system (store_space_return):
                      reserved again before it is written */
};

/* One write shard's allocation point. */
struct alloc_cursor {
    uint32_t seg; /* segment + 1; 0: none */
    uint32_t pos; /* next slot to look at in it */
};

struct store_space {
    pthread_mutex_t mu;
    struct seg_info *segs;
    uint32_t nsegs, cap;
    uint32_t prealloc; /* segments fallocate()d: [0, prealloc) */
    uint64_t nlive;    /* allocated slots in all */
    uint64_t *release; /* slots freed by the checkpoint being committed */
    size_t nrelease, release_cap;
    uint64_t *undo; /* dur bits the txn being built flipped */
    size_t nundo, undo_cap;
    bool full;          /* the file system refused a new segment */
    uint64_t return_ms; /* time spent punching (info) */
    struct alloc_cursor cur[STORE_NSHARD_MAX];
};

int store_space_init(struct store *st, uint32_t nsegs);
void store_space_free(struct store *st);
int store_space_load(struct store *st, MDB_txn *txn);
int store_space_alloc(struct store *st, unsigned shard, uint64_t *slots,
                      unsigned n);
void store_space_unalloc(struct store *st, const uint64_t *slots, unsigned n);
void store_space_mark(struct store *st, uint64_t slot);
bool store_space_is_live(struct store *st, uint64_t slot);
int store_space_take_seg(struct store *st, uint8_t state, uint32_t *seg);
void store_space_reserve(struct store *st);
void store_space_set_state(struct store *st, uint32_t seg, uint8_t state);
int store_space_dur(struct store *st, uint64_t slot, bool live);
int store_space_free_later(struct store *st, uint64_t slot);
void store_space_release(struct store *st);
void store_space_return(struct store *st);
int store_space_persist(struct store *st, MDB_txn *txn);
void store_space_revert(struct store *st);
void store_space_persisted(struct store *st);
uint64_t store_space_slots(struct store *st);
void store_room_refresh(struct store *st);
uint64_t store_room_estimate(struct store *st, const struct gen *g);
bool store_room_ok(struct store *st);

/* ---- the log (store-log.c) ---- */
enum { LE_NEW = 1, LE_REF = 2, LE_ZERO = 3 };
#define LE_NOHOLE 1u /* LE_ZERO: reads as allocated zeros, not a hole */

/* One log entry (32 bytes on disk, see store-log.c). */
struct log_ent {
    uint8_t type, flags;
    uint32_t node;
    uint64_t block;
    uint64_t slot; /* LE_ZERO: block count */
    uint8_t hash[16];
};

/* Where the log goes on: the next block to write (or read, in a replay). */
struct log_pos {
    uint64_t lsn;
    uint32_t seg, idx;
};

struct store_log {
    pthread_mutex_t mu;
    uint8_t *blk; /* the summary block being filled */
    unsigned nent;
    struct log_pos next;  /* where blk goes, its lsn */
    uint32_t next_seg;    /* prepared log segment for after next.seg */
    uint64_t key;         /* the image's secret checksum seed (meta) */
    uint64_t written_lsn; /* blocks up to here handed to the kernel */
    uint64_t synced_lsn;  /* ... and made durable */
    uint64_t dirty_lsn;   /* entries appended up to block: next.lsn when
                             blk has entries */
    struct timespec first_unsynced;
    pthread_mutex_t sync_mu;
    int broken;      /* -errno: a log write failed; the image is offline */
    uint32_t *chain; /* log segments not yet released, oldest first */
    size_t nchain, chain_cap;
};

int store_log_init(struct store *st, const struct log_pos *p, uint64_t key);
void store_log_free(struct store *st);
void store_log_add_l(struct store *st, const struct log_ent *e);
int store_log_add_tree_l(struct store *st, const void *rec, size_t len);
int store_log_seal_l(struct store *st, uint64_t *ticket);
int store_log_sync(struct store *st, uint64_t ticket);
int store_log_flush(struct store *st);
void store_log_prepare(struct store *st);
int store_log_chain_add(struct store *st, uint32_t seg);
void store_log_release(struct store *st, const struct log_pos *pos);
int store_log_restart(struct store *st);

/* The tail record (slot 1 of the chunk file, two copies): how far this
 * run's log was made durable.  store_log_sync writes it after each sync;
 * an open of an image left open (meta "open", store-open.c) reads it. */
int store_log_tail_start(struct store *st);
/* *lsn: the highest durable lsn a valid copy of run's tail records; -ENOENT
 * if no copy of run is valid. */
int store_log_tail_read(struct store *st, const uint8_t run[16], uint64_t *lsn);

/* Why a log reader stopped (for the message of a refused open). */
enum log_end {
    LOG_END_NONE = 0,
    LOG_END_NOWHERE, /* the log starts nowhere (seg 0) */
    LOG_END_EOF,     /* the slot is past the chunk file's end */
    LOG_END_ZERO,    /* zeros: the natural end, or an erased log */
    LOG_END_FOREIGN, /* a log block of another image */
    LOG_END_LSN,     /* a block of this image, of another lsn */
    LOG_END_SUM,     /* a block whose checksum fails */
    LOG_END_JUNK,    /* not a log block */
    LOG_END_CHUNK,   /* an entry whose chunk does not hash (replay) */
};
const char *store_log_end_str(enum log_end why);
/* Reading the log (recovery): */
struct log_reader {
    struct store *st;
    struct log_pos pos;
    uint8_t *blk;
    unsigned i, n;  /* entry i of the n in blk */
    bool tree;      /* blk is a tree record */
    uint32_t *segs; /* log segments passed through */
    size_t nsegs;
    enum log_end end;  /* why the last load_block stopped */
    uint64_t end_slot; /* ... at which slot */
};
int store_log_read_open(struct store *st, const struct log_pos *from,
                        struct log_reader *r);
int store_log_read_next(struct log_reader *r, struct log_ent *e,
                        const void **tree, size_t *tree_len);
void store_log_read_close(struct log_reader *r);

/* ---- generations (store-mem.c) ---- */
struct mt_ent {
    uint64_t block; /* UINT64_MAX: empty place */
    uint64_t val;   /* 0 hole, 1 allocated zero, >= 2 slot */
    uint64_t seq;   /* log order */
    uint32_t node, pad;
};
struct mt_table {
    struct mt_ent *e;
    size_t cap, used;
};
struct mt_range {
    uint64_t b0, b1, seq;
    uint32_t node, val; /* val 0 or 1 */
};
struct nc_ent { /* a new chunk: slot 0 = empty place */
    uint8_t hash[16];
    uint64_t slot;
};
struct nc_table {
    struct nc_ent *e;
    size_t cap, used;
};
struct ref_set { /* slot -> count of dedup references: slot 0 empty */
    uint64_t *slot;
    uint32_t *cnt;
    size_t cap, used;
};

struct gen {
    pthread_mutex_t rmu; /* ranges, of the active generation */
    struct mt_table mt[STORE_NSHARD_MAX];
    struct nc_table nc[STORE_NHSHARD];
    struct ref_set refd[STORE_NHSHARD];
    struct mt_range *ranges;
    size_t nranges, rcap;
    uint64_t nents; /* point entries and ranges (under the shard locks:
                       atomic) */
    uint64_t new_bytes;
    /* pages its checkpoint may dirty, counted as entries come (atomic):
     * map leaves, refs leaves, hashes leaves (store_room_estimate) */
    uint64_t est_map, est_ref, est_hash;
    struct timespec first;
    bool any;
    struct cat_delta cat; /* frozen: the catalogue as of the freeze */
    struct log_pos pos;   /* frozen: where the log goes on after it */
};

struct shard {
    pthread_mutex_t mu;
    char pad[64 - sizeof(pthread_mutex_t) % 64];
};

struct gen *store_gen_new(void);
void store_gen_free(struct gen *g);
int store_mt_put_l(struct store *st, struct gen *g, unsigned shard, uint64_t b,
                   uint32_t node, uint64_t val, uint64_t seq);
int store_mt_reserve_l(struct gen *g, unsigned shard, size_t n);
int store_nc_reserve_l(struct gen *g, unsigned hs, size_t n);
int store_mt_range_l(struct store *st, struct gen *g, uint64_t b0, uint64_t b1,
                     uint32_t node, uint32_t val, uint64_t seq);
struct mt_cand {
    uint32_t node;
    uint64_t val, seq;
};
bool store_mt_best(struct store *st, struct gen *g, unsigned shard, uint64_t b,
                   uint32_t y, struct mt_cand *best);
bool store_mt_has_block(struct gen *g, unsigned shard, uint64_t b);
bool store_mt_get(struct gen *g, unsigned shard, uint64_t b, uint32_t node,
                  struct mt_ent *out);
void store_mt_each(struct gen *g, unsigned shard,
                   void (*fn)(const struct mt_ent *e, void *arg), void *arg);
void store_nc_each(struct gen *g, unsigned hs,
                   void (*fn)(const struct nc_ent *e, void *arg), void *arg);
int store_nc_put_l(struct gen *g, const uint8_t h[16], uint64_t slot);
void store_nc_del_l(struct gen *g, const uint8_t h[16], uint64_t slot);
unsigned store_nc_find(struct gen *g, const uint8_t h[16], uint64_t *out,
                       unsigned max);
bool store_nc_has_slot(struct gen *g, const uint8_t h[16], uint64_t slot);
int store_rs_add(struct ref_set *r, uint64_t slot);
void store_rs_del(struct ref_set *r, uint64_t slot);
bool store_rs_has(const struct ref_set *r, uint64_t slot);
void store_rs_clear(struct ref_set *r);
int store_refd_add_l(struct gen *g, unsigned hs, uint64_t slot);
void store_refd_del_l(struct gen *g, unsigned hs, uint64_t slot);
bool store_refd_has_l(struct gen *g, unsigned hs, uint64_t slot);
static inline unsigned store_hshard_of(const uint8_t h[16])
{
    return h[0] % STORE_NHSHARD;
}

/* ---- dedup lookups (store-hash.c) ---- */
int store_hash_bloom_build(struct store *st, MDB_txn *txn);
void store_hash_bloom_free(struct store *st);
void store_hash_bloom_add(struct store *st, const uint8_t h[16]);
bool store_hash_bloom_maybe(struct store *st, const uint8_t h[16]);
int store_hash_find(struct store *st, MDB_txn *rtxn, const uint8_t h[16],
                    uint64_t *out, unsigned max, unsigned *n);

/* ---- read txns (store-open.c): a pool, reset when given back ---- */
int store_rtxn_get(struct store *st, MDB_txn **txn);
void store_rtxn_put(struct store *st, MDB_txn *txn);

/* ---- store-ckpt.c ---- */
int store_ckpt_run(struct store *st, bool wait_gc);
int store_bg_start(struct store *st);
void store_bg_stop(struct store *st);
void store_bg_wake(struct store *st);
void store_ckpt_backpressure(struct store *st);
int store_ckpt_room(struct store *st);
int store_resolve_ckpt(struct store *st, MDB_cursor *c, uint64_t b, uint32_t y,
                       uint64_t *val, uint32_t *node);
struct gc_drop {
    uint64_t block;
    uint32_t node;
    uint64_t val;
};
int store_gc_scan(struct store *st, MDB_txn *txn, uint64_t *next,
                  unsigned batch, struct gc_drop **drops, size_t *ndrops,
                  bool *done);
bool store_gc_prune(struct store *st);
bool store_gc_needed(struct store *st);
void store_offline(struct store *st, int err, const char *what,
                   const char *why);
int store_failed(struct store *st);

/* ---- store-io.c ---- */
int store_resolve(struct store *st, MDB_cursor *c, uint64_t b, uint32_t y,
                  uint64_t *val);
int store_apply_ent(struct store *st, const struct log_ent *e, bool replay);

/* ---- store-tree.c ---- */
int store_check_name(struct store *st, const char *name);
int store_tree_replay(struct store *st, const void *rec, size_t len);
int store_tree_import(struct store *st, bool snapshot, const uint8_t src[16],
                      const uint8_t obj[16], int64_t ctime, uint64_t seq,
                      uint32_t node, const char *name);

/* ---- store-validate.c ---- */
/* The index's meta pages against its file, then a walk of every database
 * in a child process: 0, or -EIO with a message naming the damage. */
int store_index_validate(struct store *st);

/* ---- store-upgrade.c ---- */
int store_upgrade(struct store *st, struct chunk_header *h);
int store_upgrade_journal(struct store *st);
int store_resolve_name(struct store *st, const char *name_or_uuid,
                       struct cobj **out);

/* ---- the store ---- */
struct store_idx {
    MDB_env *env;
    MDB_dbi meta, objects, names, nodes, map, refs, hashes, space, zombie;
    unsigned psize;
    uint64_t map_size;
    uint64_t alloc;     /* LMDB file reserved up to this page */
    bool no_prealloc;   /* the file system cannot reserve */
    uint64_t room;      /* pages a checkpoint may use (store-space.c) */
    uint64_t reserve;   /* pages writes leave to trims and deletes */
    uint64_t leaves[3]; /* pages of map, refs, hashes at the last check */
    pthread_mutex_t rtxn_mu;
    MDB_txn **rtxn_pool;
    unsigned nrtxn, rtxn_cap;
};

struct store_bloom {
    pthread_mutex_t mu; /* adding a layer */
    struct bloom_layer {
        uint64_t *w;
        uint64_t bits, keys;
    } layer[16];
    unsigned n; /* layers published (atomic) */
    uint64_t bits;
};

struct store {
    char *path;
    const char *name; /* basename of path, for messages */
    unsigned flags;
    bool rdonly;
    int lock_fd;  /* IMAGE, flock()ed */
    int chunk_fd; /* IMAGE-chunks */
    uint8_t uuid[16];
    uint32_t version; /* the image's format version */
    struct store_idx idx;
    struct store_space space;
    struct store_log log;
    struct store_cat cat;
    struct store_bloom bloom;

    pthread_mutex_t tree_mu;
    pthread_rwlock_t gate;
    unsigned nshard;
    struct shard shard[STORE_NSHARD_MAX];
    struct shard hshard[STORE_NHSHARD];
    struct gen *active, *frozen;
    uint64_t seq; /* entries ever appended (under log.mu) */
    /* slots a checkpoint is about to free: dedup passes them over (per
     * hash shard, under its lock) */
    struct ref_set dying[STORE_NHSHARD];

    /* the background thread and checkpoints */
    pthread_mutex_t bg_mu;
    pthread_cond_t bg_cond, bg_done;
    pthread_t bg;
    bool bg_running, bg_stop, ckpt_wanted, gc_wanted, ckpt_busy;
    uint64_t ckpt_count; /* checkpoints done (under bg_mu) */
    int ckpt_err;        /* the last checkpoint's error, 0 once one works */
    char ckpt_msg[256];
    bool index_full; /* the last checkpoint found no room: writes refused */
    pthread_mutex_t ckpt_mu; /* one checkpoint at a time */
    uint64_t refsum;
    struct log_pos ckpt_pos; /* the log position the index has */
    uint64_t gc_next;        /* the collector's place in the map */
    uint64_t gc_ops;         /* entries the collector dropped (info) */
    uint64_t bad_reads;      /* chunks that did not match their map entry
                                (atomic; store-io.c) */
    int failed;              /* -errno: acknowledged writes lost; I/O refused */
    char failed_msg[256];
    bool replaying;
    uint8_t run[16];   /* this read-write open's identity (meta "open", the
                          tail record) */
    uint64_t tail_seq; /* tail records written (under log.sync_mu) */
    bool tail_warned;
    long ckpt_ms; /* STORE_CKPT_MS, or BUSESNAP_CKPT_MS (tests) */

    /* open handles (under tree_mu) */
    struct store_vol *vols;
};

struct store_vol {
    struct store *st;
    struct store_vol *next;
    uint8_t uuid[16];
    uint32_t node; /* current node (changes on snapshot and rollback, under
                      st->gate exclusive) */
    uint64_t size;
    bool rdonly;
    char name[STORE_NAME_MAX + 1];
};

static inline unsigned store_shard_of(const struct store *st, uint64_t b)
{
    return (unsigned)((b >> STORE_STRIPE_SHIFT) % st->nshard);
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
 * by node id descending.  Map value: slot (40 bits BE), then the slot's
 * chunk tag (16 bits BE: bits of its XXH3-128, store_hash_tag, mixed with
 * bits of the block: store_block_tag), so that a
 * read checks the bytes it got against what the map entry expects, not
 * only against the slot's own refs record (a damaged entry naming another
 * valid chunk is caught too).  9 + 7 bytes plus LMDB's 8-byte node header
 * and 2-byte pointer: 26 bytes of leaf page, which is what a deduplicated
 * block costs.
 *
 * In memory (memtables, resolve, the checkpoint), a map value is a u64:
 * the slot in bits 0-39 (0 hole, 1 allocated zero, >= 2 chunk), the tag in
 * bits 40-55 (0 for values 0 and 1).  Whoever uses it as a slot masks it
 * (val_slot); whoever compares contents may compare whole values. */
#define MAP_KEY 9
#define MAP_VAL 7
#define VAL_SLOT_MASK ((1ULL << 40) - 1)
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
/* The 16-bit tag of a chunk hash. */
static inline uint32_t store_hash_tag(const uint8_t h[16])
{
    return (uint32_t)h[14] << 8 | h[15];
}
static inline uint64_t val_slot(uint64_t v)
{
    return v & VAL_SLOT_MASK;
}
static inline uint32_t val_tag(uint64_t v)
{
    return (uint32_t)(v >> 40) & 0xffff;
}
/* Bits a map value's tag is mixed with, from its block: the tag binds the
 * entry to its block too, so that a damaged key that moves an entry to
 * another block is caught on read like a damaged value. */
static inline uint32_t store_block_tag(uint64_t b)
{
    return (uint32_t)((b * 0x9E3779B97F4A7C15ULL) >> 48);
}
/* The in-memory value of block b naming slot (>= 2) whose chunk hashes to
 * h. */
static inline uint64_t val_make(uint64_t slot, const uint8_t h[16], uint64_t b)
{
    return slot | (uint64_t)(store_hash_tag(h) ^ store_block_tag(b)) << 40;
}
/* The chunk tag that value v of block b expects (store_hash_tag). */
static inline uint32_t val_chunk_tag(uint64_t v, uint64_t b)
{
    return val_tag(v) ^ store_block_tag(b);
}
/* The in-memory value of a map value (slot and tag; 0 for a malformed
 * one). */
static inline uint64_t val_u64(const MDB_val *v)
{
    if (v->mv_size != MAP_VAL)
        return 0;
    const uint8_t *p = v->mv_data;
    return get_be40(p) | (uint64_t)((uint32_t)p[5] << 8 | p[6]) << 40;
}
static inline void val_put(uint8_t vb[MAP_VAL], uint64_t v)
{
    put_be40(vb, val_slot(v));
    vb[5] = (uint8_t)(val_tag(v) >> 8);
    vb[6] = (uint8_t)val_tag(v);
}

#endif
