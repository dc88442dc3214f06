/* buse.h: libbuse, block devices in user space, served over NBD.
 *
 * This header is the manual.  A program fills a struct buse_operations with
 * callbacks (read, write, flush, trim, ...) and hands it to libbuse, which
 * serves those callbacks either to the Linux kernel as /dev/nbdN or to any
 * NBD client (qemu, nbd-client, libnbd tools) over a Unix or TCP socket,
 * speaking the fixed-newstyle NBD protocol.
 *
 * Source compatibility with BUSE (2011): the first eight members of
 * struct buse_operations and buse_main() keep BUSE's names, types and
 * meaning, so a BUSE program compiles unchanged.  Everything libbuse adds is
 * appended after them and is optional.
 *
 * Versioning (the nbdkit way): buse_main() and buse_server_new() are macros
 * that pass sizeof(struct buse_operations) as the caller compiled it.  New
 * members are only ever appended; the library reads no member beyond the
 * size the caller was compiled with, so a program built against an older
 * header keeps working with a newer library.
 *
 * Errors: every function returns 0 (or a count) on success and a negative
 * errno on failure, after writing one line naming the failure to stderr
 * (prefixed "libbuse: ").  Callbacks return 0 or a negative errno; the
 * errno reaches the NBD client encoded as the protocol requires (EPERM,
 * EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN; anything
 * else becomes EIO, which is what the specification asks).
 *
 * Threads: unless BUSE_SERIALIZE is set, data callbacks are called from
 * libbuse's worker threads, several at a time (several per connection and
 * several connections), so they must be thread-safe.  Replies may go out of
 * order.  list_exports, open and close are called from the thread that
 * serves the handshake of the connection concerned.
 *
 * This header compiles as C99 and as C++.
 */
#ifndef BUSE_H
#define BUSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BUSE_API_VERSION 2
#define BUSE_VERSION_STRING "2.0.0"

/* Flags passed to write_flags, trim_flags and write_zeroes. */
/* Durable before the reply is sent. */
#define BUSE_FLAG_FUA (1u << 0)
/* write_zeroes: the range must not become a hole. */
#define BUSE_FLAG_NO_HOLE (1u << 1)
/* write_zeroes: fail with -ENOTSUP rather than be slower than a write. */
#define BUSE_FLAG_FAST_ZERO (1u << 2)

/* Extent flags for block_status: the values of NBD's base:allocation. */
#define BUSE_EXTENT_HOLE (1u << 0) /* not allocated */
#define BUSE_EXTENT_ZERO (1u << 1) /* reads as zeros */

/* Capability flags for buse_operations.flags. */
/* Every connection sees the same data and a flush on one connection covers
 * writes completed on all of them: advertised as NBD_FLAG_CAN_MULTI_CONN,
 * and required for several kernel sockets per device. */
#define BUSE_CAN_MULTI_CONN (1u << 0)
/* Call data callbacks one at a time, in request order (BUSE's model). */
#define BUSE_SERIALIZE (1u << 1)
/* Every export is read-only. */
#define BUSE_READONLY (1u << 2)
/* Refuse NBD_OPT_LIST (NBD_REP_ERR_POLICY): clients must know the names. */
#define BUSE_NO_LIST (1u << 3)

/* An export as open() describes it.  libbuse zeroes it, sets size from
 * buse_operations.size before calling open(), and reads it back. */
struct buse_export {
    void *handle;            /* passed as the userdata argument of every
                                data callback on this connection */
    uint64_t size;           /* bytes */
    int readonly;            /* nonzero: writes get EPERM, no write flags */
    const char *description; /* NBD_INFO_DESCRIPTION, or NULL; must live
                                until close(handle) */

    /* Who asks (set by libbuse before open(); read them, do not change
     * them; strings valid during open() only): */
    int tls;                  /* the connection runs TLS */
    const char *tls_identity; /* the client's authenticated TLS identity:
                                 its PSK username, or the subject DN
                                 (RFC 4514) of its verified certificate;
                                 NULL when it has none */
    int kernel;               /* a kernel device (attach_kernel), no
                                 network client */

    /* Optional, set by open(): */
    int no_multi_conn; /* nonzero: do not advertise NBD_FLAG_CAN_MULTI_CONN
                          on this connection even with BUSE_CAN_MULTI_CONN
                          (another connection to the same name would not
                          see the same disk) */
};

/* Opaque collectors handed to callbacks. */
struct buse_extents;
struct buse_export_list;

