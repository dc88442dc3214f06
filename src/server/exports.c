/* exports.c: libbuse callbacks over the chunk store (busesnap).
 *
 * Data callbacks are called by libbuse's worker threads, several at once;
 * the store is thread-safe, so they map one to one onto store calls.  The
 * store is one consistent view and store_flush() is global, which is what
 * NBD_FLAG_CAN_MULTI_CONN promises.  open/close run in the handshake
 * thread of each connection and keep the registry of open handles (see
 * exports.h) under ex->lock.  Access control happens in open and in the
 * list: an export restricted to TLS identities (attrs.h) opens only for a
 * client with one of them, and is neither listed nor told apart from a
 * missing export for anyone else; read-only exports open read-only.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attrs.h"
#include "exports.h"

struct exp_handle {
    struct exports *ex;
    struct store_vol *v;
    uuid_t uuid;
    char export_name[STORE_NAME_MAX + 40]; /* as the client asked for it */
    char desc[STORE_NAME_MAX + 40];
    char *identity; /* the client's TLS identity, or NULL */
    int readonly;   /* opened read-only */
    int kernel;     /* a kernel device */
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

void exports_mark_default_locked(const struct exports *ex,
                                 struct store_obj_info *info)
{
    info->is_default = info->kind == STORE_VOLUME && ex->has_default &&
                       uuid_compare(info->uuid, ex->default_uuid) == 0;
}

int exports_resolve_locked(struct exports *ex, const char *name,
                           struct store_obj_info *out)
{
    int r;
    if (name[0] != '\0') {
        r = store_lookup(ex->st, name, out);
    } else if (!ex->has_default) {
        r = -ENOENT;
    } else {
        char id[40];
        uuid_unparse_lower(ex->default_uuid, id);
        r = store_lookup(ex->st, id, out);
        if (r == 0 && out->kind != STORE_VOLUME)
            r = -ENOENT;
    }
    if (r == 0)
        exports_mark_default_locked(ex, out);
    return r;
}

int exports_resolve(struct exports *ex, const char *name,
                    struct store_obj_info *out)
{
    pthread_mutex_lock(&ex->lock);
    int r = exports_resolve_locked(ex, name, out);
    pthread_mutex_unlock(&ex->lock);
    return r;
}

/* Refusals are caused by clients, which can cause many: at most one line
 * a second. */
static void log_refusal(const char *name, const char *id)
{
    static atomic_long last;
    long now = (long)time(NULL), prev = atomic_load(&last);
    if (now != prev && atomic_compare_exchange_strong(&last, &prev, now))
        fprintf(stderr,
                "busesnap: export \"%s\" refused to a client with TLS "
                "identity %s (not allowed; the client is told there is no "
                "such export)\n",
                name, id ? id : "(none)");
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
    struct exports *ex;
    const char *identity; /* the listing client's TLS identity, or NULL */
};

static int list_cb(const struct store_obj_info *info, void *arg)
{
    struct list_arg *la = arg;
    struct store_obj_info o = *info;
    char desc[STORE_NAME_MAX + 40];
    int r;
    /* Only what this client may open: the others it does not learn of. */
    if (!attrs_allows(attrs_find_locked(la->ex, o.uuid), la->identity))
        return 0;
    exports_mark_default_locked(la->ex, &o);
    describe(&o, desc, sizeof desc);
    if (o.is_default) {
        r = buse_add_export(la->list, "", "default volume");
        if (r < 0)
            return la->err = r;
    }
    r = buse_add_export(la->list, o.name, desc);
    if (r < 0)
        return la->err = r;
    return 0;
}

static int exp_list_exports(struct buse_export_list *list, void *userdata)
{
    struct exports *ex = userdata;
    struct list_arg la = {list, 0, ex, buse_export_list_peer(list, NULL)};
    pthread_mutex_lock(&ex->lock);
    int r = store_list(ex->st, list_cb, &la);
    pthread_mutex_unlock(&ex->lock);
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
    if (exp->tls_identity && !(h->identity = strdup(exp->tls_identity))) {
        free(h);
        return -ENOMEM;
    }
    h->ex = ex;
    h->kernel = exp->kernel;
    snprintf(h->export_name, sizeof h->export_name, "%s", name);
    /* Held from lookup to registration: a control operation that checked
     * "no clients" under this lock cannot be raced by this open. */
    pthread_mutex_lock(&ex->lock);
    r = exports_resolve_locked(ex, name, &info);
    if (r < 0)
        goto fail;
    const struct exp_attr *a = attrs_find_locked(ex, info.uuid);
    /* A kernel device is the operator's own (busesnap serve --attach). */
    if (!exp->kernel && !attrs_allows(a, exp->tls_identity)) {
        log_refusal(name, exp->tls_identity);
        r = -ENOENT;
        goto fail;
    }
    uuid_unparse_lower(info.uuid, id);
    r = store_vol_open(ex->st, id, &h->v);
    if (r < 0) {
        fprintf(stderr, "busesnap: export \"%s\": %s\n", name, store_errmsg());
        goto fail;
    }
    uuid_copy(h->uuid, info.uuid);
    describe(&info, h->desc, sizeof h->desc);
    h->readonly = store_vol_readonly(h->v) || (a && a->read_only);
    h->next = ex->list;
    ex->list = h;
    pthread_mutex_unlock(&ex->lock);

    exp->handle = h;
    exp->size = store_vol_size(h->v);
    exp->readonly = h->readonly;
    exp->description = h->desc;
    return 0;
fail:
    pthread_mutex_unlock(&ex->lock);
    free(h->identity);
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
    free(h->identity);
    free(h);
}

void exports_init(struct exports *ex, struct store *st, const char *image,
                  struct buse_operations *ops)
{
    struct store_obj_info def;
    memset(ex, 0, sizeof *ex);
    ex->st = st;
    ex->image = image;
    pthread_mutex_init(&ex->lock, NULL);
    if (store_list(st, find_default_cb, &def) == 1) {
        ex->has_default = 1;
        uuid_copy(ex->default_uuid, def.uuid);
    }

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
    attrs_free(ex);
    pthread_mutex_destroy(&ex->lock);
}

int exports_count_name_locked(struct exports *ex, const char *name)
{
    int n = 0;
    for (struct exp_handle *h = ex->list; h; h = h->next)
        n += strcmp(h->export_name, name) == 0;
    return n;
}

int exports_affected_locked(struct exports *ex, const uuid_t uuid,
                            int read_only, char *const *allow, size_t nallow)
{
    struct exp_attr want = {.nallow = nallow, .allow = (char **)allow};
    int n = 0;
    for (struct exp_handle *h = ex->list; h; h = h->next) {
        if (uuid_compare(h->uuid, uuid) != 0)
            continue;
        if ((read_only && !h->readonly) ||
            (!h->kernel && !attrs_allows(&want, h->identity)))
            n++;
    }
    return n;
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
