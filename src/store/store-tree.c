/* store-tree.c: volumes, snapshots and clones as nodes of one version tree
 * (objects, names, nodes DBs): lookup, snapshot, clone, rollback, delete,
 * rename, list, info and diff.
 *
 * Node ids come from one increasing counter, so an ancestor always has a
 * smaller id than its descendants.  A snapshot freezes the volume's head
 * node and gives the volume a new head; a clone is a new head under a
 * snapshot's node; nothing is copied (O(1)).  Deleted snapshots whose
 * nodes still have children become HIDDEN, other removed nodes DEAD; the
 * collector (store-gc.c) drops their map entries and finally the nodes.
 * Every operation here is durable when it returns (it commits).
 */
#include "store-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static const char *kind_name(uint32_t kind)
{
    return kind == STORE_SNAPSHOT ? "snapshot" : "volume";
}

int store_obj_get_l(struct store *st, const uint8_t uuid[16],
                    struct obj_rec *out)
{
    MDB_val k = {16, (void *)uuid}, d;
    int rc = mdb_get(st->txn, st->db_objects, &k, &d);
    if (rc == MDB_NOTFOUND)
        return -ENOENT;
    if (rc)
        return store_mdb_err(st, rc, "objects");
    if (d.mv_size != sizeof *out)
        return store_set_err(st, -EIO, "objects: malformed record");
    memcpy(out, d.mv_data, sizeof *out);
    return 0;
}

int store_obj_put_l(struct store *st, const uint8_t uuid[16],
                    const struct obj_rec *rec)
{
    MDB_val k = {16, (void *)uuid}, d = {sizeof *rec, (void *)rec};
    int rc = mdb_put(st->txn, st->db_objects, &k, &d, 0);
    if (rc)
        return store_mdb_err(st, rc, "objects");
    st->dirty = true;
    return 0;
}

static bool uuid_shaped(const char *s)
{
    uuid_t u;
    return strlen(s) == 36 && uuid_parse(s, u) == 0;
}

/* A new name must be 1..STORE_NAME_MAX of [A-Za-z0-9._:+-], not start with
 * '-' and not look like a UUID. */
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
              (c >= '0' && c <= '9') || strchr("._:+-", c)))
            return store_set_err(st, -EINVAL,
                                 "invalid name \"%s\": only A-Z a-z 0-9 and "
                                 "._:+- are allowed",
                                 name);
    }
    if (uuid_shaped(name))
        return store_set_err(st, -EINVAL,
                             "invalid name \"%s\": looks like a UUID", name);
    return 0;
}

static int name_get_l(struct store *st, const char *name, uint8_t uuid[16])
{
    MDB_val k = {strlen(name), (void *)name}, d;
    if (k.mv_size == 0 || k.mv_size > STORE_NAME_MAX)
        return -ENOENT;
    int rc = mdb_get(st->txn, st->db_names, &k, &d);
    if (rc == MDB_NOTFOUND)
        return -ENOENT;
    if (rc)
        return store_mdb_err(st, rc, "names");
    if (d.mv_size != 16)
        return store_set_err(st, -EIO, "names: malformed record");
    memcpy(uuid, d.mv_data, 16);
    return 0;
}

static int name_put_l(struct store *st, const char *name,
                      const uint8_t uuid[16])
{
    MDB_val k = {strlen(name), (void *)name}, d = {16, (void *)uuid};
    int rc = mdb_put(st->txn, st->db_names, &k, &d, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST)
        return store_set_err(st, -EEXIST, "\"%s\" already exists", name);
    if (rc)
        return store_mdb_err(st, rc, "names");
    st->dirty = true;
    return 0;
}

static int name_del_l(struct store *st, const char *name)
{
    MDB_val k = {strlen(name), (void *)name};
    int rc = mdb_del(st->txn, st->db_names, &k, NULL);
    if (rc && rc != MDB_NOTFOUND)
        return store_mdb_err(st, rc, "names");
    st->dirty = true;
    return 0;
}

