/* util.c: small helpers shared by libbuse's protocol files.
 *
 * Socket I/O that survives EINTR and short transfers (and never raises
 * SIGPIPE), big-endian field encoding, the one place error and debug lines
 * are printed, and the two collectors callbacks fill (extents for
 * block_status, names for list_exports).  All functions are thread-safe.
 */
#define BUSE_INTERNAL
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

int buse_verbose;

void buse_set_verbose(int level)
{
    buse_verbose = level;
}

static void vprint(const char *fmt, va_list ap)
{
    char line[1024] = "libbuse: ";
    size_t pre = strlen(line);
    int n = vsnprintf(line + pre, sizeof line - pre - 1, fmt, ap);
    if (n < 0)
        return;
    size_t len = pre + (size_t)n;
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* One write() per line so that lines from threads do not mix. */
    if (write(2, line, len) < 0)
        return;
}

void buse_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprint(fmt, ap);
    va_end(ap);
}

void buse_debug(const char *fmt, ...)
{
    va_list ap;
    if (!buse_verbose)
        return;
    va_start(ap, fmt);
    vprint(fmt, ap);
    va_end(ap);
}

int buse_read_full(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t r = recv(fd, p, len, MSG_WAITALL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ENOTSOCK) {
                r = read(fd, p, len);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r < 0)
                    return -errno;
            } else {
                return -errno;
            }
        }
        if (r == 0)
            return -ECONNRESET;
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

int buse_writev_full(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)iovcnt};
        ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (w < 0 && errno == ENOTSOCK)
            w = writev(fd, iov, iovcnt);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        while (iovcnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

int buse_write_full(int fd, const void *buf, size_t len)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return buse_writev_full(fd, &iov, 1);
}

int buse_conn_drain(struct buse_conn *c, uint64_t len)
{
    char junk[65536];
    while (len > 0) {
        size_t n = len < sizeof junk ? (size_t)len : sizeof junk;
        int r = buse_conn_read(c, junk, n);
        if (r < 0)
            return r;
        len -= n;
    }
    return 0;
}

void buse_put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

void buse_put32(unsigned char *p, uint32_t v)
{
    buse_put16(p, (uint16_t)(v >> 16));
    buse_put16(p + 2, (uint16_t)v);
}

void buse_put64(unsigned char *p, uint64_t v)
{
    buse_put32(p, (uint32_t)(v >> 32));
    buse_put32(p + 4, (uint32_t)v);
}

uint16_t buse_get16(const unsigned char *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

uint32_t buse_get32(const unsigned char *p)
{
    return ((uint32_t)buse_get16(p) << 16) | buse_get16(p + 2);
}

uint64_t buse_get64(const unsigned char *p)
{
    return ((uint64_t)buse_get32(p) << 32) | buse_get32(p + 4);
}

int buse_add_extent(struct buse_extents *ex, uint64_t offset, uint64_t length,
                    uint32_t flags)
{
    if (ex->next >= ex->end)
        return -E2BIG;
    if (offset != ex->next) {
        buse_err("block_status: extent at %llu, expected one at %llu",
                 (unsigned long long)offset, (unsigned long long)ex->next);
        return -EINVAL;
    }
    if (length == 0)
        return 0;
    if (length > ex->end - offset)
        length = ex->end - offset;
    flags &= BUSE_EXTENT_HOLE | BUSE_EXTENT_ZERO;
    if (ex->n > 0 && ex->v[ex->n - 1].flags == flags) {
        ex->v[ex->n - 1].length += length; /* merge with the previous one */
    } else {
        if (ex->n >= ex->max)
            return -E2BIG;
        ex->v[ex->n].length = length;
        ex->v[ex->n].flags = flags;
        ex->n++;
    }
    ex->next += length;
    return ex->next >= ex->end || ex->n >= ex->max ? -E2BIG : 0;
}

int buse_add_export(struct buse_export_list *list, const char *name,
                    const char *description)
{
    if (!name || strlen(name) > 4096) {
        buse_err("list_exports: export name missing or too long");
        return -EINVAL;
    }
    if (list->n == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 8;
        void *v = realloc(list->v, cap * sizeof *list->v);
        if (!v)
            return -ENOMEM;
        list->v = v;
        list->cap = cap;
    }
    struct buse_export_entry *e = &list->v[list->n];
    e->name = strdup(name);
    e->description = description ? strdup(description) : NULL;
    if (!e->name || (description && !e->description)) {
        free(e->name);
        free(e->description);
        return -ENOMEM;
    }
    list->n++;
    return 0;
}

const char *buse_export_list_peer(const struct buse_export_list *list, int *tls)
{
    if (tls)
        *tls = list->tls;
    return list->tls_identity;
}

void buse_export_list_free(struct buse_export_list *list)
{
    for (size_t i = 0; i < list->n; i++) {
        free(list->v[i].name);
        free(list->v[i].description);
    }
    free(list->v);
    list->v = NULL;
    list->n = list->cap = 0;
}
