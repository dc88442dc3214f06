/* server.c: the libbuse server object, its listeners and its connections.
 *
 * buse_server_run() is a poll() loop over the listening sockets and a wake
 * pipe; each accepted socket gets its own thread (handshake, then the
 * workers of transmission.c).  Signals and buse_server_stop() only write a
 * byte to the wake pipe, so they are async-signal-safe.  Shutdown: close
 * the listeners (unlinking Unix socket files), release kernel devices,
 * shut every connection's socket down and wait for the connection threads
 * to finish; a second stop request while waiting gives up waiting (the
 * server object is then leaked rather than freed under running threads).
 * Kernel devices are served as connections that skip the handshake.
 */
#define BUSE_INTERNAL
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"
#include "kernel.h"
#include "protocol.h"
#include "ublk.h"

/* An attached kernel device: /dev/nbdN (kd) or /dev/ublkbN (ublk, served
 * by one connection whose thread runs its queues until it stops). */
struct buse_kattach {
    struct buse_kdev *kd;
    struct buse_ublk *ublk;
    struct buse_kattach *next;
};

unsigned buse_threads(const struct buse_server *srv)
{
    if (srv->ops.flags & BUSE_SERIALIZE)
        return 1;
    if (srv->ops.threads == 0)
        return 8;
    return srv->ops.threads > 64 ? 64 : srv->ops.threads;
}

uint32_t buse_max_payload(const struct buse_server *srv)
{
    uint32_t m = srv->ops.max_block;
    return m == 0 || m > NBD_MAX_PAYLOAD ? NBD_MAX_PAYLOAD : m;
}

struct buse_server *buse_server_new_sized(const struct buse_operations *ops,
                                          size_t ops_size, void *userdata)
{
    struct buse_server *srv;
    if (!ops || ops_size < offsetof(struct buse_operations, size_blocks) +
                               sizeof ops->size_blocks) {
        buse_err("buse_server_new: buse_operations is missing or too small");
        errno = EINVAL;
        return NULL;
    }
    srv = calloc(1, sizeof *srv);
    if (!srv) {
        errno = ENOMEM;
        return NULL;
    }
    sigemptyset(&srv->deferred_signals);
    /* Read no member beyond what the caller was compiled with. */
    memcpy(&srv->ops, ops,
           ops_size < sizeof srv->ops ? ops_size : sizeof srv->ops);
    srv->userdata = userdata;
    const struct buse_operations *o = &srv->ops;
    int err = 0;
    if (!o->read) {
        buse_err("buse_operations.read is required");
        err = EINVAL;
    }
    srv->size = o->size;
    if (!srv->size && o->size_blocks) {
        if (!o->blksize || o->size_blocks > UINT64_MAX / o->blksize) {
            buse_err("buse_operations: size_blocks needs a blksize, and "
                     "blksize * size_blocks must fit 64 bits");
            err = EINVAL;
        } else {
            srv->size = o->size_blocks * o->blksize;
        }
    }
    if (!err && !srv->size && !o->open) {
        buse_err("buse_operations: size is 0 (set size, or blksize and "
                 "size_blocks, or an open callback that sets it)");
        err = EINVAL;
    }
    if (!err && o->min_block && (o->min_block & (o->min_block - 1))) {
        buse_err("buse_operations.min_block %u is not a power of two",
                 o->min_block);
        err = EINVAL;
    }
    if (!err && (o->blksize & (o->blksize - 1))) {
        buse_err("buse_operations.blksize %u is not a power of two",
                 o->blksize);
        err = EINVAL;
    }
    if (!err && pipe2(srv->wake, O_CLOEXEC | O_NONBLOCK) < 0)
        err = errno;
    if (err) {
        free(srv);
        errno = err;
        return NULL;
    }
    pthread_mutex_init(&srv->lock, NULL);
    pthread_mutex_init(&srv->serial_lock, NULL);
    pthread_cond_init(&srv->cond, NULL);
    return srv;
}

/* A socket or a device goes live before run() installs its SIGINT/SIGTERM
 * handlers: until then keep those signals pending in this thread, so that
 * one in between still stops the server cleanly (run() unblocks them: the
 * device released, the socket file removed) instead of killing the process
 * with them left behind. */
