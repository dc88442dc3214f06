/* control.h: the busesnap control server (private to src/server/).
 *
 * A Unix socket (mode 0600, peers checked with SO_PEERCRED) speaking the
 * newline-framed JSON protocol of doc/control.md, one thread per client,
 * so that a client that hangs never stalls disk I/O or other clients.
 * ctl_start() is called once from main before serving; ctl_stop() after
 * buse_server_run() returned, before the store is closed: it wakes and
 * joins every client thread and removes the socket file.
 */
#ifndef BUSESNAP_CONTROL_H
#define BUSESNAP_CONTROL_H

#include <jansson.h>

#include "exports.h"

#define CTL_PROTOCOL_VERSION 1
#define CTL_MAX_LINE (64 * 1024) /* bytes, newline included */

struct ctl_server; /* opaque */

/* Listen on path (a stale socket from a dead server is replaced; a live
 * one is an error, -EADDRINUSE).  ex must outlive the server. */
int ctl_start(const char *path, struct exports *ex, struct ctl_server **out);
void ctl_stop(struct ctl_server *c);
/* The checks ctl_start() makes first (path length, not a regular file, no
 * live server; a stale socket is removed), so that main can fail before
 * opening or creating the image.  Returns 0 or -errno after a message. */
int ctl_prepare(const char *path);

/* Responses (control.c).  err is a negative errno; the result is a new
 * reference {"ok":false,"error":NAME,"message":...}.  ctl_store_error
 * takes the message of this thread's last store failure. */
json_t *ctl_error(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
json_t *ctl_store_error(int err);
/* Write j and a newline to fd.  Returns 0 or -errno. */
int ctl_send(int fd, json_t *j);

/* Run op (control-ops.c) for a client after its hello; fd is the client's
 * socket (check writes progress lines to it).  Returns the response (a
 * new reference), or NULL for an unknown op. */
json_t *ctl_op(struct exports *ex, const char *op, json_t *req, int fd);

/* JSON views shared by the control server and `busesnap info --json`.
 * New references (the caller owns them); NULL on ENOMEM. */
json_t *ctl_info_json(const char *image, const struct store_info *si);
/* clients/exports may be 0/NULL when nothing is served. */
json_t *ctl_obj_json(const struct store_obj_info *info, int clients,
                     const char *export_names);

#endif
