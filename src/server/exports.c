/* exports.c: libbuse callbacks over the chunk store (busesnap).
 *
 * Data callbacks are called by libbuse's worker threads, several at once;
 * the store is thread-safe, so they map one to one onto store calls.  The
 * store is one consistent view and store_flush() is global, which is what
 * NBD_FLAG_CAN_MULTI_CONN promises.  open/close run in the handshake
 * thread of each connection and keep the registry of open handles (see
 * exports.h) under ex->lock.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exports.h"

struct exp_handle {
    struct exports *ex;
    struct store_vol *v;
    uuid_t uuid;
    char export_name[STORE_NAME_MAX + 40]; /* as the client asked for it */
    char desc[STORE_NAME_MAX + 40];
    struct exp_handle *next;
};

static int find_default_cb(const struct store_obj_info *info, void *arg)
{
    if (info->is_default) {
        *(struct store_obj_info *)arg = *info;
        return 1;
    }
    return 0;
}

int exports_resolve(struct store *st, const char *name,
                    struct store_obj_info *out)
{
    if (name[0] != '\0')
        return store_lookup(st, name, out);
    int r = store_list(st, find_default_cb, out);
    if (r < 0)
        return r;
    if (r == 0) {
        fprintf(stderr, "busesnap: the image has no default volume\n");
        return -ENOENT;
    }
    return 0;
}

/* The NBD description of an object, the same in LIST and INFO/GO. */
static void describe(const struct store_obj_info *info, char *buf, size_t len)
{
    if (info->kind == STORE_SNAPSHOT)
        snprintf(buf, len, "snapshot of %s",
                 info->parent[0] ? info->parent : "a deleted volume");
    else if (info->parent[0])
        snprintf(buf, len, "volume (from %s)", info->parent);
    else
        snprintf(buf, len, "volume");
}

static int exp_read(void *buf, uint32_t len, uint64_t off, void *h)
{
    return store_read(((struct exp_handle *)h)->v, buf, off, len);
}

static int exp_write_flags(const void *buf, uint32_t len, uint64_t off,
                           uint32_t flags, void *h)
{
    return store_write(((struct exp_handle *)h)->v, buf, off, len,
                       (flags & BUSE_FLAG_FUA) ? STORE_FUA : 0);
}

static int exp_flush(void *h)
{
    return store_flush(((struct exp_handle *)h)->ex->st);
}

static int exp_trim_flags(uint64_t off, uint64_t len, uint32_t flags, void *h)
{
    return store_zero(((struct exp_handle *)h)->v, off, len,
                      (flags & BUSE_FLAG_FUA) ? STORE_FUA : 0);
}

/* FAST_ZERO is honoured: zeroing is a metadata operation in this store. */
static int exp_write_zeroes(uint64_t off, uint64_t len, uint32_t flags, void *h)
{
    unsigned f = 0;
    if (flags & BUSE_FLAG_FUA)
        f |= STORE_FUA;
    if (flags & BUSE_FLAG_NO_HOLE)
        f |= STORE_NO_HOLE;
    return store_zero(((struct exp_handle *)h)->v, off, len, f);
}

static int extent_cb(uint64_t off, uint64_t len, unsigned flags, void *arg)
{
    uint32_t f = 0;
    if (flags & STORE_EXT_HOLE)
        f |= BUSE_EXTENT_HOLE;
    if (flags & STORE_EXT_ZERO)
        f |= BUSE_EXTENT_ZERO;
    /* -E2BIG: libbuse has enough extents; stop the walk. */
    return buse_add_extent(arg, off, len, f) < 0 ? 1 : 0;
}

static int exp_block_status(uint64_t off, uint64_t len,
                            struct buse_extents *extents, void *h)
{
    int r = store_extents(((struct exp_handle *)h)->v, off, len, extent_cb,
                          extents);
    return r < 0 ? r : 0;
}

struct list_arg {
    struct buse_export_list *list;
    int err;
};

static int list_cb(const struct store_obj_info *info, void *arg)
{
    struct list_arg *la = arg;
    char desc[STORE_NAME_MAX + 40];
    int r;
    describe(info, desc, sizeof desc);
    if (info->is_default) {
        r = buse_add_export(la->list, "", "default volume");
        if (r < 0)
            return la->err = r;
    }
    r = buse_add_export(la->list, info->name, desc);
    if (r < 0)
        return la->err = r;
    return 0;
}

static int exp_list_exports(struct buse_export_list *list, void *userdata)
{
    struct exports *ex = userdata;
    struct list_arg la = {list, 0};
    int r = store_list(ex->st, list_cb, &la);
    if (la.err < 0)
        return la.err;
    return r < 0 ? r : 0;
}

