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
 * Ephemeral clones (SNAP@ephemeral[:ID], see exports.h) are made in open
 * and deleted in the close of their last handle, under the same lock, so
 * an open that joins a shared clone never races its deletion.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attrs.h"
#include "exports.h"

/* A live ephemeral clone: made by an open, deleted when handles drops to
 * 0 (unless kept).  Under ex->lock. */
struct exp_eph {
    uuid_t uuid;                 /* the clone */
    uuid_t snap;                 /* its snapshot: access is the snapshot's */
    char id[STORE_NAME_MAX + 1]; /* shared by this ID; "": one connection's */
    int handles;                 /* open exp_handles of the clone */
    int kept;                    /* bsnap keep: a normal volume now */
    struct exp_eph *next;
};

struct exp_handle {
    struct exports *ex;
    struct store_vol *v;
    struct exp_eph *eph; /* the ephemeral clone it holds, or NULL */
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
    /* Ephemeral clones belong to the connections that made them. */
    if (strchr(o.name, '@'))
        return 0;
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

/* ---- ephemeral clones ---- */

static struct exp_eph *eph_by_uuid_locked(struct exports *ex, const uuid_t uuid)
{
    for (struct exp_eph *e = ex->eph; e; e = e->next)
        if (uuid_compare(e->uuid, uuid) == 0)
            return e;
    return NULL;
}

int exports_is_ephemeral_locked(struct exports *ex, const uuid_t uuid)
{
    struct exp_eph *e = eph_by_uuid_locked(ex, uuid);
    return e && !e->kept;
}

/* Is s 1..STORE_NAME_MAX bytes of what a store name may hold but '@'? */
static int eph_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > STORE_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || strchr("._:+-", c)))
            return 0;
    }
    return 1;
}

/* Make a clone of snapshot snap for an open of export name (id "" for a
 * private one), recorded in ex->eph.  Store names: see exports.h; the
 * number makes a private one's unique (a name taken, e.g. by a clone a
 * failed sweep left, moves on to the next number). */
static int eph_create_locked(struct exports *ex,
                             const struct store_obj_info *snap, const char *id,
                             struct store_obj_info *out, struct exp_eph **ep)
{
    char sid[40], name[STORE_NAME_MAX + 16];
    struct exp_eph *e = calloc(1, sizeof *e);
    int r = -EEXIST;
    if (!e)
        return -ENOMEM;
    uuid_unparse_lower(snap->uuid, sid);
    for (int tries = 0; r == -EEXIST && tries < 100; tries++) {
        unsigned n = ++ex->eph_seq;
        int w =
            id[0] && tries == 0
                ? snprintf(name, sizeof name, "%s@ephemeral:%s", snap->name, id)
                : snprintf(name, sizeof name, "%s@ephemeral@%u", snap->name, n);
        if (w < 0 || w > STORE_NAME_MAX)
            snprintf(name, sizeof name, "@ephemeral@%u", n);
        r = store_clone(ex->st, sid, name, out);
    }
    if (r < 0) {
        free(e);
        return r;
    }
    uuid_copy(e->uuid, out->uuid);
    uuid_copy(e->snap, snap->uuid);
    snprintf(e->id, sizeof e->id, "%s", id);
    e->next = ex->eph;
    ex->eph = e;
    *ep = e;
    return 0;
}

/* The last handle of e closed: delete the clone (unless kept) and forget
 * it.  A failure is logged: the sweep at the next start retries. */