/* block_status: describe [offset, offset+length) with flags.  Extents must
 * be added in order, contiguous, starting at the requested offset.  Returns
 * 0, or -E2BIG once enough extents are collected (stop adding then; that
 * is not an error to report).  Only valid during the callback. */
int buse_add_extent(struct buse_extents *extents, uint64_t offset,
                    uint64_t length, uint32_t flags);

/* list_exports: add one export name (and optional description) to the
 * NBD_OPT_LIST reply.  Strings are copied.  Returns 0 or -errno. */
int buse_add_export(struct buse_export_list *list, const char *name,
                    const char *description);
/* list_exports: the listing client's TLS identity (as in struct
 * buse_export), or NULL; *tls (if not NULL) is set to whether the
 * connection runs TLS.  So that a list shows only what the client may open.
 * Valid during the callback only. */
const char *buse_export_list_peer(const struct buse_export_list *list,
                                  int *tls);

struct buse_operations {
    /* ---- BUSE 1 members (unchanged names, types and order) ---- */

    /* Required.  Fill buf with len bytes from offset.  offset+len is within
     * the export.  Worker thread. */
    int (*read)(void *buf, uint32_t len, uint64_t offset, void *userdata);
    /* Optional (absent: the export is read-only).  Worker thread. */
    int (*write)(const void *buf, uint32_t len, uint64_t offset,
                 void *userdata);
    /* Optional.  The client sent NBD_CMD_DISC on this connection. */
    void (*disc)(void *userdata);
    /* Optional (absent: NBD_FLAG_SEND_FLUSH is not advertised, and FUA is
     * only advertised if write_flags exists).  Everything completed before
     * must be durable on return.  Worker thread. */
    int (*flush)(void *userdata);
    /* Optional (absent, and trim_flags absent: no NBD_FLAG_SEND_TRIM).
     * A hint: the range may read back as anything afterwards. */
    int (*trim)(uint64_t from, uint32_t len, void *userdata);
    /* Size in bytes; or set blksize and size_blocks (BUSE's either/or). */
    uint64_t size;
    uint32_t blksize; /* logical block size given to the kernel (default
                         512 for the kernel, and the preferred block size
                         advertised to clients, default 4096) */
    uint64_t size_blocks;

    /* ---- libbuse 2 members (all optional) ---- */

    /* write with flags (BUSE_FLAG_FUA).  Preferred over write when set.
     * Without it, FUA is emulated by write + flush. */
    int (*write_flags)(const void *buf, uint32_t len, uint64_t offset,
                       uint32_t flags, void *userdata);
    /* trim with a 64-bit length and flags (FUA).  Preferred over trim.  A
     * single call may cover the whole device. */
    int (*trim_flags)(uint64_t offset, uint64_t len, uint32_t flags,
                      void *userdata);
    /* Make the range read as zeros (flags: FUA, NO_HOLE, FAST_ZERO).
     * Present: NBD_FLAG_SEND_WRITE_ZEROES and NBD_FLAG_SEND_FAST_ZERO are
     * advertised.  Absent: libbuse emulates WRITE_ZEROES by writing zero
     * buffers (and answers FAST_ZERO requests with ENOTSUP). */
    int (*write_zeroes)(uint64_t offset, uint64_t len, uint32_t flags,
                        void *userdata);
    /* Prefetch hint (NBD_CMD_CACHE).  Absent: libbuse answers CACHE by
     * reading and discarding. */
    int (*cache)(uint64_t offset, uint64_t len, void *userdata);
    /* Describe allocation of [offset, offset+len) with buse_add_extent.
     * Present: base:allocation is offered.  Absent: base:allocation is
     * still offered and reports everything as allocated data. */
    int (*block_status)(uint64_t offset, uint64_t len,
                        struct buse_extents *extents, void *userdata);

    /* Several exports from one server.  list_exports answers NBD_OPT_LIST;
     * absent, the only export is "" (named "" in the list).  Called with
     * the server userdata. */
    int (*list_exports)(struct buse_export_list *list, void *userdata);
    /* A client chose export `name` (NBD_OPT_GO / INFO / EXPORT_NAME, or a
     * kernel device attach).  Fill *exp; return 0, -ENOENT for an unknown
     * export, or another -errno.  Called with the server userdata.  Absent:
     * every name is accepted and served with the server userdata. */
    int (*open)(const char *name, struct buse_export *exp, void *userdata);
    /* The connection that opened `handle` is gone (after its last callback
     * returned).  Called once per successful open that set a handle. */
    void (*close)(void *handle);