/* Resolve a name or UUID string.  -ENOENT with a message if none. */
int store_resolve_name_l(struct store *st, const char *name_or_uuid,
                         uint8_t uuid[16], struct obj_rec *rec)
{
    int rc = -ENOENT;
    if (uuid_shaped(name_or_uuid)) {
        uuid_parse(name_or_uuid, uuid);
        rc = store_obj_get_l(st, uuid, rec);
    } else {
        rc = name_get_l(st, name_or_uuid, uuid);
        if (rc == 0)
            rc = store_obj_get_l(st, uuid, rec);
    }
    if (rc == -ENOENT)
        return store_set_err(st, -ENOENT, "no such volume or snapshot \"%s\"",
                             name_or_uuid);
    return rc;
}

static int default_get_l(struct store *st, uint8_t uuid[16])
{
    MDB_val k = {7, "default"}, d;
    int rc = mdb_get(st->txn, st->db_meta, &k, &d);
    if (rc || d.mv_size != 16) {
        memset(uuid, 0, 16);
        return rc ? store_mdb_err(st, rc, "meta default") : -EIO;
    }
    memcpy(uuid, d.mv_data, 16);
    return 0;
}

static void fill_info_l(struct store *st, const uint8_t uuid[16],
                        const struct obj_rec *o, struct store_obj_info *out)
{
    memset(out, 0, sizeof *out);
    memcpy(out->name, o->name, sizeof out->name);
    out->name[STORE_NAME_MAX] = 0;
    memcpy(out->uuid, uuid, 16);
    out->kind = (enum store_kind)o->kind;
    out->size = o->size;
    out->ctime = o->ctime;
    memcpy(out->parent_uuid, o->parent, 16);
    struct obj_rec p;
    if (!uuid_is_null(o->parent) && store_obj_get_l(st, o->parent, &p) == 0)
        memcpy(out->parent, p.name, sizeof out->parent);
    struct node *n = store_node(st, o->node);
    out->written = n ? n->entries * STORE_BLOCK : 0;
    uint8_t def[16];
    out->is_default = o->kind == STORE_VOLUME && default_get_l(st, def) == 0 &&
                      !memcmp(def, uuid, 16);
}

int store_lookup(struct store *st, const char *name_or_uuid,
                 struct store_obj_info *out)
{
    uint8_t u[16];
    struct obj_rec o;
    pthread_mutex_lock(&st->mu);
    int rc = store_resolve_name_l(st, name_or_uuid, u, &o);
    if (!rc && out)
        fill_info_l(st, u, &o, out);
    pthread_mutex_unlock(&st->mu);
    return rc;
}

/* A new LIVE node under parent for object obj. */
static int new_node_l(struct store *st, uint32_t parent, const uint8_t obj[16],
                      uint32_t *id)
{
    if (st->next_node == UINT32_MAX)
        return store_set_err(st, -ENOSPC, "out of node ids");
    uint32_t n = st->next_node;
    struct node tmp = {.parent = parent, .state = NODE_LIVE};
    memcpy(tmp.obj, obj, 16);
    /* store_node_put_l grows st->nodes; fill in after */
    int rc = store_node_put_l(st, n); /* state 0: ensures capacity */
    if (rc)
        return rc;
    st->nodes[n] = tmp;
    if ((rc = store_node_put_l(st, n)))
        return rc;
    st->next_node++;
    store_tree_changed_l(st);
    *id = n;
    return 0;
}

static void vols_set_node_l(struct store *st, const uint8_t uuid[16],
                            uint32_t node)
{
    for (struct store_vol *v = st->vols; v; v = v->next)
        if (!memcmp(v->uuid, uuid, 16))
            v->node = node;
}

static bool vols_open_l(struct store *st, const uint8_t uuid[16])
{
    for (struct store_vol *v = st->vols; v; v = v->next)
        if (!memcmp(v->uuid, uuid, 16))
            return true;
    return false;
}

/* Start of a metadata operation: the image is writable and sound, and
 * there is room for it (these run in the reserve writes leave, so deletes
 * free space on a full disk).  What can be refused is checked before the
 * txn changes; a failure after that is an LMDB error (ENOMEM, EIO), and
 * dropping the txn then also drops the client writes in it, which takes
 * the image offline (store_abort_l).  Committing those writes first would
 * avoid that at the price of a second commit per snapshot. */
