/* store-tree.c: volumes, snapshots and clones as nodes of one version tree:
 * lookup, snapshot, clone, rollback, delete, rename, resize, list, info
 * and diff.
 *
 * A snapshot freezes the volume's head node and gives the volume a new
 * head; a clone is a new head under a snapshot's node; a rollback gives the
 * volume a new head under the snapshot and retires the old one; nothing is
 * copied (O(1)).  Deleted snapshots whose nodes still have children become
 * HIDDEN, other removed nodes DEAD; the collector (store-gc.c) drops their
 * map entries and finally the nodes.
 *
 * Each operation validates everything first (a refused operation changes
 * nothing), then, under st->gate held exclusive (no I/O in between),
 * changes the catalogue in memory (store-cat.c) and appends a tree record
 * to the log; it is durable when it returns (one log sync), and the next
 * checkpoint writes it to the index.  The record holds what the operation
 * chose (UUIDs, node id, sequence number, creation time, the default
 * volume), so that a replay makes exactly the same change.  Operations
 * take st->tree_mu: one at a time.
 */
#include "store-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

enum {
    TR_SNAPSHOT = 1,
    TR_CLONE = 2,
    TR_ROLLBACK = 3,
    TR_DELETE = 4,
    TR_RENAME = 5,
    TR_RESIZE = 6 /* seq holds the new size */
};

struct tree_rec {
    uint32_t type;
    uint32_t node;   /* the new node (snapshot, clone, rollback) */
    uint8_t src[16]; /* the object acted on: the volume (snapshot,
                        rollback), the snapshot (clone), the object (delete,
                        rename) */
    uint8_t obj[16]; /* the new object (snapshot, clone); the snapshot
                        (rollback) */
    uint8_t def[16]; /* delete: the new default volume (null: unchanged) */
    int64_t ctime;
    uint64_t seq;
    char name[STORE_NAME_MAX + 1]; /* snapshot, clone, rename */
    char pad[7];
};

static const char *kind_name(uint32_t kind)
{
    return kind == STORE_SNAPSHOT ? "snapshot" : "volume";
}

static bool uuid_shaped(const char *s)
{
    uuid_t u;
    return strlen(s) == 36 && uuid_parse(s, u) == 0;
}

/* A new name must be 1..STORE_NAME_MAX of [A-Za-z0-9._:+@-], not start with
 * '-' and not look like a UUID.  The store gives '@' no meaning; busesnap
 * reserves it for its ephemeral clones (exports.c). */
int store_check_name(struct store *st, const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > STORE_NAME_MAX)
        return store_set_err(st, -EINVAL,
                             "invalid name \"%.80s\": must be 1 to %d bytes",
                             name, STORE_NAME_MAX);
    if (name[0] == '-')
        return store_set_err(st, -EINVAL,
                             "invalid name \"%s\": starts with '-'", name);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || strchr("._:+@-", c)))
            return store_set_err(st, -EINVAL,
                                 "invalid name \"%s\": only A-Z a-z 0-9 and "
                                 "._:+@- are allowed",
                                 name);
    }
    if (uuid_shaped(name))
        return store_set_err(st, -EINVAL,
                             "invalid name \"%s\": looks like a UUID", name);
    return 0;
}

/* Resolve a name or UUID string (tree_mu or the gate held). */
int store_resolve_name(struct store *st, const char *name_or_uuid,
                       struct cobj **out)
{
    struct cobj *o = NULL;
    if (uuid_shaped(name_or_uuid)) {
        uuid_t u;
        uuid_parse(name_or_uuid, u);
        o = store_cat_by_uuid(st, u);
    } else if (strlen(name_or_uuid) <= STORE_NAME_MAX) {
        o = store_cat_by_name(st, name_or_uuid);
    }
    if (!o)
        return store_set_err(st, -ENOENT, "no such volume or snapshot \"%s\"",
                             name_or_uuid);
    *out = o;
    return 0;
}