static void defer_signals(struct buse_server *srv)
{
    if (atomic_load(&srv->running))
        return;
    sigset_t ours, old;
    sigemptyset(&ours);
    sigaddset(&ours, SIGINT);
    sigaddset(&ours, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &ours, &old);
    if (!sigismember(&old, SIGINT))
        sigaddset(&srv->deferred_signals, SIGINT);
    if (!sigismember(&old, SIGTERM))
        sigaddset(&srv->deferred_signals, SIGTERM);
}

static int add_listener(struct buse_server *srv, int fd, const char *path)
{
    defer_signals(srv);
    if (srv->nlisten == BUSE_MAX_LISTENERS) {
        buse_err("too many listening sockets (at most %d)", BUSE_MAX_LISTENERS);
        close(fd);
        return -EMFILE;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    srv->listen_paths[srv->nlisten] = path ? strdup(path) : NULL;
    srv->listen_fds[srv->nlisten++] = fd;
    return 0;
}

int buse_server_listen_unix(struct buse_server *srv, const char *path,
                            unsigned mode)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    int fd, r;
    defer_signals(srv); /* before the socket file exists */
    if (strlen(path) >= sizeof sa.sun_path) {
        buse_err("%s: socket path too long", path);
        return -ENAMETOOLONG;
    }
    strcpy(sa.sun_path, path);
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            buse_err("%s: exists and is not a socket", path);
            return -EEXIST;
        }
        unlink(path); /* stale socket from an earlier run */
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        r = -errno;
        buse_err("%s: socket: %s", path, strerror(-r));
        return r;
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        chmod(path, mode ? mode : 0600) < 0 || listen(fd, 128) < 0) {
        r = -errno;
        buse_err("%s: %s", path, strerror(-r));
        close(fd);
        unlink(path);
        return r;
    }
    buse_debug("listening on %s", path);
    return add_listener(srv, fd, path);
}

int buse_server_listen_tcp(struct buse_server *srv, const char *host_port)
{
    char host[256];
    const char *port;
    struct addrinfo hints = {.ai_flags = AI_PASSIVE,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai, *a;
    int r, n = 0, err = 0;

    if (host_port[0] == '[') {
        const char *end = strchr(host_port, ']');
        if (!end || end[1] != ':' || (size_t)(end - host_port) > sizeof host) {
            buse_err("%s: expected [V6ADDR]:PORT", host_port);
            return -EINVAL;
        }
        memcpy(host, host_port + 1, (size_t)(end - host_port - 1));
        host[end - host_port - 1] = 0;
        port = end + 2;
    } else {
        const char *colon = strrchr(host_port, ':');
        if (!colon || (size_t)(colon - host_port) >= sizeof host) {
            buse_err("%s: expected HOST:PORT or :PORT", host_port);
            return -EINVAL;
        }
        memcpy(host, host_port, (size_t)(colon - host_port));
        host[colon - host_port] = 0;
        port = colon + 1;
    }
    if (!*port) {
        buse_err("%s: missing port", host_port);
        return -EINVAL;
    }
    r = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (r != 0) {
        buse_err("%s: %s", host_port, gai_strerror(r));
        return -EINVAL;
    }
    for (a = ai; a; a = a->ai_next) {
        int one = 1;
        int fd =
            socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (a->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) < 0 || listen(fd, 128) < 0) {
            err = errno;
            close(fd);
            continue;
        }
        if ((r = add_listener(srv, fd, NULL)) < 0) {
            freeaddrinfo(ai);
            return r;
        }
        n++;
    }
    freeaddrinfo(ai);
    if (n == 0) {
        buse_err("%s: cannot listen: %s", host_port,
                 strerror(err ? err : EADDRNOTAVAIL));
        return -(err ? err : EADDRNOTAVAIL);
    }
    buse_debug("listening on TCP %s (%d sockets)", host_port, n);
    return 0;
}

int buse_server_listen_systemd(struct buse_server *srv)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    int n, r;
    if (!pid || !fds || strtol(pid, NULL, 10) != (long)getpid())
        return 0;
    n = (int)strtol(fds, NULL, 10);
    if (n <= 0 || n > BUSE_MAX_LISTENERS) {
        buse_err("LISTEN_FDS=%s: expected 1 to %d sockets", fds,
                 BUSE_MAX_LISTENERS);
        return -EINVAL;
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    for (int i = 0; i < n; i++)
        if ((r = add_listener(srv, 3 + i, NULL)) < 0)
            return r;
    buse_debug("took %d sockets from systemd", n);
    return n;
}