    uint32_t flags;     /* BUSE_CAN_MULTI_CONN | BUSE_SERIALIZE | ... */
    uint32_t min_block; /* NBD_INFO_BLOCK_SIZE minimum (default 1) */
    uint32_t max_block; /* maximum payload (default and cap 32 MiB) */
    unsigned threads;   /* worker threads per connection (default 8) */
};

/* ------------------------------------------------------------------ */
/* The simple entry points.                                            */

/* BUSE's entry point: attach the callbacks to the kernel device dev_file
 * (for example "/dev/nbd0", or "/dev/ublkb0" for the ublk driver: see
 * buse_server_attach_kernel) and serve until the device is disconnected
 * (nbd-client -d, or SIGINT/SIGTERM, which disconnect and release or
 * delete the device).  Returns 0 after a clean disconnect, or -errno.
 * Needs root and the nbd (or ublk_drv) kernel module. */
int buse_main_sized(const char *dev_file, const struct buse_operations *ops,
                    size_t ops_size, void *userdata);
#define buse_main(dev_file, ops, userdata)                                     \
    buse_main_sized((dev_file), (ops), sizeof *(ops), (userdata))

/* ------------------------------------------------------------------ */
/* The server object: several listeners, kernel devices and exports.   */

struct buse_server; /* opaque */

/* Create a server for ops (copied; userdata is passed to list_exports and
 * open, and to data callbacks when there is no open).  Returns NULL with
 * errno set (EINVAL with a message naming the missing or bad member). */
struct buse_server *buse_server_new_sized(const struct buse_operations *ops,
                                          size_t ops_size, void *userdata);
#define buse_server_new(ops, userdata)                                         \
    buse_server_new_sized((ops), sizeof *(ops), (userdata))

/* Listen on a Unix socket at path (a stale socket file is replaced; the
 * file is removed when the server ends).  Mode of the socket: 0600
 * unless mode is nonzero. */
int buse_server_listen_unix(struct buse_server *srv, const char *path,
                            unsigned mode);
/* Listen on TCP; host_port is "HOST:PORT", "[V6]:PORT" (the addresses
 * HOST resolves to) or ":PORT" (every address).  run() prints one warning
 * line when a TCP listener on an address other than loopback serves
 * without BUSE_TLS_REQUIRE (plaintext NBD on the network). */
int buse_server_listen_tcp(struct buse_server *srv, const char *host_port);
/* Take the sockets passed by systemd socket activation (LISTEN_PID,
 * LISTEN_FDS).  Returns the number taken (0: none were passed). */
int buse_server_listen_systemd(struct buse_server *srv);

/* Serve one client that is already connected: in_fd is what it sends,
 * out_fd where its replies go.  They may be one socket (the same fd, or
 * two fds of one socket: libnbd's nbd_connect_command gives a socketpair
 * as stdin and stdout) or two pipe ends (ssh's stdin and stdout), which
 * libbuse joins with two copying threads.  libbuse owns both fds from the
 * call on (closed on failure too) and closes them when the client is gone.
 * The handshake starts at once, in its own thread; run() then serves it
 * and, when the server has no listener, returns once this client (and
 * every kernel device) is gone: nbdkit's --single.  Pass duplicates of 0
 * and 1, and point fd 1 elsewhere, so that nothing printed to stdout
 * lands in the protocol stream.  Returns 0 or -errno. */
int buse_server_add_client(struct buse_server *srv, int in_fd, int out_fd);

/* TLS, the NBD way (NBD_OPT_STARTTLS; doc/proto.md, "TLS support"), with
 * GnuTLS.  TLS 1.3 is preferred and 1.2 accepted (the NBD specification
 * requires 1.2 support; a 1.3 client cannot be downgraded, TLS 1.3 guards
 * against that).  See doc/security.md. */
#define BUSE_TLS_OFF 0 /* NOTLS: STARTTLS gets NBD_REP_ERR_POLICY */
#define BUSE_TLS_ON                                                            \
    1 /* SELECTIVETLS: TLS at the client's choice;                             \
         plaintext clients are served too */
#define BUSE_TLS_REQUIRE                                                       \
    2 /* FORCEDTLS: before STARTTLS, every option                              \
         but STARTTLS and ABORT gets                                           \
         NBD_REP_ERR_TLS_REQD (EXPORT_NAME closes);                            \
         NBD_OPT_LIST only for a client with a TLS                             \
         identity */
