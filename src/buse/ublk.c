/* ublk.c: libbuse's callbacks served to the kernel as /dev/ublkbN.
 *
 * Protocol (linux/ublk_cmd.h; ublksrv is the reference server): control
 * commands go to /dev/ublk-control as IORING_OP_URING_CMD on a small
 * io_uring with 128-byte SQEs, the command (struct ublksrv_ctrl_cmd) in
 * the SQE's tail: ADD_DEV creates /dev/ublkcN, SET_PARAMS describes the
 * disk, START_DEV makes /dev/ublkbN appear once every queue has a fetch
 * command pending for each of its tags, STOP_DEV removes the disk and
 * aborts the pending commands, DEL_DEV forgets the device once /dev/ublkcN
 * is closed.  Each queue has its own thread and io_uring: for every tag it
 * keeps exactly one FETCH_REQ (at start) or COMMIT_AND_FETCH_REQ (after a
 * request: the result of this one, and the wish for the next) in flight on
 * /dev/ublkcN.  A completion with UBLK_IO_RES_OK means tag T holds a new
 * request, described in the queue's descriptor array (mmap'd read-only
 * from /dev/ublkcN) with its data in the tag's buffer, which the kernel
 * copies in before (writes) or out after (reads): ublksrv's copy mode, no
 * zero copy.  UBLK_IO_RES_ABORT ends a tag; a queue thread returns once
 * all its tags ended.
 * Invariants: only a queue's own thread submits on its ring (the kernel
 * checks that the task that fetched is the one that commits); a tag has at
 * most one command in flight, so a ring of `depth` SQEs never overflows;
 * callbacks run in the queue threads, several queues at once (hence more
 * than one queue only with BUSE_CAN_MULTI_CONN, whose flush covers what
 * other "connections" completed), one at a time under BUSE_SERIALIZE.
 * The legacy command numbers are used (Debian 12's header has only those;
 * kernels keep them with CONFIG_BLKDEV_UBLK_LEGACY_OPCODES, default y).
 */
#define BUSE_INTERNAL
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/ublk_cmd.h>
#include <liburing.h>

#include "internal.h"
#include "ublk.h"

#define CONTROL "/dev/ublk-control"
/* Linux 6.9's DEL_DEV that does not wait for the disk's last user (a
 * filesystem still mounted on the stopped device); only ioctl-encoded. */
#ifndef UBLK_U_CMD_DEL_DEV_ASYNC
#define UBLK_U_CMD_DEL_DEV_ASYNC _IOR('u', 0x14, struct ublksrv_ctrl_cmd)
#endif
#define DEFAULT_DEPTH 128
#define IO_BUF_BYTES (512u << 10) /* per tag: the largest request */
#define PHYS_SHIFT 12             /* 4096, the block size libbuse prefers */

struct ublk_queue {
    struct buse_ublk *u;
    unsigned id;
    pthread_t thread;
    int started;
    struct io_uring ring;
    int ring_ok;
    const struct ublksrv_io_desc *descs; /* mmap of /dev/ublkcN */
    size_t descs_len;
    unsigned char *bufs; /* depth * buf_bytes */
    int setup_err;       /* -errno, set before the thread says ready */
    unsigned inflight;   /* commands on the ring (queue thread only) */
};

struct buse_ublk {
    struct buse_conn *conn;
    char name[32]; /* /dev/ublkbN */
    unsigned id;
    unsigned nq, depth, buf_bytes;
    int ctrl_fd, cdev_fd;
    struct io_uring ctrl;
    pthread_mutex_t ctrl_lock; /* one control command at a time */
    pthread_mutex_t lock;      /* guards ready below */
    pthread_cond_t cond;
    unsigned ready; /* queue threads done with their setup */
    int added;
    atomic_int served; /* serve() returned: stopped and deleted */
    struct ublk_queue *q;
};

static const char *ctrl_name(unsigned op)
{
    switch (op) {
    case UBLK_CMD_ADD_DEV:
        return "ADD_DEV";
    case UBLK_CMD_DEL_DEV:
        return "DEL_DEV";
    case UBLK_CMD_START_DEV:
        return "START_DEV";
    case UBLK_CMD_STOP_DEV:
        return "STOP_DEV";
    case UBLK_CMD_SET_PARAMS:
        return "SET_PARAMS";
    case UBLK_CMD_GET_DEV_INFO:
        return "GET_DEV_INFO";
    }
    return "control command";
}