static struct buse_conn *conn_new(struct buse_server *srv, int fd)
{
    struct buse_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->srv = srv;
    c->fd = fd;
    pthread_mutex_init(&c->recv_lock, NULL);
    pthread_mutex_init(&c->send_lock, NULL);
    return c;
}

static void conn_free(struct buse_conn *c)
{
    pthread_mutex_destroy(&c->recv_lock);
    pthread_mutex_destroy(&c->send_lock);
    free(c);
}

/* The wake pipe is non-blocking: a full pipe already wakes the loop. */
static void wake(struct buse_server *srv)
{
    int e = errno;
    if (write(srv->wake[1], "", 1) < 0) {
        /* EAGAIN: a wake-up is already pending. */
    }
    errno = e;
}

/* Idle limit on a socket during the handshake: a client that connects and
 * says nothing (or stops half-way) would otherwise keep its thread for
 * ever.  Seconds; BUSE_HANDSHAKE_TIMEOUT overrides (0: none).  In
 * transmission a connection may be idle as long as it likes. */
#define HANDSHAKE_TIMEOUT 30
static void set_idle_limit(int fd, int secs)
{
    struct timeval tv = {.tv_sec = secs};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void *conn_main(void *arg)
{
    struct buse_conn *c = arg;
    struct buse_server *srv = c->srv;
    int r = 1;

    if (!c->kernel) {
        const char *env = getenv("BUSE_HANDSHAKE_TIMEOUT");
        int limit = env ? atoi(env) : HANDSHAKE_TIMEOUT;
        if (limit > 0)
            set_idle_limit(c->fd, limit);
        c->handshake_limit = limit > 0 ? limit : 0;
        r = buse_handshake(c);
        if (r == -EAGAIN || r == -EWOULDBLOCK)
            buse_debug("handshake: client idle for %d s, closed", limit);
        if (r == 1 && limit > 0)
            set_idle_limit(c->fd, 0);
        if (r < 0)
            buse_debug("handshake ended: %s", strerror(-r));
    }
    if (c->ublk) {
        buse_ublk_serve(c->ublk); /* until the device stops */
    } else if (r == 1) {
        pthread_mutex_lock(&srv->lock);
        c->in_transmission = 1;
        pthread_mutex_unlock(&srv->lock);
        buse_transmission(c);
        pthread_mutex_lock(&srv->lock);
        c->in_transmission = 0;
        pthread_mutex_unlock(&srv->lock);
    }
    buse_close_export(c);
    buse_tls_end(c);

    pthread_mutex_lock(&srv->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->fd >= 0)
        close(c->fd);
    srv->nconns--;
    if (c->fixed) {
        srv->fixed_conns--;
        wake(srv);
    }
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->lock);
    conn_free(c);
    return NULL;
}

/* Put c on the list and start its thread.  On failure c is freed and its
 * fd closed. */
static int conn_start(struct buse_server *srv, struct buse_conn *c)
{
    pthread_attr_t attr;
    int r;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_mutex_lock(&srv->lock);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    if (c->fixed)
        srv->fixed_conns++;
    if (c->kernel)
        c->in_transmission = 1;
    /* Connection and worker threads (which inherit the mask) never take
     * SIGINT/SIGTERM: those reach run()'s thread, and callbacks are not
     * interrupted by them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    r = pthread_create(&c->thread, &attr, conn_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        buse_err("connection: cannot start a thread: %s", strerror(r));
        srv->conns = c->next;
        if (c->next)
            c->next->prev = NULL;
        srv->nconns--;
        if (c->fixed)
            srv->fixed_conns--;
    }
    pthread_mutex_unlock(&srv->lock);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        if (c->ublk)
            buse_ublk_free(c->ublk); /* its queues call c's callbacks */
        buse_close_export(c);
        if (c->fd >= 0)
            close(c->fd);
        conn_free(c);
        return -r;
    }
    return 0;
}