static void fill_info(struct store *st, const struct cobj *o,
                      struct store_obj_info *out)
{
    memset(out, 0, sizeof *out);
    memcpy(out->name, o->rec.name, sizeof out->name);
    out->name[STORE_NAME_MAX] = 0;
    memcpy(out->uuid, o->uuid, 16);
    out->kind = (enum store_kind)o->rec.kind;
    out->size = o->rec.size;
    out->ctime = o->rec.ctime;
    memcpy(out->parent_uuid, o->rec.parent, 16);
    struct cobj *p;
    if (!uuid_is_null(o->rec.parent) &&
        (p = store_cat_by_uuid(st, o->rec.parent)))
        memcpy(out->parent, p->rec.name, sizeof out->parent);
    struct node *n = store_node(st, o->rec.node);
    out->written = n ? n->entries * STORE_BLOCK : 0;
    out->is_default =
        o->rec.kind == STORE_VOLUME && !memcmp(st->cat.def, o->uuid, 16);
}

int store_lookup(struct store *st, const char *name_or_uuid,
                 struct store_obj_info *out)
{
    struct cobj *o;
    pthread_mutex_lock(&st->tree_mu);
    int rc = store_resolve_name(st, name_or_uuid, &o);
    if (!rc && out)
        fill_info(st, o, out);
    pthread_mutex_unlock(&st->tree_mu);
    return rc;
}

static void vols_set_node(struct store *st, const uint8_t uuid[16],
                          uint32_t node)
{
    for (struct store_vol *v = st->vols; v; v = v->next)
        if (!memcmp(v->uuid, uuid, 16))
            v->node = node;
}

static bool vols_open(struct store *st, const uint8_t uuid[16])
{
    for (struct store_vol *v = st->vols; v; v = v->next)
        if (!memcmp(v->uuid, uuid, 16))
            return true;
    return false;
}

static int check_rw(struct store *st)
{
    if (st->rdonly)
        return store_set_err(st, -EROFS, "image is open read-only");
    return store_failed(st);
}

/* Node id leaves the live set: HIDDEN if it still has children that need
 * it, else DEAD, then HIDDEN ancestors left without live descendants die
 * (the gate held exclusive). */
static bool has_nondead_child(struct store *st, uint32_t id)
{
    struct node *n = store_node(st, id);
    for (uint32_t c = n ? n->first_child : 0; c;
         c = store_node(st, c)->next_sibling)
        if (store_node(st, c)->state != NODE_DEAD)
            return true;
    return false;
}

static void retire_node(struct store *st, uint32_t id)
{
    struct node *n = store_node(st, id);
    if (!n)
        return;
    n->state = has_nondead_child(st, id) ? NODE_HIDDEN : NODE_DEAD;
    store_cat_node_dirty(st, id);
    for (uint32_t p = n->parent; p; p = store_node(st, p)->parent) {
        struct node *pn = store_node(st, p);
        if (!pn || pn->state != NODE_HIDDEN || has_nondead_child(st, p))
            break;
        pn->state = NODE_DEAD;
        store_cat_node_dirty(st, p);
    }
    st->gc_wanted = true;
}

/* The oldest volume but u (for a new default); false if none. */
static bool oldest_other_volume(struct store *st, const uint8_t u[16],
                                uint8_t out[16])
{
    const struct cobj *best = NULL;
    for (uint32_t i = 0; i < st->cat.nobjs; i++) {
        const struct cobj *o = &st->cat.objs[i];
        if (o->deleted || o->rec.kind != STORE_VOLUME ||
            !memcmp(o->uuid, u, 16))
            continue;
        if (!best || o->rec.seq < best->rec.seq)
            best = o;
    }
    if (best)
        memcpy(out, best->uuid, 16);
    return best != NULL;
}

/* Apply a validated record to the catalogue (gate exclusive; also the
 * replay).  -EPROTO if it does not follow the catalogue. */