/* One control command, synchronously: 0 (or the kernel's non-negative
 * result) or -errno.  addr/len: the command's buffer (in or out). */
static int ctrl_cmd(struct buse_ublk *u, unsigned op, void *addr, uint16_t len,
                    uint64_t data0)
{
    struct io_uring_sqe *sqe;
    struct io_uring_cqe *cqe;
    struct ublksrv_ctrl_cmd *cmd;
    int r;

    pthread_mutex_lock(&u->ctrl_lock);
    sqe = io_uring_get_sqe(&u->ctrl);
    if (!sqe) {
        pthread_mutex_unlock(&u->ctrl_lock);
        return -EBUSY;
    }
    memset(sqe, 0, 128); /* the whole SQE128 slot: cmd is its tail */
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = u->ctrl_fd;
    sqe->cmd_op = op;
    cmd = (struct ublksrv_ctrl_cmd *)sqe->cmd;
    cmd->dev_id = u->id;
    cmd->queue_id = (uint16_t)-1; /* not a queue command */
    cmd->addr = (uint64_t)(uintptr_t)addr;
    cmd->len = len;
    cmd->data[0] = data0;
    r = io_uring_submit(&u->ctrl);
    if (r >= 0) {
        do
            r = io_uring_wait_cqe(&u->ctrl, &cqe);
        while (r == -EINTR);
    }
    if (r >= 0) {
        r = cqe->res;
        io_uring_cqe_seen(&u->ctrl, cqe);
    }
    pthread_mutex_unlock(&u->ctrl_lock);
    buse_debug("%s: %s: %d", u->name, ctrl_name(op), r);
    return r;
}

/* ------------------------------------------------------------ data path */

/* Serve one request with the connection's callbacks.  Returns what the
 * kernel wants as the commit result: the byte count for reads and writes
 * (0 would make it requeue the request), 0 for the others, or -errno. */
static int do_request(struct buse_conn *c, const struct ublksrv_io_desc *d,
                      unsigned char *buf, unsigned buf_bytes)
{
    const struct buse_operations *o = &c->srv->ops;
    void *h = c->exp.handle;
    unsigned op = d->op_flags & 0xff;
    int fua = (d->op_flags & UBLK_IO_F_FUA) != 0;
    uint64_t off = d->start_sector << 9;
    uint64_t len = (uint64_t)d->nr_sectors << 9;
    int r = 0, serial = (o->flags & BUSE_SERIALIZE) != 0;

    /* The kernel keeps to dev_sectors (a FLUSH carries no range: its
     * sector is whatever the flush request held). */
    if (op != UBLK_IO_OP_FLUSH &&
        (off > c->exp.size || len > c->exp.size - off))
        return -EIO;
    if ((op == UBLK_IO_OP_READ || op == UBLK_IO_OP_WRITE) && len > buf_bytes)
        return -EIO; /* nor this: max_sectors is the buffer */
    if (serial)
        pthread_mutex_lock(&c->srv->serial_lock);
    switch (op) {
    case UBLK_IO_OP_READ:
        r = o->read(buf, (uint32_t)len, off, h);
        break;
    case UBLK_IO_OP_WRITE:
        if (c->exp.readonly || (!o->write && !o->write_flags))
            r = -EPERM;
        else if (o->write_flags)
            r = o->write_flags(buf, (uint32_t)len, off, fua ? BUSE_FLAG_FUA : 0,
                               h);
        else {
            r = o->write(buf, (uint32_t)len, off, h);
            if (r >= 0 && fua && o->flush) /* FUA as NBD emulates it */
                r = o->flush(h);
        }
        break;
    case UBLK_IO_OP_FLUSH:
        r = o->flush ? o->flush(h) : 0;
        break;
    case UBLK_IO_OP_DISCARD:
        if (c->exp.readonly)
            r = -EPERM;
        else if (o->trim_flags)
            r = o->trim_flags(off, len, fua ? BUSE_FLAG_FUA : 0, h);
        else if (o->trim) {
            while (r >= 0 && len) { /* BUSE's trim takes 32 bits */
                uint32_t n = len > (1u << 30) ? (1u << 30) : (uint32_t)len;
                r = o->trim(off, n, h);
                off += n;
                len -= n;
            }
        } else
            r = -EOPNOTSUPP;
        break;
    case UBLK_IO_OP_WRITE_ZEROES:
        if (c->exp.readonly)
            r = -EPERM;
        else if (o->write_zeroes)
            r = o->write_zeroes(
                off, len,
                ((d->op_flags & UBLK_IO_F_NOUNMAP) ? BUSE_FLAG_NO_HOLE : 0) |
                    (fua ? BUSE_FLAG_FUA : 0),
                h);
        else
            r = -EOPNOTSUPP; /* not advertised without the callback */
        break;
    default:
        r = -EOPNOTSUPP;
    }
    if (serial)
        pthread_mutex_unlock(&c->srv->serial_lock);
    if (r > 0)
        r = 0; /* callbacks return 0 or -errno; be lenient */
    if (buse_verbose)
        buse_debug("ublk: op %u offset %llu length %llu: %d", op,
                   (unsigned long long)(d->start_sector << 9),
                   (unsigned long long)d->nr_sectors << 9, r);
    if (r == 0 && (op == UBLK_IO_OP_READ || op == UBLK_IO_OP_WRITE))
        return (int)(d->nr_sectors << 9);
    return r;
}