static int check_rw(struct store *st)
{
    if (st->rdonly)
        return store_set_err(st, -EROFS, "image is open read-only");
    int rc = store_failed_l(st);
    if (!rc)
        rc = store_room_l(st, 64, 16);
    return rc;
}

/* Undo the txn's changes after a failed metadata operation (keeping the
 * message of the failure). */
static int fail_l(struct store *st, int rc)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", store_errmsg());
    store_abort_l(st);
    store_set_err(NULL, rc, "%s", msg);
    return rc;
}

/* Record a new object u (kind, its node, size, made from parent) and its
 * name: creation time ctime (0: now), the next creation sequence number.
 * The common last step of a snapshot and a clone. */
static int obj_create_l(struct store *st, const uint8_t u[16],
                        enum store_kind kind, uint32_t node, uint64_t size,
                        const uint8_t parent[16], const char *name,
                        int64_t ctime, struct obj_rec *rec)
{
    *rec = (struct obj_rec){.kind = kind,
                            .node = node,
                            .size = size,
                            .ctime = ctime ? ctime : time(NULL),
                            .seq = st->next_seq++};
    memcpy(rec->parent, parent, 16);
    strcpy(rec->name, name);
    int rc = store_obj_put_l(st, u, rec);
    return rc ? rc : name_put_l(st, name, u);
}

/* Snapshots and clones are made durable by a journal record (store-
 * journal.c) rather than by a commit, which would also have to write
 * every change pending in the txn: right after 12,000 random 4 KiB writes
 * and a flush, a snapshot took 67-128 ms with a commit, 5-10 ms before the
 * journal let flushes leave writes in the txn.  The record holds what the
 * operation chose (the new object's UUID, creation time, node id and
 * sequence number), so that a replay makes the same objects; the node id
 * and sequence number must be the next ones when it is replayed, and are
 * checked.  A rename, delete or rollback still commits. */
struct jr_tree {
    uint8_t src[16]; /* snapshot: the volume; clone: the snapshot */
    uint8_t obj[16]; /* the new object */
    int64_t ctime;
    uint64_t seq;
    uint32_t node; /* the new node */
    char name[STORE_NAME_MAX + 1];
    char pad[3];
};

/* Durable end of a snapshot or clone: the journal record, else (no usable
 * journal: the add does nothing) a commit.  Returns 1 when the caller must
 * store_sync_end() after the mutex. */
static int tree_durable_l(struct store *st, uint32_t type,
                          const struct jr_tree *t, uint64_t *upto)
{
    store_journal_add_l(st, type, t->node, 0, sizeof *t, 0, t);
    return store_sync_begin_l(st, upto);
}

/* Snapshot of volume vu (record vo) as su named name: vu's head h becomes
 * the snapshot's node and vu gets a new head *h2. */
static int snapshot_l(struct store *st, const uint8_t vu[16],
                      struct obj_rec *vo, const uint8_t su[16],
                      const char *name, int64_t ctime, uint32_t *h2,
                      struct obj_rec *so)
{
    uint32_t h = vo->node;
    int rc = new_node_l(st, h, vu, h2);
    if (rc)
        return rc;
    memcpy(st->nodes[h].obj, su, 16);
    if ((rc = store_node_put_l(st, h)))
        return rc;
    vo->node = *h2;
    if ((rc = obj_create_l(st, su, STORE_SNAPSHOT, h, vo->size, vu, name, ctime,
                           so)))
        return rc;
    return store_obj_put_l(st, vu, vo);
}