static int tree_apply(struct store *st, const struct tree_rec *t)
{
    struct cobj *src = store_cat_by_uuid(st, t->src);
    int rc;
    if (!src)
        return -EPROTO;
    struct obj_rec so = src->rec;
    switch (t->type) {
    case TR_SNAPSHOT:
    case TR_CLONE: {
        if (t->node != st->cat.next_node || t->seq != st->cat.next_seq ||
            store_cat_by_name(st, t->name) || store_cat_by_uuid(st, t->obj) ||
            so.kind != (t->type == TR_SNAPSHOT ? STORE_VOLUME : STORE_SNAPSHOT))
            return -EPROTO;
        struct obj_rec n = {.kind = t->type == TR_SNAPSHOT ? STORE_SNAPSHOT
                                                           : STORE_VOLUME,
                            .size = so.size,
                            .ctime = t->ctime,
                            .seq = t->seq};
        memcpy(n.parent, t->src, 16);
        snprintf(n.name, sizeof n.name, "%s", t->name);
        if (t->type == TR_SNAPSHOT) {
            /* the volume's head becomes the snapshot's node */
            uint32_t h = so.node;
            if ((rc = store_cat_new_node(st, h, t->src, t->node)))
                return rc;
            struct node *hn = store_node(st, h);
            memcpy(hn->obj, t->obj, 16);
            store_cat_node_dirty(st, h);
            n.node = h;
            so.node = t->node;
            if ((rc = store_cat_put(st, t->src, &so)))
                return rc;
        } else {
            if ((rc = store_cat_new_node(st, so.node, t->obj, t->node)))
                return rc;
            n.node = t->node;
        }
        st->cat.next_seq++;
        if ((rc = store_cat_put(st, t->obj, &n)))
            return rc;
        if (t->type == TR_SNAPSHOT)
            vols_set_node(st, t->src, t->node);
        return 0;
    }
    case TR_ROLLBACK: {
        struct cobj *snap = store_cat_by_uuid(st, t->obj);
        if (!snap || snap->rec.kind != STORE_SNAPSHOT ||
            so.kind != STORE_VOLUME || t->node != st->cat.next_node)
            return -EPROTO;
        uint32_t old = so.node;
        if ((rc = store_cat_new_node(st, snap->rec.node, t->src, t->node)))
            return rc;
        retire_node(st, old);
        so.node = t->node;
        memcpy(so.parent, t->obj, 16);
        if ((rc = store_cat_put(st, t->src, &so)))
            return rc;
        vols_set_node(st, t->src, t->node);
        return 0;
    }
    case TR_DELETE:
        store_cat_del(st, t->src);
        retire_node(st, so.node);
        if (!uuid_is_null(t->def)) {
            memcpy(st->cat.def, t->def, 16);
            st->cat.def_dirty = true;
        }
        return 0;
    case TR_RESIZE:
        if (so.kind != STORE_VOLUME || !t->seq || t->seq % STORE_BLOCK ||
            t->seq / STORE_BLOCK > STORE_MAX_BLOCKS)
            return -EPROTO;
        so.size = t->seq;
        if ((rc = store_cat_put(st, t->src, &so)))
            return rc;
        for (struct store_vol *v = st->vols; v; v = v->next)
            if (!memcmp(v->uuid, t->src, 16))
                v->size = t->seq;
        return 0;
    case TR_RENAME:
        if (store_cat_by_name(st, t->name))
            return -EPROTO;
        snprintf(so.name, sizeof so.name, "%s", t->name);
        if ((rc = store_cat_put(st, t->src, &so)))
            return rc;
        for (struct store_vol *v = st->vols; v; v = v->next)
            if (!memcmp(v->uuid, t->src, 16))
                snprintf(v->name, sizeof v->name, "%s", t->name);
        return 0;
    }
    return -EPROTO;
}

/* Apply t and log it, then make it durable.  tree_mu held. */
static int tree_commit(struct store *st, const struct tree_rec *t)
{
    uint64_t ticket = 0;
    pthread_rwlock_wrlock(&st->gate);
    int rc = tree_apply(st, t);
    if (rc == -EPROTO)
        rc = store_set_err(st, -EIO,
                           "the catalogue changed under the "
                           "operation");
    if (!rc) {
        pthread_mutex_lock(&st->log.mu);
        rc = store_log_add_tree_l(st, t, sizeof *t);
        if (!rc)
            rc = store_log_seal_l(st, &ticket);
        pthread_mutex_unlock(&st->log.mu);
    }
    pthread_rwlock_unlock(&st->gate);
    if (!rc)
        rc = store_log_sync(st, ticket);
    if (!rc && st->gc_wanted)
        store_bg_wake(st);
    return rc;
}

