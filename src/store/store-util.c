/* store-util.c: the store's small common pieces: errors (a thread-local
 * message naming the image, LMDB codes turned into errno in one place),
 * clocks, side-file paths and the chunk hash (XXH3-128, or a test's).
 * Any thread may call them.
 */
#include "store-int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <xxhash.h>

static __thread char errbuf[2048]; /* long paths, twice, in one message */

const char *store_errmsg(void)
{
    return errbuf;
}

/* Record "IMAGE: message" for this thread and return rc. */
int store_set_err(struct store *st, int rc, const char *fmt, ...)
{
    va_list ap;
    int n = 0;
    char tmp[sizeof errbuf];
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap); /* fmt may print errbuf itself */
    va_end(ap);
    if (st)
        n = snprintf(errbuf, sizeof errbuf, "%s: ", st->name);
    snprintf(errbuf + n, sizeof errbuf - n, "%s", tmp);
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
    return store_set_err(st, store_mdb_errno(mrc), "%s: %s", what,
                         mdb_strerror(mrc));
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

/* IMAGE-chunks and the like: path with suffix (NULL: no memory). */
char *store_side_path(const char *path, const char *suffix)
{
    char *p;
    if (asprintf(&p, "%s%s", path, suffix) < 0)
        return NULL;
    return p;
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

bool store_all_zero(const void *p)
{
    /* p may be anywhere in a request's payload (a write at offset 12345):
     * memcpy is the defined unaligned load, and compiles to one. */
    const unsigned char *b = p;
    for (size_t i = 0; i < STORE_BLOCK; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, sizeof w);
        if (w)
            return false;
    }
    return true;
}
