/* store-hash.c: the hash index (XXH3-128 -> slot) with a staging area.
 *
 * Hash keys are random, so every insert into the `hashes` B-tree dirties a
 * random leaf page: with one commit per group of writes, each commit would
 * rewrite most of the hash index (measured: 7.5x the data written on a
 * 3 GiB image).  New chunks are therefore staged: their (slot, hash) goes
 * to the `recent` DB, keyed by slot (mostly appends, so few pages), and to
 * an in-memory table (st->hp) used for lookups.  Once STORE_HASH_MERGE
 * entries are staged, right after a commit, they are merged into `hashes`
 * by a pass over the key space, one key range per txn, until `recent` is
 * empty (store_hash_merge_l).
 *
 * Deletions are staged too.  Freeing a chunk whose hash is already merged
 * would delete from a random leaf of `hashes`, one of the four random
 * leaves an overwrite dirtied (measured: 6.5k -> 9.1k 4 KiB writes/s at
 * QD16 on a 4 GiB image without that delete).  Its (h, s) goes to the
 * `dead` DB instead (key h . s, no value; a small B-tree, emptied by each
 * pass), lookups skip entries of `hashes` that `dead` lists, and the merge
 * pass deletes them from `hashes` range by range, before it inserts the
 * staged keys of the same range (so that a slot freed and then given the
 * same bytes again keeps its entry).
 *
 * Invariant: every refs record (s, {c, h}) has exactly one of recent[s] = h
 * or (h, s) in `hashes` and not in `dead`; every `dead` entry is in
 * `hashes`; the table mirrors `recent` exactly.  All functions run under
 * st->mu.
 */
#include "store-int.h"

#include <errno.h>
#include <stdlib.h>

#define HP_CAP (2 * STORE_HASH_MERGE + 2 * STORE_COMMIT_OPS)
enum { HP_EMPTY = 0, HP_USED = 1, HP_TOMB = 2 };

struct hp_entry { /* 24 bytes: slots have 40 bits */
    uint8_t h[16];
    uint64_t slot : 62;
    uint64_t state : 2;
};

static size_t hp_index(const uint8_t h[16])
{
    uint64_t x;
    memcpy(&x, h, 8);
    return (size_t)(x % HP_CAP);
}

static int hp_alloc(struct store *st)
{
    if (st->hp)
        return 0;
    st->hp = calloc(HP_CAP, sizeof *st->hp);
    if (!st->hp)
        return store_set_err(st, -ENOMEM, "out of memory (hash staging)");
    return 0;
}

static void hp_clear(struct store *st)
{
    if (st->hp)
        memset(st->hp, 0, HP_CAP * sizeof *st->hp);
    st->hp_used = st->hp_tomb = 0;
}

/* false if the table is too full (the caller then writes `hashes`). */
static bool hp_insert(struct store *st, const uint8_t h[16], uint64_t slot)
{
    if (!st->hp || st->hp_used + st->hp_tomb + 1 >= HP_CAP / 4 * 3)
        return false;
    for (size_t i = hp_index(h);; i = (i + 1) % HP_CAP) {
        struct hp_entry *e = &st->hp[i];
        if (e->state != HP_USED) {
            if (e->state == HP_TOMB)
                st->hp_tomb--;
            memcpy(e->h, h, 16);
            e->slot = slot;
            e->state = HP_USED;
            st->hp_used++;
            return true;
        }
    }
}

static struct hp_entry *hp_find(struct store *st, const uint8_t h[16],
                                uint64_t slot)
{
    if (!st->hp)
        return NULL;
    for (size_t i = hp_index(h), n = 0; n < HP_CAP; i = (i + 1) % HP_CAP, n++) {
        struct hp_entry *e = &st->hp[i];
        if (e->state == HP_EMPTY)
            return NULL;
        if (e->state == HP_USED && e->slot == slot && !memcmp(e->h, h, 16))
            return e;
    }
    return NULL;
}

/* Drop (h, slot) from the table if it is there; true if it was. */
static bool hp_forget(struct store *st, const uint8_t h[16], uint64_t slot)
{
    struct hp_entry *e = hp_find(st, h, slot);
    if (!e)
        return false;
    e->state = HP_TOMB;
    st->hp_used--;
    st->hp_tomb++;
    return true;
}