int store_snapshot(struct store *st, const char *vol, const char *snap,
                   struct store_obj_info *out)
{
    uint8_t vu[16], su[16], tmp[16];
    struct obj_rec vo, so;
    uint64_t upto = 0;
    int rc;
    pthread_mutex_lock(&st->mu);
    if ((rc = check_rw(st)) || (rc = store_check_name(st, snap)))
        goto out;
    if ((rc = store_resolve_name_l(st, vol, vu, &vo)))
        goto out;
    if (vo.kind != STORE_VOLUME) {
        rc = store_set_err(st, -EINVAL, "\"%s\" is a snapshot, not a volume",
                           vol);
        goto out;
    }
    if (name_get_l(st, snap, tmp) == 0) {
        rc = store_set_err(st, -EEXIST, "volume \"%s\": \"%s\" already exists",
                           vo.name, snap);
        goto out;
    }
    uint32_t h2;
    uuid_generate(su);
    if ((rc = snapshot_l(st, vu, &vo, su, snap, 0, &h2, &so)))
        goto fail;
    struct jr_tree t = {.ctime = so.ctime, .seq = so.seq, .node = h2};
    memcpy(t.src, vu, 16);
    memcpy(t.obj, su, 16);
    strcpy(t.name, snap);
    if ((rc = tree_durable_l(st, JR_SNAPSHOT, &t, &upto)) < 0)
        goto out;
    vols_set_node_l(st, vu, h2);
    if (out)
        fill_info_l(st, su, &so, out);
out:
    pthread_mutex_unlock(&st->mu);
    return rc == 1 ? store_sync_end(st, upto) : rc;
fail:
    rc = fail_l(st, rc);
    goto out;
}

/* Clone of snapshot su (record so) as volume nu named name, head *c. */
static int clone_l(struct store *st, const uint8_t su[16],
                   const struct obj_rec *so, const uint8_t nu[16],
                   const char *name, int64_t ctime, uint32_t *c,
                   struct obj_rec *no)
{
    int rc = new_node_l(st, so->node, nu, c);
    if (rc)
        return rc;
    return obj_create_l(st, nu, STORE_VOLUME, *c, so->size, su, name, ctime,
                        no);
}

int store_clone(struct store *st, const char *snap, const char *newvol,
                struct store_obj_info *out)
{
    uint8_t su[16], nu[16], tmp[16];
    struct obj_rec so, no;
    uint64_t upto = 0;
    int rc;
    pthread_mutex_lock(&st->mu);
    if ((rc = check_rw(st)) || (rc = store_check_name(st, newvol)))
        goto out;
    if ((rc = store_resolve_name_l(st, snap, su, &so)) == -ENOENT) {
        rc = store_set_err(st, rc, "no such snapshot \"%s\"", snap);
        goto out;
    }
    if (rc)
        goto out;
    if (so.kind != STORE_SNAPSHOT) {
        rc = store_set_err(st, -EINVAL,
                           "\"%s\" is a volume, not a snapshot (snapshot it "
                           "first)",
                           snap);
        goto out;
    }
    if (name_get_l(st, newvol, tmp) == 0) {
        rc = store_set_err(st, -EEXIST, "\"%s\" already exists", newvol);
        goto out;
    }
    uuid_generate(nu);
    uint32_t c;
    if ((rc = clone_l(st, su, &so, nu, newvol, 0, &c, &no)))
        goto fail;
    struct jr_tree t = {.ctime = no.ctime, .seq = no.seq, .node = c};
    memcpy(t.src, su, 16);
    memcpy(t.obj, nu, 16);
    strcpy(t.name, newvol);
    if ((rc = tree_durable_l(st, JR_CLONE, &t, &upto)) < 0)
        goto out;
    if (out)
        fill_info_l(st, nu, &no, out);
out:
    pthread_mutex_unlock(&st->mu);
    return rc == 1 ? store_sync_end(st, upto) : rc;
fail:
    rc = fail_l(st, rc);
    goto out;
}

/* Replay of a JR_SNAPSHOT or JR_CLONE record (store_journal_replay): the
 * same objects, or -EPROTO if the record does not follow the index. */
