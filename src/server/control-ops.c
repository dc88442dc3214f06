/* control-ops.c: the operations of the control protocol (doc/control.md).
 *
 * Each op turns one request object into one response object through the
 * store API, the export registry (exports.h) and the export attributes
 * (attrs.h); control.c does the sockets, framing and hello.  A refused
 * request changes nothing: every op validates all that its arguments and
 * the image's state can make fail (kinds, sizes, the only volume, the
 * default export, clients) before its first effect, and --force
 * disconnects clients only once nothing else can refuse the request.
 * rollback, delete, default and access hold the registry lock from their
 * "no clients" check to their change, so no NBD client opens the object
 * in between; create and clone hold it across the store call and the
 * copy of the source's allowed identities, so the new object is never
 * open to others for a moment.  check runs the store's check in a worker
 * thread (see op_check).  Names holding '@' are busesnap's ephemeral
 * clones (exports.h): no request may give one to an object, and keep
 * turns an ephemeral clone into a normal volume.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attrs.h"
#include "control.h"

#define CTL_DIFF_MAX 1000000    /* extents in one diff response */
#define CTL_CHECK_MSGS 100      /* problem messages in one check response */
#define CTL_CLOSE_GRACE_MS 1000 /* for closing clients before a refusal */

/* ---- JSON views ---- */

json_t *ctl_info_json(const char *image, const struct store_info *si)
{
    char id[40];
    uuid_unparse_lower(si->uuid, id);
    double ratio = si->chunk_bytes
                       ? (double)si->referenced_bytes / (double)si->chunk_bytes
                       : 1.0;
    return json_pack(
        "{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:I, s:I, "
        "s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:i, s:I, s:I, s:I, s:I, s:I, "
        "s:I}",
        "image", image, "uuid", id, "format_version",
        (json_int_t)si->format_version, "size", (json_int_t)si->size, "chunks",
        (json_int_t)si->chunks, "chunk_bytes", (json_int_t)si->chunk_bytes,
        "referenced_bytes", (json_int_t)si->referenced_bytes, "physical_bytes",
        (json_int_t)si->file_bytes, "dedup_ratio", ratio, "free_slots",
        (json_int_t)si->free_slots, "free_bytes",
        (json_int_t)(si->free_slots * STORE_BLOCK), "gc_pending",
        (json_int_t)si->gc_pending, "reclaimable_bytes",
        (json_int_t)(si->gc_pending * STORE_BLOCK), "volumes", (int)si->volumes,
        "snapshots", (int)si->snapshots, "reserved_bytes",
        (json_int_t)si->reserved_bytes, "index_bytes", (json_int_t)si->map_used,
        "index_limit", (json_int_t)si->map_size, "journal_bytes",
        (json_int_t)si->journal_bytes, "filter_bytes",
        (json_int_t)si->filter_bytes, "filter_layers", (int)si->filter_layers,
        "hashes_staged", (json_int_t)si->hashes_staged, "index_room",
        (json_int_t)si->index_room, "index_need", (json_int_t)si->index_need,
        "bad_reads", (json_int_t)si->bad_reads, "punched_bytes",
        (json_int_t)si->punched_bytes, "return_ms", (json_int_t)si->return_ms);
}

json_t *ctl_obj_json(const struct store_obj_info *info, int clients,
                     const char *export_names)
{
    char id[40], pid[40] = "", when[32] = "";
    time_t t = (time_t)info->ctime;
    struct tm tm;
    uuid_unparse_lower(info->uuid, id);
    if (!uuid_is_null(info->parent_uuid))
        uuid_unparse_lower(info->parent_uuid, pid);
    if (gmtime_r(&t, &tm))
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *exports = json_array();
    if (!exports)
        return NULL;
    /* export_names is the '"a", "b"' list from exports_count_locked. */
    for (const char *p = export_names; p && (p = strchr(p, '"'));) {
        const char *q = strchr(p + 1, '"');
        if (!q)
            break;
        json_array_append_new(exports,
                              json_stringn(p + 1, (size_t)(q - p - 1)));
        p = q + 1;
    }
    return json_pack(
        "{s:s, s:s, s:s, s:b, s:s, s:s, s:I, s:s, s:I, s:I, s:i, s:o}", "name",
        info->name, "uuid", id, "kind",
        info->kind == STORE_SNAPSHOT ? "snapshot" : "volume", "default",
        info->is_default, "parent", info->parent, "parent_uuid", pid, "created",
        (json_int_t)info->ctime, "created_iso", when, "size",
        (json_int_t)info->size, "written", (json_int_t)info->written, "clients",
        clients, "exports", exports);
}

/* ---- argument helpers ---- */

/* A new name for a volume or snapshot: '@' is reserved (exports.h); the
 * rest is the store's to check. */
static json_t *reserved_name(struct exports *ex, const char *name)
{
    if (!strchr(name, '@'))
        return NULL;
    return ctl_error(-EINVAL,
                     "%s: invalid name \"%s\": '@' is reserved for "
                     "ephemeral clones (export SNAP@ephemeral)",
                     ex->image, name);
}

