/* control.c: the control socket of busesnap (protocol: doc/control.md).
 *
 * The socket, its life cycle (stale/live detection, 0600, removal) and
 * the framing; the operations are in control-ops.c.  One accept thread
 * and one thread per client, so no control client can stall disk I/O or
 * another control client.  Each newline-framed JSON request (at most
 * CTL_MAX_LINE bytes) gets exactly one response line.  Clients are served
 * only if their SO_PEERCRED uid is ours or root's, and only after a
 * matching hello.
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

#define CTL_IDLE_TIMEOUT 120  /* seconds without a complete request */
#define CTL_SEND_TIMEOUT 10   /* seconds to write one response */
#define CTL_KEEPALIVE_MS 1000 /* "still running" lines during a long op */

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

/* ---- responses ---- */

/* err is a negative errno.  Never NULL: the ops return the result of
 * resolve() (an error or NULL for success), so a NULL error would let an
 * op go on with an object that was never looked up (found by
 * tests/fuzz/fuzz-control: a truncated message cut a UTF-8 character in
 * two, which json_pack refuses).  Under memory exhaustion it returns
 * json_null(), a static value that ctl_send cannot send: the connection
 * closes. */
json_t *ctl_error(int err, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof msg) {
        /* Truncated: end before the UTF-8 character it may have cut. */
        size_t len = strlen(msg);
        while (len > 0 && ((unsigned char)msg[len - 1] & 0xc0) == 0x80)
            len--;
        if (len > 0 && (unsigned char)msg[len - 1] >= 0xc0)
            len--;
        msg[len] = '\0';
    }
    const char *name = strerrorname_np(-err);
    json_t *j = json_pack("{s:b, s:s, s:s}", "ok", 0, "error",
                          name ? name : "EIO", "message", msg);
    if (!j) /* an argument was not UTF-8, or memory ran out */
        j = json_pack("{s:b, s:s, s:s}", "ok", 0, "error", name ? name : "EIO",
                      "message",
                      "(message lost: not valid UTF-8, or out of memory)");
    return j ? j : json_null();
}

/* A store failure: its message already names the image and the object. */
json_t *ctl_store_error(int err)
{
    const char *m = store_errmsg();
    return ctl_error(err, "%s", m && *m ? m : strerror(-err));
}

/* Send j and a newline.  json_dumpb into a buffer sized by a first pass,
 * not json_dumps: jansson 2.14's json_dumps ignores a failed append of an
 * object key and goes on, so an allocation failure there sent a corrupted
 * line such as {"ok":true,":1,...} (tests/reliability/test-malloc-failure.sh);
 * json_dumpb's buffer writer cannot fail, so the line is whole or not sent. */
int ctl_send(int fd, json_t *j)
{
    const size_t flags = JSON_COMPACT | JSON_ENSURE_ASCII;
    size_t len = json_dumpb(j, NULL, 0, flags);
    if (len == 0)
        return -ENOMEM;
    char *s = malloc(len + 1);
    if (!s)
        return -ENOMEM;
    if (json_dumpb(j, s, len, flags) != len) {
        free(s);
        return -ENOMEM;
    }
    s[len++] = '\n';
    int r = 0;
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
    free(s);
    return r;
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

/* An op in a thread of its own, while the client's thread tells the client
 * every CTL_KEEPALIVE_MS that it is still running: {"progress":
 * {"elapsed_ms":N}} lines, which clients skip (doc/control.md), so that a
 * client can tell a long op (gc, a --force that waits for clients to go)
 * from a server that stopped answering, and time out on the latter only.
 * check sends its own progress lines (op_check) and runs here directly. */
struct op_job {
    struct exports *ex;
    const char *op;
    json_t *req, *res;
    int fd, done;
    pthread_mutex_t lock;
    pthread_cond_t cond;
};

static void *op_thread(void *arg)
{
    struct op_job *j = arg;
    json_t *res = ctl_op(j->ex, j->op, j->req, j->fd);
    pthread_mutex_lock(&j->lock);
    j->res = res;
    j->done = 1;
    pthread_cond_signal(&j->cond);
    pthread_mutex_unlock(&j->lock);
    return NULL;
}

static json_t *run_op(struct ctl_client *cl, const char *op, json_t *req)
{
    struct op_job j = {.ex = cl->c->ex, .op = op, .req = req, .fd = cl->fd};
    pthread_t th;
    struct timespec t0, until;
    if (strcmp(op, "check") == 0)
        return ctl_op(j.ex, op, req, cl->fd);
    pthread_mutex_init(&j.lock, NULL);
    pthread_cond_init(&j.cond, NULL);
    if (pthread_create(&th, NULL, op_thread, &j) != 0) {
        /* No thread to spare: run it here, without keepalives. */
        pthread_cond_destroy(&j.cond);
        pthread_mutex_destroy(&j.lock);
        return ctl_op(j.ex, op, req, cl->fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int send_failed = 0;
    pthread_mutex_lock(&j.lock);
    while (!j.done) {
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += CTL_KEEPALIVE_MS * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        if (pthread_cond_timedwait(&j.cond, &j.lock, &until) == 0 || j.done)
            continue;
        pthread_mutex_unlock(&j.lock);
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        json_int_t ms = (json_int_t)(t1.tv_sec - t0.tv_sec) * 1000 +
                        (t1.tv_nsec - t0.tv_nsec) / 1000000;
        json_t *k = json_pack("{s:{s:I}}", "progress", "elapsed_ms", ms);
        /* A client that stopped reading only loses its keepalives: the op
         * goes on and its response is tried at the end. */
        if (k && !send_failed)
            send_failed = ctl_send(cl->fd, k) < 0;
        json_decref(k);
        pthread_mutex_lock(&j.lock);
    }
    pthread_mutex_unlock(&j.lock);
    pthread_join(th, NULL);
    pthread_cond_destroy(&j.cond);
    pthread_mutex_destroy(&j.lock);
    return j.res;
}

static json_t *ctl_dispatch(struct ctl_client *cl, const char *line, size_t len)
{
    json_error_t jerr;
    json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *res;
    /* jansson reports some allocation failures as syntax errors (and some
     * with no text at all): a second parse tells a transient failure from
     * a malformed line. */
    if (!req)
        req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!req && (json_error_code(&jerr) == json_error_out_of_memory ||
                 jerr.text[0] == '\0'))
        return ctl_error(-ENOMEM, "out of memory");
    if (!req)
        return ctl_error(-EINVAL, "malformed request: %s (column %d)",
                         jerr.text, jerr.column);
    const char *op = json_string_value(json_object_get(req, "op"));
    if (!json_is_object(req) || !op) {
        res = ctl_error(-EINVAL, "malformed request: expected a JSON object "
                                 "with an \"op\" string");
    } else if (strcmp(op, "hello") == 0) {
        res = op_hello(cl, req);
    } else if (!cl->hello_done) {
        res = ctl_error(-EPROTO, "send {\"op\":\"hello\",\"version\":%d} first",
                        CTL_PROTOCOL_VERSION);
    } else {
        res = run_op(cl, op, req);
        if (!res)
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