int buse_server_add_client(struct buse_server *srv, int in_fd, int out_fd)
{
    struct stat a, b;
    int fd = in_fd, r;
    if (in_fd < 0 || out_fd < 0) {
        buse_err("buse_server_add_client: bad fds %d/%d", in_fd, out_fd);
        return -EBADF;
    }
    if (fstat(in_fd, &a) < 0 || fstat(out_fd, &b) < 0) {
        r = -errno;
        buse_err("client on fds %d/%d: %s", in_fd, out_fd, strerror(-r));
        close(in_fd);
        if (out_fd != in_fd)
            close(out_fd);
        return r;
    }
    if (in_fd == out_fd && !S_ISSOCK(a.st_mode) &&
        (out_fd = fcntl(in_fd, F_DUPFD_CLOEXEC, 3)) < 0) {
        r = -errno;
        close(in_fd);
        return r;
    }
    if (in_fd != out_fd && S_ISSOCK(a.st_mode) && a.st_dev == b.st_dev &&
        a.st_ino == b.st_ino) {
        close(out_fd); /* one socket (libnbd's nbd_connect_command) */
    } else if (in_fd != out_fd || !S_ISSOCK(a.st_mode)) {
        /* Pipes (ssh), a tty, or two sockets: copy through a socketpair. */
        if ((r = buse_relay_start(in_fd, out_fd, &fd)) < 0)
            return r;
    }
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    struct buse_conn *c = conn_new(srv, fd);
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->fixed = 1;
    pthread_mutex_lock(&srv->lock);
    srv->had_fixed = 1;
    pthread_mutex_unlock(&srv->lock);
    buse_debug("client on fds %d/%d", in_fd, out_fd);
    return conn_start(srv, c);
}

static void accept_one(struct buse_server *srv, int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
            buse_err("accept: %s", strerror(errno));
        if (errno == EMFILE || errno == ENFILE)
            usleep(100000); /* do not spin while out of descriptors */
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct buse_conn *c = conn_new(srv, fd);
    if (!c) {
        close(fd);
        return;
    }
    buse_debug("new connection");
    conn_start(srv, c);
}

/* An attached device joins the server's list (released by free()). */
static void kdev_register(struct buse_server *srv, struct buse_kattach *ka)
{
    pthread_mutex_lock(&srv->lock);
    ka->next = srv->kdevs;
    srv->kdevs = ka;
    srv->had_fixed = 1;
    pthread_mutex_unlock(&srv->lock);
}

/* /dev/ublkbN: one connection (no socket) whose thread runs the queues. */
static int attach_ublk(struct buse_server *srv, const char *dev,
                       const struct buse_kernel_options *opt,
                       unsigned queue_depth)
{
    const char *name = opt->export_name ? opt->export_name : "";
    struct buse_kattach *ka;
    struct buse_conn *c;
    struct buse_ublk *u;
    int r;

    defer_signals(srv);
    ka = calloc(1, sizeof *ka);
    c = ka ? conn_new(srv, -1) : NULL;
    if (!c) {
        free(ka);
        return -ENOMEM;
    }
    c->kernel = 1;
    c->fixed = 1;
    r = buse_open_export(c, name);
    if (r < 0) {
        buse_err("%s: export \"%s\": %s", dev, name, strerror(-r));
        conn_free(c);
        free(ka);
        return r;
    }
    r = buse_ublk_attach(c, dev, opt->connections, queue_depth, &u);
    if (r < 0) {
        buse_close_export(c);
        conn_free(c);
        free(ka);
        return r;
    }
    c->ublk = u;
    ka->ublk = u;
    r = conn_start(srv, c); /* on failure it deleted the device */
    if (r < 0) {
        free(ka);
        return r;
    }
    kdev_register(srv, ka);
    buse_debug("%s: attached (ublk)", buse_ublk_name(u));
    return 0;
}

#undef buse_server_attach_kernel
int buse_server_attach_kernel(struct buse_server *srv, const char *dev,
                              const struct buse_kernel_options *opt)
{
    /* Programs built before queue_depth: the first four members. */
    return buse_server_attach_kernel_sized(
        srv, dev, opt,
        opt ? offsetof(struct buse_kernel_options, queue_depth) : 0);
}