/* ---- the filter: "h is certainly not in `hashes`" ----
 *
 * Most writes store new data, and looking a new hash up in `hashes` is a
 * B-tree descent that finds nothing (measured: 15% of the CPU of
 * sequential overwrites).  A Bloom filter over the keys of `hashes`, built
 * at a read-write open, answers most of those misses from memory: 4 bit
 * positions per key taken from the key itself (a uniform XXH3-128), 16
 * bits per key when built, so about 0.2% false positives.  Every put into
 * `hashes` sets the key's bits, so the filter never says "absent" for a
 * present key; deletions leave their bits (more false positives, never a
 * wrong answer).
 *
 * It grows in layers (a scalable Bloom filter): once the newest layer
 * holds a key per 10 of its bits (about 1.2% false positives), a new one
 * twice as big takes the keys that follow, and a lookup asks every layer.
 * Rebuilding one bigger filter instead meant scanning all of `hashes`
 * under the store mutex, every request waiting: 60-74 ms with 1M chunks
 * (4 GiB of unique data, warm cache), linear in the chunks, so about a
 * second at the 32 MiB cap and more with a cold cache.  The next read-write
 * open builds a single layer again.  Without a filter (no memory, read-only)
 * every lookup searches `hashes`. */
#define BLOOM_MIN_BITS (1ULL << 20) /* 128 KiB */
#define BLOOM_MAX_BITS                                                         \
    (1ULL << 28) /* 32 MiB in all: then false positives grow */
#define BLOOM_LAYERS                                                           \
    (sizeof((struct store *)0)->bloom / sizeof(struct bloom_layer))

static void bloom_pos(const uint8_t h[16], uint64_t bits, uint64_t pos[4])
{
    uint64_t a, b;
    memcpy(&a, h, 8);
    memcpy(&b, h + 8, 8);
    b |= 1;
    for (int i = 0; i < 4; i++)
        pos[i] = (a + (uint64_t)i * b) & (bits - 1);
}

static void bloom_add(struct store *st, const uint8_t h[16])
{
    if (!st->bloom_n)
        return;
    struct bloom_layer *l = &st->bloom[st->bloom_n - 1];
    uint64_t pos[4];
    bloom_pos(h, l->bits, pos);
    for (int i = 0; i < 4; i++)
        l->w[pos[i] / 64] |= 1ULL << (pos[i] % 64);
    l->keys++;
}

static bool bloom_maybe(const struct store *st, const uint8_t h[16])
{
    if (!st->bloom_n)
        return true;
    for (unsigned j = st->bloom_n; j-- > 0;) {
        const struct bloom_layer *l = &st->bloom[j];
        uint64_t pos[4];
        bloom_pos(h, l->bits, pos);
        int i = 0;
        while (i < 4 && (l->w[pos[i] / 64] & 1ULL << (pos[i] % 64)))
            i++;
        if (i == 4)
            return true;
    }
    return false;
}

void store_bloom_free(struct store *st)
{
    for (unsigned j = 0; j < st->bloom_n; j++)
        free(st->bloom[j].w);
    st->bloom_n = 0;
    st->bloom_bits = 0;
}

/* A new newest layer of bits bits (false if no memory). */
static bool bloom_layer_add(struct store *st, uint64_t bits)
{
    uint64_t *w = calloc(bits / 64, 8);
    if (!w)
        return false;
    st->bloom[st->bloom_n++] = (struct bloom_layer){.w = w, .bits = bits};
    st->bloom_bits += bits;
    return true;
}

/* Build the filter from `hashes`, one layer (read-write opens).  On
 * failure there is simply no filter. */
void store_bloom_build_l(struct store *st)
{
    store_bloom_free(st);
    MDB_stat ms;
    if (st->rdonly || mdb_stat(st->txn, st->db_hashes, &ms))
        return;
    uint64_t bits = BLOOM_MIN_BITS;
    while (bits < 16 * (uint64_t)ms.ms_entries && bits < BLOOM_MAX_BITS)
        bits <<= 1;
    if (!bloom_layer_add(st, bits))
        return;
    MDB_cursor *c;
    MDB_val k, d;
    if (mdb_cursor_open(st->txn, st->db_hashes, &c)) {
        store_bloom_free(st);
        return;
    }
    int mrc;
    for (mrc = mdb_cursor_get(c, &k, &d, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT_NODUP))
        if (k.mv_size == 16)
            bloom_add(st, k.mv_data);
    mdb_cursor_close(c);
    if (mrc != MDB_NOTFOUND)
        store_bloom_free(st);
}