static const char *arg_str(json_t *req, const char *key)
{
    json_t *v = json_object_get(req, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int arg_bool(json_t *req, const char *key)
{
    json_t *v = json_object_get(req, key);
    return json_is_true(v);
}

static int64_t elapsed_us(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (int64_t)(t1.tv_sec - t0->tv_sec) * 1000000 +
           (t1.tv_nsec - t0->tv_nsec) / 1000;
}

/* Resolve a name, UUID or "" (default volume) with a message. */
static json_t *resolve_error(struct exports *ex, const char *name, int r)
{
    if (r == -ENOENT && !name[0])
        return ctl_error(r,
                         "%s: there is no default volume (export \"\" "
                         "does not exist; see bsnap default)",
                         ex->image);
    if (r == -ENOENT)
        return ctl_error(r, "%s: no such volume or snapshot \"%s\"", ex->image,
                         name);
    return ctl_store_error(r);
}

static json_t *resolve(struct exports *ex, const char *name,
                       struct store_obj_info *out)
{
    int r = exports_resolve(ex, name, out);
    return r < 0 ? resolve_error(ex, name, r) : NULL;
}

/* The object as doc/control.md shows it, with its clients and its
 * attributes (ex->lock held). */
static json_t *obj_json_locked(struct exports *ex,
                               const struct store_obj_info *info)
{
    char names[512];
    struct store_obj_info o = *info;
    int n = exports_count_locked(ex, o.uuid, names, sizeof names);
    exports_mark_default_locked(ex, &o);
    json_t *j = ctl_obj_json(&o, n, names);
    const struct exp_attr *a = attrs_find_locked(ex, o.uuid);
    json_t *allow = NULL;
    if (a && a->nallow) {
        allow = json_array();
        for (size_t i = 0; allow && i < a->nallow; i++)
            json_array_append_new(allow, json_string(a->allow[i]));
    }
    if (j) {
        json_object_set_new(j, "read_only", json_boolean(a && a->read_only));
        json_object_set_new(
            j, "ephemeral",
            json_boolean(exports_is_ephemeral_locked(ex, o.uuid)));
        json_object_set_new(j, "allow", allow ? allow : json_null());
    } else {
        json_decref(allow);
    }
    return j;
}

static json_t *obj_with_clients(struct exports *ex,
                                const struct store_obj_info *info)
{
    pthread_mutex_lock(&ex->lock);
    json_t *j = obj_json_locked(ex, info);
    pthread_mutex_unlock(&ex->lock);
    return j;
}

/* A new object (snapshot or clone of src) gets src's allowed identities:
 * an export restricted to some clients must not become readable by all
 * through a snapshot or a clone of it.  ex->lock held; on failure the new
 * object is deleted again, so the request changes nothing. */
static json_t *inherit_allow_locked(struct exports *ex, const uuid_t src,
                                    const struct store_obj_info *made)
{
    const struct exp_attr *a = attrs_find_locked(ex, src);
    char msg[512];
    if (!a || a->nallow == 0)
        return NULL;
    int r = attrs_set_locked(ex, made->uuid, 0, a->allow, a->nallow);
    if (r < 0)
        snprintf(msg, sizeof msg, "out of memory");
    else
        r = attrs_save_locked(ex, msg, sizeof msg);
    if (r == 0)
        return NULL;
    char id[40];
    uuid_unparse_lower(made->uuid, id);
    attrs_set_locked(ex, made->uuid, 0, NULL, 0);
    store_delete(ex->st, id);
    return ctl_error(r,
                     "%s: \"%s\" not made: its allowed TLS identities "
                     "could not be recorded: %s",
                     ex->image, made->name, msg);
}

/* ---- operations ---- */

static json_t *op_create(struct exports *ex, json_t *req)
{
    const char *name = arg_str(req, "name");
    const char *vol = arg_str(req, "volume");
    struct store_obj_info v, s;
    struct timespec t0;
    json_t *e;
    if (!name)
        return ctl_error(-EINVAL, "create: \"name\" (a string) is required");
    if ((e = reserved_name(ex, name)))
        return e;
    if ((e = resolve(ex, vol ? vol : "", &v)))
        return e;
    if (v.kind != STORE_VOLUME)
        return ctl_error(-EINVAL, "%s: \"%s\" is a snapshot, not a volume",
                         ex->image, v.name);
    char id[40];
    uuid_unparse_lower(v.uuid, id);
    pthread_mutex_lock(&ex->lock);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = store_snapshot(ex->st, id, name, &s);
    int64_t us = elapsed_us(&t0);
    if (r < 0 || (e = inherit_allow_locked(ex, v.uuid, &s))) {
        pthread_mutex_unlock(&ex->lock);
        return e ? e : ctl_store_error(r);
    }
    json_t *o = obj_json_locked(ex, &s);
    pthread_mutex_unlock(&ex->lock);
    return json_pack("{s:b, s:o, s:I}", "ok", 1, "object", o, "elapsed_us",
                     (json_int_t)us);
}

static json_t *op_clone(struct exports *ex, json_t *req)
{
    const char *snap = arg_str(req, "snapshot");
    const char *name = arg_str(req, "name");
    struct store_obj_info s, v;
    struct timespec t0;
    json_t *e;
    if (!snap || !name)
        return ctl_error(-EINVAL, "clone: \"snapshot\" and \"name\" (strings) "
                                  "are required");
    if ((e = reserved_name(ex, name)))
        return e;
    if ((e = resolve(ex, snap, &s)))
        return e;
    if (s.kind != STORE_SNAPSHOT)
        return ctl_error(-EINVAL,
                         "%s: \"%s\" is a volume, not a snapshot (take a "
                         "snapshot of it first)",
                         ex->image, s.name);
    char sid[40];
    uuid_unparse_lower(s.uuid, sid);
    pthread_mutex_lock(&ex->lock);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = store_clone(ex->st, sid, name, &v);
    int64_t us = elapsed_us(&t0);
    if (r < 0 || (e = inherit_allow_locked(ex, s.uuid, &v))) {
        pthread_mutex_unlock(&ex->lock);
        return e ? e : ctl_store_error(r);
    }
    json_t *o = obj_json_locked(ex, &v);
    pthread_mutex_unlock(&ex->lock);
    return json_pack("{s:b, s:o, s:I}", "ok", 1, "object", o, "elapsed_us",
                     (json_int_t)us);
}

struct list_ctx {
    struct exports *ex;
    json_t *arr;
};

static int list_cb(const struct store_obj_info *info, void *arg)
{
    struct list_ctx *lc = arg;
    json_t *o = obj_json_locked(lc->ex, info);
    if (!o)
        return -ENOMEM;
    json_array_append_new(lc->arr, o);
    return 0;
}

static json_t *op_list(struct exports *ex, json_t *req)
{
    struct list_ctx lc = {ex, json_array()};
    if (!lc.arr)
        return ctl_error(-ENOMEM, "list: out of memory");
    /* "written" counts the index's entries: bring it up to date */
    int r = store_checkpoint(ex->st);
    pthread_mutex_lock(&ex->lock);
    if (r >= 0)
        r = store_list(ex->st, list_cb, &lc);
    pthread_mutex_unlock(&ex->lock);
    if (r < 0) {
        json_decref(lc.arr);
        return r == -ENOMEM ? ctl_error(r, "list: out of memory")
                            : ctl_store_error(r);
    }
    return json_pack("{s:b, s:o}", "ok", 1, "objects", lc.arr);
}

/* Refuse (or, with force, disconnect) the clients of obj before act().
 * Runs act with the registry lock held so that nobody opens obj between
 * the check and the act. */
static json_t *with_no_clients(struct exports *ex,
                               const struct store_obj_info *obj, int force,
                               const char *why, int *disconnected)
{
    char names[512];
    *disconnected = 0;
    pthread_mutex_lock(&ex->lock);
    int n = exports_count_locked(ex, obj->uuid, names, sizeof names);
    /* A client that just sent NBD_CMD_DISC (`qemu-io ...; bsnap rollback`)
     * is still counted until libbuse has closed it: give such clients
     * CTL_CLOSE_GRACE_MS to go before refusing. */
    for (int ms = 0; n > 0 && !force && ms < CTL_CLOSE_GRACE_MS; ms += 10) {
        pthread_mutex_unlock(&ex->lock);
        nanosleep(&(struct timespec){0, 10 * 1000000}, NULL);
        pthread_mutex_lock(&ex->lock);
        n = exports_count_locked(ex, obj->uuid, names, sizeof names);
    }
    if (n > 0 && force) {
        pthread_mutex_unlock(&ex->lock);
        int r = exports_disconnect(ex, obj->uuid);
        if (r < 0)
            return ctl_error(r, "%s: \"%s\": cannot disconnect its clients",
                             ex->image, obj->name);
        *disconnected = r;
        pthread_mutex_lock(&ex->lock);
        n = exports_count_locked(ex, obj->uuid, names, sizeof names);
    }
    if (n > 0) {
        pthread_mutex_unlock(&ex->lock);
        return ctl_error(
            -EBUSY,
            "%s: %s \"%s\" is served to %d NBD client%s (export%s "
            "%s); %s; disconnect %s or use --force",
            ex->image, obj->kind == STORE_VOLUME ? "volume" : "snapshot",
            obj->name, n, n == 1 ? "" : "s", strchr(names, ',') ? "s" : "",
            names, why, n == 1 ? "it" : "them");
    }
    return NULL; /* lock held */
}

static json_t *op_rollback(struct exports *ex, json_t *req)
{
    const char *snap = arg_str(req, "snapshot");
    const char *vol = arg_str(req, "volume");
    int force = arg_bool(req, "force"), disc;
    struct store_obj_info s, v;
    json_t *e;
    if (!snap)
        return ctl_error(-EINVAL, "rollback: \"snapshot\" (a string) is "
                                  "required");
    if ((e = resolve(ex, snap, &s)))
        return e;
    if (s.kind != STORE_SNAPSHOT)
        return ctl_error(-EINVAL, "%s: \"%s\" is a volume, not a snapshot",
                         ex->image, s.name);
    if (!vol) {
        if (uuid_is_null(s.parent_uuid))
            return ctl_error(-ENOENT,
                             "%s: the volume snapshot \"%s\" was taken of is "
                             "gone; name the volume to roll back",
                             ex->image, s.name);
        char pid[40];
        uuid_unparse_lower(s.parent_uuid, pid);
        if ((e = resolve(ex, pid, &v)))
            return e;
    } else if ((e = resolve(ex, vol, &v))) {
        return e;
    }
    if (v.kind != STORE_VOLUME)
        return ctl_error(-EINVAL, "%s: \"%s\" is a snapshot, not a volume",
                         ex->image, v.name);
    /* Everything store_rollback would refuse, refused before --force
     * disconnects anyone. */
    if (v.size != s.size)
        return ctl_error(-EINVAL,
                         "%s: volume \"%s\" (%llu bytes) and snapshot \"%s\" "
                         "(%llu bytes) differ in size",
                         ex->image, v.name, (unsigned long long)v.size, s.name,
                         (unsigned long long)s.size);
    e = with_no_clients(ex, &v, force,
                        "rolling back under them would leave their page "
                        "caches stale",
                        &disc);
    if (e)
        return e;
    char vid[40], sid[40];
    uuid_unparse_lower(v.uuid, vid);
    uuid_unparse_lower(s.uuid, sid);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = store_rollback(ex->st, vid, sid);
    int64_t us = elapsed_us(&t0);
    pthread_mutex_unlock(&ex->lock);
    if (r < 0)
        return ctl_store_error(r);
    return json_pack("{s:b, s:s, s:s, s:i, s:I}", "ok", 1, "volume", v.name,
                     "snapshot", s.name, "disconnected", disc, "elapsed_us",
                     (json_int_t)us);
}

struct count_ctx {
    int volumes; /* but skip and the ephemeral clones */
    const uuid_t *skip;
};

/* An ephemeral clone goes when its clients do: it does not count as the
 * volume an image keeps. */
static int count_volumes_cb(const struct store_obj_info *info, void *arg)
{
    struct count_ctx *cc = arg;
    if (info->kind == STORE_VOLUME && !strchr(info->name, '@') &&
        uuid_compare(info->uuid, *cc->skip) != 0)
        cc->volumes++;
    return 0;
}

/* What would make deleting o fail or change export "" unasked: checked
 * before --force disconnects anyone, and again under the lock that the
 * deletion holds.  nd: the new default named with the request, or NULL. */
static json_t *delete_refusal_locked(struct exports *ex,
                                     const struct store_obj_info *o,
                                     const struct store_obj_info *nd, int force)
{
    struct store_obj_info cur;
    struct count_ctx cc = {.skip = &o->uuid};
    int is_default = exports_resolve_locked(ex, "", &cur) == 0 &&
                     uuid_compare(cur.uuid, o->uuid) == 0;
    if (o->kind == STORE_VOLUME) {
        int r = store_list(ex->st, count_volumes_cb, &cc);
        if (r < 0)
            return ctl_store_error(r);
        if (cc.volumes == 0)
            return ctl_error(-EBUSY,
                             "%s: volume \"%s\" is the only volume and cannot "
                             "be deleted (an image keeps at least one)",
                             ex->image, o->name);
    }
    if (nd && !is_default)
        return ctl_error(-EINVAL,
                         "%s: \"%s\" is not the default volume: nothing to "
                         "name a new default for (bsnap default moves it)",
                         ex->image, o->name);
    if (nd && uuid_compare(nd->uuid, o->uuid) == 0)
        return ctl_error(-EINVAL,
                         "%s: \"%s\" cannot be the new default: it is the "
                         "volume being deleted",
                         ex->image, o->name);
    if (is_default && !nd && !force)
        return ctl_error(-EBUSY,
                         "%s: volume \"%s\" is the default (export \"\"): "
                         "name the next default (--default VOLUME), or use "
                         "--force to leave export \"\" without a volume",
                         ex->image, o->name);
    return NULL;
}

static json_t *op_delete(struct exports *ex, json_t *req)
{
    const char *name = arg_str(req, "name");
    const char *next = arg_str(req, "default");
    int force = arg_bool(req, "force"), disc;
    struct store_obj_info o, nd;
    char msg[512];
    json_t *e;
    if (!name)
        return ctl_error(-EINVAL, "delete: \"name\" (a string) is required");
    if ((e = resolve(ex, name, &o)))
        return e;
    if (next && (e = resolve(ex, next, &nd)))
        return e;
    if (next && nd.kind != STORE_VOLUME)
        return ctl_error(-EINVAL,
                         "%s: \"%s\" is a snapshot: the default must be a "
                         "volume",
                         ex->image, nd.name);
    pthread_mutex_lock(&ex->lock);
    e = delete_refusal_locked(ex, &o, next ? &nd : NULL, force);
    pthread_mutex_unlock(&ex->lock);
    if (e)
        return e;
    e = with_no_clients(ex, &o, force, "deleting it would fail their I/O",
                        &disc);
    if (e)
        return e;
    char id[40];
    uuid_unparse_lower(o.uuid, id);
    struct store_obj_info gone;
    if (strchr(o.name, '@') && store_lookup(ex->st, id, &gone) == -ENOENT) {
        /* An ephemeral clone whose clients --force disconnected: it went
         * with the last of them. */
        json_t *obj = obj_json_locked(ex, &o);
        pthread_mutex_unlock(&ex->lock);
        json_object_set_new(obj, "clients", json_integer(0));
        json_object_set_new(obj, "exports", json_array());
        json_object_set_new(obj, "ephemeral", json_true());
        return json_pack("{s:b, s:o, s:i, s:o}", "ok", 1, "object", obj,
                         "disconnected", disc, "default", json_null());
    }
    /* Under the lock again: a concurrent control client may have changed
     * the image while clients were being disconnected. */
    if ((e = delete_refusal_locked(ex, &o, next ? &nd : NULL, force))) {
        pthread_mutex_unlock(&ex->lock);
        return e;
    }
    struct store_obj_info cur;
    int was_default = exports_resolve_locked(ex, "", &cur) == 0 &&
                      uuid_compare(cur.uuid, o.uuid) == 0;
    json_t *obj = obj_json_locked(ex, &o); /* as it was */
    json_object_set_new(obj, "clients", json_integer(0));
    json_object_set_new(obj, "exports", json_array());
    int old_has = ex->has_default;
    uuid_t old_def;
    uuid_copy(old_def, ex->default_uuid);
    /* The new default is recorded first: if the deletion then fails it is
     * put back; a crash in between leaves the operator's choice, never
     * another volume. */
    if (was_default) {
        ex->has_default = next != NULL;
        if (next)
            uuid_copy(ex->default_uuid, nd.uuid);
        int r = attrs_save_locked(ex, msg, sizeof msg);
        if (r < 0) {
            ex->has_default = old_has;
            uuid_copy(ex->default_uuid, old_def);
            pthread_mutex_unlock(&ex->lock);
            json_decref(obj);
            return ctl_error(r, "%s: \"%s\" not deleted: %s", ex->image, o.name,
                             msg);
        }
    }
    int r = store_delete(ex->st, id);
    if (r < 0) {
        e = ctl_store_error(r);
        if (was_default) {
            ex->has_default = old_has;
            uuid_copy(ex->default_uuid, old_def);
            if (attrs_save_locked(ex, msg, sizeof msg) < 0)
                fprintf(stderr, "busesnap: %s\n", msg);
        }
    }
    json_t *def = json_null();
    if (r == 0 && ex->has_default) {
        struct store_obj_info d;
        if (exports_resolve_locked(ex, "", &d) == 0)
            def = json_string(d.name);
    }
    pthread_mutex_unlock(&ex->lock);
    if (r < 0) {
        json_decref(obj);
        json_decref(def);
        return e;
    }
    return json_pack("{s:b, s:o, s:i, s:o}", "ok", 1, "object", obj,
                     "disconnected", disc, "default", def);
}

/* default: show the default volume (export ""), or move it to "name", or
 * with "none" leave export "" without a volume.  Clients of export ""
 * hold the old default until they reconnect, when they would get the new
 * one: refused while there are any, unless force disconnects them. */
static json_t *op_default(struct exports *ex, json_t *req)
{
    const char *name = arg_str(req, "name");
    int none = arg_bool(req, "none"), force = arg_bool(req, "force");
    struct store_obj_info v, cur;
    char msg[512];
    json_t *e;
    int disc = 0;
    if (name && none)
        return ctl_error(-EINVAL, "default: \"name\" or \"none\", not both");
    if (!name && !none) {
        pthread_mutex_lock(&ex->lock);
        json_t *o = exports_resolve_locked(ex, "", &cur) == 0
                        ? obj_json_locked(ex, &cur)
                        : json_null();
        pthread_mutex_unlock(&ex->lock);
        return json_pack("{s:b, s:o}", "ok", 1, "object", o);
    }
    if (name) {
        if ((e = resolve(ex, name, &v)))
            return e;
        if (strchr(v.name, '@'))
            return ctl_error(-EINVAL,
                             "%s: \"%s\" is an ephemeral clone: it cannot be "
                             "the default (bsnap keep it first)",
                             ex->image, v.name);
        if (v.kind != STORE_VOLUME)
            return ctl_error(-EINVAL,
                             "%s: \"%s\" is a snapshot: the default must be "
                             "a volume",
                             ex->image, v.name);
    }
    pthread_mutex_lock(&ex->lock);
    int have = exports_resolve_locked(ex, "", &cur) == 0;
    if ((!have && none) ||
        (have && name && uuid_compare(cur.uuid, v.uuid) == 0)) {
        /* Already so: nothing changes, nobody is disconnected. */
        json_t *o = have ? obj_json_locked(ex, &cur) : json_null();
        pthread_mutex_unlock(&ex->lock);
        return json_pack("{s:b, s:o, s:i}", "ok", 1, "object", o,
                         "disconnected", 0);
    }
    int n = exports_count_name_locked(ex, "");
    if (n > 0 && force) {
        pthread_mutex_unlock(&ex->lock);
        int r = buse_server_disconnect(ex->srv, "");
        if (r < 0)
            return ctl_error(r,
                             "%s: cannot disconnect the clients of export "
                             "\"\"",
                             ex->image);
        disc = r;
        pthread_mutex_lock(&ex->lock);
        n = exports_count_name_locked(ex, "");
    }
    if (n > 0) {
        pthread_mutex_unlock(&ex->lock);
        return ctl_error(-EBUSY,
                         "%s: export \"\" is served to %d NBD client%s (of "
                         "volume \"%s\"); on reconnecting %s would get %s%s%s; "
                         "disconnect %s or use --force",
                         ex->image, n, n == 1 ? "" : "s", have ? cur.name : "?",
                         n == 1 ? "it" : "they",
                         none ? "no volume" : "volume \"", none ? "" : v.name,
                         none ? "" : "\"", n == 1 ? "it" : "them");
    }
    int old_has = ex->has_default;
    uuid_t old;
    uuid_copy(old, ex->default_uuid);
    ex->has_default = !none;
    if (!none)
        uuid_copy(ex->default_uuid, v.uuid);
    int r = attrs_save_locked(ex, msg, sizeof msg);
    if (r < 0) {
        ex->has_default = old_has;
        uuid_copy(ex->default_uuid, old);
        pthread_mutex_unlock(&ex->lock);
        return ctl_error(r, "%s: the default was not changed: %s", ex->image,
                         msg);
    }
    json_t *o = none ? json_null() : obj_json_locked(ex, &v);
    pthread_mutex_unlock(&ex->lock);
    return json_pack("{s:b, s:o, s:i}", "ok", 1, "object", o, "disconnected",
                     disc);
}

/* access: show or change who may open an object over NBD and whether it
 * is read-only.  "read_only" (bool) and "allow" (an array of TLS
 * identities, or null for anyone) replace what they name; the other is
 * kept.  A change that would refuse a connected client, or take its
 * writes away, is refused unless force disconnects the object's clients
 * (they reconnect under the new rules). */
static json_t *op_access(struct exports *ex, json_t *req)
{
    const char *name = arg_str(req, "name");
    json_t *jro = json_object_get(req, "read_only");
    json_t *jallow = json_object_get(req, "allow");
    int force = arg_bool(req, "force"), disc = 0, r;
    struct store_obj_info o;
    char msg[512];
    json_t *e;
    if (!name)
        return ctl_error(-EINVAL, "access: \"name\" (a string) is required");
    if (jro && !json_is_boolean(jro))
        return ctl_error(-EINVAL, "access: \"read_only\" is a boolean");
    if (jallow && !json_is_null(jallow) &&
        (!json_is_array(jallow) || json_array_size(jallow) == 0 ||
         json_array_size(jallow) > 256))
        return ctl_error(-EINVAL, "access: \"allow\" is null (anyone) or an "
                                  "array of 1 to 256 TLS identities");
    size_t n = jallow ? json_array_size(jallow) : 0;
    char **allow = calloc(n ? n : 1, sizeof *allow);
    if (!allow)
        return ctl_error(-ENOMEM, "access: out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *id = json_string_value(json_array_get(jallow, i));
        if (!id) {
            free(allow);
            return ctl_error(-EINVAL, "access: a TLS identity is a string");
        }
        if (attrs_check_identity(id, msg, sizeof msg) < 0) {
            free(allow);
            return ctl_error(-EINVAL, "access: %s", msg);
        }
        int dup = 0;
        for (size_t j = 0; j < k; j++)
            dup |= strcmp(allow[j], id) == 0;
        if (!dup)
            allow[k++] = (char *)id;
    }
    if ((e = resolve(ex, name, &o))) {
        free(allow);
        return e;
    }
    pthread_mutex_lock(&ex->lock);
    const struct exp_attr *a = attrs_find_locked(ex, o.uuid);
    int ro = jro ? json_is_true(jro) : (a && a->read_only);
    char **list = jallow ? allow : (a ? a->allow : NULL);
    size_t nlist = jallow ? k : (a ? a->nallow : 0);
    if (!jro && !jallow) { /* show */
        json_t *obj = obj_json_locked(ex, &o);
        pthread_mutex_unlock(&ex->lock);
        free(allow);
        return json_pack("{s:b, s:o}", "ok", 1, "object", obj);
    }
    /* The current list may be freed by attrs_set_locked: copy it first. */
    char **keep = NULL;
    if (!jallow && nlist) {
        keep = calloc(nlist, sizeof *keep);
        for (size_t i = 0; keep && i < nlist; i++)
            keep[i] = list[i];
        list = keep;
        if (!keep) {
            pthread_mutex_unlock(&ex->lock);
            free(allow);
            return ctl_error(-ENOMEM, "access: out of memory");
        }
    }
    int affected = exports_affected_locked(ex, o.uuid, ro, list, nlist);
    if (affected > 0 && force) {
        pthread_mutex_unlock(&ex->lock);
        r = exports_disconnect(ex, o.uuid);
        pthread_mutex_lock(&ex->lock);
        if (r < 0) {
            pthread_mutex_unlock(&ex->lock);
            free(allow);
            free(keep);
            return ctl_error(r, "%s: \"%s\": cannot disconnect its clients",
                             ex->image, o.name);
        }
        disc = r;
        /* attributes may have changed meanwhile: recompute from scratch */
        a = attrs_find_locked(ex, o.uuid);
        ro = jro ? json_is_true(jro) : (a && a->read_only);
        if (!jallow) {
            free(keep);
            keep = NULL;
            nlist = a ? a->nallow : 0;
            if (nlist && !(keep = calloc(nlist, sizeof *keep))) {
                pthread_mutex_unlock(&ex->lock);
                free(allow);
                return ctl_error(-ENOMEM, "access: out of memory");
            }
            for (size_t i = 0; i < nlist; i++)
                keep[i] = a->allow[i];
            list = keep;
        }
        affected = exports_affected_locked(ex, o.uuid, ro, list, nlist);
    }
    if (affected > 0) {
        pthread_mutex_unlock(&ex->lock);
        free(allow);
        free(keep);
        return ctl_error(-EBUSY,
                         "%s: %s \"%s\" is served to %d NBD client%s that "
                         "the new access would %s; disconnect %s or use "
                         "--force",
                         ex->image,
                         o.kind == STORE_VOLUME ? "volume" : "snapshot", o.name,
                         affected, affected == 1 ? "" : "s",
                         ro ? "refuse or make read-only" : "refuse",
                         affected == 1 ? "it" : "them");
    }
    /* Keep the old attributes to put back if the sidecar cannot be
     * written (strings copied: attrs_set_locked frees the entry). */
    a = attrs_find_locked(ex, o.uuid);
    int old_ro = a && a->read_only;
    size_t old_n = a ? a->nallow : 0;
    char **old = calloc(old_n ? old_n : 1, sizeof *old);
    int oom = !old;
    for (size_t i = 0; !oom && i < old_n; i++)
        oom = !(old[i] = strdup(a->allow[i]));
    r = oom ? -ENOMEM : attrs_set_locked(ex, o.uuid, ro, list, nlist);
    if (r == 0 && (r = attrs_save_locked(ex, msg, sizeof msg)) < 0)
        attrs_set_locked(ex, o.uuid, old_ro, old, old_n);
    else if (r < 0)
        snprintf(msg, sizeof msg, "out of memory");
    json_t *obj = r == 0 ? obj_json_locked(ex, &o) : NULL;
    pthread_mutex_unlock(&ex->lock);
    for (size_t i = 0; old && i < old_n; i++)
        free(old[i]);
    free(old);
    free(allow);
    free(keep);
    if (r < 0)
        return ctl_error(r, "%s: the access of \"%s\" was not changed: %s",
                         ex->image, o.name, msg);
    return json_pack("{s:b, s:o, s:i}", "ok", 1, "object", obj, "disconnected",
                     disc);
}

/* rename and keep: "name" resolved into o and id, "new_name" checked. */
static json_t *name_and_new(struct exports *ex, json_t *req, const char *op,
                            const char **newname, struct store_obj_info *o,
                            char id[40])
{
    const char *name = arg_str(req, "name");
    json_t *e;
    *newname = arg_str(req, "new_name");
    if (!name || !*newname)
        return ctl_error(-EINVAL,
                         "%s: \"name\" and \"new_name\" (strings) are "
                         "required",
                         op);
    if ((e = reserved_name(ex, *newname)) || (e = resolve(ex, name, o)))
        return e;
    uuid_unparse_lower(o->uuid, id);
    return NULL;
}

static json_t *op_rename(struct exports *ex, json_t *req)
{
    const char *newname;
    struct store_obj_info o;
    char id[40];
    json_t *e;
    if ((e = name_and_new(ex, req, "rename", &newname, &o, id)))
        return e;
    pthread_mutex_lock(&ex->lock);
    int r = strchr(o.name, '@') ? -EINVAL : store_rename(ex->st, id, newname);
    pthread_mutex_unlock(&ex->lock);
    if (r == -EINVAL && strchr(o.name, '@'))
        return ctl_error(r,
                         "%s: \"%s\" is an ephemeral clone: bsnap keep "
                         "renames it into a volume that stays",
                         ex->image, o.name);
    if (r < 0)
        return ctl_store_error(r);
    if ((e = resolve(ex, id, &o)))
        return e;
    return json_pack("{s:b, s:o}", "ok", 1, "object", obj_with_clients(ex, &o));
}

/* resize: volume "name" gets "size" bytes.  Growing is online: clients
 * that connect afterwards see the new size (connected ones keep the size
 * they negotiated).  Shrinking needs "force", no client, and nothing
 * allocated past the new end (the store checks the last two). */
static json_t *op_resize(struct exports *ex, json_t *req)
{
    const char *name = arg_str(req, "name");
    json_t *jsize = json_object_get(req, "size");
    int force = arg_bool(req, "force");
    struct store_obj_info o;
    json_t *e;
    if (!name || !json_is_integer(jsize) || json_integer_value(jsize) <= 0)
        return ctl_error(-EINVAL, "resize: \"name\" (string) and \"size\" "
                                  "(positive integer) are required");
    uint64_t size = (uint64_t)json_integer_value(jsize);
    if ((e = resolve(ex, name, &o)))
        return e;
    if (o.kind != STORE_VOLUME)
        return ctl_error(-EINVAL,
                         "%s: \"%s\" is a snapshot: snapshots keep their "
                         "size (clone it and resize the clone)",
                         ex->image, o.name);
    if (size < o.size && !force)
        return ctl_error(-EINVAL,
                         "%s: volume \"%s\": shrinking from %llu to %llu "
                         "bytes cuts its end off: refused without --force",
                         ex->image, o.name, (unsigned long long)o.size,
                         (unsigned long long)size);
    char id[40];
    uuid_unparse_lower(o.uuid, id);
    uint64_t old = o.size;
    pthread_mutex_lock(&ex->lock);
    int r = store_resize(ex->st, id, size);
    pthread_mutex_unlock(&ex->lock);
    if (r == -EBUSY)
        return ctl_error(r,
                         "%s: volume \"%s\" is served: disconnect its "
                         "clients before shrinking it",
                         ex->image, o.name);
    if (r < 0)
        return ctl_store_error(r);
    if ((e = resolve(ex, id, &o)))
        return e;
    return json_pack("{s:b, s:o, s:I}", "ok", 1, "object",
                     obj_with_clients(ex, &o), "old_size", (json_int_t)old);
}

/* keep: the live ephemeral clone "name" becomes the normal volume
 * "new_name", which stays when its clients go. */
static json_t *op_keep(struct exports *ex, json_t *req)
{
    const char *newname;
    struct store_obj_info o;
    char id[40];
    json_t *e;
    if ((e = name_and_new(ex, req, "keep", &newname, &o, id)))
        return e;
    pthread_mutex_lock(&ex->lock);
    int r = exports_keep_locked(ex, o.uuid, newname);
    if (r == -ENOENT) {
        pthread_mutex_unlock(&ex->lock);
        return ctl_error(-EINVAL,
                         "%s: \"%s\" is not a live ephemeral clone (bsnap "
                         "rename renames other objects)",
                         ex->image, o.name);
    }
    json_t *obj = NULL;
    if (r == 0 && store_lookup(ex->st, id, &o) == 0)
        obj = obj_json_locked(ex, &o);
    pthread_mutex_unlock(&ex->lock);
    if (r < 0)
        return ctl_store_error(r);
    return json_pack("{s:b, s:o}", "ok", 1, "object", obj ? obj : json_null());
}

static json_t *op_info(struct exports *ex, json_t *req)
{
    struct store_info si;
    int r = store_info(ex->st, &si);
    if (r < 0)
        return ctl_store_error(r);
    return json_pack("{s:b, s:o}", "ok", 1, "info",
                     ctl_info_json(ex->image, &si));
}

static json_t *op_gc(struct exports *ex, json_t *req)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = store_gc(ex->st);
    int64_t us = elapsed_us(&t0);
    if (r < 0)
        return ctl_store_error(r);
    json_t *res = op_info(ex, req);
    json_object_set_new(res, "elapsed_us", json_integer(us));
    return res;
}

/* check runs store_check in a thread of its own and reports its progress
 * from the client's thread: the store may call progress() with its locks
 * held, and a client that stops reading must never block it there. */
struct check_job {
    struct store *st;
    pthread_mutex_t lock; /* everything below */
    pthread_cond_t cond;
    uint64_t done, total;
    int changed, finished, result;
    char errmsg[512];
    json_t *msgs;
};

static void check_progress(uint64_t done, uint64_t total, void *arg)
{
    struct check_job *cj = arg;
    pthread_mutex_lock(&cj->lock);
    cj->done = done;
    cj->total = total;
    cj->changed = 1;
    pthread_mutex_unlock(&cj->lock);
}

static void check_problem(const char *msg, void *arg)
{
    struct check_job *cj = arg;
    pthread_mutex_lock(&cj->lock);
    if (json_array_size(cj->msgs) < CTL_CHECK_MSGS)
        json_array_append_new(cj->msgs, json_string(msg));
    pthread_mutex_unlock(&cj->lock);
}

static void *check_thread(void *arg)
{
    struct check_job *cj = arg;
    int r = store_check(cj->st, check_progress, check_problem, cj);
    pthread_mutex_lock(&cj->lock);
    if (r < 0) /* store_errmsg() is per thread: copy it here */
        snprintf(cj->errmsg, sizeof cj->errmsg, "%s", store_errmsg());
    cj->result = r;
    cj->finished = 1;
    pthread_cond_signal(&cj->cond);
    pthread_mutex_unlock(&cj->lock);
    return NULL;
}

static int send_progress(int fd, uint64_t done, uint64_t total)
{
    json_t *j = json_pack("{s:{s:I, s:I}}", "progress", "done",
                          (json_int_t)done, "total", (json_int_t)total);
    int r = j ? ctl_send(fd, j) : -ENOMEM;
    json_decref(j);
    return r;
}

static json_t *op_check(struct exports *ex, json_t *req, int fd)
{
    struct check_job cj = {.st = ex->st, .msgs = json_array()};
    pthread_t th;
    int send_failed = 0, sent_final = 0;
    struct timespec last, t0;
    clock_gettime(CLOCK_MONOTONIC, &last);
    t0 = last;
    if (!cj.msgs)
        return ctl_error(-ENOMEM, "check: out of memory");
    pthread_mutex_init(&cj.lock, NULL);
    pthread_cond_init(&cj.cond, NULL);
    int r = pthread_create(&th, NULL, check_thread, &cj);
    if (r != 0) {
        json_decref(cj.msgs);
        return ctl_error(-r, "check: cannot start a thread");
    }
    pthread_mutex_lock(&cj.lock);
    for (;;) {
        /* At most ten progress lines a second. */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 100 * 1000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        while (!cj.finished &&
               pthread_cond_timedwait(&cj.cond, &cj.lock, &until) == 0)
            ;
        int finished = cj.finished, changed = cj.changed;
        uint64_t done = cj.done, total = cj.total;
        cj.changed = 0;
        pthread_mutex_unlock(&cj.lock);
        /* Sending may block on a client that stopped reading; the check
         * goes on meanwhile and we catch up (or give up) afterwards.  A
         * line at least every second, changed or not, so that a client
         * can tell a long phase from a server that stopped answering. */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int stale = (now.tv_sec - last.tv_sec) * 1000 +
                        (now.tv_nsec - last.tv_nsec) / 1000000 >=
                    1000;
        if (changed && !send_failed) {
            send_failed = send_progress(fd, done, total) < 0;
            sent_final = done == total;
            last = now;
        } else if (stale && !send_failed) { /* the index phase says nothing */
            json_t *k = json_pack("{s:{s:I}}", "progress", "elapsed_ms",
                                  (json_int_t)elapsed_us(&t0) / 1000);
            send_failed = k ? ctl_send(fd, k) < 0 : 0;
            json_decref(k);
            last = now;
        }
        if (finished) {
            if (!sent_final && !send_failed && cj.result >= 0)
                send_progress(fd, total, total);
            break;
        }
        pthread_mutex_lock(&cj.lock);
    }
    pthread_join(th, NULL);
    pthread_cond_destroy(&cj.cond);
    pthread_mutex_destroy(&cj.lock);
    if (cj.result < 0) {
        json_decref(cj.msgs);
        return ctl_error(cj.result, "%s",
                         cj.errmsg[0] ? cj.errmsg : strerror(-cj.result));
    }
    return json_pack("{s:b, s:i, s:o}", "ok", 1, "problems", cj.result,
                     "messages", cj.msgs);
}

struct diff_ctx {
    json_t *arr;
    uint64_t off, len, total;
    int truncated;
};

static void diff_emit(struct diff_ctx *dc)
{
    if (!dc->len)
        return;
    if (json_array_size(dc->arr) >= CTL_DIFF_MAX)
        dc->truncated = 1;
    else
        json_array_append_new(dc->arr, json_pack("{s:I, s:I}", "offset",
                                                 (json_int_t)dc->off, "length",
                                                 (json_int_t)dc->len));
}

static int diff_cb(uint64_t off, uint64_t len, void *arg)
{
    struct diff_ctx *dc = arg;
    dc->total += len;
    if (dc->len && dc->off + dc->len == off) {
        dc->len += len;
        return 0;
    }
    diff_emit(dc);
    dc->off = off;
    dc->len = len;
    return 0;
}

static json_t *op_diff(struct exports *ex, json_t *req)
{
    const char *from = arg_str(req, "from");
    const char *to = arg_str(req, "to");
    struct store_obj_info f, t;
    json_t *e;
    if (!from || !to)
        return ctl_error(-EINVAL, "diff: \"from\" and \"to\" (strings) are "
                                  "required");
    if ((e = resolve(ex, from, &f)) || (e = resolve(ex, to, &t)))
        return e;
    char fid[40], tid[40];
    uuid_unparse_lower(f.uuid, fid);
    uuid_unparse_lower(t.uuid, tid);
    struct diff_ctx dc = {json_array(), 0, 0, 0, 0};
    int r = store_diff(ex->st, fid, tid, diff_cb, &dc);
    if (r < 0) {
        json_decref(dc.arr);
        return ctl_store_error(r);
    }
    diff_emit(&dc);
    return json_pack("{s:b, s:s, s:s, s:I, s:b, s:o}", "ok", 1, "from", f.name,
                     "to", t.name, "changed_bytes", (json_int_t)dc.total,
                     "truncated", dc.truncated, "extents", dc.arr);
}

json_t *ctl_op(struct exports *ex, const char *op, json_t *req, int fd)
{
    static const struct {
        const char *name;
        json_t *(*fn)(struct exports *ex, json_t *req);
    } ops[] = {
        {"create", op_create}, {"list", op_list},     {"rollback", op_rollback},
        {"clone", op_clone},   {"delete", op_delete}, {"rename", op_rename},
        {"resize", op_resize}, {"keep", op_keep},     {"info", op_info},
        {"diff", op_diff},     {"gc", op_gc},         {"default", op_default},
        {"access", op_access}};
    if (strcmp(op, "check") == 0) {
        json_t *res = op_check(ex, req, fd);
        return res ? res : ctl_error(-ENOMEM, "check: out of memory");
    }
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strcmp(op, ops[i].name) == 0) {
            json_t *res = ops[i].fn(ex, req);
            return res ? res : ctl_error(-ENOMEM, "%s: out of memory", op);
        }
    return NULL;
}
