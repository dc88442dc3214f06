/* internal.h: libbuse's server and connection objects (private).
 *
 * One struct buse_server owns listeners, a wake pipe (signals and
 * buse_server_stop() write to it) and a list of connections.  Each
 * connection has one thread that runs the handshake and then becomes
 * worker 0 of its transmission phase, plus threads-1 more workers.
 * Invariants: a connection is in srv->conns from accept until its close()
 * callback ran and its fd is closed, both under srv->lock; nothing outside
 * its own threads touches conn->fd except shutdown() under srv->lock.
 * Include only from the .c files of src/buse (they define BUSE_INTERNAL).
 */
#ifndef BUSE_INTERNAL_H
#define BUSE_INTERNAL_H

#ifndef BUSE_INTERNAL
#error "internal.h is private to libbuse: include <buse.h> instead"
#endif

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/uio.h>

#include "buse.h"

#define BUSE_MAX_LISTENERS 16

struct buse_kattach;   /* an attached kernel device (server.c) */
struct buse_tls_creds; /* a server's TLS credentials (tls.c) */
struct buse_tls;       /* a connection's TLS session (tls.c) */
struct buse_ublk;      /* a /dev/ublkbN device (ublk.c) */

struct buse_server {
    struct buse_operations ops; /* caller's, zero beyond its ops_size */
    void *userdata;
    uint64_t size;                    /* default export size */
    int tls_mode;                     /* BUSE_TLS_*; set before run() */
    struct buse_tls_creds *tls_creds; /* NULL unless tls_mode */

    int listen_fds[BUSE_MAX_LISTENERS];
    char *listen_paths[BUSE_MAX_LISTENERS]; /* unix path to unlink, or NULL */
    unsigned nlisten;

    int wake[2]; /* pipe: signals, stop(), kernel conn ends */
    /* SIGINT/SIGTERM that attach_kernel blocked in its thread until run()
     * has its handlers (a device is live before run()); empty if none. */
    sigset_t deferred_signals;
    atomic_int stop_requests; /* stop() calls and signals received */
    atomic_int running;

    pthread_mutex_t serial_lock; /* BUSE_SERIALIZE: one callback at a time */
    pthread_mutex_t lock;        /* guards everything below */
    pthread_cond_t cond;         /* a connection left the list */
    struct buse_conn *conns;
    unsigned nconns;
    /* Connections the server was given rather than accepted: kernel
     * devices and clients of buse_server_add_client().  With no listener,
     * run() returns once the last of them is gone. */
    unsigned fixed_conns; /* live ones */
    int had_fixed;
    struct buse_kattach *kdevs;
};

struct buse_conn {
    struct buse_server *srv;
    struct buse_conn *next, *prev; /* srv->conns, under srv->lock */
    int fd;
    int kernel;             /* serving a kernel device: no handshake */
    struct buse_ublk *ublk; /* served as /dev/ublkbN (fd is -1) */
    int fixed;              /* kernel device or add_client(): counted in
                               srv->fixed_conns */
    int killed;             /* disconnect() shut it down (srv->lock) */
    int in_transmission;    /* (srv->lock) */
    char *export_name;      /* the export opened, set before in_transmission */
    int handshake_limit;    /* idle limit of the handshake, seconds (0: none) */
    /* NULL: plaintext.  Set once, by STARTTLS in the handshake thread,
     * before any worker exists; read and written with the conn_* I/O
     * below (recv_lock / send_lock serialise them in transmission). */
    struct buse_tls *tls;

    /* Negotiated in the handshake. */
    int no_zeroes;
    int structured;
    int extended; /* NBD_OPT_EXTENDED_HEADERS (implies structured) */
    int meta_base_allocation;

    /* The open export. */
    struct buse_export exp;
    int opened;
    uint16_t tflags;

    /* Transmission phase. */
    pthread_mutex_t recv_lock; /* one reader of the socket at a time */
    pthread_mutex_t send_lock; /* one reply at a time, never interleaved */
    atomic_int dead;           /* stop reading requests */
    pthread_t thread;
};