/* After puts into `hashes`: a new layer twice the newest once that holds a
 * key per 10 bits, while the layers stay within BLOOM_MAX_BITS in all
 * (after that the newest takes every key, with more false positives). */
static void bloom_grow_l(struct store *st)
{
    if (!st->bloom_n)
        return;
    const struct bloom_layer *l = &st->bloom[st->bloom_n - 1];
    if (l->keys * 10 > l->bits && st->bloom_n < BLOOM_LAYERS &&
        st->bloom_bits + 2 * l->bits <= BLOOM_MAX_BITS)
        bloom_layer_add(st, 2 * l->bits);
}

/* ---- staged deletions (`dead`) ---- */

static void dead_key(uint8_t k[24], const uint8_t h[16], uint64_t slot)
{
    memcpy(k, h, 16);
    put_be64(k + 16, slot);
}

/* Does `dead` list (h, slot)?  1 yes, 0 no, -errno. */
static int dead_has_l(struct store *st, const uint8_t h[16], uint64_t slot)
{
    if (!st->dead_n)
        return 0;
    uint8_t kb[24];
    dead_key(kb, h, slot);
    MDB_val k = {24, kb}, d;
    int rc = mdb_get(st->txn, st->db_dead, &k, &d);
    if (rc == MDB_NOTFOUND)
        return 0;
    return rc ? store_mdb_err(st, rc, "dead") : 1;
}

/* Drop (h, slot) from `dead`: 1 if it was there (then `hashes` has it
 * too), 0 if not, -errno. */
static int dead_del_l(struct store *st, const uint8_t h[16], uint64_t slot)
{
    if (!st->dead_n)
        return 0;
    uint8_t kb[24];
    dead_key(kb, h, slot);
    MDB_val k = {24, kb};
    int rc = mdb_del(st->txn, st->db_dead, &k, NULL);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return store_mdb_err(st, rc, "dead");
    st->dead_n--;
    return 1;
}

/* Candidate slots for hash h: staged ones first, then the hash index.
 * At most max are returned in out; *n gets the count. */
int store_hash_lookup_l(struct store *st, const uint8_t h[16], uint64_t *out,
                        size_t max, size_t *n)
{
    *n = 0;
    if (st->hp)
        for (size_t i = hp_index(h), k = 0; k < HP_CAP && *n < max;
             i = (i + 1) % HP_CAP, k++) {
            struct hp_entry *e = &st->hp[i];
            if (e->state == HP_EMPTY)
                break;
            if (e->state == HP_USED && !memcmp(e->h, h, 16))
                out[(*n)++] = e->slot;
        }
    if (!bloom_maybe(st, h))
        return 0;
    MDB_cursor *c;
    MDB_val k = {16, (void *)h}, d;
    int rc = mdb_get(st->txn, st->db_hashes, &k, &d); /* new data: no cursor */
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return store_mdb_err(st, rc, "hashes");
    if ((rc = mdb_cursor_open(st->txn, st->db_hashes, &c)))
        return store_mdb_err(st, rc, "hashes");
    for (rc = mdb_cursor_get(c, &k, &d, MDB_SET_KEY); rc == 0 && *n < max;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT_DUP)) {
        uint64_t s = get_be64(d.mv_data);
        int drc = dead_has_l(st, h, s); /* freed, not yet merged */
        if (drc < 0) {
            mdb_cursor_close(c);
            return drc;
        }
        if (!drc)
            out[(*n)++] = s;
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND)
        return store_mdb_err(st, rc, "hashes");
    return 0;
}

static int hashes_put_l(struct store *st, const uint8_t h[16], uint64_t slot)
{
    uint8_t sb[8];
    put_be64(sb, slot);
    MDB_val k = {16, (void *)h}, d = {8, sb};
    int rc = mdb_put(st->txn, st->db_hashes, &k, &d, 0);
    if (rc)
        return store_mdb_err(st, rc, "hashes");
    bloom_add(st, h);
    bloom_grow_l(st);
    return 0;
}

