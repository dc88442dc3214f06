/* control-ops.c: the operations of the control protocol (doc/control.md).
 *
 * Each op turns one request object into one response object through the
 * store API and the export registry (exports.h); control.c does the
 * sockets, framing and hello.  Ops run in the requesting client's thread.
 * rollback and delete hold the registry lock from their "no clients"
 * check to the store call, so no NBD client opens the object in between;
 * check runs the store's check in a worker thread (see op_check).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
        "s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:i, s:I, s:I}",
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
        (json_int_t)si->index_room, "index_need", (json_int_t)si->index_need);
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
static json_t *resolve(struct exports *ex, const char *name,
                       struct store_obj_info *out)
{
    int r = exports_resolve(ex->st, name, out);
    if (r < 0) {
        if (r == -ENOENT)
            return ctl_error(r, "%s: no such volume or snapshot \"%s\"",
                             ex->image, name);
        return ctl_store_error(r);
    }
    return NULL;
}

static json_t *obj_with_clients(struct exports *ex,
                                const struct store_obj_info *info)
{
    char names[512];
    pthread_mutex_lock(&ex->lock);
    int n = exports_count_locked(ex, info->uuid, names, sizeof names);
    pthread_mutex_unlock(&ex->lock);
    return ctl_obj_json(info, n, names);
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
    if ((e = resolve(ex, vol ? vol : "", &v)))
        return e;
    if (v.kind != STORE_VOLUME)
        return ctl_error(-EINVAL, "%s: \"%s\" is a snapshot, not a volume",
                         ex->image, v.name);
    char id[40];
    uuid_unparse_lower(v.uuid, id);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = store_snapshot(ex->st, id, name, &s);
    int64_t us = elapsed_us(&t0);
    if (r < 0)
        return ctl_store_error(r);
    return json_pack("{s:b, s:o, s:I}", "ok", 1, "object",
                     obj_with_clients(ex, &s), "elapsed_us", (json_int_t)us);
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
    if ((e = resolve(ex, snap, &s)))
        return e;
    if (s.kind != STORE_SNAPSHOT)
        return ctl_error(-EINVAL,
                         "%s: \"%s\" is a volume, not a snapshot (take a "
                         "snapshot of it first)",
                         ex->image, s.name);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = store_clone(ex->st, snap, name, &v);
    int64_t us = elapsed_us(&t0);
    if (r < 0)
        return ctl_store_error(r);
    return json_pack("{s:b, s:o, s:I}", "ok", 1, "object",
                     obj_with_clients(ex, &v), "elapsed_us", (json_int_t)us);
}

struct list_ctx {
    struct exports *ex;
    json_t *arr;
};

static int list_cb(const struct store_obj_info *info, void *arg)
{
    struct list_ctx *lc = arg;
    char names[512];
    int n = exports_count_locked(lc->ex, info->uuid, names, sizeof names);
    json_t *o = ctl_obj_json(info, n, names);
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

static json_t *op_delete(struct exports *ex, json_t *req)
{
    const char *name = arg_str(req, "name");
    int force = arg_bool(req, "force"), disc;
    struct store_obj_info o;
    json_t *e;
    if (!name)
        return ctl_error(-EINVAL, "delete: \"name\" (a string) is required");
    if ((e = resolve(ex, name, &o)))
        return e;
    e = with_no_clients(ex, &o, force, "deleting it would fail their I/O",
                        &disc);
    if (e)
        return e;
    json_t *obj = ctl_obj_json(&o, 0, NULL);
    char id[40];
    uuid_unparse_lower(o.uuid, id);
    int r = store_delete(ex->st, id);
    pthread_mutex_unlock(&ex->lock);
    if (r < 0) {
        json_decref(obj);
        return ctl_store_error(r);
    }
    return json_pack("{s:b, s:o, s:i}", "ok", 1, "object", obj, "disconnected",
                     disc);
}

static json_t *op_rename(struct exports *ex, json_t *req)
{
    const char *name = arg_str(req, "name");
    const char *newname = arg_str(req, "new_name");
    struct store_obj_info o;
    json_t *e;
    if (!name || !newname)
        return ctl_error(-EINVAL, "rename: \"name\" and \"new_name\" "
                                  "(strings) are required");
    if ((e = resolve(ex, name, &o)))
        return e;
    char id[40];
    uuid_unparse_lower(o.uuid, id);
    int r = store_rename(ex->st, id, newname);
    if (r < 0)
        return ctl_store_error(r);
    if ((e = resolve(ex, id, &o)))
        return e;
    return json_pack("{s:b, s:o}", "ok", 1, "object", obj_with_clients(ex, &o));
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
         * goes on meanwhile and we catch up (or give up) afterwards. */
        if (changed && !send_failed) {
            send_failed = send_progress(fd, done, total) < 0;
            sent_final = done == total;
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
        {"info", op_info},     {"diff", op_diff},     {"gc", op_gc}};
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