int store_tree_replay(struct store *st, uint32_t type, const void *data,
                      uint64_t len)
{
    struct jr_tree t;
    struct obj_rec src, rec;
    uint8_t tmp[16];
    uint32_t node;
    if (len != sizeof t)
        return store_set_err(st, -EPROTO, "journal: bad %s record",
                             type == JR_SNAPSHOT ? "snapshot" : "clone");
    memcpy(&t, data, sizeof t);
    t.name[STORE_NAME_MAX] = 0;
    pthread_mutex_lock(&st->mu);
    int rc = store_obj_get_l(st, t.src, &src);
    if (!rc &&
        (src.kind != (type == JR_SNAPSHOT ? STORE_VOLUME : STORE_SNAPSHOT) ||
         t.node != st->next_node || t.seq != st->next_seq ||
         store_check_name(st, t.name) || name_get_l(st, t.name, tmp) == 0))
        rc = -EPROTO;
    if (!rc)
        rc = type == JR_SNAPSHOT ? snapshot_l(st, t.src, &src, t.obj, t.name,
                                              t.ctime, &node, &rec)
                                 : clone_l(st, t.src, &src, t.obj, t.name,
                                           t.ctime, &node, &rec);
    pthread_mutex_unlock(&st->mu);
    if (rc == -EPROTO)
        return store_set_err(st, rc,
                             "journal: the %s record of \"%s\" does not "
                             "follow the index (node %u, next %u)",
                             type == JR_SNAPSHOT ? "snapshot" : "clone", t.name,
                             t.node, st->next_node);
    return rc;
}

static bool has_nondead_child_l(struct store *st, uint32_t id)
{
    if (st->tree_dirty)
        store_tree_rebuild_l(st);
    for (uint32_t c = st->nodes[id].first_child; c;
         c = st->nodes[c].next_sibling)
        if (st->nodes[c].state != NODE_DEAD)
            return true;
    return false;
}

/* Node id leaves the live set: HIDDEN if it still has children that need
 * it, else DEAD, then HIDDEN ancestors left without live descendants die. */
static int retire_node_l(struct store *st, uint32_t id)
{
    int rc;
    store_tree_rebuild_l(st);
    st->nodes[id].state = has_nondead_child_l(st, id) ? NODE_HIDDEN : NODE_DEAD;
    if ((rc = store_node_put_l(st, id)))
        return rc;
    store_tree_changed_l(st);
    for (uint32_t p = st->nodes[id].parent; p && store_node(st, p);
         p = st->nodes[p].parent) {
        if (st->nodes[p].state != NODE_HIDDEN || has_nondead_child_l(st, p))
            break;
        st->nodes[p].state = NODE_DEAD;
        if ((rc = store_node_put_l(st, p)))
            return rc;
        store_tree_changed_l(st);
    }
    st->gc_wanted = true;
    return 0;
}

int store_rollback(struct store *st, const char *vol, const char *snap)
{
    uint8_t vu[16], su[16];
    struct obj_rec vo, so;
    int rc;
    pthread_mutex_lock(&st->mu);
    if ((rc = check_rw(st)))
        goto out;
    if ((rc = store_resolve_name_l(st, vol, vu, &vo)))
        goto out;
    if (vo.kind != STORE_VOLUME) {
        rc = store_set_err(st, -EINVAL, "\"%s\" is a snapshot, not a volume",
                           vol);
        goto out;
    }
    if ((rc = store_resolve_name_l(st, snap, su, &so)) == -ENOENT) {
        rc = store_set_err(st, rc, "volume \"%s\": no such snapshot \"%s\"",
                           vo.name, snap);
        goto out;
    }
    if (rc)
        goto out;
    if (so.kind != STORE_SNAPSHOT) {
        rc = store_set_err(st, -EINVAL,
                           "volume \"%s\": \"%s\" is a volume, not a snapshot",
                           vo.name, snap);
        goto out;
    }
    if (vo.size != so.size) {
        rc = store_set_err(st, -EINVAL,
                           "volume \"%s\": snapshot \"%s\" has another size",
                           vo.name, so.name);
        goto out;
    }
    uint32_t old = vo.node, n;
    if ((rc = new_node_l(st, so.node, vu, &n)) || (rc = retire_node_l(st, old)))
        goto fail;
    vo.node = n;
    memcpy(vo.parent, su, 16);
    if ((rc = store_obj_put_l(st, vu, &vo)))
        goto fail;
    if ((rc = store_commit_l(st)))
        goto out;
    vols_set_node_l(st, vu, n);
    store_wake_bg(st);
out:
    pthread_mutex_unlock(&st->mu);
    return rc;
fail:
    rc = fail_l(st, rc);
    goto out;
}