int buse_server_attach_kernel_sized(struct buse_server *srv, const char *dev,
                                    const struct buse_kernel_options *opt_in,
                                    size_t opt_size)
{
    struct buse_kernel_options opt_copy = {0};
    const struct buse_kernel_options *opt = &opt_copy;
    struct buse_conn *conns[16] = {0};
    int kfds[16];
    unsigned n, i;
    int r = 0;
    /* Read no member beyond what the caller was compiled with. */
    if (opt_in)
        memcpy(&opt_copy, opt_in,
               opt_size < sizeof opt_copy ? opt_size : sizeof opt_copy);
    if (buse_ublk_is_name(dev))
        return attach_ublk(srv, dev, opt, opt->queue_depth);
    n = opt->connections ? opt->connections : 1;
    if (n > 16) {
        buse_err("%s: at most 16 connections per device", dev);
        return -EINVAL;
    }
    if (n > 1 && !(srv->ops.flags & BUSE_CAN_MULTI_CONN)) {
        buse_err("%s: %u connections need BUSE_CAN_MULTI_CONN", dev, n);
        return -EINVAL;
    }
    defer_signals(srv);
    struct buse_kattach *ka = calloc(1, sizeof *ka);
    if (!ka)
        return -ENOMEM;
    for (i = 0; i < n && r == 0; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
            r = -errno;
            buse_err("%s: socketpair: %s", dev, strerror(-r));
            break;
        }
        kfds[i] = sv[1];
        conns[i] = conn_new(srv, sv[0]);
        if (!conns[i]) {
            close(sv[0]);
            close(sv[1]);
            r = -ENOMEM;
            break;
        }
        conns[i]->kernel = 1;
        conns[i]->fixed = 1;
        r = buse_open_export(conns[i],
                             opt->export_name ? opt->export_name : "");
        if (r < 0) {
            buse_err("%s: export \"%s\": %s", dev,
                     opt->export_name ? opt->export_name : "", strerror(-r));
            close(kfds[i]);
            close(conns[i]->fd);
            conn_free(conns[i]);
            conns[i] = NULL;
        }
    }
    if (r == 0) {
        struct buse_kdev_params p = {
            .dev = dev,
            .fds = kfds,
            .nfds = n,
            .size = conns[0]->exp.size,
            .blksize = srv->ops.blksize ? srv->ops.blksize : 512,
            .nbd_flags = conns[0]->tflags,
            .timeout = opt->timeout,
            .force_ioctl = opt->force_ioctl,
        };
        r = buse_kdev_attach(&p, &ka->kd);
    }
    for (i = 0; i < n && conns[i]; i++)
        close(kfds[i]); /* the kernel holds its own reference */
    if (r < 0) {
        for (i = 0; i < n && conns[i]; i++) {
            buse_close_export(conns[i]);
            close(conns[i]->fd);
            conn_free(conns[i]);
        }
        free(ka);
        return r;
    }
    kdev_register(srv, ka);
    for (i = 0; i < n; i++)
        conn_start(srv, conns[i]);
    buse_debug("%s: attached with %u connection(s)", dev, n);
    return 0;
}

/* Is fd a TCP listener on an address other than loopback?  If so, its
 * address is written to buf. */
static int tcp_not_loopback(int fd, char *buf, size_t len)
{
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    char a[INET6_ADDRSTRLEN] = "?";
    if (getsockname(fd, (struct sockaddr *)&sa, &sl) < 0)
        return 0;
    if (sa.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&sa;
        if ((ntohl(in->sin_addr.s_addr) >> 24) == 127)
            return 0;
        inet_ntop(AF_INET, &in->sin_addr, a, sizeof a);
        snprintf(buf, len, "%s:%u", a, ntohs(in->sin_port));
        return 1;
    }
    if (sa.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&sa;
        const struct in6_addr *ad = &in6->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(ad) ||
            (IN6_IS_ADDR_V4MAPPED(ad) && ad->s6_addr[12] == 127))
            return 0;
        inet_ntop(AF_INET6, ad, a, sizeof a);
        snprintf(buf, len, "[%s]:%u", a, ntohs(in6->sin6_port));
        return 1;
    }
    return 0;
}

/* One line, once per run(), when plaintext NBD is open to the network:
 * anyone who reaches such a port may read and write every export it
 * serves (and see them listed). */