/* Replay of a tree record (store-open.c): the same change, or -EPROTO. */
int store_tree_replay(struct store *st, const void *rec, size_t len)
{
    struct tree_rec t;
    if (len != sizeof t)
        return store_set_err(st, -EPROTO, "log: a tree record of %zu bytes",
                             len);
    memcpy(&t, rec, sizeof t);
    t.name[STORE_NAME_MAX] = 0;
    /* a checkpoint cut by a crash after its first part wrote the
     * catalogue: the records it covered are there already */
    struct cobj *src = store_cat_by_uuid(st, t.src);
    if (((t.type == TR_SNAPSHOT || t.type == TR_CLONE) &&
         store_cat_by_uuid(st, t.obj)) ||
        (t.type == TR_ROLLBACK && src && src->rec.node == t.node) ||
        (t.type == TR_DELETE && !src) ||
        (t.type == TR_RENAME && src && !strcmp(src->rec.name, t.name)) ||
        (t.type == TR_RESIZE && src && src->rec.size == t.seq))
        return 0;
    int rc = tree_apply(st, &t);
    if (rc == -EPROTO)
        return store_set_err(st, rc,
                             "log: a tree record (type %u, node %u) does not "
                             "follow the index (next node %u)",
                             t.type, t.node, st->cat.next_node);
    return rc;
}

int store_snapshot(struct store *st, const char *vol, const char *snap,
                   struct store_obj_info *out)
{
    struct cobj *v;
    struct tree_rec t = {.type = TR_SNAPSHOT};
    pthread_mutex_lock(&st->tree_mu);
    int rc = check_rw(st);
    if (!rc)
        rc = store_check_name(st, snap);
    if (!rc)
        rc = store_resolve_name(st, vol, &v);
    if (!rc && v->rec.kind != STORE_VOLUME)
        rc = store_set_err(st, -EINVAL, "\"%s\" is a snapshot, not a volume",
                           vol);
    if (!rc && store_cat_by_name(st, snap))
        rc = store_set_err(st, -EEXIST, "volume \"%s\": \"%s\" already exists",
                           v->rec.name, snap);
    if (!rc && st->cat.next_node == UINT32_MAX)
        rc = store_set_err(st, -ENOSPC, "out of node ids");
    if (!rc) {
        memcpy(t.src, v->uuid, 16);
        uuid_generate(t.obj);
        t.node = st->cat.next_node;
        t.seq = st->cat.next_seq;
        t.ctime = time(NULL);
        snprintf(t.name, sizeof t.name, "%s", snap);
        rc = tree_commit(st, &t);
    }
    if (!rc && out)
        fill_info(st, store_cat_by_uuid(st, t.obj), out);
    pthread_mutex_unlock(&st->tree_mu);
    return rc;
}

int store_clone(struct store *st, const char *snap, const char *newvol,
                struct store_obj_info *out)
{
    struct cobj *s;
    struct tree_rec t = {.type = TR_CLONE};
    pthread_mutex_lock(&st->tree_mu);
    int rc = check_rw(st);
    if (!rc)
        rc = store_check_name(st, newvol);
    if (!rc && (rc = store_resolve_name(st, snap, &s)) == -ENOENT)
        rc = store_set_err(st, rc, "no such snapshot \"%s\"", snap);
    if (!rc && s->rec.kind != STORE_SNAPSHOT)
        rc = store_set_err(st, -EINVAL,
                           "\"%s\" is a volume, not a snapshot (snapshot it "
                           "first)",
                           snap);
    if (!rc && store_cat_by_name(st, newvol))
        rc = store_set_err(st, -EEXIST, "\"%s\" already exists", newvol);
    if (!rc && st->cat.next_node == UINT32_MAX)
        rc = store_set_err(st, -ENOSPC, "out of node ids");
    if (!rc) {
        memcpy(t.src, s->uuid, 16);
        uuid_generate(t.obj);
        t.node = st->cat.next_node;
        t.seq = st->cat.next_seq;
        t.ctime = time(NULL);
        snprintf(t.name, sizeof t.name, "%s", newvol);
        rc = tree_commit(st, &t);
    }
    if (!rc && out)
        fill_info(st, store_cat_by_uuid(st, t.obj), out);
    pthread_mutex_unlock(&st->tree_mu);
    return rc;
}