struct objlist {
    uint8_t uuid[16];
    struct obj_rec rec;
};

static int cmp_seq(const void *a, const void *b)
{
    const struct objlist *x = a, *y = b;
    return x->rec.seq < y->rec.seq ? -1 : x->rec.seq > y->rec.seq;
}

/* All objects in creation order; *out is malloc'ed, caller frees. */
static int objects_all_l(struct store *st, struct objlist **out, size_t *n)
{
    MDB_cursor *c;
    MDB_val k, d;
    size_t cap = 16, cnt = 0;
    struct objlist *a = malloc(cap * sizeof *a);
    if (!a)
        return store_set_err(st, -ENOMEM, "out of memory");
    int rc = mdb_cursor_open(st->txn, st->db_objects, &c);
    if (rc) {
        free(a);
        return store_mdb_err(st, rc, "objects");
    }
    for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        if (k.mv_size != 16 || d.mv_size != sizeof(struct obj_rec))
            continue;
        if (cnt == cap) {
            struct objlist *b = realloc(a, (cap *= 2) * sizeof *a);
            if (!b) {
                mdb_cursor_close(c);
                free(a);
                return store_set_err(st, -ENOMEM, "out of memory");
            }
            a = b;
        }
        memcpy(a[cnt].uuid, k.mv_data, 16);
        memcpy(&a[cnt].rec, d.mv_data, sizeof a[cnt].rec);
        cnt++;
    }
    mdb_cursor_close(c);
    qsort(a, cnt, sizeof *a, cmp_seq);
    *out = a;
    *n = cnt;
    return 0;
}

int store_delete(struct store *st, const char *name)
{
    uint8_t u[16], def[16];
    struct obj_rec o;
    int rc;
    pthread_mutex_lock(&st->mu);
    if ((rc = check_rw(st)) || (rc = store_resolve_name_l(st, name, u, &o)))
        goto out;
    if (vols_open_l(st, u)) {
        rc = store_set_err(st, -EBUSY, "%s \"%s\" is open", kind_name(o.kind),
                           o.name);
        goto out;
    }
    bool is_def = default_get_l(st, def) == 0 && !memcmp(def, u, 16);
    uint8_t newdef[16];
    if (is_def) {
        struct objlist *a;
        size_t n;
        if ((rc = objects_all_l(st, &a, &n)))
            goto out;
        bool found = false;
        for (size_t i = 0; i < n && !found; i++)
            if (a[i].rec.kind == STORE_VOLUME && memcmp(a[i].uuid, u, 16)) {
                memcpy(newdef, a[i].uuid, 16);
                found = true;
            }
        free(a);
        if (!found) {
            rc = store_set_err(st, -EBUSY,
                               "volume \"%s\" is the only volume and cannot "
                               "be deleted",
                               o.name);
            goto out;
        }
    }
    MDB_val k = {16, u};
    int mrc = mdb_del(st->txn, st->db_objects, &k, NULL);
    if (mrc) {
        rc = store_mdb_err(st, mrc, "objects");
        goto fail;
    }
    if ((rc = name_del_l(st, o.name)) || (rc = retire_node_l(st, o.node)))
        goto fail;
    if (is_def) {
        MDB_val mk = {7, "default"}, md = {16, newdef};
        if ((mrc = mdb_put(st->txn, st->db_meta, &mk, &md, 0))) {
            rc = store_mdb_err(st, mrc, "meta");
            goto fail;
        }
    }
    st->dirty = true;
    if ((rc = store_commit_l(st)))
        goto out;
    store_wake_bg(st);
out:
    pthread_mutex_unlock(&st->mu);
    return rc;
fail:
    rc = fail_l(st, rc);
    goto out;
}

