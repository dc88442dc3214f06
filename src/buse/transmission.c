/* transmission.c: the NBD transmission phase, server side.
 *
 * The nbdkit model: per connection, N worker threads each take the receive
 * lock, read one request header (and a WRITE's payload), release the lock,
 * call the callback, then take the send lock and write the whole reply in
 * one sendmsg.  Requests are thus pipelined and replies may leave out of
 * order, but one reply is never interleaved with another.  Each worker
 * keeps a buffer of up to BUF_KEEP bytes; a bigger one (up to max_block)
 * comes from the connection's pool of big buffers for one request and goes
 * back to it once the reply is sent.  Big buffers, in use or pooled, never
 * exceed the connection's budget (CONN_BUDGET): a client that pipelines
 * large reads and never reads the replies holds at most that, not threads
 * x max_block, and stalls only itself (its other workers wait for room).
 * With NBD_OPT_EXTENDED_HEADERS requests and replies carry 64-bit lengths
 * and every reply is a chunk.  Anything a client can send is checked here
 * before a callback sees it: callbacks only get in-range, well-formed
 * requests.  A bad magic, a short header or a failed send ends this
 * connection only.  Under TLS the same code runs over the session
 * (internal.h's conn_* I/O): the locks that keep one reader and one
 * writer also keep GnuTLS's rule of one reading and one writing thread.
 */
#define BUSE_INTERNAL
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "internal.h"
#include "protocol.h"

#define ZERO_CHUNK (1u << 20)   /* emulated WRITE_ZEROES / CACHE step */
#define BUF_KEEP (1u << 20)     /* a worker keeps buffers up to this size */
#define CONN_BUDGET (64u << 20) /* bigger buffers of one connection */

#define POOL_MAX (2 * (NBD_MAX_PAYLOAD / BUF_KEEP))

/* A connection's big buffers (all under lock): used counts the bytes of
 * those mapped, in a worker's hands or in the pool. */
struct budget {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    size_t used, max;
    struct {
        void *p;
        size_t len;
    } pool[POOL_MAX];
    unsigned npool;
};

struct worker {
    struct buse_conn *conn;
    struct budget *budget;
    pthread_t thread;
    unsigned char *buf;
    size_t cap;
    int mapped; /* buf is a big buffer: mmap'd, charged to the budget */
    struct buse_extent *ext; /* block status, as the callback gave it */
    unsigned char *enc;      /* block status, encoded for the wire */
};

struct request {
    uint16_t flags, type;
    uint64_t cookie, offset;
    uint64_t len; /* 32 bits on the wire unless extended headers */
};

static const char *cmd_name(uint16_t t)
{
    static const char *n[] = {"READ", "WRITE", "DISC",         "FLUSH",
                              "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"};
    return t < sizeof n / sizeof *n ? n[t] : "UNKNOWN";
}

static uint32_t errno_to_nbd(int err)
{
    switch (err) {
    case 0:
        return 0;
    case EPERM:
    case EROFS:
        return NBD_EPERM;
    case ENOMEM:
        return NBD_ENOMEM;
    case EINVAL:
        return NBD_EINVAL;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return NBD_ENOSPC;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case ENOTSUP:
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    default:
        return NBD_EIO;
    }
}

/* Put a worker's big buffer back in the pool (after its reply is sent, or
 * when the worker stops). */
static void release(struct worker *w)
{
    struct budget *b = w->budget;
    if (!w->mapped)
        return;
    pthread_mutex_lock(&b->lock);
    if (b->npool < POOL_MAX) {
        b->pool[b->npool].p = w->buf;
        b->pool[b->npool++].len = w->cap;
    } else {
        munmap(w->buf, w->cap);
        b->used -= w->cap;
    }
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    w->buf = NULL;
    w->cap = 0;
    w->mapped = 0;
}

/* Make w->buf hold len bytes.  Above BUF_KEEP: a pooled buffer that is big
 * enough, else a new mapping if the budget has room (unmapping pooled ones
 * to make it), else wait until another worker's reply is sent. */