/* util.c */
extern int buse_verbose;
void buse_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void buse_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int buse_read_full(int fd, void *buf, size_t len); /* 0, -EIO at EOF */
int buse_write_full(int fd, const void *buf, size_t len);
int buse_writev_full(int fd, struct iovec *iov, int iovcnt);
void buse_put16(unsigned char *p, uint16_t v);
void buse_put32(unsigned char *p, uint32_t v);
void buse_put64(unsigned char *p, uint64_t v);
uint16_t buse_get16(const unsigned char *p);
uint32_t buse_get32(const unsigned char *p);
uint64_t buse_get64(const unsigned char *p);

struct buse_export_entry {
    char *name;
    char *description;
};
struct buse_export_list {
    struct buse_export_entry *v;
    size_t n, cap;
    int tls;                  /* the listing connection's, for */
    const char *tls_identity; /* buse_export_list_peer() */
};
void buse_export_list_free(struct buse_export_list *list);

struct buse_extent {
    uint64_t length;
    uint32_t flags;
};
struct buse_extents {
    uint64_t next; /* where the next extent must start */
    uint64_t end;  /* end of the request */
    struct buse_extent *v;
    unsigned n, max;
};

/* tls.c (see buse_server_set_tls in buse.h).  buse_tls_start runs the
 * TLS handshake on conn->fd after the ACK to NBD_OPT_STARTTLS and sets
 * conn->tls; 0 or -errno (the connection must then close: no way back to
 * plaintext).  buse_tls_end sends close_notify (bounded wait) and frees
 * the session; the caller closes the fd afterwards. */
int buse_tls_start(struct buse_conn *conn);
void buse_tls_end(struct buse_conn *conn);
void buse_tls_creds_free(struct buse_tls_creds *creds);
const char *buse_tls_identity(const struct buse_tls *t); /* or NULL */
int buse_tls_read(struct buse_tls *t, void *buf, size_t len);
int buse_tls_writev(struct buse_tls *t, struct iovec *iov, int iovcnt);

/* A connection's byte stream: TLS once STARTTLS succeeded, the socket
 * otherwise.  On the plaintext path this is one test of a pointer: no
 * copy, no extra system call.  Same returns as buse_read_full etc. */
static inline int buse_conn_read(struct buse_conn *c, void *buf, size_t len)
{
    return c->tls ? buse_tls_read(c->tls, buf, len)
                  : buse_read_full(c->fd, buf, len);
}
static inline int buse_conn_writev(struct buse_conn *c, struct iovec *iov,
                                   int iovcnt)
{
    return c->tls ? buse_tls_writev(c->tls, iov, iovcnt)
                  : buse_writev_full(c->fd, iov, iovcnt);
}
static inline int buse_conn_write(struct buse_conn *c, const void *buf,
                                  size_t len)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return buse_conn_writev(c, &iov, 1);
}
int buse_conn_drain(struct buse_conn *c, uint64_t len);

/* handshake.c: run the fixed-newstyle handshake.  Returns 1 when the
 * connection entered transmission (conn->exp open), 0 when the client
 * ended it cleanly (ABORT), -errno on a protocol or I/O failure. */
int buse_handshake(struct buse_conn *conn);
/* Open export name for conn (fills conn->exp, conn->tflags). */
int buse_open_export(struct buse_conn *conn, const char *name);
void buse_close_export(struct buse_conn *conn);
uint16_t buse_transmission_flags(const struct buse_server *srv,
                                 const struct buse_export *exp);

/* transmission.c: serve requests with the configured worker threads until
 * disconnect, error or shutdown.  Returns when every worker is done. */
void buse_transmission(struct buse_conn *conn);

/* relay.c: copy between a client's separate input and output fds and a
 * new socketpair, whose other end is returned in *conn_fd.  Takes
 * in_fd and out_fd (closed on failure too).  0 or -errno. */
int buse_relay_start(int in_fd, int out_fd, int *conn_fd);

/* server.c */
unsigned buse_threads(const struct buse_server *srv);
uint32_t buse_max_payload(const struct buse_server *srv);

#endif