static void warn_plaintext_tcp(const struct buse_server *srv)
{
    char first[INET6_ADDRSTRLEN + 16];
    unsigned n = 0;
    if (srv->tls_mode == BUSE_TLS_REQUIRE)
        return;
    for (unsigned i = 0; i < srv->nlisten; i++) {
        char a[INET6_ADDRSTRLEN + 16];
        if (srv->listen_paths[i] ||
            !tcp_not_loopback(srv->listen_fds[i], a, sizeof a))
            continue;
        if (n++ == 0)
            memcpy(first, a, sizeof first);
    }
    if (n == 0)
        return;
    char more[32] = "";
    if (n > 1)
        snprintf(more, sizeof more, " (and %u more)", n - 1);
    buse_err("warning: TCP %s%s is not loopback and TLS is %s: NBD clients "
             "on the network get plaintext access to the exports (require "
             "TLS; see doc/security.md)",
             first, more, srv->tls_mode == BUSE_TLS_ON ? "optional" : "off");
}

static struct buse_server *volatile signal_srv;

static void on_signal(int sig)
{
    struct buse_server *srv = signal_srv;
    (void)sig;
    if (srv)
        buse_server_stop(srv);
}

void buse_server_stop(struct buse_server *srv)
{
    atomic_fetch_add(&srv->stop_requests, 1);
    wake(srv);
}

static void drain_wake(struct buse_server *srv)
{
    char b[64];
    while (read(srv->wake[0], b, sizeof b) > 0)
        ;
}