/* Queue an io command for tag (FETCH_REQ, or COMMIT_AND_FETCH_REQ with
 * result).  The SQ has room: one command per tag at most. */
static void queue_cmd(struct ublk_queue *q, unsigned tag, unsigned op,
                      int result)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
    struct ublksrv_io_cmd *cmd;

    if (!sqe) { /* cannot happen (see the invariants); the tag is lost */
        buse_err("%s: queue %u: no room for tag %u", q->u->name, q->id, tag);
        return;
    }
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = 0; /* registered file 0: /dev/ublkcN */
    sqe->flags = IOSQE_FIXED_FILE;
    sqe->cmd_op = op;
    sqe->user_data = tag;
    cmd = (struct ublksrv_io_cmd *)sqe->cmd;
    cmd->q_id = (uint16_t)q->id;
    cmd->tag = (uint16_t)tag;
    cmd->result = result;
    cmd->addr = (uint64_t)(uintptr_t)(q->bufs + (size_t)tag * q->u->buf_bytes);
    q->inflight++;
}

static void queue_ready(struct ublk_queue *q, int err)
{
    struct buse_ublk *u = q->u;

    pthread_mutex_lock(&u->lock);
    q->setup_err = err;
    u->ready++;
    pthread_cond_broadcast(&u->cond);
    pthread_mutex_unlock(&u->lock);
}

static int queue_setup(struct ublk_queue *q)
{
    struct buse_ublk *u = q->u;
    struct io_uring_params p;
    int r;

    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SQE128 | IORING_SETUP_COOP_TASKRUN;
    r = io_uring_queue_init_params(u->depth, &q->ring, &p);
    if (r == -EINVAL) { /* a kernel without COOP_TASKRUN (before 5.19) */
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_SQE128;
        r = io_uring_queue_init_params(u->depth, &q->ring, &p);
    }
    if (r < 0) {
        buse_err("%s: queue %u: io_uring setup: %s", u->name, q->id,
                 strerror(-r));
        return r;
    }
    q->ring_ok = 1;
    r = io_uring_register_files(&q->ring, &u->cdev_fd, 1);
    if (r < 0) {
        buse_err("%s: queue %u: io_uring file registration: %s", u->name, q->id,
                 strerror(-r));
        return r;
    }
    for (unsigned t = 0; t < u->depth; t++)
        queue_cmd(q, t, UBLK_IO_FETCH_REQ, 0);
    r = io_uring_submit(&q->ring);
    if (r < 0) {
        buse_err("%s: queue %u: FETCH_REQ: %s", u->name, q->id, strerror(-r));
        return r;
    }
    return 0;
}

