/* attrs.h: export attributes kept by busesnap beside the store (attrs.c):
 * the default volume (export ""), per-export read-only, and the TLS
 * identities allowed to open an export.  Everything here is under
 * ex->lock (the _locked functions say so) and runs in control or
 * handshake threads.
 */
#ifndef BUSESNAP_ATTRS_H
#define BUSESNAP_ATTRS_H

#include <stddef.h>
#include <uuid/uuid.h>

#define ATTR_ID_MAX 1024 /* bytes of one TLS identity */

struct exports;

/* One object's attributes (absent: read-write, anyone may open it). */
struct exp_attr {
    uuid_t uuid;
    int read_only; /* NBD clients get a read-only export */
    char **allow;  /* nallow identities; nallow == 0: no restriction */
    size_t nallow;
    struct exp_attr *next;
};

/* Load path (IMAGE-exports.json) if it exists, replacing the default
 * taken from the store by exports_init, and save there from now on.
 * Returns 0 or -errno after one line on stderr naming the file. */
int attrs_attach(struct exports *ex, const char *path);
void attrs_free(struct exports *ex);

/* The attributes of uuid, or NULL (valid until the lock is released). */
const struct exp_attr *attrs_find_locked(const struct exports *ex,
                                         const uuid_t uuid);
/* May a client with TLS identity id (NULL: none) open an export with
 * attributes a (NULL: none)? */
int attrs_allows(const struct exp_attr *a, const char *id);
/* Replace uuid's attributes (strings copied); read_only 0 and nallow 0
 * remove the entry.  In memory only: then attrs_save_locked. */
int attrs_set_locked(struct exports *ex, const uuid_t uuid, int read_only,
                     char *const *allow, size_t nallow);
/* Write the sidecar (atomically, durably).  0, or -errno with a message
 * naming the file in msg. */
int attrs_save_locked(struct exports *ex, char *msg, size_t len);
/* Is id acceptable as an identity?  0, or -EINVAL with a message. */
int attrs_check_identity(const char *id, char *msg, size_t len);

#endif