/* Record a new chunk's hash (staged when possible). */
int store_hash_add_l(struct store *st, const uint8_t h[16], uint64_t slot)
{
    if (!hp_insert(st, h, slot)) {
        st->txn_pages++; /* a random leaf of `hashes` */
        st->touch_hash++;
        /* freed, then given the same bytes: the entry is still there */
        int rc = dead_del_l(st, h, slot);
        return rc ? (rc < 0 ? rc : 0) : hashes_put_l(st, h, slot);
    }
    uint8_t sb[8];
    put_be64(sb, slot);
    MDB_val k = {8, sb}, d = {16, (void *)h};
    int rc = mdb_put(st->txn, st->db_recent, &k, &d, 0);
    if (rc) {
        hp_forget(st, h, slot);
        return store_mdb_err(st, rc, "recent");
    }
    return 0;
}

/* Forget a freed chunk's hash, wherever it is. */
int store_hash_del_l(struct store *st, const uint8_t h[16], uint64_t slot)
{
    uint8_t sb[8];
    put_be64(sb, slot);
    if (hp_forget(st, h, slot)) {
        MDB_val k = {8, sb};
        int rc = mdb_del(st->txn, st->db_recent, &k, NULL);
        if (rc && rc != MDB_NOTFOUND)
            return store_mdb_err(st, rc, "recent");
        return 0;
    }
    /* Deleted at once from `hashes`: without `dead` (read-only opens do not
     * free chunks anyway), and when the index is short of room.  A staged
     * deletion is a new entry in `dead` that only a merge pass, which waits
     * for room, takes away; near a full index, trims and deletes that free
     * chunks must free index pages too, not take more (a 48 MiB index
     * filled with unique data then refused every trim with MDB_MAP_FULL
     * and could not be emptied without a bigger map; test-store-dedup). */
    if (!st->dead_ok || store_room_short_l(st)) {
        st->txn_pages++; /* a random leaf of `hashes` */
        st->touch_hash++;
        MDB_val hk = {16, (void *)h}, hd = {8, sb};
        int rc = mdb_del(st->txn, st->db_hashes, &hk, &hd);
        if (rc && rc != MDB_NOTFOUND)
            return store_mdb_err(st, rc, "hashes");
        return 0;
    }
    uint8_t kb[24];
    dead_key(kb, h, slot);
    MDB_val k = {24, kb}, d = {0, NULL};
    int rc = mdb_put(st->txn, st->db_dead, &k, &d, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST)
        return 0;
    if (rc)
        return store_mdb_err(st, rc, "dead");
    st->txn_pages++;
    st->touch_dead++;
    st->dead_n++;
    return 0;
}

/* Is (h, slot) recorded (staged or indexed)?  For the checker. */
bool store_hash_has_l(struct store *st, const uint8_t h[16], uint64_t slot)
{
    if (hp_find(st, h, slot))
        return true;
    uint8_t sb[8];
    put_be64(sb, slot);
    MDB_val hk = {16, (void *)h}, hd = {8, sb};
    MDB_cursor *c;
    if (mdb_cursor_open(st->txn, st->db_hashes, &c))
        return false;
    bool found = mdb_cursor_get(c, &hk, &hd, MDB_GET_BOTH) == 0;
    mdb_cursor_close(c);
    return found && dead_has_l(st, h, slot) == 0;
}