static void *queue_main(void *arg)
{
    struct ublk_queue *q = arg;
    struct buse_ublk *u = q->u;
    struct io_uring_cqe *cqe;
    unsigned head, seen;
    int r, logged = 0;

    r = queue_setup(q);
    queue_ready(q, r);
    if (r < 0)
        return NULL;
    while (q->inflight) {
        r = io_uring_submit_and_wait(&q->ring, 1);
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
            buse_err("%s: queue %u: io_uring_enter: %s", u->name, q->id,
                     strerror(-r));
            break;
        }
        seen = 0;
        io_uring_for_each_cqe(&q->ring, head, cqe)
        {
            unsigned tag = (unsigned)cqe->user_data;

            seen++;
            q->inflight--;
            if (cqe->res == UBLK_IO_RES_OK && tag < u->depth) {
                r = do_request(u->conn, &q->descs[tag],
                               q->bufs + (size_t)tag * u->buf_bytes,
                               u->buf_bytes);
                queue_cmd(q, tag, UBLK_IO_COMMIT_AND_FETCH_REQ, r);
            } else if (cqe->res != UBLK_IO_RES_ABORT && !logged++) {
                /* Not a request and not the end: a misuse the kernel
                 * refused.  The tag is lost; say so once. */
                buse_err("%s: queue %u: tag %u: io command failed: %s", u->name,
                         q->id, tag, strerror(-cqe->res));
            }
        }
        io_uring_cq_advance(&q->ring, seen);
    }
    buse_debug("%s: queue %u: done", u->name, q->id);
    return NULL;
}

/* ------------------------------------------------------------ lifetime */

int buse_ublk_is_name(const char *dev)
{
    const char *s = dev;

    if (!strcmp(s, "ublk"))
        return 1;
    if (!strncmp(s, "/dev/", 5))
        s += 5;
    return !strncmp(s, "ublkb", 5);
}