int store_rollback(struct store *st, const char *vol, const char *snap)
{
    struct cobj *v, *s;
    struct tree_rec t = {.type = TR_ROLLBACK};
    pthread_mutex_lock(&st->tree_mu);
    int rc = check_rw(st);
    if (!rc)
        rc = store_resolve_name(st, vol, &v);
    if (!rc && v->rec.kind != STORE_VOLUME)
        rc = store_set_err(st, -EINVAL, "\"%s\" is a snapshot, not a volume",
                           vol);
    if (!rc && (rc = store_resolve_name(st, snap, &s)) == -ENOENT)
        rc = store_set_err(st, rc, "volume \"%s\": no such snapshot \"%s\"",
                           v->rec.name, snap);
    if (!rc && s->rec.kind != STORE_SNAPSHOT)
        rc = store_set_err(st, -EINVAL,
                           "volume \"%s\": \"%s\" is a volume, not a snapshot",
                           v->rec.name, snap);
    if (!rc && v->rec.size != s->rec.size)
        rc = store_set_err(st, -EINVAL,
                           "volume \"%s\": snapshot \"%s\" has another size",
                           v->rec.name, s->rec.name);
    if (!rc && st->cat.next_node == UINT32_MAX)
        rc = store_set_err(st, -ENOSPC, "out of node ids");
    if (!rc) {
        memcpy(t.src, v->uuid, 16);
        memcpy(t.obj, s->uuid, 16);
        t.node = st->cat.next_node;
        rc = tree_commit(st, &t);
    }
    pthread_mutex_unlock(&st->tree_mu);
    return rc;
}

int store_delete(struct store *st, const char *name)
{
    struct cobj *o;
    struct tree_rec t = {.type = TR_DELETE};
    pthread_mutex_lock(&st->tree_mu);
    int rc = check_rw(st);
    if (!rc)
        rc = store_resolve_name(st, name, &o);
    if (!rc && vols_open(st, o->uuid))
        rc = store_set_err(st, -EBUSY, "%s \"%s\" is open",
                           kind_name(o->rec.kind), o->rec.name);
    if (!rc && !memcmp(st->cat.def, o->uuid, 16) &&
        !oldest_other_volume(st, o->uuid, t.def))
        rc = store_set_err(st, -EBUSY,
                           "volume \"%s\" is the only volume and cannot be "
                           "deleted",
                           o->rec.name);
    if (!rc) {
        memcpy(t.src, o->uuid, 16);
        rc = tree_commit(st, &t);
    }
    pthread_mutex_unlock(&st->tree_mu);
    return rc;
}

int store_rename(struct store *st, const char *name, const char *newname)
{
    struct cobj *o;
    struct tree_rec t = {.type = TR_RENAME};
    pthread_mutex_lock(&st->tree_mu);
    int rc = check_rw(st);
    if (!rc)
        rc = store_check_name(st, newname);
    if (!rc)
        rc = store_resolve_name(st, name, &o);
    if (!rc && !strcmp(o->rec.name, newname)) {
        pthread_mutex_unlock(&st->tree_mu);
        return 0;
    }
    if (!rc && store_cat_by_name(st, newname))
        rc = store_set_err(st, -EEXIST, "%s \"%s\": \"%s\" already exists",
                           kind_name(o->rec.kind), o->rec.name, newname);
    if (!rc) {
        memcpy(t.src, o->uuid, 16);
        snprintf(t.name, sizeof t.name, "%s", newname);
        rc = tree_commit(st, &t);
    }
    pthread_mutex_unlock(&st->tree_mu);
    return rc;
}

struct tail {
    uint64_t next;  /* end of the last extent reported */
    uint64_t found; /* first byte of an allocated extent, or UINT64_MAX */
};

static int tail_cb(uint64_t off, uint64_t len, unsigned flags, void *arg)
{
    struct tail *t = arg;
    t->next = off + len;
    if (flags & STORE_EXT_HOLE)
        return 0;
    t->found = off;
    return 1;
}

/* The first byte in [from, to) of volume o that is allocated (data, or a
 * zero kept allocated), in *at; to if none.  tree_mu held (o's node cannot
 * change); takes the gate shared through store_extents. */
static int first_allocated(struct store *st, const struct cobj *o,
                           uint64_t from, uint64_t to, uint64_t *at)
{
    struct store_vol v = {.st = st, .node = o->rec.node, .size = to};
    memcpy(v.uuid, o->uuid, 16);
    for (uint64_t off = from; off < to;) {
        struct tail t = {.next = off, .found = UINT64_MAX};
        int rc = store_extents(&v, off, to - off, tail_cb, &t);
        if (rc)
            return rc;
        if (t.found != UINT64_MAX) {
            *at = t.found;
            return 0;
        }
        if (t.next <= off)
            return store_set_err(st, -EIO,
                                 "volume \"%s\": the map walk stopped at "
                                 "offset %llu",
                                 o->rec.name, (unsigned long long)off);
        off = t.next;
    }
    *at = to;
    return 0;
}