struct buse_tls_options {
    int mode;                 /* BUSE_TLS_OFF, _ON or _REQUIRE */
    const char *certificates; /* directory with server-cert.pem and
                                 server-key.pem (X.509, PEM), and
                                 ca-cert.pem (required with verify_peer)
                                 and ca-crl.pem (optional), as nbdkit and
                                 qemu read them; or NULL */
    const char *psk_file;     /* "username:hexkey" lines, as psktool
                                 writes them; or NULL.  Read once here. */
    int verify_peer;          /* X.509: require a client certificate
                                 signed by ca-cert.pem; its subject DN is
                                 the client's identity */
    const char *priority;     /* GnuTLS priority string (NULL: libbuse's,
                                 TLS 1.3 then 1.2, no PSK without ECDHE) */
};
/* Set the server's TLS mode and load its credentials (at least one of
 * certificates and psk_file for ON and REQUIRE).  Call before run();
 * opt is copied.  Returns 0 or -errno after one line naming the file at
 * fault (-ENOENT, -EACCES, -EINVAL for a malformed key or certificate).
 * Kernel devices never use TLS. */
int buse_server_set_tls_sized(struct buse_server *srv,
                              const struct buse_tls_options *opt,
                              size_t opt_size);
#define buse_server_set_tls(srv, opt)                                          \
    buse_server_set_tls_sized((srv), (opt), sizeof *(opt))

struct buse_kernel_options {
    unsigned connections;    /* nbd: sockets per device (default 1).
                                ublk: queues, each with its own thread
                                (default one per CPU with
                                BUSE_CAN_MULTI_CONN, else 1).  More than
                                one needs BUSE_CAN_MULTI_CONN. */
    unsigned timeout;        /* nbd: seconds before the kernel gives up
                                on a request (0: kernel default) */
    int force_ioctl;         /* nbd: skip netlink, use the ioctl interface */
    const char *export_name; /* export opened for the device (default "") */
    /* ---- appended in libbuse 2.1 (read only by the _sized call) ---- */
    unsigned queue_depth; /* ublk: requests in flight per queue (default
                             128, at most 4096) */
};
/* Attach export to a kernel block device and serve it there until the
 * server ends, which releases (nbd) or deletes (ublk) the device:
 *  - "/dev/nbdN" through the nbd driver (netlink, else ioctl); "auto" or
 *    "/dev/nbd" for the first free one, named on stderr.
 *  - "/dev/ublkbN" through the ublk driver (Linux 6.0 and later, module
 *    ublk_drv, io_uring): no socket; the callbacks are called from one
 *    thread per queue.  "/dev/ublkb" (or "ublk") lets the kernel pick a
 *    free id, named on stderr.
 * Returns 0 or -errno (-ENODEV with a message naming the module to load
 * and the alternatives when the driver is missing, -EBUSY (nbd) or
 * -EEXIST (ublk) when the device is in use).  Called before
 * buse_server_run(), it blocks SIGINT and SIGTERM in the calling thread
 * until run() (which handles them) or buse_server_free(), so that a signal
 * in between still releases the device.  See doc/kernel.md. */
int buse_server_attach_kernel_sized(struct buse_server *srv, const char *dev,
                                    const struct buse_kernel_options *opt,
                                    size_t opt_size);
#define buse_server_attach_kernel(srv, dev, opt)                               \
    buse_server_attach_kernel_sized((srv), (dev), (opt),                       \
                                    sizeof(struct buse_kernel_options))
/* The same, for programs built before buse_server_attach_kernel became a
 * macro: reads the first four members of opt only. */
int(buse_server_attach_kernel)(struct buse_server *srv, const char *dev,
                               const struct buse_kernel_options *opt);

/* Serve until buse_server_stop(), SIGINT or SIGTERM (the handlers are
 * installed by this call and restored on return; a second signal during
 * shutdown forces it), or, when the server has no listener, until every
 * attached kernel device was disconnected and every client given by
 * buse_server_add_client() is gone.  Returns 0 or -errno. */
int buse_server_run(struct buse_server *srv);
/* Ask run() to return.  Any thread; async-signal-safe. */
void buse_server_stop(struct buse_server *srv);

/* Close every connection that opened export `name` (NULL: all), waiting
 * until their close() callbacks have run.  Returns the number closed.
 * Any thread but a callback's. */
int buse_server_disconnect(struct buse_server *srv, const char *name);
/* Number of connections that currently have export `name` open (NULL:
 * all connections in transmission).  Any thread. */
int buse_server_connections(struct buse_server *srv, const char *name);

/* Free the server after run() returned (or was never called). */
void buse_server_free(struct buse_server *srv);

/* Print one line per request and handshake step to stderr (0: quiet). */
void buse_set_verbose(int level);

#ifdef __cplusplus
}
#endif
#endif /* BUSE_H */