/* "/dev/ublkbN" -> N, automatic forms -> -1; -EINVAL if neither. */
static long parse_id(const char *dev)
{
    const char *s = dev;
    char *end;
    long n;

    if (!strcmp(s, "ublk"))
        return -1;
    if (!strncmp(s, "/dev/", 5))
        s += 5;
    s += 5; /* "ublkb" */
    if (!*s)
        return -1;
    if (*s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    n = strtol(s, &end, 10);
    if (*end || errno || n > 1000000)
        return -EINVAL;
    return n;
}

static unsigned ilog2(uint64_t v)
{
    unsigned n = 0;
    while (v > 1) {
        v >>= 1;
        n++;
    }
    return n;
}

/* SET_PARAMS: the disk as the callbacks that exist make it. */
static int set_params(struct buse_ublk *u)
{
    const struct buse_conn *c = u->conn;
    const struct buse_operations *o = &c->srv->ops;
    unsigned lbs = ilog2(o->blksize ? o->blksize : 512);
    unsigned pbs = lbs > PHYS_SHIFT ? lbs : PHYS_SHIFT;
    int ro = c->exp.readonly || (!o->write && !o->write_flags);
    int trim = !ro && (o->trim || o->trim_flags);
    int zeroes = !ro && o->write_zeroes;
    struct ublk_params p;
    int r;

    memset(&p, 0, sizeof p);
    p.len = sizeof p;
    p.types = UBLK_PARAM_TYPE_BASIC;
    /* A volatile cache (so the kernel sends flushes) only with a flush
     * callback; FUA then too, served by write_flags or write + flush. */
    if (o->flush)
        p.basic.attrs |= UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA;
    if (ro)
        p.basic.attrs |= UBLK_ATTR_READ_ONLY;
    p.basic.logical_bs_shift = (uint8_t)lbs;
    p.basic.physical_bs_shift = (uint8_t)pbs;
    p.basic.io_min_shift = (uint8_t)pbs;
    p.basic.io_opt_shift = (uint8_t)pbs;
    p.basic.max_sectors = u->buf_bytes >> 9;
    p.basic.dev_sectors = c->exp.size >> 9;
    if (trim || zeroes) {
        p.types |= UBLK_PARAM_TYPE_DISCARD;
        p.discard.discard_granularity = 1u << pbs;
        p.discard.max_discard_segments = 1;
        /* whole granules, the largest a 32-bit sector count holds */
        uint32_t max = (UINT32_MAX >> 9) & ~((1u << (pbs - 9)) - 1);
        p.discard.max_discard_sectors = trim ? max : 0;
        p.discard.max_write_zeroes_sectors = zeroes ? max : 0;
    }
    r = ctrl_cmd(u, UBLK_CMD_SET_PARAMS, &p, sizeof p, 0);
    if (r < 0)
        buse_err("%s: SET_PARAMS: %s", u->name, strerror(-r));
    return r;
}

/* Open /dev/ublkcN: devtmpfs makes it during ADD_DEV, udev may take a
 * moment more (and set its mode); wait up to 5 s. */
static int open_cdev(struct buse_ublk *u)
{
    char path[32];
    int i;

    snprintf(path, sizeof path, "/dev/ublkc%u", u->id);
    for (i = 0; i < 500; i++) {
        u->cdev_fd = open(path, O_RDWR | O_CLOEXEC);
        if (u->cdev_fd >= 0)
            return 0;
        if (errno != ENOENT && errno != EACCES)
            break;
        usleep(10000);
    }
    int e = errno;
    buse_err("%s: open %s: %s", u->name, path, strerror(e));
    return -e;
}

static int start_queues(struct buse_ublk *u)
{
    sigset_t all, old;
    unsigned i;
    int r = 0;

    u->q = calloc(u->nq, sizeof *u->q);
    if (!u->q)
        return -ENOMEM;
    for (i = 0; i < u->nq; i++) {
        struct ublk_queue *q = &u->q[i];
        size_t per_q =
            ((size_t)UBLK_MAX_QUEUE_DEPTH * sizeof(struct ublksrv_io_desc));
        long pg = sysconf(_SC_PAGESIZE);
        void *m;

        q->u = u;
        q->id = i;
        q->descs_len =
            (u->depth * sizeof(struct ublksrv_io_desc) + pg - 1) / pg * pg;
        m = mmap(NULL, q->descs_len, PROT_READ, MAP_SHARED | MAP_POPULATE,
                 u->cdev_fd, UBLKSRV_CMD_BUF_OFFSET + (off_t)i * per_q);
        if (m == MAP_FAILED) {
            r = -errno;
            buse_err("%s: queue %u: mmap of the request descriptors: %s",
                     u->name, i, strerror(-r));
            return r;
        }
        q->descs = m;
        m = mmap(NULL, (size_t)u->depth * u->buf_bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            r = -errno;
            buse_err("%s: queue %u: buffers: %s", u->name, i, strerror(-r));
            return r;
        }
        q->bufs = m;
    }
    /* Queue threads take no signal: those go to the server's thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (i = 0; i < u->nq && r == 0; i++) {
        r = -pthread_create(&u->q[i].thread, NULL, queue_main, &u->q[i]);
        if (r == 0)
            u->q[i].started = 1;
        else
            buse_err("%s: cannot start a queue thread: %s", u->name,
                     strerror(-r));
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    /* Wait until each started thread has its fetches submitted. */
    unsigned started = 0;
    for (i = 0; i < u->nq; i++)
        started += (unsigned)u->q[i].started;
    pthread_mutex_lock(&u->lock);
    while (u->ready < started)
        pthread_cond_wait(&u->cond, &u->lock);
    pthread_mutex_unlock(&u->lock);
    for (i = 0; i < u->nq && r == 0; i++)
        r = u->q[i].setup_err;
    return r;
}

/* Join the queue threads and release what they used, /dev/ublkcN last. */
static void end_queues(struct buse_ublk *u)
{
    for (unsigned i = 0; u->q && i < u->nq; i++) {
        struct ublk_queue *q = &u->q[i];
        if (q->started)
            pthread_join(q->thread, NULL);
        q->started = 0;
        if (q->ring_ok)
            io_uring_queue_exit(&q->ring);
        q->ring_ok = 0;
        if (q->descs)
            munmap((void *)q->descs, q->descs_len);
        q->descs = NULL;
        if (q->bufs)
            munmap(q->bufs, (size_t)u->depth * u->buf_bytes);
        q->bufs = NULL;
    }
    if (u->cdev_fd >= 0)
        close(u->cdev_fd);
    u->cdev_fd = -1;
}

/* DEL_DEV, once; the asynchronous form first, so that a filesystem left
 * mounted on the stopped disk does not hold us until it is unmounted. */
static void del_dev(struct buse_ublk *u)
{
    int r;

    if (!u->added)
        return;
    u->added = 0;
    r = ctrl_cmd(u, UBLK_U_CMD_DEL_DEV_ASYNC, NULL, 0, 0);
    if (r == -EINVAL || r == -EOPNOTSUPP || r == -ENOTTY)
        r = ctrl_cmd(u, UBLK_CMD_DEL_DEV, NULL, 0, 0);
    if (r < 0 && r != -ENODEV)
        buse_err("%s: DEL_DEV: %s", u->name, strerror(-r));
}

static void ublk_release(struct buse_ublk *u)
{
    del_dev(u);
    io_uring_queue_exit(&u->ctrl);
    close(u->ctrl_fd);
    free(u->q);
    pthread_mutex_destroy(&u->ctrl_lock);
    pthread_mutex_destroy(&u->lock);
    pthread_cond_destroy(&u->cond);
    free(u);
}

/* The id is taken.  If its server is gone (kill -9: the kernel keeps the
 * device, dead or failing every request, until someone deletes it), delete
 * it so that the same command works again, as a restarted server expects.
 * Returns 1 if deleted. */
static int delete_stale(struct buse_ublk *u)
{
    struct ublksrv_ctrl_dev_info info;
    int r;

    memset(&info, 0, sizeof info);
    r = ctrl_cmd(u, UBLK_CMD_GET_DEV_INFO, &info, sizeof info, 0);
    if (r < 0)
        return 0;
    if (info.ublksrv_pid > 0 &&
        (kill(info.ublksrv_pid, 0) == 0 || errno != ESRCH))
        return 0; /* its server lives: in use */
    buse_err("%s: deleting the device left by a server that is gone (pid "
             "%d, state %u)",
             u->name, info.ublksrv_pid, info.state);
    ctrl_cmd(u, UBLK_CMD_STOP_DEV, NULL, 0, 0);
    u->added = 1; /* so that del_dev() deletes it */
    del_dev(u);
    return 1;
}

int buse_ublk_attach(struct buse_conn *conn, const char *dev, unsigned queues,
                     unsigned depth, struct buse_ublk **out)
{
    const struct buse_operations *o = &conn->srv->ops;
    struct ublksrv_ctrl_dev_info info;
    struct buse_ublk *u;
    long want = parse_id(dev);
    int r;

    if (want == -EINVAL) {
        buse_err("%s: not a ublk device (expected /dev/ublkbN, or "
                 "/dev/ublkb for a free one)",
                 dev);
        return -EINVAL;
    }
    if (!queues) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        queues = (o->flags & (BUSE_CAN_MULTI_CONN | BUSE_SERIALIZE)) ==
                             BUSE_CAN_MULTI_CONN &&
                         n > 1
                     ? (unsigned)n
                     : 1;
    }
    if (queues > 1 && !(o->flags & BUSE_CAN_MULTI_CONN)) {
        buse_err("%s: %u queues need BUSE_CAN_MULTI_CONN (a flush on one "
                 "queue must cover writes completed on the others)",
                 dev, queues);
        return -EINVAL;
    }
    if (!depth)
        depth = DEFAULT_DEPTH;
    if (depth > UBLK_MAX_QUEUE_DEPTH || queues > 4096) {
        buse_err("%s: at most %u tags per queue", dev, UBLK_MAX_QUEUE_DEPTH);
        return -EINVAL;
    }
    if (o->blksize > 4096) {
        buse_err("%s: a ublk device's block size is at most 4096 (the "
                 "page size), not %u",
                 dev, o->blksize);
        return -EINVAL;
    }
    if (conn->exp.size % (o->blksize ? o->blksize : 512)) {
        buse_err("%s: size %llu is not a multiple of the block size", dev,
                 (unsigned long long)conn->exp.size);
        return -EINVAL;
    }

    u = calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    u->conn = conn;
    u->cdev_fd = -1;
    u->id = want < 0 ? UINT32_MAX : (unsigned)want;
    snprintf(u->name, sizeof u->name, "%s", dev);
    pthread_mutex_init(&u->ctrl_lock, NULL);
    pthread_mutex_init(&u->lock, NULL);
    pthread_cond_init(&u->cond, NULL);

    u->ctrl_fd = open(CONTROL, O_RDWR | O_CLOEXEC);
    if (u->ctrl_fd < 0) {
        r = -errno;
        if (r == -ENOENT || r == -ENODEV || r == -ENXIO)
            buse_err("%s: no ublk kernel support (no " CONTROL "): run "
                     "`modprobe ublk_drv` as root (Linux 6.0 or later), or "
                     "attach /dev/nbdN instead, or serve over a socket "
                     "(--socket PATH)",
                     dev);
        else
            buse_err("%s: open " CONTROL ": %s%s", dev, strerror(-r),
                     r == -EACCES || r == -EPERM ? " (ublk needs root)" : "");
        pthread_mutex_destroy(&u->ctrl_lock);
        pthread_mutex_destroy(&u->lock);
        pthread_cond_destroy(&u->cond);
        free(u);
        return r == -ENXIO ? -ENODEV : r;
    }
    r = io_uring_queue_init(4, &u->ctrl, IORING_SETUP_SQE128);
    if (r < 0) {
        buse_err("%s: io_uring: %s (ublk needs io_uring with 128-byte SQEs, "
                 "Linux 6.0 or later; is kernel.io_uring_disabled set?)",
                 dev, strerror(-r));
        close(u->ctrl_fd);
        pthread_mutex_destroy(&u->ctrl_lock);
        pthread_mutex_destroy(&u->lock);
        pthread_cond_destroy(&u->cond);
        free(u);
        return r;
    }

    memset(&info, 0, sizeof info);
    info.nr_hw_queues = (uint16_t)queues;
    info.queue_depth = (uint16_t)depth;
    info.max_io_buf_bytes = IO_BUF_BYTES;
    if (o->max_block && o->max_block < IO_BUF_BYTES && o->max_block >= 4096)
        info.max_io_buf_bytes = o->max_block & ~4095u;
    info.dev_id = u->id;
    info.ublksrv_pid = getpid();
    struct ublksrv_ctrl_dev_info want_info = info;
    r = ctrl_cmd(u, UBLK_CMD_ADD_DEV, &info, sizeof info, 0);
    if (r == -EEXIST && want >= 0 && delete_stale(u)) {
        info = want_info;
        r = ctrl_cmd(u, UBLK_CMD_ADD_DEV, &info, sizeof info, 0);
    }
    if (r < 0) {
        if (r == -EEXIST)
            buse_err("%s: device in use (ADD_DEV: %s)", dev, strerror(-r));
        else
            buse_err("%s: ADD_DEV: %s", dev, strerror(-r));
        goto fail;
    }
    u->added = 1;
    u->id = info.dev_id;
    snprintf(u->name, sizeof u->name, "/dev/ublkb%u", u->id);
    /* The kernel may lower these (no more queues than CPUs). */
    u->nq = info.nr_hw_queues;
    u->depth = info.queue_depth;
    u->buf_bytes = info.max_io_buf_bytes;
    if (!u->nq || !u->depth || u->buf_bytes < 4096) {
        buse_err("%s: ADD_DEV gave %u queues of %u tags of %u bytes", u->name,
                 u->nq, u->depth, u->buf_bytes);
        r = -EIO;
        goto fail;
    }
    if ((r = set_params(u)) < 0 || (r = open_cdev(u)) < 0 ||
        (r = start_queues(u)) < 0)
        goto fail;
    r = ctrl_cmd(u, UBLK_CMD_START_DEV, NULL, 0, (uint64_t)getpid());
    if (r < 0) {
        buse_err("%s: START_DEV: %s", u->name, strerror(-r));
        goto fail;
    }
    memset(&info, 0, sizeof info);
    if (ctrl_cmd(u, UBLK_CMD_GET_DEV_INFO, &info, sizeof info, 0) >= 0)
        buse_debug("%s: state %u, %u queues of %u tags, %u-byte buffers",
                   u->name, info.state, info.nr_hw_queues, info.queue_depth,
                   info.max_io_buf_bytes);
    if (want < 0) /* the caller named no device: say which it got */
        buse_err("%s: attached %s (ublk, %u queue%s of %u)", dev, u->name,
                 u->nq, u->nq > 1 ? "s" : "", u->depth);
    *out = u;
    return 0;

fail:
    /* STOP_DEV aborts the fetches, if any thread submitted them. */
    if (u->added && u->q)
        ctrl_cmd(u, UBLK_CMD_STOP_DEV, NULL, 0, 0);
    end_queues(u);
    ublk_release(u);
    return r;
}

const char *buse_ublk_name(const struct buse_ublk *u)
{
    return u->name;
}

void buse_ublk_serve(struct buse_ublk *u)
{
    end_queues(u);
    del_dev(u);
    u->served = 1;
}

void buse_ublk_stop(struct buse_ublk *u)
{
    if (u->served)
        return; /* stopped and deleted already */
    int r = ctrl_cmd(u, UBLK_CMD_STOP_DEV, NULL, 0, 0);

    if (r < 0 && r != -ENODEV)
        buse_err("%s: STOP_DEV: %s", u->name, strerror(-r));
}

void buse_ublk_free(struct buse_ublk *u)
{
    if (!u)
        return;
    if (!u->served) {
        buse_ublk_stop(u);
        end_queues(u);
    }
    ublk_release(u);
}
