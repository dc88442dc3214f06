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
struct exp_attr;   /* attributes of an export (attrs.h) */
struct exp_eph;    /* a live ephemeral clone (private to exports.c) */

struct exports {
    struct store *st;
    const char *image;       /* path, for messages */
    struct buse_server *srv; /* set once the server exists */
    pthread_mutex_t lock;    /* protects everything below */
    struct exp_handle *list; /* open handles */
    /* The default volume, export "" (attrs.c): none when has_default is
     * 0, or when default_uuid names no volume. */
    int has_default;
    uuid_t default_uuid;
    struct exp_attr *attrs; /* read-only flags, allowed identities */
    char *attrs_path;       /* the sidecar, or NULL: memory only */
    struct exp_eph *eph;    /* live ephemeral clones */
    unsigned eph_seq;       /* numbers their store names */
};

/* Initialise ex for st (not owned) and fill ops with the callbacks.  The
 * default volume is the store's until attrs_attach() loads a sidecar. */
void exports_init(struct exports *ex, struct store *st, const char *image,
                  struct buse_operations *ops);
void exports_destroy(struct exports *ex);

/* Resolve "" to the default volume, any other string to the object it
 * names (name or UUID); out->is_default says whether it is busesnap's
 * default (not the store's).  Returns 0 or -ENOENT (message in
 * store_errmsg, or on stderr for "" without a default).  The first takes
 * ex->lock, the second needs it held. */
int exports_resolve(struct exports *ex, const char *name,
                    struct store_obj_info *out);
int exports_resolve_locked(struct exports *ex, const char *name,
                           struct store_obj_info *out);
/* Set info->is_default from busesnap's default (ex->lock held). */
void exports_mark_default_locked(const struct exports *ex,
                                 struct store_obj_info *info);

/* The caller must hold ex->lock for the next four. */
/* Number of open handles that asked for export name (e.g. ""). */
int exports_count_name_locked(struct exports *ex, const char *name);
/* Number of open handles of uuid that new attributes would refuse (a
 * client whose identity is not in allow, when nallow) or turn read-only
 * (a read-write client, when read_only).  Kernel devices count only for
 * read_only. */
int exports_affected_locked(struct exports *ex, const uuid_t uuid,
                            int read_only, char *const *allow, size_t nallow);
/* Number of open handles of the object uuid; when names is not NULL,
 * writes the distinct export names they opened (quoted, comma-separated)
 * into names (truncated to len). */
int exports_count_locked(struct exports *ex, const uuid_t uuid, char *names,
                         size_t len);

/* Ephemeral clones.  Opening export "SNAP@ephemeral" makes a writable
 * clone of snapshot SNAP private to that connection; "SNAP@ephemeral:ID"
 * makes one shared by every connection that names the same SNAP and ID
 * (multi-conn clients).  The clone is deleted when its last connection
 * closes.  Its store name holds '@' (SNAP@ephemeral:ID, or
 * SNAP@ephemeral@N for a private one, @ephemeral@N when that is too
 * long), which no other object's may (control-ops.c refuses it): so a
 * server that died with clones alive finds them at its next start.
 *
 * Delete every volume whose name holds '@' (the clones a previous server
 * left behind), one line on stderr for each.  Call before serving. */
void exports_sweep_ephemeral(struct exports *ex);
/* Is uuid a live ephemeral clone (made by this server and neither
 * deleted nor kept)?  ex->lock held. */
int exports_is_ephemeral_locked(struct exports *ex, const uuid_t uuid);
/* Turn the live ephemeral clone uuid into a normal volume named newname
 * (bsnap keep): renamed in the store, no longer deleted on close.  0, or
 * -ENOENT if uuid is not a live ephemeral clone, or the store's -errno
 * (message in store_errmsg).  ex->lock held. */
int exports_keep_locked(struct exports *ex, const uuid_t uuid,
                        const char *newname);

/* Disconnect every client of object uuid (ex->lock NOT held: it waits for
 * their close callbacks, which take the lock).  Returns the number of
 * connections closed, or -errno. */
int exports_disconnect(struct exports *ex, const uuid_t uuid);

#endif