int buse_server_run(struct buse_server *srv)
{
    struct pollfd pfd[BUSE_MAX_LISTENERS + 1];
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    struct sigaction old_int, old_term;
    unsigned i;
    int stops_at_exit, busy;

    if (srv->nlisten == 0 && !srv->had_fixed) {
        buse_err("buse_server_run: nothing to serve (no listener, no "
                 "kernel device, no client)");
        return -EINVAL;
    }
    warn_plaintext_tcp(srv);
    signal_srv = srv;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    atomic_store(&srv->running, 1);
    /* Signals held since attach_kernel() are delivered now, to on_signal. */
    pthread_sigmask(SIG_UNBLOCK, &srv->deferred_signals, NULL);
    sigemptyset(&srv->deferred_signals);

    for (;;) {
        if (atomic_load(&srv->stop_requests) > 0)
            break;
        pthread_mutex_lock(&srv->lock);
        int fixed_done =
            srv->nlisten == 0 && srv->had_fixed && srv->fixed_conns == 0;
        pthread_mutex_unlock(&srv->lock);
        if (fixed_done)
            break;
        pfd[0] = (struct pollfd){.fd = srv->wake[0], .events = POLLIN};
        for (i = 0; i < srv->nlisten; i++)
            pfd[i + 1] =
                (struct pollfd){.fd = srv->listen_fds[i], .events = POLLIN};
        if (poll(pfd, srv->nlisten + 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            buse_err("poll: %s", strerror(errno));
            break;
        }
        if (pfd[0].revents)
            drain_wake(srv);
        for (i = 0; i < srv->nlisten; i++)
            if (pfd[i + 1].revents & POLLIN)
                accept_one(srv, srv->listen_fds[i]);
    }
    stops_at_exit = atomic_load(&srv->stop_requests);
    buse_debug("shutting down");

    /* No new clients; socket files go away now. */
    for (i = 0; i < srv->nlisten; i++) {
        close(srv->listen_fds[i]);
        if (srv->listen_paths[i])
            unlink(srv->listen_paths[i]);
        free(srv->listen_paths[i]);
    }
    srv->nlisten = 0;

    /* Release kernel devices, then close every connection. */
    pthread_mutex_lock(&srv->lock);
    struct buse_kattach *kdevs = srv->kdevs;
    srv->kdevs = NULL;
    pthread_mutex_unlock(&srv->lock);
    struct buse_kattach *ublks = NULL; /* freed once their threads end */
    while (kdevs) {
        struct buse_kattach *next = kdevs->next;
        if (kdevs->ublk) {
            buse_ublk_stop(kdevs->ublk); /* its connection then ends */
            kdevs->next = ublks;
            ublks = kdevs;
        } else {
            buse_kdev_detach(kdevs->kd);
            free(kdevs);
        }
        kdevs = next;
    }
    pthread_mutex_lock(&srv->lock);
    for (struct buse_conn *c = srv->conns; c; c = c->next) {
        c->killed = 1;
        if (c->fd >= 0)
            shutdown(c->fd, SHUT_RDWR);
    }
    pthread_mutex_unlock(&srv->lock);

    for (;;) {
        pthread_mutex_lock(&srv->lock);
        busy = (int)srv->nconns;
        pthread_mutex_unlock(&srv->lock);
        if (busy == 0)
            break;
        if (atomic_load(&srv->stop_requests) > stops_at_exit) {
            buse_err("forced shutdown with %d connection(s) still busy", busy);
            break;
        }
        struct pollfd w = {.fd = srv->wake[0], .events = POLLIN};
        if (poll(&w, 1, 100) > 0)
            drain_wake(srv);
    }

    while (ublks) {
        struct buse_kattach *next = ublks->next;
        if (busy == 0) /* else a queue may still run: leak it */
            buse_ublk_free(ublks->ublk);
        free(ublks);
        ublks = next;
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    signal_srv = NULL;
    atomic_store(&srv->running, 0);
    return 0;
}

int buse_server_disconnect(struct buse_server *srv, const char *name)
{
    int n = 0, waiting;
    pthread_mutex_lock(&srv->lock);
    for (struct buse_conn *c = srv->conns; c; c = c->next) {
        if (c->killed)
            continue;
        if (name && !(c->in_transmission && c->export_name &&
                      strcmp(c->export_name, name) == 0))
            continue;
        c->killed = 1;
        if (c->ublk)
            buse_ublk_stop(c->ublk); /* /dev/ublkbN goes; its thread ends */
        else
            shutdown(c->fd, SHUT_RDWR);
        n++;
    }
    do {
        waiting = 0;
        for (struct buse_conn *c = srv->conns; c; c = c->next)
            if (c->killed && (!name || (c->export_name &&
                                        strcmp(c->export_name, name) == 0)))
                waiting = 1;
        if (waiting)
            pthread_cond_wait(&srv->cond, &srv->lock);
    } while (waiting);
    pthread_mutex_unlock(&srv->lock);
    return n;
}

int buse_server_connections(struct buse_server *srv, const char *name)
{
    int n = 0;
    pthread_mutex_lock(&srv->lock);
    for (struct buse_conn *c = srv->conns; c; c = c->next)
        if (c->in_transmission &&
            (!name || (c->export_name && strcmp(c->export_name, name) == 0)))
            n++;
    pthread_mutex_unlock(&srv->lock);
    return n;
}

void buse_server_free(struct buse_server *srv)
{
    if (!srv)
        return;
    /* run() never came: ublk devices stop, their connections end. */
    pthread_mutex_lock(&srv->lock);
    for (struct buse_kattach *ka = srv->kdevs; ka; ka = ka->next)
        if (ka->ublk)
            buse_ublk_stop(ka->ublk);
    for (;;) {
        int ublk_busy = 0;
        for (struct buse_conn *c = srv->conns; c; c = c->next)
            ublk_busy |= c->ublk != NULL;
        if (!ublk_busy)
            break;
        pthread_cond_wait(&srv->cond, &srv->lock);
    }
    unsigned busy = srv->nconns;
    pthread_mutex_unlock(&srv->lock);
    if (busy)
        return; /* forced shutdown: threads still use it; leak it */
    for (unsigned i = 0; i < srv->nlisten; i++) {
        close(srv->listen_fds[i]);
        if (srv->listen_paths[i])
            unlink(srv->listen_paths[i]);
        free(srv->listen_paths[i]);
    }
    while (srv->kdevs) {
        struct buse_kattach *next = srv->kdevs->next;
        if (srv->kdevs->ublk)
            buse_ublk_free(srv->kdevs->ublk);
        else
            buse_kdev_detach(srv->kdevs->kd);
        free(srv->kdevs);
        srv->kdevs = next;
    }
    /* run() never came: devices released, give back the held signals. */
    pthread_sigmask(SIG_UNBLOCK, &srv->deferred_signals, NULL);
    close(srv->wake[0]);
    close(srv->wake[1]);
    pthread_mutex_destroy(&srv->lock);
    pthread_mutex_destroy(&srv->serial_lock);
    pthread_cond_destroy(&srv->cond);
    buse_tls_creds_free(srv->tls_creds);
    free(srv);
}

int buse_main_sized(const char *dev_file, const struct buse_operations *ops,
                    size_t ops_size, void *userdata)
{
    struct buse_server *srv = buse_server_new_sized(ops, ops_size, userdata);
    int r;
    if (!srv)
        return -errno;
    r = buse_server_attach_kernel_sized(srv, dev_file, NULL, 0);
    if (r == 0)
        r = buse_server_run(srv);
    buse_server_free(srv);
    return r;
}
