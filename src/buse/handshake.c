/* handshake.c: the fixed-newstyle NBD handshake, server side.
 *
 * One function per option, in the order doc/proto.md lists them.  A
 * malformed or unknown option gets an error reply and the handshake goes
 * on; only I/O failures, a bad magic, a failed NBD_OPT_EXPORT_NAME and a
 * failed TLS handshake end the connection (the protocol leaves no other
 * way for those).  TLS (doc/proto.md, "TLS support"): with BUSE_TLS_ON
 * the server is in SELECTIVETLS mode with no TLS-only export (the export's
 * open() decides, from the identity it is given), with BUSE_TLS_REQUIRE in
 * FORCEDTLS mode.  Every byte after the ACK to NBD_OPT_STARTTLS goes
 * through the TLS session (conn_* I/O of internal.h).  Runs on the
 * connection's own thread; calls list_exports, open and close there.
 */
#define BUSE_INTERNAL
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "protocol.h"

uint16_t buse_transmission_flags(const struct buse_server *srv,
                                 const struct buse_export *exp)
{
    const struct buse_operations *o = &srv->ops;
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_CACHE;
    if (exp->readonly || (!o->write && !o->write_flags)) {
        f |= NBD_FLAG_READ_ONLY;
    } else {
        if (o->flush)
            f |= NBD_FLAG_SEND_FLUSH;
        if (o->write_flags || o->flush)
            f |= NBD_FLAG_SEND_FUA;
        if (o->trim || o->trim_flags)
            f |= NBD_FLAG_SEND_TRIM;
        f |= NBD_FLAG_SEND_WRITE_ZEROES;
        if (o->write_zeroes)
            f |= NBD_FLAG_SEND_FAST_ZERO;
    }
    if ((o->flags & BUSE_CAN_MULTI_CONN) && !exp->no_multi_conn)
        f |= NBD_FLAG_CAN_MULTI_CONN;
    return f;
}

int buse_open_export(struct buse_conn *conn, const char *name)
{
    struct buse_server *srv = conn->srv;
    memset(&conn->exp, 0, sizeof conn->exp);
    conn->exp.size = srv->size;
    conn->exp.tls = conn->tls != NULL;
    conn->exp.tls_identity = buse_tls_identity(conn->tls);
    conn->exp.kernel = conn->kernel;
    if (srv->ops.open) {
        int r = srv->ops.open(name, &conn->exp, srv->userdata);
        conn->exp.tls_identity = NULL; /* valid during open() only */
        if (r < 0) {
            buse_debug("export \"%s\": open failed: %s", name, strerror(-r));
            return r;
        }
        if (r > 0)
            return -EIO;
    } else {
        conn->exp.handle = srv->userdata;
    }
    if (srv->ops.flags & BUSE_READONLY)
        conn->exp.readonly = 1;
    char *copy = strdup(name);
    conn->opened = 1;
    if (!copy) {
        buse_close_export(conn);
        return -ENOMEM;
    }
    /* disconnect() and connections() read it under srv->lock. */
    pthread_mutex_lock(&srv->lock);
    conn->export_name = copy;
    pthread_mutex_unlock(&srv->lock);
    conn->tflags = buse_transmission_flags(srv, &conn->exp);
    /* Every read is answered with one chunk: DF holds by construction. */
    if (conn->structured)
        conn->tflags |= NBD_FLAG_SEND_DF;
    buse_debug("export \"%s\": opened, %llu bytes, flags 0x%x", name,
               (unsigned long long)conn->exp.size, conn->tflags);
    return 0;
}

void buse_close_export(struct buse_conn *conn)
{
    struct buse_server *srv = conn->srv;
    if (!conn->opened)
        return;
    conn->opened = 0;
    if (srv->ops.open && srv->ops.close && conn->exp.handle)
        srv->ops.close(conn->exp.handle);
    pthread_mutex_lock(&srv->lock);
    char *name = conn->export_name;
    conn->export_name = NULL;
    pthread_mutex_unlock(&srv->lock);
    free(name);
}