static int grow(struct worker *w, size_t len)
{
    struct budget *b = w->budget;
    if (len <= w->cap)
        return 0;
    if (len <= BUF_KEEP) {
        void *p = realloc(w->buf, len);
        if (!p)
            return -ENOMEM;
        w->buf = p;
        w->cap = len;
        return 0;
    }
    release(w); /* never two big buffers in one worker's hands */
    pthread_mutex_lock(&b->lock);
    for (;;) {
        unsigned best = b->npool;
        for (unsigned i = 0; i < b->npool; i++)
            if (b->pool[i].len >= len &&
                (best == b->npool || b->pool[i].len < b->pool[best].len))
                best = i;
        if (best < b->npool) {
            free(w->buf);
            w->buf = b->pool[best].p;
            w->cap = b->pool[best].len;
            w->mapped = 1;
            b->pool[best] = b->pool[--b->npool];
            pthread_mutex_unlock(&b->lock);
            return 0;
        }
        if (b->used == 0 || b->used + len <= b->max)
            break;
        if (b->npool > 0) { /* too small for this request: make room */
            b->npool--;
            munmap(b->pool[b->npool].p, b->pool[b->npool].len);
            b->used -= b->pool[b->npool].len;
            continue;
        }
        pthread_cond_wait(&b->cond, &b->lock);
    }
    b->used += len;
    pthread_mutex_unlock(&b->lock);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        pthread_mutex_lock(&b->lock);
        b->used -= len;
        pthread_cond_broadcast(&b->cond);
        pthread_mutex_unlock(&b->lock);
        return -ENOMEM;
    }
    free(w->buf);
    w->buf = p;
    w->cap = len;
    w->mapped = 1;
    return 0;
}

/* Which command flags each command accepts, given what was advertised. */
static uint16_t allowed_flags(const struct buse_conn *c, uint16_t type)
{
    uint16_t fua = (c->tflags & NBD_FLAG_SEND_FUA) ? NBD_CMD_FLAG_FUA : 0;
    switch (type) {
    case NBD_CMD_WRITE:
    case NBD_CMD_TRIM:
        return fua;
    case NBD_CMD_WRITE_ZEROES:
        return fua | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS:
        return NBD_CMD_FLAG_REQ_ONE;
    case NBD_CMD_READ:
        return (c->tflags & NBD_FLAG_SEND_DF) ? NBD_CMD_FLAG_DF : 0;
    default:
        return 0;
    }
}

/* Check a request; 0 or the errno for the reply. */
static int check(const struct buse_conn *c, const struct request *rq,
                 uint32_t max)
{
    const struct buse_operations *o = &c->srv->ops;
    int writes = rq->type == NBD_CMD_WRITE || rq->type == NBD_CMD_TRIM ||
                 rq->type == NBD_CMD_WRITE_ZEROES;
    if (rq->type > NBD_CMD_BLOCK_STATUS || rq->type == NBD_CMD_DISC)
        return EINVAL;
    /* A read-only export refuses every write-type command with EPERM,
     * whatever its flags (FUA is not advertised there, so a flag check
     * first would say EINVAL to some of them). */
    if (writes && (c->tflags & NBD_FLAG_READ_ONLY))
        return EPERM;
    if (rq->flags & ~allowed_flags(c, rq->type))
        return EINVAL;
    if (rq->type == NBD_CMD_FLUSH)
        return o->flush ? 0 : EINVAL;
    if (rq->type == NBD_CMD_TRIM && !o->trim && !o->trim_flags)
        return EINVAL;
    if (rq->type == NBD_CMD_BLOCK_STATUS && !c->meta_base_allocation)
        return EINVAL;
    if ((rq->type == NBD_CMD_READ || rq->type == NBD_CMD_WRITE) &&
        rq->len > max)
        return EOVERFLOW;
    if (rq->len == 0)
        return EINVAL;
    if (rq->offset > c->exp.size || rq->len > c->exp.size - rq->offset)
        return rq->type == NBD_CMD_WRITE || rq->type == NBD_CMD_WRITE_ZEROES
                   ? ENOSPC
                   : EINVAL;
    if ((rq->flags & NBD_CMD_FLAG_FAST_ZERO) && !o->write_zeroes)
        return ENOTSUP;
    return 0;
}

static int do_write(struct buse_conn *c, const void *buf, uint32_t len,
                    uint64_t off, int fua)
{
    const struct buse_operations *o = &c->srv->ops;
    void *h = c->exp.handle;
    int r;
    if (o->write_flags)
        return o->write_flags(buf, len, off, fua ? BUSE_FLAG_FUA : 0, h);
    r = o->write(buf, len, off, h);
    if (r == 0 && fua)
        r = o->flush(h);
    return r;
}