int store_rename(struct store *st, const char *name, const char *newname)
{
    uint8_t u[16], tmp[16];
    struct obj_rec o;
    int rc;
    pthread_mutex_lock(&st->mu);
    if ((rc = check_rw(st)) || (rc = store_check_name(st, newname)) ||
        (rc = store_resolve_name_l(st, name, u, &o)))
        goto out;
    if (!strcmp(o.name, newname))
        goto out;
    if (name_get_l(st, newname, tmp) == 0) {
        rc = store_set_err(st, -EEXIST, "%s \"%s\": \"%s\" already exists",
                           kind_name(o.kind), o.name, newname);
        goto out;
    }
    if ((rc = name_del_l(st, o.name)) || (rc = name_put_l(st, newname, u)))
        goto fail;
    memset(o.name, 0, sizeof o.name);
    strcpy(o.name, newname);
    if ((rc = store_obj_put_l(st, u, &o)))
        goto fail;
    if ((rc = store_commit_l(st)))
        goto out;
    for (struct store_vol *v = st->vols; v; v = v->next)
        if (!memcmp(v->uuid, u, 16))
            strcpy(v->name, newname);
out:
    pthread_mutex_unlock(&st->mu);
    return rc;
fail:
    rc = fail_l(st, rc);
    goto out;
}

int store_list(struct store *st,
               int (*cb)(const struct store_obj_info *info, void *arg),
               void *arg)
{
    struct objlist *a;
    size_t n;
    pthread_mutex_lock(&st->mu);
    int rc = objects_all_l(st, &a, &n);
    struct store_obj_info *infos = NULL;
    if (!rc && n && !(infos = malloc(n * sizeof *infos))) {
        free(a);
        rc = store_set_err(st, -ENOMEM, "out of memory");
    }
    if (!rc)
        for (size_t i = 0; i < n; i++)
            fill_info_l(st, a[i].uuid, &a[i].rec, &infos[i]);
    pthread_mutex_unlock(&st->mu);
    if (rc)
        return rc;
    free(a);
    for (size_t i = 0; i < n && !rc; i++)
        rc = cb(&infos[i], arg);
    free(infos);
    return rc;
}

int store_info(struct store *st, struct store_info *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&st->mu);
    struct objlist *a;
    size_t n;
    int rc = objects_all_l(st, &a, &n);
    if (rc)
        goto out;
    uint8_t def[16];
    default_get_l(st, def);
    for (size_t i = 0; i < n; i++) {
        if (a[i].rec.kind == STORE_VOLUME)
            out->volumes++;
        else
            out->snapshots++;
        if (!memcmp(a[i].uuid, def, 16))
            out->size = a[i].rec.size;
    }
    free(a);
    memcpy(out->uuid, st->uuid, 16);
    out->format_version = st->version;
    MDB_stat ms;
    if (mdb_stat(st->txn, st->db_refs, &ms) == 0)
        out->chunks = ms.ms_entries;
    out->chunk_bytes = out->chunks * STORE_BLOCK;
    out->referenced_bytes = st->refsum * STORE_BLOCK;
    if (mdb_stat(st->txn, st->db_free, &ms) == 0)
        out->free_slots = ms.ms_entries;
    int fds[3] = {st->lock_fd, st->chunk_fd, st->jfd};
    for (int i = 0; i < 3; i++) {
        struct stat sb;
        if (fds[i] < 0 || fstat(fds[i], &sb))
            continue;
        uint64_t alloc = (uint64_t)sb.st_blocks * 512, size = sb.st_size;
        /* past the end: space reserved by store-space.c */
        out->file_bytes += alloc < size ? alloc : size;
        out->reserved_bytes += alloc > size ? alloc - size : 0;
        if (i == 2)
            out->journal_bytes = alloc < size ? alloc : size;
    }
    out->filter_bytes = st->bloom_bits / 8;
    out->filter_layers = st->bloom_n;
    out->hashes_staged = st->hp_used + st->dead_n;
    MDB_envinfo ei;
    out->map_size = st->map_size;
    if (mdb_env_info(st->env, &ei) == 0)
        out->map_used = (uint64_t)(ei.me_last_pgno + 1) * st->psize;
    for (uint32_t i = 1; i < st->nodes_cap; i++)
        if (st->nodes[i].state == NODE_DEAD) /* HIDDEN: mostly needed */
            out->gc_pending += st->nodes[i].entries;
out:
    pthread_mutex_unlock(&st->mu);
    return rc;
}

/* ---- diff ---- */