/* Send one option reply (header + payload). */
static int send_rep(struct buse_conn *conn, uint32_t opt, uint32_t type,
                    const void *data, size_t len)
{
    unsigned char h[20];
    buse_put64(h, NBD_REP_MAGIC);
    buse_put32(h + 8, opt);
    buse_put32(h + 12, type);
    buse_put32(h + 16, (uint32_t)len);
    struct iovec iov[2] = {{h, sizeof h}, {(void *)data, len}};
    return buse_conn_writev(conn, iov, len ? 2 : 1);
}

/* An error reply with a human-readable message (the spec allows one). */
static int send_err(struct buse_conn *conn, uint32_t opt, uint32_t type,
                    const char *msg)
{
    buse_debug("option %u: error 0x%x: %s", opt, type, msg);
    return send_rep(conn, opt, type, msg, strlen(msg));
}

static uint32_t errno_to_rep(int err)
{
    switch (err) {
    case ENOENT:
        return NBD_REP_ERR_UNKNOWN;
    case EPERM:
    case EACCES:
        return NBD_REP_ERR_POLICY;
    case ESHUTDOWN:
        return NBD_REP_ERR_SHUTDOWN;
    case ENOTSUP:
        return NBD_REP_ERR_UNSUP;
    case E2BIG:
    case EOVERFLOW:
        return NBD_REP_ERR_TOO_BIG;
    default:
        return NBD_REP_ERR_INVALID;
    }
}

