/* control.c: the control socket of busesnap (protocol: doc/control.md).
 *
 * One accept thread and one thread per client (check adds a worker), so
 * no control client can stall disk I/O or another control client.  Each
 * newline-framed JSON request (at most CTL_MAX_LINE bytes) gets exactly one
 * response line.  Clients are served only if their SO_PEERCRED uid is ours
 * or root's, and only after a matching hello.  Check-then-act operations
 * (rollback, delete) hold the export registry lock (exports.h) so that no
 * NBD client opens the object between the check and the act.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "control.h"

#define CTL_IDLE_TIMEOUT 120 /* seconds without a complete request */
#define CTL_SEND_TIMEOUT 10  /* seconds to write one response */
#define CTL_DIFF_MAX 1000000 /* extents in one diff response */
#define CTL_CHECK_MSGS 100   /* problem messages in one check response */

struct ctl_client {
    struct ctl_server *c;
    int fd;
    int hello_done;
    struct ctl_client *next;
};

struct ctl_server {
    int lfd;
    int wake[2];
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    ino_t ino;     /* of our socket file, to remove only ours */
    char uuid[40]; /* the image's, for hello (store_info is not O(1)) */
    struct exports *ex;
    pthread_t accept_thread;
    pthread_mutex_t lock; /* clients, nclients, stopping */
    pthread_cond_t cond;
    struct ctl_client *clients;
    int nclients;
    int stopping;
};

void ctl_default_path(char *buf, size_t len)
{
    const char *e = getenv("BSNAP_CONTROL");
    if (e && *e) {
        snprintf(buf, len, "%s", e);
        return;
    }
    e = getenv("XDG_RUNTIME_DIR");
    if (e && *e)
        snprintf(buf, len, "%s/busesnap.ctl", e);
    else if (geteuid() == 0)
        snprintf(buf, len, "/run/busesnap.ctl");
    else
        snprintf(buf, len, "/tmp/busesnap-%u.ctl", (unsigned)geteuid());
}

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
        "s:i, s:i}",
        "image", image, "uuid", id, "format_version",
        (json_int_t)si->format_version, "size", (json_int_t)si->size, "chunks",
        (json_int_t)si->chunks, "chunk_bytes", (json_int_t)si->chunk_bytes,
        "referenced_bytes", (json_int_t)si->referenced_bytes, "physical_bytes",
        (json_int_t)si->file_bytes, "dedup_ratio", ratio, "free_slots",
        (json_int_t)si->free_slots, "free_bytes",
        (json_int_t)(si->free_slots * STORE_BLOCK), "gc_pending",
        (json_int_t)si->gc_pending, "reclaimable_bytes",
        (json_int_t)(si->gc_pending * STORE_BLOCK), "volumes", (int)si->volumes,
        "snapshots", (int)si->snapshots);
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

/* ---- responses ---- */