/* (Re)build the table from the `recent` DB (open, and after an abort). */
int store_hash_load_l(struct store *st)
{
    int rc = hp_alloc(st);
    if (rc)
        return rc;
    hp_clear(st);
    MDB_cursor *c;
    MDB_val k, d;
    int mrc = mdb_cursor_open(st->txn, st->db_recent, &c);
    if (mrc)
        return store_mdb_err(st, mrc, "recent");
    for (mrc = mdb_cursor_get(c, &k, &d, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        if (k.mv_size != 8 || d.mv_size != 16)
            continue;
        if (!hp_insert(st, d.mv_data, get_be64(k.mv_data))) {
            rc = store_set_err(st, -EIO,
                               "recent: more staged hashes than "
                               "the table holds");
            break;
        }
    }
    mdb_cursor_close(c);
    if (!rc && mrc != MDB_NOTFOUND)
        rc = store_mdb_err(st, mrc, "recent");
    MDB_stat ms;
    st->dead_n = 0;
    if (!rc && st->dead_ok) {
        if ((mrc = mdb_stat(st->txn, st->db_dead, &ms)))
            rc = store_mdb_err(st, mrc, "dead");
        else
            st->dead_n = ms.ms_entries;
    }
    return rc;
}

/* A merge pass starts when STORE_HASH_MERGE insertions and deletions are
 * staged and, a txn at a time, goes on through the hash key space until it
 * has covered all of it (st->merge_from wraps to 0) and `recent` is empty
 * (hp_clear). */
bool store_hash_merge_due_l(struct store *st)
{
    return st->merge_from != 0 ||
           st->hp_used + st->hp_tomb + st->dead_n >= STORE_HASH_MERGE;
}

/* A staged key's position in the hash key space: its first 8 bytes read
 * big-endian, which orders keys as `hashes` (memcmp) does. */
static uint64_t key_pos(const uint8_t h[16])
{
    return get_be64(h);
}

/* Move staged hashes into `hashes` (in the current txn, which the caller
 * commits; store_commit_l calls this again, in a loop, after each such
 * commit while a pass is due).  A pass walks the key space in order: each txn
 * takes the staged keys of the next range, as wide as STORE_MERGE_PAGES of the
 * L leaves of `hashes` (the keys are uniform), so that each txn dirties about
 * that many leaves and a pass dirties each leaf once, whatever the number of
 * keys staged.  Taking them in staging order instead spread every txn's keys
 * over all leaves: with 1M chunks a pass rewrote about 0.8 leaf per key
 * merged, 2 GB of index writes for a 4 GiB fill.  A txn's dirty pages are
 * malloc'd by LMDB and kept for reuse by later txns, so that limit is also
 * what bounds the process's memory.  While the index is small (L at most
 * the limit), one txn takes everything. */
struct merge_ent {
    uint8_t h[16];
    uint64_t slot;
};

static int merge_cmp(const void *a, const void *b)
{
    const struct merge_ent *x = a, *y = b;
    int c = memcmp(x->h, y->h, 16);
    if (c)
        return c;
    return x->slot < y->slot ? -1 : x->slot > y->slot;
}

/* The staged deletions of the range [from, to) (end: to the end of the
 * key space): out of `hashes` (through hc, the merge's cursor), then out
 * of `dead`, both in key order. */
static int merge_dead_l(struct store *st, MDB_cursor *hc, uint64_t from,
                        uint64_t to, bool end)
{
    if (!st->dead_n)
        return 0;
    MDB_cursor *dc;
    int mrc = mdb_cursor_open(st->txn, st->db_dead, &dc);
    if (mrc)
        return store_mdb_err(st, mrc, "dead");
    uint8_t at[24] = {0}; /* where the next entry is looked for */
    put_be64(at, from);
    MDB_val k = {24, at}, d;
    int rc = 0;
    /* each entry is found again from a copy of its key, rather than
     * trusting where a delete leaves the cursor */
    while ((mrc = mdb_cursor_get(dc, &k, &d, MDB_SET_RANGE)) == 0) {
        if (k.mv_size != 24) {
            rc = store_set_err(st, -EIO, "dead: malformed entry");
            break;
        }
        memcpy(at, k.mv_data, 24);
        if (!end && key_pos(at) >= to)
            break;
        MDB_val hk = {16, at}, hd = {8, at + 16};
        mrc = mdb_cursor_get(hc, &hk, &hd, MDB_GET_BOTH);
        if (mrc == 0)
            mrc = mdb_cursor_del(hc, 0);
        if (mrc && mrc != MDB_NOTFOUND) {
            rc = store_mdb_err(st, mrc, "hashes");
            break;
        }
        if ((mrc = mdb_cursor_del(dc, 0))) {
            rc = store_mdb_err(st, mrc, "dead");
            break;
        }
        st->dead_n--;
        k = (MDB_val){24, at};
    }
    if (!rc && mrc && mrc != MDB_NOTFOUND)
        rc = store_mdb_err(st, mrc, "dead");
    mdb_cursor_close(dc);
    return rc;
}

int store_hash_merge_l(struct store *st)
{
    /* on a nearly full index or disk, smaller merges (store-space.c) */
    size_t pages = st->merge_pages;
    uint64_t room = st->room > st->reserve ? st->room - st->reserve : 0;
    if (pages > room / 8)
        pages = room / 8;
    if (pages < 16 && pages < st->merge_pages)
        return 0; /* no room now: the table takes what it can meanwhile */
    MDB_stat ms;
    int mrc = mdb_stat(st->txn, st->db_hashes, &ms);
    if (mrc)
        return store_mdb_err(st, mrc, "hashes");
    /* The range [from, to) of key positions this txn takes (end: to the
     * end of the key space).  What is left of the key space holds about
     * L * rem leaves and the hp_used keys still staged; a range dirties
     * about the smaller of its leaves and its keys, so it is made wide
     * enough for `pages` of those.  With few keys on a big index (fewer
     * than leaves) a range by leaves alone would commit a txn per 2,048
     * leaves for a handful of keys each: 1,500 commits for 65,536 keys at
     * 1 TiB instead of 32. */
    uint64_t from = st->merge_from, to = 0;
    bool end = true;
    double left = (double)UINT64_MAX - (double)from;
    double d = (double)ms.ms_leaf_pages * (left / (double)UINT64_MAX);
    if ((double)(st->hp_used + st->dead_n) < d)
        d = (double)(st->hp_used + st->dead_n);
    if (d > (double)pages) {
        uint64_t width = (uint64_t)(left * (double)pages / d);
        if (width > 0 && width < UINT64_MAX - from) {
            to = from + width;
            end = false;
        }
    }
    /* the batch array grows as needed: sized for every staged key, it
     * was a few MiB each time that malloc kept in the heap afterwards */
    size_t n = 0, cap = 0;
    struct merge_ent *ents = NULL;
    for (size_t i = 0; st->hp && i < HP_CAP; i++) {
        const struct hp_entry *e = &st->hp[i];
        uint64_t pos = key_pos(e->h);
        if (e->state != HP_USED || pos < from || (!end && pos >= to))
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            struct merge_ent *m = realloc(ents, cap * sizeof *ents);
            if (!m) {
                free(ents);
                return store_set_err(st, -ENOMEM, "out of memory (hash merge)");
            }
            ents = m;
        }
        memcpy(ents[n].h, e->h, 16);
        ents[n++].slot = e->slot;
    }
    st->txn_pages += pages;
    /* The batch goes into `hashes` in key order through one cursor: LMDB
     * then finds each key on the page of the previous one instead of
     * descending from the root (measured: the merge was 18% of the CPU of
     * sequential overwrites, inserted in slot order). */
    if (n)
        qsort(ents, n, sizeof *ents, merge_cmp);
    int rc = 0;
    MDB_cursor *hc;
    if ((mrc = mdb_cursor_open(st->txn, st->db_hashes, &hc)))
        rc = store_mdb_err(st, mrc, "hashes");
    else {
        rc = merge_dead_l(st, hc, from, to, end); /* deletions first */
        for (size_t i = 0; i < n && !rc; i++) {
            uint8_t sb[8];
            put_be64(sb, ents[i].slot);
            MDB_val hk = {16, ents[i].h}, hd = {8, sb};
            if ((mrc = mdb_cursor_put(hc, &hk, &hd, 0)))
                rc = store_mdb_err(st, mrc, "hashes");
            else
                bloom_add(st, ents[i].h);
        }
        mdb_cursor_close(hc);
        if (!rc)
            bloom_grow_l(st);
    }
    /* then drop the same entries from `recent` and the table */
    for (size_t i = 0; i < n && !rc; i++) {
        uint8_t sb[8];
        put_be64(sb, ents[i].slot);
        MDB_val k = {8, sb};
        mrc = mdb_del(st->txn, st->db_recent, &k, NULL);
        if (mrc && mrc != MDB_NOTFOUND) /* (as store_hash_del_l) */
            rc = store_mdb_err(st, mrc, "recent");
        else
            hp_forget(st, ents[i].h, ents[i].slot);
    }
    free(ents);
    st->dirty = true;
    if (rc)
        return rc;
    st->merge_from = end ? 0 : to;
    if (end && st->hp_used == 0)
        hp_clear(st); /* the pass is over: `recent` is empty too */
    else if (end)     /* keys staged while the pass waited for room: the
                         table again from `recent`, without its tombstones */
        rc = store_hash_load_l(st);
    return rc;
}
