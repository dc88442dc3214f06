/* attrs.c: what busesnap knows about its exports beyond the store: which
 * volume is the default export "", which exports are read-only, and which
 * TLS identities may open each (doc/security.md).
 *
 * Kept in memory under ex->lock and, once a sidecar path is attached
 * (busesnap serve), in IMAGE-exports.json beside the image, replaced
 * atomically (write a temporary file, fsync, rename, fsync the
 * directory): after a crash the file is the old one or the new one.  Keyed
 * by UUID, so renames keep attributes.  The store has its own notion of
 * the default volume, which it moves to the oldest volume when the
 * default is deleted: busesnap takes it as the default only when no
 * sidecar exists yet and never follows it afterwards, so export "" never
 * changes behind a client's back.  A sidecar that names an object that no
 * longer exists means: no default, no attribute (the safe reading).
 * Invariants: an entry has read_only or a non-empty allow list (others
 * are dropped); identities are strings of 1 to ATTR_ID_MAX bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attrs.h"
#include "exports.h"

#define ATTR_FORMAT "busesnap-exports"
#define ATTR_VERSION 1

static void entry_free(struct exp_attr *a)
{
    for (size_t i = 0; i < a->nallow; i++)
        free(a->allow[i]);
    free(a->allow);
    free(a);
}

void attrs_free(struct exports *ex)
{
    while (ex->attrs) {
        struct exp_attr *next = ex->attrs->next;
        entry_free(ex->attrs);
        ex->attrs = next;
    }
    free(ex->attrs_path);
    ex->attrs_path = NULL;
}

const struct exp_attr *attrs_find_locked(const struct exports *ex,
                                         const uuid_t uuid)
{
    for (const struct exp_attr *a = ex->attrs; a; a = a->next)
        if (uuid_compare(a->uuid, uuid) == 0)
            return a;
    return NULL;
}

int attrs_allows(const struct exp_attr *a, const char *identity)
{
    if (!a || a->nallow == 0)
        return 1;
    if (!identity)
        return 0;
    for (size_t i = 0; i < a->nallow; i++)
        if (strcmp(a->allow[i], identity) == 0)
            return 1;
    return 0;
}

int attrs_check_identity(const char *id, char *msg, size_t len)
{
    size_t n = strlen(id);
    if (n == 0 || n > ATTR_ID_MAX) {
        snprintf(msg, len, "a TLS identity is 1 to %d bytes", ATTR_ID_MAX);
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] < 0x20 || id[i] == 0x7f) {
            snprintf(msg, len,
                     "TLS identity \"%.64s\" has a control "
                     "character",
                     id);
            return -EINVAL;
        }
    return 0;
}

int attrs_set_locked(struct exports *ex, const uuid_t uuid, int read_only,
                     char *const *allow, size_t nallow)
{
    struct exp_attr **pp = &ex->attrs, *a;
    while (*pp && uuid_compare((*pp)->uuid, uuid) != 0)
        pp = &(*pp)->next;
    struct exp_attr *old = *pp;
    if (!read_only && nallow == 0) { /* nothing left to say */
        if (old) {
            *pp = old->next;
            entry_free(old);
        }
        return 0;
    }
    if (!(a = calloc(1, sizeof *a)))
        return -ENOMEM;
    uuid_copy(a->uuid, uuid);
    a->read_only = read_only;
    if (nallow && !(a->allow = calloc(nallow, sizeof *a->allow))) {
        free(a);
        return -ENOMEM;
    }
    for (size_t i = 0; i < nallow; i++) {
        if (!(a->allow[i] = strdup(allow[i]))) {
            entry_free(a);
            return -ENOMEM;
        }
        a->nallow++;
    }
    if (old) {
        a->next = old->next;
        entry_free(old);
    } else {
        a->next = NULL;
    }
    *pp = a;
    return 0;
}

/* ---- the sidecar ---- */

static json_t *to_json(const struct exports *ex)
{
    char id[40];
    json_t *list = json_array(), *j;
    if (!list)
        return NULL;
    for (const struct exp_attr *a = ex->attrs; a; a = a->next) {
        json_t *allow = json_array();
        for (size_t i = 0; allow && i < a->nallow; i++)
            json_array_append_new(allow, json_string(a->allow[i]));
        uuid_unparse_lower(a->uuid, id);
        json_array_append_new(
            list, json_pack("{s:s, s:b, s:o*}", "uuid", id, "read_only",
                            a->read_only, "allow", a->nallow ? allow : NULL));
        if (!a->nallow)
            json_decref(allow);
    }
    if (ex->has_default)
        uuid_unparse_lower(ex->default_uuid, id);
    j = json_pack("{s:s, s:i, s:s?, s:o}", "format", ATTR_FORMAT, "version",
                  ATTR_VERSION, "default", ex->has_default ? id : NULL,
                  "exports", list);
    return j;
}

