/* store.h: the busesnap chunk store, a content-addressed copy-on-write
 * block store with O(1) snapshots and clones (the C API).
 *
 * The store knows nothing of NBD or sockets.  An image holds volumes
 * (writable) and snapshots (read-only), each with a unique name and UUID,
 * all of one logical size per object.  Every 4 KiB block is a chunk keyed by
 * XXH3-128 of its bytes and stored once (a hash match is confirmed by
 * comparing bytes); zero blocks take no chunk.  See doc/design.md for the
 * on-disk layout and the invariants.
 *
 * Files: IMAGE (the LMDB index, MDB_NOSUBDIR) and IMAGE-chunks (chunk
 * data, 4 KiB slots).  One process at a time opens an image (flock).
 *
 * Errors: functions return 0 (or a count) or -errno, and on failure leave a
 * one-line message naming the image and object in a thread-local buffer
 * read by store_errmsg().  LMDB codes become errno in one place.
 *
 * Threads: every function may be called from any thread, concurrently; the
 * store serialises what must be (one internal mutex around the index,
 * chunk reads outside it).  Durability: a write is durable once store_flush()
 * (or a STORE_FUA write) that started after it returns; snapshot, clone,
 * rollback, delete and rename are durable when they return.
 */
#ifndef STORE_H
#define STORE_H

#include <stddef.h>
#include <stdint.h>
#include <uuid/uuid.h>

#define STORE_BLOCK 4096u
/* A name: 1 to STORE_NAME_MAX bytes of [A-Za-z0-9._:+@-], not starting with
 * '-', not shaped like a UUID ('@' means nothing to the store; busesnap
 * keeps it for the ephemeral clones it makes and sweeps). */
#define STORE_NAME_MAX 64
#define STORE_DEFAULT_VOLUME "default"

struct store;     /* an open image */
struct store_vol; /* an open volume or snapshot */

/* Message of the last failure in this thread ("" if none).  Valid until
 * the next store call in this thread. */
const char *store_errmsg(void);

struct store_create_opts {
    uint64_t size;           /* logical size of the default volume, bytes,
                                a multiple of STORE_BLOCK */
    const char *volume_name; /* default volume name (STORE_DEFAULT_VOLUME) */
    uint64_t map_size;       /* index size limit, bytes (0: 1 TiB) */
};

/* Create a new image at path (fails with -EEXIST if it exists) and open
 * it.  *out owns the image until store_close(). */
int store_create(const char *path, const struct store_create_opts *opts,
                 struct store **out);

#define STORE_OPEN_RDONLY 1u /* no writes, no GC (for offline check/info) */
/* Open an image that was not closed cleanly even though its log does not
 * reach what was made durable (the writes of the missing log blocks are
 * lost: a line on stderr says how far the log reached). */
#define STORE_OPEN_ACCEPT_LOSS 2u
/* Open an existing image.  -ENOENT: no such image; -EBUSY: another process
 * has it open; -EPROTO: not a busesnap image or an unsupported format
 * version (message says which); -EUCLEAN: the image was not closed cleanly
 * and its log is missing, truncated, from another image or does not reach
 * the position recorded as durable (message names the file and what to do;
 * STORE_OPEN_ACCEPT_LOSS opens it anyway). */
int store_open(const char *path, unsigned flags, struct store **out);
/* The same with an index size limit (LMDB map size, bytes; 0: 1 TiB).  When
 * the index or the image's file system is full, writes fail with -ENOSPC
 * (nothing acknowledged is lost) while reads, trims, deletes and the
 * collector go on; writes work again once space is freed. */
int store_open_map(const char *path, unsigned flags, uint64_t map_size,
                   struct store **out);

/* Commit, stop the collector and close.  Open store_vols must be closed
 * first. */
void store_close(struct store *st);

/* ---- objects ---- */

enum store_kind { STORE_VOLUME = 1, STORE_SNAPSHOT = 2 };