static int exp_open(const char *name, struct buse_export *exp, void *userdata)
{
    struct exports *ex = userdata;
    struct store_obj_info info;
    char id[40];
    int r;

    struct exp_handle *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    h->ex = ex;
    snprintf(h->export_name, sizeof h->export_name, "%s", name);
    /* Held from lookup to registration: a control operation that checked
     * "no clients" under this lock cannot be raced by this open. */
    pthread_mutex_lock(&ex->lock);
    r = exports_resolve(ex->st, name, &info);
    if (r < 0)
        goto fail;
    uuid_unparse_lower(info.uuid, id);
    r = store_vol_open(ex->st, id, &h->v);
    if (r < 0) {
        fprintf(stderr, "busesnap: export \"%s\": %s\n", name, store_errmsg());
        goto fail;
    }
    uuid_copy(h->uuid, info.uuid);
    describe(&info, h->desc, sizeof h->desc);
    h->next = ex->list;
    ex->list = h;
    pthread_mutex_unlock(&ex->lock);

    exp->handle = h;
    exp->size = store_vol_size(h->v);
    exp->readonly = store_vol_readonly(h->v);
    exp->description = h->desc;
    return 0;
fail:
    pthread_mutex_unlock(&ex->lock);
    free(h);
    return r;
}

static void exp_close(void *handle)
{
    struct exp_handle *h = handle, **pp;
    struct exports *ex = h->ex;
    pthread_mutex_lock(&ex->lock);
    for (pp = &ex->list; *pp; pp = &(*pp)->next)
        if (*pp == h) {
            *pp = h->next;
            break;
        }
    store_vol_close(h->v);
    pthread_mutex_unlock(&ex->lock);
    free(h);
}

void exports_init(struct exports *ex, struct store *st, const char *image,
                  struct buse_operations *ops)
{
    memset(ex, 0, sizeof *ex);
    ex->st = st;
    ex->image = image;
    pthread_mutex_init(&ex->lock, NULL);

    memset(ops, 0, sizeof *ops);
    ops->read = exp_read;
    ops->write_flags = exp_write_flags;
    ops->flush = exp_flush;
    ops->trim_flags = exp_trim_flags;
    ops->write_zeroes = exp_write_zeroes;
    ops->block_status = exp_block_status;
    ops->list_exports = exp_list_exports;
    ops->open = exp_open;
    ops->close = exp_close;
    ops->blksize = STORE_BLOCK;
    ops->flags = BUSE_CAN_MULTI_CONN;
}

void exports_destroy(struct exports *ex)
{
    pthread_mutex_destroy(&ex->lock);
}

int exports_count_locked(struct exports *ex, const uuid_t uuid, char *names,
                         size_t len)
{
    int n = 0;
    size_t used = 0;
    if (names && len)
        names[0] = '\0';
    for (struct exp_handle *h = ex->list; h; h = h->next) {
        if (uuid_compare(h->uuid, uuid) != 0)
            continue;
        n++;
        if (!names || !len)
            continue;
        /* Distinct names only. */
        int seen = 0;
        for (struct exp_handle *g = ex->list; g != h; g = g->next)
            if (uuid_compare(g->uuid, uuid) == 0 &&
                strcmp(g->export_name, h->export_name) == 0)
                seen = 1;
        if (seen)
            continue;
        int w = snprintf(names + used, len - used, "%s\"%s\"", used ? ", " : "",
                         h->export_name);
        if (w > 0)
            used = (size_t)w + used < len ? used + (size_t)w : len - 1;
    }
    return n;
}

int exports_disconnect(struct exports *ex, const uuid_t uuid)
{
    char names[8][STORE_NAME_MAX + 40];
    int n = 0, total = 0;

    /* Collect the distinct export names first; disconnect waits for the
     * close callbacks, which take the lock. */
    pthread_mutex_lock(&ex->lock);
    for (struct exp_handle *h = ex->list; h && n < 8; h = h->next) {
        if (uuid_compare(h->uuid, uuid) != 0)
            continue;
        int seen = 0;
        for (int i = 0; i < n; i++)
            if (strcmp(names[i], h->export_name) == 0)
                seen = 1;
        if (!seen)
            snprintf(names[n++], sizeof names[0], "%s", h->export_name);
    }
    pthread_mutex_unlock(&ex->lock);
    for (int i = 0; i < n; i++) {
        int r = buse_server_disconnect(ex->srv, names[i]);
        if (r < 0)
            return r;
        total += r;
    }
    return total;
}