static void eph_drop_locked(struct exports *ex, struct exp_eph *e)
{
    struct exp_eph **pp;
    for (pp = &ex->eph; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    if (!e->kept) {
        char id[40];
        uuid_unparse_lower(e->uuid, id);
        int r = store_delete(ex->st, id);
        if (r < 0 && r != -ENOENT)
            fprintf(stderr,
                    "busesnap: %s: ephemeral clone %s not deleted: %s (the "
                    "next start deletes it)\n",
                    ex->image, id, store_errmsg());
    }
    free(e);
}

/* Resolve export name "SNAP@ephemeral[:ID]" (at: its '@') to the
 * snapshot *snap and the ID (into id).  -ENOENT with a line on stderr for
 * anything else holding '@'. */
static int eph_parse_locked(struct exports *ex, const char *name,
                            const char *at, struct store_obj_info *snap,
                            char id[STORE_NAME_MAX + 1])
{
    char sname[STORE_NAME_MAX + 1];
    const char *rest = at + 1;
    size_t n = (size_t)(at - name);
    id[0] = '\0';
    if (strncmp(rest, "ephemeral", 9) != 0 ||
        (rest[9] != '\0' && (rest[9] != ':' || !eph_id_ok(rest + 10)))) {
        fprintf(stderr,
                "busesnap: export \"%s\": no such export (a name with '@' "
                "is SNAP@ephemeral or SNAP@ephemeral:ID, ID of A-Z a-z 0-9 "
                "._:+-)\n",
                name);
        return -ENOENT;
    }
    if (rest[9] == ':')
        snprintf(id, STORE_NAME_MAX + 1, "%s", rest + 10);
    if (n == 0 || n > STORE_NAME_MAX)
        return -ENOENT;
    memcpy(sname, name, n);
    sname[n] = '\0';
    int r = store_lookup(ex->st, sname, snap);
    if (r == 0 && snap->kind != STORE_SNAPSHOT) {
        fprintf(stderr,
                "busesnap: export \"%s\": \"%s\" is a volume; an ephemeral "
                "clone is made of a snapshot\n",
                name, sname);
        r = -ENOENT;
    }
    return r;
}

static int exp_open(const char *name, struct buse_export *exp, void *userdata)
{
    struct exports *ex = userdata;
    struct store_obj_info info, snap;
    struct exp_eph *e = NULL;
    char id[40], eid[STORE_NAME_MAX + 1];
    const char *at = strchr(name, '@');
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
     * "no clients" under this lock cannot be raced by this open, nor can
     * the last close of a shared ephemeral clone delete it under us. */
    pthread_mutex_lock(&ex->lock);
    if (at)
        r = eph_parse_locked(ex, name, at, &snap, eid);
    else
        r = exports_resolve_locked(ex, name, &info);
    if (r < 0)
        goto fail;
    if (!at)
        e = eph_by_uuid_locked(ex, info.uuid);
    /* An ephemeral clone opens for whom its snapshot opens. */
    const struct exp_attr *a = attrs_find_locked(
        ex, at ? snap.uuid : (e && !e->kept ? e->snap : info.uuid));
    /* A kernel device is the operator's own (busesnap serve --attach). */
    if (!exp->kernel && !attrs_allows(a, exp->tls_identity)) {
        log_refusal(name, exp->tls_identity);
        r = -ENOENT;
        goto fail;
    }
    if (at) {
        for (e = ex->eph; e && eid[0]; e = e->next)
            if (!e->kept && uuid_compare(e->snap, snap.uuid) == 0 &&
                strcmp(e->id, eid) == 0)
                break;
        if (e && eid[0]) {
            uuid_unparse_lower(e->uuid, id);
            r = store_lookup(ex->st, id, &info);
        } else {
            e = NULL;
            r = eph_create_locked(ex, &snap, eid, &info, &e);
        }
        if (r < 0) {
            fprintf(stderr, "busesnap: export \"%s\": %s\n", name,
                    store_errmsg());
            goto fail;
        }
        /* A private clone is this connection's: other connections would
         * see other disks, so multi-conn must not be advertised. */
        exp->no_multi_conn = !eid[0];
        a = attrs_find_locked(ex, info.uuid);
    }
    uuid_unparse_lower(info.uuid, id);
    r = store_vol_open(ex->st, id, &h->v);
    if (r < 0) {
        fprintf(stderr, "busesnap: export \"%s\": %s\n", name, store_errmsg());
        goto fail;
    }
    if (e) {
        h->eph = e;
        e->handles++;
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
    if (e && e->handles == 0)
        eph_drop_locked(ex, e);
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
    if (h->eph && --h->eph->handles == 0)
        eph_drop_locked(ex, h->eph);
    pthread_mutex_unlock(&ex->lock);
    free(h->identity);
    free(h);
}

struct sweep_arg {
    uuid_t *uuids;
    char (*names)[STORE_NAME_MAX + 1];
    size_t n, cap;
};

static int sweep_cb(const struct store_obj_info *info, void *arg)
{
    struct sweep_arg *sa = arg;
    if (info->kind != STORE_VOLUME || !strchr(info->name, '@'))
        return 0;
    if (sa->n == sa->cap) {
        size_t cap = sa->cap ? sa->cap * 2 : 16;
        uuid_t *u = realloc(sa->uuids, cap * sizeof *u);
        if (u)
            sa->uuids = u;
        char(*nm)[STORE_NAME_MAX + 1] = realloc(sa->names, cap * sizeof *nm);
        if (nm)
            sa->names = nm;
        if (!u || !nm)
            return -ENOMEM;
        sa->cap = cap;
    }
    uuid_copy(sa->uuids[sa->n], info->uuid);
    snprintf(sa->names[sa->n], sizeof sa->names[0], "%s", info->name);
    sa->n++;
    return 0;
}

void exports_sweep_ephemeral(struct exports *ex)
{
    struct sweep_arg sa = {0};
    char id[40];
    if (store_list(ex->st, sweep_cb, &sa) < 0)
        fprintf(stderr, "busesnap: %s: cannot list ephemeral clones: %s\n",
                ex->image, store_errmsg());
    for (size_t i = 0; i < sa.n; i++) {
        uuid_unparse_lower(sa.uuids[i], id);
        int r = store_delete(ex->st, id);
        if (r < 0)
            fprintf(stderr,
                    "busesnap: %s: ephemeral clone \"%s\" left by a server "
                    "that stopped: not deleted: %s\n",
                    ex->image, sa.names[i], store_errmsg());
        else
            fprintf(stderr,
                    "busesnap: %s: deleted ephemeral clone \"%s\" left by a "
                    "server that stopped before its clients closed\n",
                    ex->image, sa.names[i]);
    }
    free(sa.uuids);
    free(sa.names);
}

int exports_keep_locked(struct exports *ex, const uuid_t uuid,
                        const char *newname)
{
    struct exp_eph *e = eph_by_uuid_locked(ex, uuid);
    char id[40];
    if (!e || e->kept)
        return -ENOENT;
    uuid_unparse_lower(uuid, id);
    int r = store_rename(ex->st, id, newname);
    if (r == 0)
        e->kept = 1;
    return r;
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
    while (ex->eph) {
        struct exp_eph *e = ex->eph;
        ex->eph = e->next;
        free(e);
    }
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