struct store_obj_info {
    char name[STORE_NAME_MAX + 1];
    uuid_t uuid;
    enum store_kind kind;
    uint64_t size; /* logical bytes */
    int64_t ctime; /* creation, seconds since the epoch */
    /* snapshot: the volume it was taken of ("" if that volume is gone).
     * volume: the snapshot it was cloned from or last rolled back to ("" for
     * an original volume). */
    char parent[STORE_NAME_MAX + 1];
    uuid_t parent_uuid; /* null if none */
    uint64_t written;   /* bytes of blocks written in this object itself
                           (not inherited from its parent), as of the last
                           checkpoint (store_checkpoint) */
    int is_default;     /* the image's default volume */
};

/* Resolve a name or a UUID string to an object. -ENOENT if none. */
int store_lookup(struct store *st, const char *name_or_uuid,
                 struct store_obj_info *out);

/* Snapshot volume vol (name or UUID) as snap: O(1), atomic and durable on
 * return, and contains every write that completed before the call. */
int store_snapshot(struct store *st, const char *vol, const char *snap,
                   struct store_obj_info *out);
/* New writable volume newvol whose content is snapshot snap: O(1). */
int store_clone(struct store *st, const char *snap, const char *newvol,
                struct store_obj_info *out);
/* Make volume vol read as snapshot snap: O(1); the old content is
 * collected in the background.  Open handles of vol see the new content. */
int store_rollback(struct store *st, const char *vol, const char *snap);
/* Delete a snapshot or a volume.  -EBUSY if it has open store_vols.
 * Deleting a snapshot that clones came from is allowed: the clones keep
 * their content (the snapshot's blocks live on, hidden, while needed).
 * The default volume can be deleted only if others exist; then the
 * oldest remaining volume becomes the default. Space is reclaimed by the
 * background collector (store_gc to wait for it). */
int store_delete(struct store *st, const char *name);
int store_rename(struct store *st, const char *name, const char *newname);
/* Give volume vol (name or UUID) the logical size size (a positive multiple
 * of STORE_BLOCK, at most 4 PiB); durable on return.  Growing: the new
 * range reads as zeros, and open store_vols take the new size at once.
 * Shrinking: -EBUSY while vol has open store_vols, -ENOTEMPTY if any block
 * past the new end is allocated (written, inherited from its snapshot, or
 * a zero kept allocated: trim it first).  -EINVAL for a snapshot.
 * Snapshots keep the size their volume had when they were taken. */
int store_resize(struct store *st, const char *vol, uint64_t size);

/* Call cb for every object, volumes and snapshots, in creation order.
 * A nonzero return from cb stops the walk and is returned. */
int store_list(struct store *st,
               int (*cb)(const struct store_obj_info *info, void *arg),
               void *arg);

struct store_info {
    uuid_t uuid;
    uint32_t format_version;
    uint64_t size;             /* logical size of the default volume */
    uint64_t chunks;           /* distinct chunks stored */
    uint64_t chunk_bytes;      /* chunks * STORE_BLOCK */
    uint64_t referenced_bytes; /* sum over map entries of non-zero blocks:
                                  logical bytes those chunks serve */
    uint64_t free_slots;       /* reusable slots in the chunk file */
    uint64_t file_bytes;       /* bytes allocated on disk by the three
                                  files, within their sizes */
    uint64_t journal_bytes;    /* of which the journal's (a bounded work
                                  area, reused after each checkpoint) */
    uint64_t filter_bytes;     /* memory of the Bloom filter over the hash
                                  index (0: none, as on read-only opens) */
    uint32_t filter_layers;    /* it grows by adding layers */
    uint64_t hashes_staged;    /* hash index insertions and deletions
                                  waiting for a merge pass (store-hash.c;
                                  one starts at STORE_HASH_MERGE) */
    uint64_t reserved_bytes;   /* preallocated past their ends, so that a
                                  full disk fails writes cleanly */
    uint64_t map_size;         /* index size limit (bytes) */
    uint64_t map_used;         /* index pages in use (bytes) */
    uint64_t gc_pending; /* map entries waiting for the collector (est.) */
    uint64_t index_room; /* bytes the next checkpoints may use in the index
                            (reserved file space, map size, free pages) */
    uint64_t index_need; /* bytes the generations not yet checkpointed may
                            take (an estimate: writes get ENOSPC when it and
                            a reserve exceed index_room) */
    unsigned volumes, snapshots;
    uint64_t bad_reads;     /* chunk reads refused (EIO) since the image was
                               opened: bytes that did not match the hash tag
                               their map entry expects (store-io.c) */
    uint64_t punched_bytes; /* empty segments inside the chunk file whose
                               space went back to the file system */
    uint64_t return_ms;     /* time spent punching since the open */
};
int store_info(struct store *st, struct store_info *out);