struct run {
    uint64_t off, len;
};

int store_diff(struct store *st, const char *from, const char *to,
               int (*cb)(uint64_t offset, uint64_t length, void *arg),
               void *arg)
{
    uint8_t fu[16], tu[16];
    struct obj_rec fo, to_;
    uint8_t kb[MAP_KEY];
    uint64_t next_b = 0;
    struct run pend = {0, 0};
    int rc;
    pthread_mutex_lock(&st->mu);
    if ((rc = store_resolve_name_l(st, from, fu, &fo)) ||
        (rc = store_resolve_name_l(st, to, tu, &to_))) {
        pthread_mutex_unlock(&st->mu);
        return rc;
    }
    pthread_mutex_unlock(&st->mu);
    uint64_t limit = (fo.size > to_.size ? fo.size : to_.size) / STORE_BLOCK;
    bool done = false;
    while (!done) {
        size_t cap = 256, nr = 0;
        struct run *runs = malloc(cap * sizeof *runs);
        if (!runs)
            return store_set_err(st, -ENOMEM, "out of memory");
        pthread_mutex_lock(&st->mu);
        /* objects may have changed between batches: re-resolve nodes */
        struct obj_rec a, b;
        if (store_obj_get_l(st, fu, &a) || store_obj_get_l(st, tu, &b)) {
            pthread_mutex_unlock(&st->mu);
            free(runs);
            return store_set_err(
                st, -ENOENT, "diff: \"%s\" or \"%s\" was deleted", from, to);
        }
        MDB_cursor *c;
        MDB_val k, d;
        int mrc = mdb_cursor_open(st->txn, st->db_map, &c);
        if (mrc) {
            rc = store_mdb_err(st, mrc, "map");
            pthread_mutex_unlock(&st->mu);
            free(runs);
            return rc;
        }
        map_key(kb, next_b, UINT32_MAX);
        k = (MDB_val){MAP_KEY, kb};
        mrc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
        unsigned seen = 0;
        while (1) {
            if (mrc || seen >= STORE_GC_BATCH) {
                done = mrc != 0;
                break;
            }
            uint64_t blk = map_key_block(&k);
            if (blk >= limit) {
                done = true;
                break;
            }
            uint64_t va = 0, vb = 0;
            bool fa = false, fb = false;
            while (mrc == 0 && map_key_block(&k) == blk) {
                uint32_t n = map_key_node(&k);
                if (!fa && store_is_anc_l(st, a.node, n)) {
                    fa = true;
                    va = val_u64(&d);
                }
                if (!fb && store_is_anc_l(st, b.node, n)) {
                    fb = true;
                    vb = val_u64(&d);
                }
                seen++;
                mrc = mdb_cursor_get(c, &k, &d, MDB_NEXT);
            }
            next_b = blk + 1;
            if (va < STORE_FIRST_SLOT)
                va = 0;
            if (vb < STORE_FIRST_SLOT)
                vb = 0;
            if (va == vb)
                continue;
            uint64_t off = blk * STORE_BLOCK;
            if (nr && runs[nr - 1].off + runs[nr - 1].len == off) {
                runs[nr - 1].len += STORE_BLOCK;
                continue;
            }
            if (nr == cap) {
                struct run *r2 = realloc(runs, (cap *= 2) * sizeof *runs);
                if (!r2) {
                    mdb_cursor_close(c);
                    pthread_mutex_unlock(&st->mu);
                    free(runs);
                    return store_set_err(st, -ENOMEM, "out of memory");
                }
                runs = r2;
            }
            runs[nr++] = (struct run){off, STORE_BLOCK};
        }
        mdb_cursor_close(c);
        pthread_mutex_unlock(&st->mu);
        for (size_t i = 0; i < nr; i++) {
            if (pend.len && pend.off + pend.len == runs[i].off) {
                pend.len += runs[i].len;
                continue;
            }
            if (pend.len && (rc = cb(pend.off, pend.len, arg))) {
                free(runs);
                return rc;
            }
            pend = runs[i];
        }
        free(runs);
    }
    if (pend.len)
        rc = cb(pend.off, pend.len, arg);
    return rc;
}