int store_resize(struct store *st, const char *vol, uint64_t size)
{
    struct cobj *o;
    struct tree_rec t = {.type = TR_RESIZE, .seq = size};
    pthread_mutex_lock(&st->tree_mu);
    int rc = check_rw(st);
    if (!rc)
        rc = store_resolve_name(st, vol, &o);
    if (!rc && o->rec.kind != STORE_VOLUME)
        rc = store_set_err(st, -EINVAL,
                           "\"%s\" is a snapshot: snapshots keep their size",
                           o->rec.name);
    if (!rc &&
        (!size || size % STORE_BLOCK || size / STORE_BLOCK > STORE_MAX_BLOCKS))
        rc = store_set_err(st, -EINVAL,
                           "volume \"%s\": size %llu is not a positive "
                           "multiple of %u bytes up to %llu",
                           o->rec.name, (unsigned long long)size, STORE_BLOCK,
                           (unsigned long long)STORE_MAX_BLOCKS * STORE_BLOCK);
    if (!rc && size == o->rec.size) {
        pthread_mutex_unlock(&st->tree_mu);
        return 0;
    }
    if (!rc && size < o->rec.size && vols_open(st, o->uuid))
        rc = store_set_err(st, -EBUSY,
                           "volume \"%s\" is open: it cannot shrink under "
                           "its users",
                           o->rec.name);
    uint64_t at = 0;
    if (!rc && size < o->rec.size &&
        !(rc = first_allocated(st, o, size, o->rec.size, &at)) &&
        at < o->rec.size)
        rc = store_set_err(st, -ENOTEMPTY,
                           "volume \"%s\": offset %llu, past the new end "
                           "%llu, holds data",
                           o->rec.name, (unsigned long long)at,
                           (unsigned long long)size);
    if (!rc) {
        memcpy(t.src, o->uuid, 16);
        rc = tree_commit(st, &t);
    }
    pthread_mutex_unlock(&st->tree_mu);
    return rc;
}

struct ord {
    uint64_t seq;
    uint32_t i;
};

static int cmp_ord(const void *a, const void *b)
{
    const struct ord *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Every object, in creation order (their sequence numbers). */
int store_list(struct store *st,
               int (*cb)(const struct store_obj_info *info, void *arg),
               void *arg)
{
    pthread_mutex_lock(&st->tree_mu);
    uint32_t n = st->cat.nobjs, k = 0;
    struct store_obj_info *infos = n ? malloc(n * sizeof *infos) : NULL;
    struct ord *ord = n ? malloc(n * sizeof *ord) : NULL;
    if (n && (!infos || !ord)) {
        pthread_mutex_unlock(&st->tree_mu);
        free(infos);
        free(ord);
        return store_set_err(st, -ENOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < n; i++)
        if (!st->cat.objs[i].deleted)
            ord[k++] = (struct ord){st->cat.objs[i].rec.seq, i};
    qsort(ord, k, sizeof *ord, cmp_ord);
    for (uint32_t i = 0; i < k; i++)
        fill_info(st, &st->cat.objs[ord[i].i], &infos[i]);
    pthread_mutex_unlock(&st->tree_mu);
    free(ord);
    int rc = 0;
    for (uint32_t i = 0; i < k && !rc; i++)
        rc = cb(&infos[i], arg);
    free(infos);
    return rc;
}

/* A snapshot or clone from a version 4 journal (store-upgrade.c): made
 * with the choices it records, logged; one already there is skipped. */
int store_tree_import(struct store *st, bool snapshot, const uint8_t src[16],
                      const uint8_t obj[16], int64_t ctime, uint64_t seq,
                      uint32_t node, const char *name)
{
    struct tree_rec t = {.type = snapshot ? TR_SNAPSHOT : TR_CLONE,
                         .node = node,
                         .ctime = ctime,
                         .seq = seq};
    memcpy(t.src, src, 16);
    memcpy(t.obj, obj, 16);
    snprintf(t.name, sizeof t.name, "%s", name);
    pthread_mutex_lock(&st->tree_mu);
    int rc = store_cat_by_uuid(st, obj) ? 0 : tree_commit(st, &t);
    pthread_mutex_unlock(&st->tree_mu);
    return rc;
}