static json_t *ctl_error(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* err is a negative errno. */
static json_t *ctl_error(int err, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *name = strerrorname_np(-err);
    return json_pack("{s:b, s:s, s:s}", "ok", 0, "error", name ? name : "EIO",
                     "message", msg);
}

/* A store failure: its message already names the image and the object. */
static json_t *ctl_store_error(int err)
{
    const char *m = store_errmsg();
    return ctl_error(err, "%s", m && *m ? m : strerror(-err));
}

static int ctl_send(int fd, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
    if (!s)
        return -ENOMEM;
    size_t len = strlen(s);
    int r = 0;
    /* json_dumps leaves no room for the newline: send it separately. */
    for (size_t off = 0; off < len;) {
        ssize_t n = send(fd, s + off, len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r = -errno;
            break;
        }
        off += (size_t)n;
    }
    if (r == 0 && send(fd, "\n", 1, MSG_NOSIGNAL) != 1)
        r = -EPIPE;
    free(s);
    return r;
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
static json_t *resolve(struct ctl_server *c, const char *name,
                       struct store_obj_info *out)
{
    int r = exports_resolve(c->ex->st, name, out);
    if (r < 0) {
        if (r == -ENOENT)
            return ctl_error(r, "%s: no such volume or snapshot \"%s\"",
                             c->ex->image, name);
        return ctl_store_error(r);
    }
    return NULL;
}

static json_t *obj_with_clients(struct ctl_server *c,
                                const struct store_obj_info *info)
{
    char names[512];
    pthread_mutex_lock(&c->ex->lock);
    int n = exports_count_locked(c->ex, info->uuid, names, sizeof names);
    pthread_mutex_unlock(&c->ex->lock);
    return ctl_obj_json(info, n, names);
}

/* ---- operations ---- */

static json_t *op_create(struct ctl_server *c, json_t *req)
{
    const char *name = arg_str(req, "name");
    const char *vol = arg_str(req, "volume");
    struct store_obj_info v, s;
    struct timespec t0;
    json_t *e;
    if (!name)
        return ctl_error(-EINVAL, "create: \"name\" (a string) is required");
    if ((e = resolve(c, vol ? vol : "", &v)))
        return e;
    if (v.kind != STORE_VOLUME)
        return ctl_error(-EINVAL, "%s: \"%s\" is a snapshot, not a volume",
                         c->ex->image, v.name);
    char id[40];
    uuid_unparse_lower(v.uuid, id);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = store_snapshot(c->ex->st, id, name, &s);
    int64_t us = elapsed_us(&t0);
    if (r < 0)
        return ctl_store_error(r);
    return json_pack("{s:b, s:o, s:I}", "ok", 1, "object",
                     obj_with_clients(c, &s), "elapsed_us", (json_int_t)us);
}

static json_t *op_clone(struct ctl_server *c, json_t *req)
{
    const char *snap = arg_str(req, "snapshot");
    const char *name = arg_str(req, "name");
    struct store_obj_info s, v;
    struct timespec t0;
    json_t *e;
    if (!snap || !name)
        return ctl_error(-EINVAL, "clone: \"snapshot\" and \"name\" (strings) "
                                  "are required");
    if ((e = resolve(c, snap, &s)))
        return e;
    if (s.kind != STORE_SNAPSHOT)
        return ctl_error(-EINVAL,
                         "%s: \"%s\" is a volume, not a snapshot (take a "
                         "snapshot of it first)",
                         c->ex->image, s.name);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = store_clone(c->ex->st, snap, name, &v);
    int64_t us = elapsed_us(&t0);
    if (r < 0)
        return ctl_store_error(r);
    return json_pack("{s:b, s:o, s:I}", "ok", 1, "object",
                     obj_with_clients(c, &v), "elapsed_us", (json_int_t)us);
}

struct list_ctx {
    struct ctl_server *c;
    json_t *arr;
};

static int list_cb(const struct store_obj_info *info, void *arg)
{
    struct list_ctx *lc = arg;
    char names[512];
    int n = exports_count_locked(lc->c->ex, info->uuid, names, sizeof names);
    json_t *o = ctl_obj_json(info, n, names);
    if (!o)
        return -ENOMEM;
    json_array_append_new(lc->arr, o);
    return 0;
}

static json_t *op_list(struct ctl_server *c, json_t *req)
{
    struct list_ctx lc = {c, json_array()};
    if (!lc.arr)
        return ctl_error(-ENOMEM, "list: out of memory");
    pthread_mutex_lock(&c->ex->lock);
    int r = store_list(c->ex->st, list_cb, &lc);
    pthread_mutex_unlock(&c->ex->lock);
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
static json_t *with_no_clients(struct ctl_server *c,
                               const struct store_obj_info *obj, int force,
                               const char *why, int *disconnected)
{
    char names[512];
    *disconnected = 0;
    pthread_mutex_lock(&c->ex->lock);
    int n = exports_count_locked(c->ex, obj->uuid, names, sizeof names);
    if (n > 0 && force) {
        pthread_mutex_unlock(&c->ex->lock);
        int r = exports_disconnect(c->ex, obj->uuid);
        if (r < 0)
            return ctl_error(r, "%s: \"%s\": cannot disconnect its clients",
                             c->ex->image, obj->name);
        *disconnected = r;
        pthread_mutex_lock(&c->ex->lock);
        n = exports_count_locked(c->ex, obj->uuid, names, sizeof names);
    }
    if (n > 0) {
        pthread_mutex_unlock(&c->ex->lock);
        return ctl_error(
            -EBUSY,
            "%s: %s \"%s\" is served to %d NBD client%s (export%s "
            "%s); %s; disconnect %s or use --force",
            c->ex->image, obj->kind == STORE_VOLUME ? "volume" : "snapshot",
            obj->name, n, n == 1 ? "" : "s", strchr(names, ',') ? "s" : "",
            names, why, n == 1 ? "it" : "them");
    }
    return NULL; /* lock held */
}

static json_t *op_rollback(struct ctl_server *c, json_t *req)
{
    const char *snap = arg_str(req, "snapshot");
    const char *vol = arg_str(req, "volume");
    int force = arg_bool(req, "force"), disc;
    struct store_obj_info s, v;
    json_t *e;
    if (!snap)
        return ctl_error(-EINVAL, "rollback: \"snapshot\" (a string) is "
                                  "required");
    if ((e = resolve(c, snap, &s)))
        return e;
    if (s.kind != STORE_SNAPSHOT)
        return ctl_error(-EINVAL, "%s: \"%s\" is a volume, not a snapshot",
                         c->ex->image, s.name);
    if (!vol) {
        if (uuid_is_null(s.parent_uuid))
            return ctl_error(-ENOENT,
                             "%s: the volume snapshot \"%s\" was taken of is "
                             "gone; name the volume to roll back",
                             c->ex->image, s.name);
        char pid[40];
        uuid_unparse_lower(s.parent_uuid, pid);
        if ((e = resolve(c, pid, &v)))
            return e;
    } else if ((e = resolve(c, vol, &v))) {
        return e;
    }
    if (v.kind != STORE_VOLUME)
        return ctl_error(-EINVAL, "%s: \"%s\" is a snapshot, not a volume",
                         c->ex->image, v.name);
    e = with_no_clients(c, &v, force,
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
    int r = store_rollback(c->ex->st, vid, sid);
    int64_t us = elapsed_us(&t0);
    pthread_mutex_unlock(&c->ex->lock);
    if (r < 0)
        return ctl_store_error(r);
    return json_pack("{s:b, s:s, s:s, s:i, s:I}", "ok", 1, "volume", v.name,
                     "snapshot", s.name, "disconnected", disc, "elapsed_us",
                     (json_int_t)us);
}

static json_t *op_delete(struct ctl_server *c, json_t *req)
{
    const char *name = arg_str(req, "name");
    int force = arg_bool(req, "force"), disc;
    struct store_obj_info o;
    json_t *e;
    if (!name)
        return ctl_error(-EINVAL, "delete: \"name\" (a string) is required");
    if ((e = resolve(c, name, &o)))
        return e;
    e = with_no_clients(c, &o, force, "deleting it would fail their I/O",
                        &disc);
    if (e)
        return e;
    json_t *obj = ctl_obj_json(&o, 0, NULL);
    char id[40];
    uuid_unparse_lower(o.uuid, id);
    int r = store_delete(c->ex->st, id);
    pthread_mutex_unlock(&c->ex->lock);
    if (r < 0) {
        json_decref(obj);
        return ctl_store_error(r);
    }
    return json_pack("{s:b, s:o, s:i}", "ok", 1, "object", obj, "disconnected",
                     disc);
}

static json_t *op_rename(struct ctl_server *c, json_t *req)
{
    const char *name = arg_str(req, "name");
    const char *newname = arg_str(req, "new_name");
    struct store_obj_info o;
    json_t *e;
    if (!name || !newname)
        return ctl_error(-EINVAL, "rename: \"name\" and \"new_name\" "
                                  "(strings) are required");
    if ((e = resolve(c, name, &o)))
        return e;
    char id[40];
    uuid_unparse_lower(o.uuid, id);
    int r = store_rename(c->ex->st, id, newname);
    if (r < 0)
        return ctl_store_error(r);
    if ((e = resolve(c, id, &o)))
        return e;
    return json_pack("{s:b, s:o}", "ok", 1, "object", obj_with_clients(c, &o));
}

static json_t *op_info(struct ctl_server *c, json_t *req)
{
    struct store_info si;
    int r = store_info(c->ex->st, &si);
    if (r < 0)
        return ctl_store_error(r);
    return json_pack("{s:b, s:o}", "ok", 1, "info",
                     ctl_info_json(c->ex->image, &si));
}

static json_t *op_gc(struct ctl_server *c, json_t *req)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = store_gc(c->ex->st);
    int64_t us = elapsed_us(&t0);
    if (r < 0)
        return ctl_store_error(r);
    json_t *res = op_info(c, req);
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

static json_t *op_check(struct ctl_server *c, json_t *req, int fd)
{
    struct check_job cj = {.st = c->ex->st, .msgs = json_array()};
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

static json_t *op_diff(struct ctl_server *c, json_t *req)
{
    const char *from = arg_str(req, "from");
    const char *to = arg_str(req, "to");
    struct store_obj_info f, t;
    json_t *e;
    if (!from || !to)
        return ctl_error(-EINVAL, "diff: \"from\" and \"to\" (strings) are "
                                  "required");
    if ((e = resolve(c, from, &f)) || (e = resolve(c, to, &t)))
        return e;
    char fid[40], tid[40];
    uuid_unparse_lower(f.uuid, fid);
    uuid_unparse_lower(t.uuid, tid);
    struct diff_ctx dc = {json_array(), 0, 0, 0, 0};
    int r = store_diff(c->ex->st, fid, tid, diff_cb, &dc);
    if (r < 0) {
        json_decref(dc.arr);
        return ctl_store_error(r);
    }
    diff_emit(&dc);
    return json_pack("{s:b, s:s, s:s, s:I, s:b, s:o}", "ok", 1, "from", f.name,
                     "to", t.name, "changed_bytes", (json_int_t)dc.total,
                     "truncated", dc.truncated, "extents", dc.arr);
}

static json_t *op_hello(struct ctl_client *cl, json_t *req)
{
    json_t *v = json_object_get(req, "version");
    if (!json_is_integer(v))
        return ctl_error(-EINVAL, "hello: \"version\" (an integer) is "
                                  "required");
    if (json_integer_value(v) != CTL_PROTOCOL_VERSION)
        return ctl_error(-EPROTO,
                         "control protocol version mismatch: the client "
                         "speaks version %lld, this server speaks version %d",
                         (long long)json_integer_value(v),
                         CTL_PROTOCOL_VERSION);
    cl->hello_done = 1;
    return json_pack("{s:b, s:i, s:s, s:s}", "ok", 1, "version",
                     CTL_PROTOCOL_VERSION, "image", cl->c->ex->image, "uuid",
                     cl->c->uuid);
}

static json_t *ctl_dispatch(struct ctl_client *cl, const char *line, size_t len)
{
    json_error_t jerr;
    json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *res;
    if (!req)
        return ctl_error(-EINVAL, "malformed request: %s (column %d)",
                         jerr.text, jerr.column);
    const char *op = arg_str(req, "op");
    if (!json_is_object(req) || !op) {
        res = ctl_error(-EINVAL, "malformed request: expected a JSON object "
                                 "with an \"op\" string");
    } else if (strcmp(op, "hello") == 0) {
        res = op_hello(cl, req);
    } else if (!cl->hello_done) {
        res = ctl_error(-EPROTO, "send {\"op\":\"hello\",\"version\":%d} first",
                        CTL_PROTOCOL_VERSION);
    } else {
        struct ctl_server *c = cl->c;
        if (strcmp(op, "create") == 0)
            res = op_create(c, req);
        else if (strcmp(op, "list") == 0)
            res = op_list(c, req);
        else if (strcmp(op, "rollback") == 0)
            res = op_rollback(c, req);
        else if (strcmp(op, "clone") == 0)
            res = op_clone(c, req);
        else if (strcmp(op, "delete") == 0)
            res = op_delete(c, req);
        else if (strcmp(op, "rename") == 0)
            res = op_rename(c, req);
        else if (strcmp(op, "info") == 0)
            res = op_info(c, req);
        else if (strcmp(op, "check") == 0)
            res = op_check(c, req, cl->fd);
        else if (strcmp(op, "diff") == 0)
            res = op_diff(c, req);
        else if (strcmp(op, "gc") == 0)
            res = op_gc(c, req);
        else
            res = ctl_error(-ENOSYS, "unknown op \"%s\"", op);
    }
    json_decref(req);
    return res ? res : ctl_error(-ENOMEM, "out of memory");
}

/* ---- connections ---- */

static void client_done(struct ctl_client *cl)
{
    struct ctl_server *c = cl->c;
    pthread_mutex_lock(&c->lock);
    for (struct ctl_client **pp = &c->clients; *pp; pp = &(*pp)->next)
        if (*pp == cl) {
            *pp = cl->next;
            break;
        }
    c->nclients--;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    close(cl->fd);
    free(cl);
}

static void *client_thread(void *arg)
{
    struct ctl_client *cl = arg;
    struct ctl_server *c = cl->c;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    json_t *j;

    if (getsockopt(cl->fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 ||
        (cred.uid != 0 && cred.uid != geteuid())) {
        j = ctl_error(-EACCES,
                      "%s: uid %d may not control this server (it runs as "
                      "uid %u)",
                      c->path, clen == sizeof cred ? (int)cred.uid : -1,
                      (unsigned)geteuid());
        ctl_send(cl->fd, j);
        json_decref(j);
        client_done(cl);
        return NULL;
    }
    j = json_pack("{s:s, s:i}", "busesnap", "control", "version",
                  CTL_PROTOCOL_VERSION);
    int r = ctl_send(cl->fd, j);
    json_decref(j);

    char *buf = malloc(CTL_MAX_LINE);
    size_t have = 0;
    while (buf && r == 0) {
        char *nl = memchr(buf, '\n', have);
        if (nl) {
            size_t len = (size_t)(nl - buf);
            if (len && buf[len - 1] == '\r')
                len--;
            int blank = 1;
            for (size_t i = 0; i < len; i++)
                if (buf[i] != ' ' && buf[i] != '\t')
                    blank = 0;
            if (!blank) {
                j = ctl_dispatch(cl, buf, len);
                r = ctl_send(cl->fd, j);
                json_decref(j);
            }
            have -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, have);
            continue;
        }
        if (have == CTL_MAX_LINE) {
            j = ctl_error(-E2BIG, "request longer than %d bytes; closing",
                          CTL_MAX_LINE);
            ctl_send(cl->fd, j);
            json_decref(j);
            break;
        }
        ssize_t n = recv(cl->fd, buf + have, CTL_MAX_LINE - have, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            j = ctl_error(-ETIMEDOUT, "no complete request in %d s; closing",
                          CTL_IDLE_TIMEOUT);
            ctl_send(cl->fd, j);
            json_decref(j);
            break;
        }
        if (n <= 0)
            break;
        have += (size_t)n;
    }
    free(buf);
    client_done(cl);
    return NULL;
}

static void *accept_thread(void *arg)
{
    struct ctl_server *c = arg;
    for (;;) {
        struct pollfd p[2] = {{c->lfd, POLLIN, 0}, {c->wake[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        int fd = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        struct timeval rt = {CTL_IDLE_TIMEOUT, 0}, st = {CTL_SEND_TIMEOUT, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof rt);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &st, sizeof st);
        struct ctl_client *cl = calloc(1, sizeof *cl);
        if (!cl) {
            close(fd);
            continue;
        }
        cl->c = c;
        cl->fd = fd;
        pthread_mutex_lock(&c->lock);
        cl->next = c->clients;
        c->clients = cl;
        c->nclients++;
        pthread_mutex_unlock(&c->lock);
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &attr, client_thread, cl) != 0)
            client_done(cl);
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

/* Is a server listening on path?  1 yes, 0 no (stale), -errno. */
static int ctl_probe(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    close(fd);
    if (r == 0)
        return 1;
    if (e == ECONNREFUSED || e == ENOENT)
        return 0;
    return -e;
}

int ctl_prepare(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat sb;
    int r;

    if (strlen(path) >= sizeof sa.sun_path) {
        fprintf(stderr, "busesnap: control socket %s: path too long\n", path);
        return -ENAMETOOLONG;
    }
    if (lstat(path, &sb) == 0) {
        if (!S_ISSOCK(sb.st_mode)) {
            fprintf(stderr,
                    "busesnap: control socket %s: exists and is not a "
                    "socket\n",
                    path);
            return -EEXIST;
        }
        r = ctl_probe(path);
        if (r == 1) {
            fprintf(stderr,
                    "busesnap: control socket %s: another server is "
                    "listening on it (use --control to choose another "
                    "path)\n",
                    path);
            return -EADDRINUSE;
        }
        if (r < 0) {
            fprintf(stderr, "busesnap: control socket %s: %s\n", path,
                    strerror(-r));
            return r;
        }
        /* Stale: left by a server that died. */
        if (unlink(path) < 0 && errno != ENOENT) {
            r = -errno;
            fprintf(stderr,
                    "busesnap: control socket %s: cannot remove the stale "
                    "socket: %s\n",
                    path, strerror(-r));
            return r;
        }
    }
    return 0;
}

int ctl_start(const char *path, struct exports *ex, struct ctl_server **out)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat sb;
    int r = ctl_prepare(path);
    if (r < 0)
        return r;

    struct ctl_server *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    snprintf(c->path, sizeof c->path, "%s", path);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    c->ex = ex;
    c->wake[0] = c->wake[1] = -1;
    struct store_info si;
    if (store_info(ex->st, &si) == 0)
        uuid_unparse_lower(si.uuid, c->uuid);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    c->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->lfd < 0)
        goto fail_errno;
    /* Created 0600 from the start: no window where others may connect. */
    mode_t old = umask(0177);
    r = bind(c->lfd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (r < 0 || chmod(path, 0600) < 0 || lstat(path, &sb) < 0)
        goto fail_errno;
    c->ino = sb.st_ino;
    if (listen(c->lfd, 64) < 0 || pipe2(c->wake, O_CLOEXEC) < 0)
        goto fail_errno;
    r = pthread_create(&c->accept_thread, NULL, accept_thread, c);
    if (r != 0) {
        errno = r;
        goto fail_errno;
    }
    *out = c;
    return 0;

fail_errno:
    r = -errno;
    fprintf(stderr, "busesnap: control socket %s: %s\n", path, strerror(-r));
    if (c->lfd >= 0) {
        close(c->lfd);
        if (c->ino)
            unlink(path);
    }
    if (c->wake[0] >= 0) {
        close(c->wake[0]);
        close(c->wake[1]);
    }
    free(c);
    return r;
}

void ctl_stop(struct ctl_server *c)
{
    struct stat sb;
    if (!c)
        return;
    if (write(c->wake[1], "x", 1) < 0)
        perror("busesnap: control: wake");
    pthread_join(c->accept_thread, NULL);
    close(c->lfd);
    if (lstat(c->path, &sb) == 0 && sb.st_ino == c->ino)
        unlink(c->path);
    /* Wake every client blocked in recv/send; an operation in progress
     * finishes first. */
    pthread_mutex_lock(&c->lock);
    c->stopping = 1;
    for (struct ctl_client *cl = c->clients; cl; cl = cl->next)
        shutdown(cl->fd, SHUT_RDWR);
    while (c->nclients > 0)
        pthread_cond_wait(&c->cond, &c->lock);
    pthread_mutex_unlock(&c->lock);
    close(c->wake[0]);
    close(c->wake[1]);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    free(c);
}