int attrs_save_locked(struct exports *ex, char *msg, size_t len)
{
    char tmp[4096];
    int fd = -1, r = 0;
    if (!ex->attrs_path)
        return 0; /* in memory only (tests, fuzzing) */
    json_t *j = to_json(ex);
    char *text = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    json_decref(j);
    if (!text) {
        snprintf(msg, len, "%s: out of memory", ex->attrs_path);
        return -ENOMEM;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", ex->attrs_path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    size_t n = strlen(text);
    text[n] = '\n'; /* json_dumps leaves no newline; the NUL is ours */
    if (fd < 0 || write(fd, text, n + 1) != (ssize_t)(n + 1) || fsync(fd) < 0)
        r = -errno;
    if (fd >= 0 && close(fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && rename(tmp, ex->attrs_path) < 0)
        r = -errno;
    free(text);
    if (r < 0) {
        snprintf(msg, len, "%s: %s", ex->attrs_path,
                 strerror(r == -EIO || r == 0 ? EIO : -r));
        unlink(tmp);
        return r;
    }
    /* The rename is durable once the directory is. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", ex->attrs_path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (fsync(dfd) < 0)
            r = -errno;
        close(dfd);
    }
    if (r < 0)
        snprintf(msg, len, "%s: fsync of its directory: %s", ex->attrs_path,
                 strerror(-r));
    return r;
}

/* Parse one "exports" entry of the sidecar into ex. */
static int load_entry(struct exports *ex, json_t *e, char *msg, size_t len)
{
    const char *id = json_string_value(json_object_get(e, "uuid"));
    json_t *allow = json_object_get(e, "allow");
    uuid_t u;
    if (!id || uuid_parse(id, u) < 0 ||
        !json_is_boolean(json_object_get(e, "read_only")) ||
        (allow && !json_is_null(allow) && !json_is_array(allow))) {
        snprintf(msg, len, "an entry of \"exports\" is malformed");
        return -EINVAL;
    }
    size_t n = json_array_size(allow);
    char **v = calloc(n ? n : 1, sizeof *v);
    if (!v)
        return -ENOMEM;
    int r = 0;
    for (size_t i = 0; i < n && r == 0; i++) {
        v[i] = (char *)json_string_value(json_array_get(allow, i));
        if (!v[i]) {
            snprintf(msg, len, "export %s: an identity is not a string", id);
            r = -EINVAL;
        } else {
            r = attrs_check_identity(v[i], msg, len);
        }
    }
    if (r == 0)
        r = attrs_set_locked(
            ex, u, json_is_true(json_object_get(e, "read_only")), v, n);
    free(v);
    return r;
}

int attrs_attach(struct exports *ex, const char *path)
{
    json_error_t jerr;
    char msg[512] = "";
    int r = 0;
    if (!(ex->attrs_path = strdup(path)))
        return -ENOMEM;
    if (access(path, F_OK) < 0 && errno == ENOENT)
        return 0; /* none yet: the store's default, no attributes */
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        fprintf(stderr, "busesnap: %s: %s (line %d)\n", path, jerr.text,
                jerr.line);
        return -EINVAL;
    }
    const char *fmt = json_string_value(json_object_get(j, "format"));
    json_t *ver = json_object_get(j, "version");
    json_t *def = json_object_get(j, "default");
    json_t *list = json_object_get(j, "exports");
    if (!fmt || strcmp(fmt, ATTR_FORMAT) != 0 || !json_is_integer(ver)) {
        snprintf(msg, sizeof msg,
                 "not a busesnap exports file (no "
                 "\"format\":\"" ATTR_FORMAT "\")");
        r = -EINVAL;
    } else if (json_integer_value(ver) != ATTR_VERSION) {
        snprintf(msg, sizeof msg,
                 "version %lld, this busesnap reads version %d",
                 (long long)json_integer_value(ver), ATTR_VERSION);
        r = -EPROTO;
    } else if ((def && !json_is_null(def) && !json_is_string(def)) ||
               !json_is_array(list)) {
        snprintf(msg, sizeof msg, "\"default\" or \"exports\" malformed");
        r = -EINVAL;
    }
    pthread_mutex_lock(&ex->lock);
    ex->has_default = 0;
    if (r == 0 && json_is_string(def)) {
        if (uuid_parse(json_string_value(def), ex->default_uuid) < 0) {
            snprintf(msg, sizeof msg, "\"default\" is not a UUID");
            r = -EINVAL;
        } else {
            ex->has_default = 1;
        }
    }
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        if (r == 0)
            r = load_entry(ex, e, msg, sizeof msg);
    }
    struct store_obj_info o;
    char id[40];
    uuid_unparse_lower(ex->default_uuid, id);
    if (r == 0 && ex->has_default &&
        (store_lookup(ex->st, id, &o) < 0 || o.kind != STORE_VOLUME))
        fprintf(stderr,
                "busesnap: %s: the default volume %s no longer exists: export "
                "\"\" is not served (bsnap default NAME)\n",
                path, id);
    pthread_mutex_unlock(&ex->lock);
    json_decref(j);
    if (r < 0)
        fprintf(stderr, "busesnap: %s: %s\n", path,
                msg[0] ? msg : strerror(-r));
    return r;
}