/* Changed blocks between two objects (a snapshot and a later snapshot or
 * volume): cb(offset, length) for each run that differs. */
int store_diff(struct store *st, const char *from, const char *to,
               int (*cb)(uint64_t offset, uint64_t length, void *arg),
               void *arg);

/* Bring the index up to date with every write that completed (a
 * checkpoint; the store also runs them in the background).  store_info,
 * store_diff, store_check and store_gc do it themselves; `written` of
 * store_list and store_lookup is as of the last one. */
int store_checkpoint(struct store *st);

/* Run the collector to completion now (it also runs in the background). */
int store_gc(struct store *st);

/* Consistency check: every map entry names an existing chunk, every
 * refcount equals its references, every chunk hashes to its key, the free
 * list and the hash index agree.  progress(done, total) is called now and
 * then; problem(msg) once per problem found.  Returns the number of
 * problems (0: consistent) or -errno. */
int store_check(struct store *st,
                void (*progress)(uint64_t done, uint64_t total, void *arg),
                void (*problem)(const char *msg, void *arg), void *arg);

/* ---- I/O on a volume or snapshot ---- */

/* Open name (or UUID) for I/O.  Snapshots open read-only. */
int store_vol_open(struct store *st, const char *name_or_uuid,
                   struct store_vol **out);
void store_vol_close(struct store_vol *v);
uint64_t store_vol_size(const struct store_vol *v);
int store_vol_readonly(const struct store_vol *v);
/* The object's current name (changes on rename).  Copied into buf. */
void store_vol_name(const struct store_vol *v, char buf[STORE_NAME_MAX + 1]);

#define STORE_FUA 1u /* durable before return */
/* zero: keep the range allocated (reads zero, reported ZERO, not HOLE) */
#define STORE_NO_HOLE 2u

/* Any offset and length within the size (unaligned ones are handled by
 * read-modify-write under the store lock).  -EROFS on a snapshot,
 * -EINVAL out of range. */
int store_read(struct store_vol *v, void *buf, uint64_t off, uint32_t len);
int store_write(struct store_vol *v, const void *buf, uint64_t off,
                uint32_t len, unsigned flags);
/* Make the range read as zeros, releasing chunks (TRIM and WRITE_ZEROES). */
int store_zero(struct store_vol *v, uint64_t off, uint64_t len, unsigned flags);
/* Make every completed write durable. */
int store_flush(struct store *st);

#define STORE_EXT_HOLE 1u
#define STORE_EXT_ZERO 2u
/* Allocation of [off, off+len): cb(off, len, flags) for consecutive runs;
 * a nonzero return from cb stops the walk (not an error). */
int store_extents(struct store_vol *v, uint64_t off, uint64_t len,
                  int (*cb)(uint64_t off, uint64_t len, unsigned flags,
                            void *arg),
                  void *arg);

/* Test hook: replace the chunk hash (NULL restores XXH3-128).  Used by the
 * unit tests to force collisions.  Not thread-safe; call before I/O. */
void store_set_hash_for_testing(void (*hash)(const void *block,
                                             uint8_t out[16]));

/* Test hook: called by every checkpoint between its freeze and its index
 * txn, on the checkpoint's thread, with no lock held (NULL: none).  The
 * unit tests use it to write while a checkpoint decides what to free.
 * Not thread-safe; set before I/O. */
void store_set_ckpt_hook_for_testing(void (*hook)(struct store *st, void *arg),
                                     void *arg);

#endif
