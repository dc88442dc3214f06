/* exports.h: the glue between libbuse and the chunk store (busesnap).
 *
 * Every volume and snapshot of the image is an NBD export under its name
 * or UUID; "" is the default volume.  Each NBD connection (or kernel
 * device) that opens an export gets its own store_vol, and is recorded in
 * a registry so that the control server can tell which objects are served
 * to how many clients, refuse rollback/delete of a served volume, and
 * disconnect those clients on --force.  The registry lock is held across
 * a control operation's check-then-act so that no client can slip in.
 */
#ifndef BUSESNAP_EXPORTS_H
#define BUSESNAP_EXPORTS_H

#include <pthread.h>
#include <uuid/uuid.h>

#include "buse.h"
#include "store/store.h"

struct exp_handle; /* one open export (private to exports.c) */

struct exports {
    struct store *st;
    const char *image;       /* path, for messages */
    struct buse_server *srv; /* set once the server exists */
    pthread_mutex_t lock;    /* protects list */
    struct exp_handle *list; /* open handles */
};

/* Initialise ex for st (not owned) and fill ops with the callbacks. */
void exports_init(struct exports *ex, struct store *st, const char *image,
                  struct buse_operations *ops);
void exports_destroy(struct exports *ex);

/* Resolve "" to the default volume, any other string to the object it
 * names (name or UUID).  Returns 0 or -ENOENT (message in store_errmsg or
 * written to msg). */
int exports_resolve(struct store *st, const char *name,
                    struct store_obj_info *out);

/* The caller must hold ex->lock for the next two. */
/* Number of open handles of the object uuid; when names is not NULL,
 * writes the distinct export names they opened (quoted, comma-separated)
 * into names (truncated to len). */
int exports_count_locked(struct exports *ex, const uuid_t uuid, char *names,
                         size_t len);

/* Disconnect every client of object uuid (ex->lock NOT held: it waits for
 * their close callbacks, which take the lock).  Returns the number of
 * connections closed, or -errno. */
int exports_disconnect(struct exports *ex, const uuid_t uuid);

#endif
