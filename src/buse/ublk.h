/* ublk.h: serving a connection's export as /dev/ublkbN (private).
 *
 * The second road to the kernel beside kernel.h's /dev/nbdN: the ublk
 * driver (ublk_drv, Linux 6.0 and later) hands block requests to user
 * space through io_uring, with no socket and no NBD framing, one queue per
 * CPU.  server.c attaches a device with buse_ublk_attach() for a
 * connection whose export is already open (conn->exp), runs
 * buse_ublk_serve() in that connection's thread, and stops it with
 * buse_ublk_stop().  Lifetime: attach -> serve (returns once every queue
 * thread ended) -> free (deletes the device).  stop may come from any
 * thread at any time before free, more than once.  Not installed; include
 * only from src/buse/ (after internal.h).
 */
#ifndef BUSE_UBLK_H
#define BUSE_UBLK_H

struct buse_conn;
struct buse_ublk; /* one ublk device and its queue threads */

/* 1 if dev names a ublk device: "/dev/ublkbN", "ublkbN", or the automatic
 * forms "/dev/ublkb", "ublkb", "ublk" (the kernel picks a free id). */
int buse_ublk_is_name(const char *dev);

/* Add the device (ADD_DEV, SET_PARAMS from conn's export and the server's
 * callbacks), start `queues` queue threads (0: one per CPU; several only
 * with BUSE_CAN_MULTI_CONN) of `depth` tags (0: 128) that call conn's
 * callbacks, and START_DEV.  Returns 0 with *out set and /dev/ublkbN live,
 * or -errno after one line naming the device (-ENODEV: no ublk_drv, with
 * the alternatives; -EEXIST: the id is taken).  Nothing is left behind on
 * failure.  Call with SIGINT/SIGTERM blocked or handled: a signal during
 * the attach must not kill the process with a device half made. */
int buse_ublk_attach(struct buse_conn *conn, const char *dev, unsigned queues,
                     unsigned depth, struct buse_ublk **out);

/* "/dev/ublkbN"; owned by u, valid until buse_ublk_free(). */
const char *buse_ublk_name(const struct buse_ublk *u);

/* Serve until the device stops (buse_ublk_stop(), or someone else stopped
 * or deleted it): joins the queue threads, closes /dev/ublkcN and deletes
 * the device (DEL_DEV).  Called once, from the connection's thread. */
void buse_ublk_serve(struct buse_ublk *u);

/* STOP_DEV: /dev/ublkbN goes away, the kernel aborts the queues' pending
 * commands and serve() returns.  Any thread, repeatable; I/O still in
 * flight is completed first (the queue threads keep serving meanwhile). */
void buse_ublk_stop(struct buse_ublk *u);

/* Free (DEL_DEV first if serve() did not).  Only after serve() returned (or was
 * never called: then it stops and joins the queues itself).  NULL is a no-op.
 */
void buse_ublk_free(struct buse_ublk *u);

#endif