static int opt_list(struct buse_conn *conn, uint32_t len)
{
    struct buse_server *srv = conn->srv;
    struct buse_export_list list = {0};
    int r;
    if (len != 0)
        return send_err(conn, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
                        "NBD_OPT_LIST takes no data");
    if (srv->ops.flags & BUSE_NO_LIST)
        return send_err(conn, NBD_OPT_LIST, NBD_REP_ERR_POLICY,
                        "listing exports is disabled on this server");
    list.tls = conn->tls != NULL;
    list.tls_identity = buse_tls_identity(conn->tls);
    /* FORCEDTLS: only a client that proved who it is learns the names. */
    if (srv->tls_mode == BUSE_TLS_REQUIRE && !list.tls_identity)
        return send_err(conn, NBD_OPT_LIST, NBD_REP_ERR_POLICY,
                        "listing exports needs a TLS client identity (a "
                        "pre-shared key or a verified certificate)");
    if (srv->ops.list_exports)
        r = srv->ops.list_exports(&list, srv->userdata);
    else
        r = buse_add_export(&list, "", NULL);
    if (r < 0) {
        buse_export_list_free(&list);
        return send_err(conn, NBD_OPT_LIST, errno_to_rep(-r),
                        "cannot list exports");
    }
    for (size_t i = 0; i < list.n && r == 0; i++) {
        const char *name = list.v[i].name;
        const char *desc = list.v[i].description ? list.v[i].description : "";
        size_t nl = strlen(name), dl = strlen(desc);
        unsigned char *buf = malloc(4 + nl + dl);
        if (!buf) {
            r = -ENOMEM;
            break;
        }
        buse_put32(buf, (uint32_t)nl);
        memcpy(buf + 4, name, nl);
        memcpy(buf + 4 + nl, desc, dl);
        r = send_rep(conn, NBD_OPT_LIST, NBD_REP_SERVER, buf, 4 + nl + dl);
        free(buf);
    }
    buse_export_list_free(&list);
    if (r < 0)
        return r;
    return send_rep(conn, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

static int send_info(struct buse_conn *conn, uint32_t opt, uint16_t type,
                     const void *data, size_t len)
{
    unsigned char buf[2 + NBD_MAX_STRING];
    buse_put16(buf, type);
    memcpy(buf + 2, data, len);
    return send_rep(conn, opt, NBD_REP_INFO, buf, 2 + len);
}

/* NBD_OPT_INFO and NBD_OPT_GO.  Returns 1 when GO entered transmission. */
static int opt_info_go(struct buse_conn *conn, uint32_t opt,
                       const unsigned char *d, uint32_t len)
{
    struct buse_server *srv = conn->srv;
    int want_name = 0, r;
    if (len < 6)
        return send_err(conn, opt, NBD_REP_ERR_INVALID, "option too short");
    uint32_t nl = buse_get32(d);
    if (nl > len - 6)
        return send_err(conn, opt, NBD_REP_ERR_INVALID,
                        "export name length exceeds option length");
    if (nl > NBD_MAX_STRING)
        return send_err(conn, opt, NBD_REP_ERR_TOO_BIG, "export name too long");
    uint16_t nreq = buse_get16(d + 4 + nl);
    if (4 + nl + 2 + 2u * nreq != len)
        return send_err(conn, opt, NBD_REP_ERR_INVALID,
                        "information request count does not match length");
    for (unsigned i = 0; i < nreq; i++)
        if (buse_get16(d + 6 + nl + 2 * i) == NBD_INFO_NAME)
            want_name = 1;
    char name[NBD_MAX_STRING + 1];
    memcpy(name, d + 4, nl);
    name[nl] = 0;
    if (memchr(name, 0, nl))
        return send_err(conn, opt, NBD_REP_ERR_INVALID,
                        "export name contains NUL");

    r = buse_open_export(conn, name);
    if (r < 0) {
        char msg[NBD_MAX_STRING + 64];
        snprintf(msg, sizeof msg, "export \"%s\": %s", name,
                 r == -ENOENT ? "no such export" : strerror(-r));
        return send_err(conn, opt, errno_to_rep(-r), msg);
    }
    unsigned char b[12];
    buse_put64(b, conn->exp.size);
    buse_put16(b + 8, conn->tflags);
    r = send_info(conn, opt, NBD_INFO_EXPORT, b, 10);
    if (r == 0 && want_name)
        r = send_info(conn, opt, NBD_INFO_NAME, name, nl);
    if (r == 0 && conn->exp.description) {
        size_t dl = strlen(conn->exp.description);
        if (dl > NBD_MAX_STRING)
            dl = NBD_MAX_STRING;
        r = send_info(conn, opt, NBD_INFO_DESCRIPTION, conn->exp.description,
                      dl);
    }
    if (r == 0) {
        uint32_t pref = srv->ops.blksize >= 512 ? srv->ops.blksize : 4096;
        uint32_t min = srv->ops.min_block ? srv->ops.min_block : 1;
        if (pref < min)
            pref = min;
        buse_put32(b, min);
        buse_put32(b + 4, pref);
        buse_put32(b + 8, buse_max_payload(srv));
        r = send_info(conn, opt, NBD_INFO_BLOCK_SIZE, b, 12);
    }
    if (r == 0)
        r = send_rep(conn, opt, NBD_REP_ACK, NULL, 0);
    if (r < 0 || opt == NBD_OPT_INFO) {
        buse_close_export(conn);
        return r;
    }
    return 1;
}

static int opt_meta(struct buse_conn *conn, uint32_t opt,
                    const unsigned char *d, uint32_t len)
{
    int set = opt == NBD_OPT_SET_META_CONTEXT;
    uint32_t pos, nq, i;
    if (!conn->structured)
        return send_err(conn, opt, NBD_REP_ERR_INVALID,
                        "structured replies were not negotiated");
    if (len < 8 || buse_get32(d) > len - 8)
        return send_err(conn, opt, NBD_REP_ERR_INVALID, "option too short");
    pos = 4 + buse_get32(d);
    nq = buse_get32(d + pos);
    pos += 4;
    /* Validate the whole option before answering any of it. */
    uint32_t p = pos;
    for (i = 0; i < nq; i++) {
        if (len - p < 4 || buse_get32(d + p) > len - p - 4)
            return send_err(conn, opt, NBD_REP_ERR_INVALID,
                            "query length exceeds option length");
        p += 4 + buse_get32(d + p);
    }
    if (p != len)
        return send_err(conn, opt, NBD_REP_ERR_INVALID,
                        "trailing data after queries");
    if (set)
        conn->meta_base_allocation = 0;
    const char ctx[] = NBD_CONTEXT_BASE_ALLOCATION;
    unsigned char rep[4 + sizeof ctx];
    buse_put32(rep, NBD_CONTEXT_ID_BASE_ALLOCATION);
    memcpy(rep + 4, ctx, sizeof ctx - 1);
    int match = nq == 0 && !set;
    for (i = 0, p = pos; i < nq; i++) {
        uint32_t ql = buse_get32(d + p);
        const char *q = (const char *)d + p + 4;
        p += 4 + ql;
        if (ql == sizeof ctx - 1 && memcmp(q, ctx, ql) == 0)
            match = 1;
        else if (!set && ql == 5 && memcmp(q, "base:", 5) == 0)
            match = 1;
    }
    if (match) {
        int r = send_rep(conn, opt, NBD_REP_META_CONTEXT, rep, sizeof rep - 1);
        if (r < 0)
            return r;
        if (set)
            conn->meta_base_allocation = 1;
    }
    return send_rep(conn, opt, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_EXPORT_NAME: success enters transmission; failure must close. */
static int opt_export_name(struct buse_conn *conn, const unsigned char *d,
                           uint32_t len)
{
    char name[NBD_MAX_STRING + 1];
    if (len > NBD_MAX_STRING) {
        buse_err("client: export name too long (%u bytes)", len);
        return -EINVAL;
    }
    /* Strings never hold NUL (doc/proto.md): "\0junk" must not open "". */
    if (memchr(d, 0, len)) {
        buse_err("client: export name contains NUL, closing the connection");
        return -EINVAL;
    }
    memcpy(name, d, len);
    name[len] = 0;
    int r = buse_open_export(conn, name);
    if (r < 0) {
        buse_err("export \"%s\": %s (closing the connection, as "
                 "NBD_OPT_EXPORT_NAME requires)",
                 name, r == -ENOENT ? "no such export" : strerror(-r));
        return r;
    }
    unsigned char b[10 + 124] = {0};
    buse_put64(b, conn->exp.size);
    buse_put16(b + 8, conn->tflags);
    r = buse_conn_write(conn, b, conn->no_zeroes ? 10 : sizeof b);
    if (r < 0) {
        buse_close_export(conn);
        return r;
    }
    return 1;
}

/* NBD_OPT_STARTTLS (doc/proto.md, "TLS support" and the option's entry).
 * Returns 0 with the connection running TLS, an error reply's result, or
 * -errno when the TLS handshake failed after our ACK (the connection must
 * then end: there is no way back to plaintext). */
static int opt_starttls(struct buse_conn *conn, uint32_t len)
{
    int r;
    if (len != 0)
        return send_err(conn, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                        "NBD_OPT_STARTTLS takes no data");
    /* NOTLS mode: "MUST respond with NBD_REP_ERR_POLICY". */
    if (conn->srv->tls_mode == BUSE_TLS_OFF)
        return send_err(conn, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY,
                        "TLS is not enabled on this server");
    /* "when TLS has already been negotiated, it MUST reply with
     * NBD_REP_ERR_INVALID" (sent inside the running session). */
    if (conn->tls)
        return send_err(conn, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                        "TLS is already running");
    if ((r = send_rep(conn, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0)) < 0)
        return r;
    /* Nothing was read past the STARTTLS option (reads are exact), so
     * bytes a man in the middle appends in plaintext after it are taken as
     * the TLS handshake, and fail it: they are never obeyed as options. */
    if ((r = buse_tls_start(conn)) < 0)
        return r;
    /* What was negotiated in plaintext is forgotten: a man in the middle
     * could have injected it (nbdkit's CVE-2021-3716: a plaintext
     * NBD_OPT_STRUCTURED_REPLY made the server send structured replies the
     * client never asked for).  The client negotiates again under TLS. */
    conn->structured = conn->extended = conn->meta_base_allocation = 0;
    return 0;
}

/* FORCEDTLS before STARTTLS: "If the server receives any other option, it
 * MUST reply with NBD_REP_ERR_TLS_REQD"; NBD_OPT_EXPORT_NAME cannot be
 * answered with an error and "MUST terminate the session".  The client
 * learns nothing else: no export name, size or flag. */
static int refuse_without_tls(struct buse_conn *conn, uint32_t opt,
                              uint32_t len)
{
    int r;
    if (opt == NBD_OPT_EXPORT_NAME) {
        buse_debug("client: NBD_OPT_EXPORT_NAME without TLS, which this "
                   "server requires: closing");
        return -EACCES;
    }
    if ((r = buse_conn_drain(conn, len)) < 0)
        return r;
    return send_err(conn, opt, NBD_REP_ERR_TLS_REQD,
                    "TLS is required: send NBD_OPT_STARTTLS first");
}

int buse_handshake(struct buse_conn *conn)
{
    unsigned char b[18];
    int r;
    buse_put64(b, NBD_MAGIC);
    buse_put64(b + 8, NBD_IHAVEOPT);
    buse_put16(b + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if ((r = buse_conn_write(conn, b, 18)) < 0)
        return r;
    if ((r = buse_conn_read(conn, b, 4)) < 0)
        return r;
    uint32_t cflags = buse_get32(b);
    if (cflags &
        ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        buse_err("client: unknown handshake flags 0x%x", cflags);
        return -EPROTO;
    }
    conn->no_zeroes = !!(cflags & NBD_FLAG_C_NO_ZEROES);

    for (;;) {
        unsigned char h[16];
        if ((r = buse_conn_read(conn, h, 16)) < 0)
            return r;
        if (buse_get64(h) != NBD_IHAVEOPT) {
            buse_err("client: bad option magic");
            return -EPROTO;
        }
        uint32_t opt = buse_get32(h + 8), len = buse_get32(h + 12);
        buse_debug("option %u, %u bytes%s", opt, len,
                   conn->tls ? " (TLS)" : "");
        if (conn->srv->tls_mode == BUSE_TLS_REQUIRE && !conn->tls &&
            opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT) {
            if ((r = refuse_without_tls(conn, opt, len)) < 0)
                return r;
            continue;
        }
        if (len > NBD_MAX_OPTION) {
            if (opt == NBD_OPT_EXPORT_NAME) {
                buse_err("client: export name too long (%u bytes)", len);
                return -EINVAL;
            }
            if ((r = buse_conn_drain(conn, len)) < 0)
                return r;
            if ((r = send_err(conn, opt, NBD_REP_ERR_TOO_BIG,
                              "option data too long")) < 0)
                return r;
            continue;
        }
        unsigned char *d = malloc(len ? len : 1);
        if (!d)
            return -ENOMEM;
        if ((r = buse_conn_read(conn, d, len)) < 0) {
            free(d);
            return r;
        }
        switch (opt) {
        case NBD_OPT_EXPORT_NAME:
            r = opt_export_name(conn, d, len);
            break;
        case NBD_OPT_ABORT:
            send_rep(conn, opt, NBD_REP_ACK, NULL, 0);
            r = -ECONNABORTED;
            break;
        case NBD_OPT_LIST:
            r = opt_list(conn, len);
            break;
        case NBD_OPT_STARTTLS:
            r = opt_starttls(conn, len);
            break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            r = opt_info_go(conn, opt, d, len);
            break;
        case NBD_OPT_EXTENDED_HEADERS:
            if (len != 0) {
                r = send_err(conn, opt, NBD_REP_ERR_INVALID,
                             "NBD_OPT_EXTENDED_HEADERS takes no data");
            } else if (conn->extended) {
                r = send_err(conn, opt, NBD_REP_ERR_INVALID,
                             "extended headers already negotiated");
            } else {
                conn->extended = conn->structured = 1;
                r = send_rep(conn, opt, NBD_REP_ACK, NULL, 0);
            }
            break;
        case NBD_OPT_STRUCTURED_REPLY:
            if (len != 0) {
                r = send_err(conn, opt, NBD_REP_ERR_INVALID,
                             "NBD_OPT_STRUCTURED_REPLY takes no data");
            } else if (conn->structured) {
                r = send_err(conn, opt, NBD_REP_ERR_INVALID,
                             "structured replies already negotiated");
            } else {
                conn->structured = 1;
                r = send_rep(conn, opt, NBD_REP_ACK, NULL, 0);
            }
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            r = opt_meta(conn, opt, d, len);
            break;
        default:
            r = send_err(conn, opt, NBD_REP_ERR_UNSUP, "option not supported");
            break;
        }
        free(d);
        if (r == -ECONNABORTED)
            return 0;
        if (r != 0)
            return r;
    }
}