/* Run the callback for a checked request.  Returns 0 or -errno. */
static int run(struct worker *w, const struct request *rq)
{
    struct buse_conn *c = w->conn;
    const struct buse_operations *o = &c->srv->ops;
    void *h = c->exp.handle;
    int fua = !!(rq->flags & NBD_CMD_FLAG_FUA);
    int r = 0;

    switch (rq->type) {
    case NBD_CMD_READ:
        return o->read(w->buf, (uint32_t)rq->len, rq->offset, h);
    case NBD_CMD_WRITE:
        return do_write(c, w->buf, (uint32_t)rq->len, rq->offset, fua);
    case NBD_CMD_FLUSH:
        return o->flush(h);
    case NBD_CMD_TRIM:
        if (o->trim_flags)
            return o->trim_flags(rq->offset, rq->len, fua ? BUSE_FLAG_FUA : 0,
                                 h);
        /* BUSE's trim takes 32-bit lengths; extended headers allow more. */
        for (uint64_t done = 0; done < rq->len && r == 0;) {
            uint64_t n = rq->len - done;
            uint32_t step = n > 0x80000000u ? 0x80000000u : (uint32_t)n;
            r = o->trim(rq->offset + done, step, h);
            done += step;
        }
        if (r == 0 && fua)
            r = o->flush(h);
        return r;
    case NBD_CMD_WRITE_ZEROES: {
        if (o->write_zeroes) {
            uint32_t f =
                (fua ? BUSE_FLAG_FUA : 0) |
                ((rq->flags & NBD_CMD_FLAG_NO_HOLE) ? BUSE_FLAG_NO_HOLE : 0) |
                ((rq->flags & NBD_CMD_FLAG_FAST_ZERO) ? BUSE_FLAG_FAST_ZERO
                                                      : 0);
            return o->write_zeroes(rq->offset, rq->len, f, h);
        }
        uint32_t step = rq->len < ZERO_CHUNK ? (uint32_t)rq->len : ZERO_CHUNK;
        int each_fua = fua && !o->flush; /* only write_flags can do FUA */
        if ((r = grow(w, step)) < 0)
            return r;
        memset(w->buf, 0, step);
        for (uint64_t done = 0; done < rq->len && r == 0; done += step) {
            uint32_t n =
                rq->len - done < step ? (uint32_t)(rq->len - done) : step;
            r = do_write(c, w->buf, n, rq->offset + done, each_fua);
        }
        if (r == 0 && fua && o->flush)
            r = o->flush(h);
        return r;
    }
    case NBD_CMD_CACHE: {
        if (o->cache)
            return o->cache(rq->offset, rq->len, h);
        uint32_t step = rq->len < ZERO_CHUNK ? (uint32_t)rq->len : ZERO_CHUNK;
        if ((r = grow(w, step)) < 0)
            return r;
        for (uint64_t done = 0; done < rq->len && r == 0; done += step) {
            uint32_t n =
                rq->len - done < step ? (uint32_t)(rq->len - done) : step;
            r = o->read(w->buf, n, rq->offset + done, h);
        }
        return r;
    }
    case NBD_CMD_BLOCK_STATUS: {
        struct buse_extents ex = {
            .next = rq->offset,
            .end = rq->offset + rq->len,
            .max = (rq->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : NBD_MAX_EXTENTS,
        };
        if (!w->ext && !(w->ext = malloc(NBD_MAX_EXTENTS * sizeof *w->ext)))
            return -ENOMEM;
        if (!w->enc && !(w->enc = malloc(NBD_MAX_EXTENTS * 16)))
            return -ENOMEM;
        ex.v = w->ext;
        if (o->block_status) {
            r = o->block_status(rq->offset, rq->len, &ex, h);
            if (r == -E2BIG)
                r = 0;
        } else {
            buse_add_extent(&ex, rq->offset, rq->len, 0);
        }
        if (r == 0 && ex.n == 0) {
            buse_err("block_status: callback returned no extent at %llu",
                     (unsigned long long)rq->offset);
            r = -EIO;
        }
        return r < 0 ? r : (int)ex.n;
    }
    }
    return -EINVAL;
}

/* Encode the extents for the wire: 32-bit (length, flags) pairs, or with
 * extended headers a count and 64-bit pairs.  Returns the payload size
 * after the context id. */
static size_t encode_extents(struct worker *w, unsigned n, int extended)
{
    unsigned char *p = w->enc;
    if (extended) {
        buse_put32(p, n);
        p += 4;
    }
    for (unsigned i = 0; i < n; i++) {
        if (extended) {
            buse_put64(p, w->ext[i].length);
            buse_put64(p + 8, w->ext[i].flags);
            p += 16;
        } else {
            buse_put32(p, (uint32_t)w->ext[i].length);
            buse_put32(p + 4, w->ext[i].flags);
            p += 8;
        }
    }
    return (size_t)(p - w->enc);
}

static int send_reply(struct worker *w, const struct request *rq, int err,
                      unsigned nextents)
{
    struct buse_conn *c = w->conn;
    unsigned char h[48];
    struct iovec iov[2];
    int n = 1, r;
    uint32_t nerr = errno_to_nbd(err);
    uint16_t type = NBD_REPLY_TYPE_NONE;
    size_t hlen, plen = 0; /* header, and payload bytes in h after it */
    uint64_t dlen = 0;     /* payload bytes in iov[1] */

    if (!c->structured || (!c->extended && rq->type != NBD_CMD_READ &&
                           rq->type != NBD_CMD_BLOCK_STATUS)) {
        /* Simple reply: always without structured replies, and for
         * commands without a payload when only structured replies were
         * negotiated (the spec allows it; extended headers do not). */
        buse_put32(h, NBD_SIMPLE_REPLY_MAGIC);
        buse_put32(h + 4, nerr);
        buse_put64(h + 8, rq->cookie);
        iov[0] = (struct iovec){h, 16};
        if (nerr == 0 && rq->type == NBD_CMD_READ) {
            iov[1] = (struct iovec){w->buf, (size_t)rq->len};
            n = 2;
        }
        goto send;
    }

    hlen = c->extended ? 32 : 20;
    if (nerr) {
        type = NBD_REPLY_TYPE_ERROR;
        buse_put32(h + hlen, nerr);
        buse_put16(h + hlen + 4, 0); /* no message */
        plen = 6;
    } else if (rq->type == NBD_CMD_READ) {
        type = NBD_REPLY_TYPE_OFFSET_DATA;
        buse_put64(h + hlen, rq->offset);
        plen = 8;
        iov[1] = (struct iovec){w->buf, (size_t)rq->len};
        dlen = rq->len;
        n = 2;
    } else if (rq->type == NBD_CMD_BLOCK_STATUS) {
        type = c->extended ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT
                           : NBD_REPLY_TYPE_BLOCK_STATUS;
        buse_put32(h + hlen, NBD_CONTEXT_ID_BASE_ALLOCATION);
        plen = 4;
        dlen = encode_extents(w, nextents, c->extended);
        iov[1] = (struct iovec){w->enc, (size_t)dlen};
        n = 2;
    }
    buse_put16(h + 4, NBD_REPLY_FLAG_DONE);
    buse_put16(h + 6, type);
    buse_put64(h + 8, rq->cookie);
    if (c->extended) {
        buse_put32(h, NBD_EXTENDED_REPLY_MAGIC);
        buse_put64(h + 16, rq->offset);
        buse_put64(h + 24, plen + dlen);
    } else {
        buse_put32(h, NBD_STRUCTURED_REPLY_MAGIC);
        buse_put32(h + 16, (uint32_t)(plen + dlen));
    }
    iov[0] = (struct iovec){h, hlen + plen};

send:
    pthread_mutex_lock(&c->send_lock);
    r = buse_conn_writev(c, iov, n);
    pthread_mutex_unlock(&c->send_lock);
    return r;
}

/* Read one request under the receive lock.  Returns 1 to process it (with
 * *early set to an errno when the request was refused before its payload
 * was read), 2 for NBD_CMD_DISC, 0 to stop this worker. */
static int receive(struct worker *w, struct request *rq, int *early)
{
    struct buse_conn *c = w->conn;
    unsigned char h[NBD_EXTENDED_REQUEST_SIZE];
    size_t hsize = c->extended ? NBD_EXTENDED_REQUEST_SIZE : NBD_REQUEST_SIZE;
    uint32_t magic =
        c->extended ? NBD_EXTENDED_REQUEST_MAGIC : NBD_REQUEST_MAGIC;
    uint32_t max = buse_max_payload(c->srv);
    int r;

    *early = 0;
    if (atomic_load(&c->dead))
        return 0;
    if ((r = buse_conn_read(c, h, hsize)) < 0) {
        if (r != -ECONNRESET || buse_verbose)
            buse_debug("connection closed: %s", strerror(-r));
        return 0;
    }
    if (buse_get32(h) != magic) {
        buse_err("client: bad request magic 0x%08x, closing the connection",
                 buse_get32(h));
        return 0;
    }
    rq->flags = buse_get16(h + 4);
    rq->type = buse_get16(h + 6);
    rq->cookie = buse_get64(h + 8);
    rq->offset = buse_get64(h + 16);
    rq->len = c->extended ? buse_get64(h + 24) : buse_get32(h + 24);
    if (buse_verbose)
        buse_debug("request %s flags 0x%x offset %llu length %llu",
                   cmd_name(rq->type), rq->flags,
                   (unsigned long long)rq->offset, (unsigned long long)rq->len);
    if (rq->type == NBD_CMD_DISC)
        return 2;
    if (c->extended && rq->type != NBD_CMD_WRITE &&
        (rq->flags & NBD_CMD_FLAG_PAYLOAD_LEN)) {
        /* A payload we never advertised (BLOCK_STAT_PAYLOAD): skip it. */
        *early = EINVAL;
        if (rq->len > max)
            return 0;
        return buse_conn_drain(c, rq->len) == 0;
    }
    if (rq->type == NBD_CMD_WRITE) {
        *early = check(c, rq, max);
        if (rq->len > UINT32_MAX) {
            buse_err("client: WRITE of %llu bytes, closing the connection",
                     (unsigned long long)rq->len);
            return 0;
        }
        if (*early || (r = grow(w, rq->len)) < 0) {
            /* Keep the stream in sync: skip the payload we refuse. */
            if (!*early)
                *early = ENOMEM;
            return buse_conn_drain(c, rq->len) == 0;
        }
        if ((r = buse_conn_read(c, w->buf, (size_t)rq->len)) < 0) {
            buse_debug("connection closed in a WRITE payload: %s",
                       strerror(-r));
            return 0;
        }
    }
    return 1;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct buse_conn *c = w->conn;
    struct buse_server *srv = c->srv;
    uint32_t max = buse_max_payload(srv);
    int serialize = !!(srv->ops.flags & BUSE_SERIALIZE);

    for (;;) {
        struct request rq;
        int err, ok, r, nextents = 0;

        pthread_mutex_lock(&c->recv_lock);
        ok = receive(w, &rq, &err);
        if (ok != 1) {
            /* Other workers finish what they hold, then stop. */
            atomic_store(&c->dead, 1);
            pthread_mutex_unlock(&c->recv_lock);
            if (ok == 2 && srv->ops.disc)
                srv->ops.disc(c->exp.handle);
            break;
        }
        if (!err) /* else refused while reading (payload skipped) */
            err = check(c, &rq, max);
        pthread_mutex_unlock(&c->recv_lock);

        if (!err && rq.type == NBD_CMD_READ && grow(w, (size_t)rq.len) < 0)
            err = ENOMEM;
        if (!err) {
            if (serialize)
                pthread_mutex_lock(&srv->serial_lock);
            r = run(w, &rq);
            if (serialize)
                pthread_mutex_unlock(&srv->serial_lock);
            if (r < 0)
                err = -r;
            else if (rq.type == NBD_CMD_BLOCK_STATUS)
                nextents = r;
            if (err && buse_verbose)
                buse_debug("%s at %llu: %s", cmd_name(rq.type),
                           (unsigned long long)rq.offset, strerror(err));
        }
        r = send_reply(w, &rq, err, (unsigned)nextents);
        release(w);
        if (r < 0) {
            atomic_store(&c->dead, 1);
            shutdown(c->fd, SHUT_RDWR);
            break;
        }
    }
    release(w);
    return NULL;
}

void buse_transmission(struct buse_conn *conn)
{
    unsigned n = buse_threads(conn->srv);
    struct worker *w = calloc(n, sizeof *w);
    struct budget budget = {.max = CONN_BUDGET};
    unsigned started = 1;
    if (!w) {
        buse_err("connection: out of memory for workers");
        return;
    }
    if (budget.max < 2 * (size_t)buse_max_payload(conn->srv))
        budget.max = 2 * (size_t)buse_max_payload(conn->srv);
    pthread_mutex_init(&budget.lock, NULL);
    pthread_cond_init(&budget.cond, NULL);
    for (unsigned i = 0; i < n; i++) {
        w[i].conn = conn;
        w[i].budget = &budget;
    }
    for (unsigned i = 1; i < n; i++) {
        if (pthread_create(&w[i].thread, NULL, worker_main, &w[i]) != 0)
            break;
        started++;
    }
    worker_main(&w[0]);
    for (unsigned i = 1; i < started; i++)
        pthread_join(w[i].thread, NULL);
    for (unsigned i = 0; i < n; i++) {
        free(w[i].buf); /* big buffers went back to the pool */
        free(w[i].ext);
        free(w[i].enc);
    }
    for (unsigned i = 0; i < budget.npool; i++)
        munmap(budget.pool[i].p, budget.pool[i].len);
    pthread_mutex_destroy(&budget.lock);
    pthread_cond_destroy(&budget.cond);
    free(w);
}
