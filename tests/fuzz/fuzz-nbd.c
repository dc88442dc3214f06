/* fuzz-nbd.c: libFuzzer target for libbuse's NBD server (handshake.c and
 * transmission.c), issue 7 item 4.
 *
 * Each input is the byte stream of one client connection.  It is served by
 * libbuse's own code, compiled into this binary with the sanitizers: the
 * connection thread's sequence of conn_main() in server.c (handshake, then
 * transmission, then close of the export), on one end of a socketpair
 * whose other end a pump thread (fuzz-pump.h) feeds with the input and
 * drains.  The backend is a 256 KiB memory disk whose callbacks abort() if
 * libbuse breaks a promise of buse.h (a range outside the export, a write
 * to a read-only export, a close without an open), so that such bugs are
 * crashes too.  With a prefix (modes 1-3) the reply stream is parsed as
 * well, beside the requests of the input (one worker answers them in
 * order): a bad magic, a reply kind not negotiated, a cookie that is not
 * the next request's, a reply after DISC, a chunk without DONE, a payload
 * that does not fit its type or its READ, or a stream cut in the middle
 * of a reply aborts.
 *
 * Input: byte 0 is a mode, the rest is what the client sends after the
 * server's greeting.  Mode bits:
 *   0-1  prefix sent first: 0 none (the input is the whole handshake),
 *        1 flags + GO (simple replies), 2 flags + STRUCTURED_REPLY +
 *        SET_META_CONTEXT base:allocation + GO, 3 the same with
 *        EXTENDED_HEADERS; with a prefix the rest of the input reaches the
 *        transmission phase at once
 *   2    BUSE 1 callbacks only (read, write, flush, trim; size from
 *        blksize * size_blocks; no open): libbuse's emulations
 *   3    the prefix opens export "ro" (read-only) instead of "disk"
 *   4    verbose (libbuse's debug lines, with their formatting)
 *   5    max_block 4096 and min_block 512
 *   6    BUSE_SERIALIZE (else threads = 1: one worker, deterministic)
 *   7    the prefix opens export "odd" (a size that is not a multiple of
 *        512)
 * TLS: every server offers it (BUSE_TLS_ON, a pre-shared key written at
 * start-up), so NBD_OPT_STARTTLS in the input runs libbuse's STARTTLS
 * path and hands the rest of the input to the TLS handshake as a
 * ClientHello (garbage, almost always: what a hostile client sends); with
 * no prefix (bits 0-1 clear), bit 3 makes it BUSE_TLS_REQUIRE (FORCEDTLS:
 * every option but STARTTLS and ABORT refused before TLS).  (Prefixed
 * inputs end their handshake with GO in plaintext: their reply check
 * never sees TLS.)
 */
#define BUSE_INTERNAL
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "protocol.h"

#include "fuzz-pump.h"

#define DISK_SIZE (256u * 1024)
#define ODD_SIZE (DISK_SIZE - 1000)

static unsigned char disk[DISK_SIZE];
static const unsigned char zero_block[4096];
static int disk_dirty; /* written since the last reset */

struct handle {
    uint64_t size;
    int readonly;
    int open;
};
static struct handle handles[4];
static int opens, closes;

static void broken(const char *what, uint64_t off, uint64_t len)
{
    fprintf(stderr,
            "fuzz-nbd: libbuse broke its promise: %s (offset %llu, "
            "length %llu)\n",
            what, (unsigned long long)off, (unsigned long long)len);
    abort();
}

/* userdata is a struct handle (open) or NULL (BUSE 1 ops, whole disk). */
static void in_range(void *userdata, uint64_t off, uint64_t len, int write)
{
    struct handle *h = userdata;
    uint64_t size = h ? h->size : DISK_SIZE;
    if (h && !h->open)
        broken("callback on a closed export", off, len);
    if (len == 0 || off > size || len > size - off)
        broken("callback range outside the export", off, len);
    if (write && h && h->readonly)
        broken("write callback on a read-only export", off, len);
}

static int m_read(void *buf, uint32_t len, uint64_t off, void *u)
{
    in_range(u, off, len, 0);
    memcpy(buf, disk + off, len);
    return 0;
}

static int m_write(const void *buf, uint32_t len, uint64_t off, void *u)
{
    in_range(u, off, len, 1);
    memcpy(disk + off, buf, len);
    disk_dirty = 1;
    /* An error path for the fuzzer: a write starting with "EIO!" fails. */
    return len >= 4 && memcmp(buf, "EIO!", 4) == 0 ? -EIO : 0;
}

static int m_write_flags(const void *buf, uint32_t len, uint64_t off,
                         uint32_t flags, void *u)
{
    if (flags & ~BUSE_FLAG_FUA)
        broken("write flags other than FUA", off, len);
    return m_write(buf, len, off, u);
}

static int m_flush(void *u)
{
    return 0;
}

static int m_trim(uint64_t off, uint32_t len, void *u)
{
    in_range(u, off, len, 1);
    memset(disk + off, 0, len);
    return 0;
}

static int m_trim_flags(uint64_t off, uint64_t len, uint32_t flags, void *u)
{
    in_range(u, off, len, 1);
    memset(disk + off, 0, len);
    return 0;
}

static int m_write_zeroes(uint64_t off, uint64_t len, uint32_t flags, void *u)
{
    in_range(u, off, len, 1);
    /* FAST_ZERO is only fast on whole 4 KiB blocks. */
    if ((flags & BUSE_FLAG_FAST_ZERO) && ((off | len) & 4095))
        return -ENOTSUP;
    memset(disk + off, 0, len);
    return 0;
}

static int m_cache(uint64_t off, uint64_t len, void *u)
{
    in_range(u, off, len, 0);
    return 0;
}

/* 4 KiB granules: all-zero ones are holes (and zero). */
static int m_block_status(uint64_t off, uint64_t len, struct buse_extents *ex,
                          void *u)
{
    in_range(u, off, len, 0);
    uint64_t end = off + len;
    while (off < end) {
        uint64_t next = (off / 4096 + 1) * 4096;
        if (next > end)
            next = end;
        int zero = memcmp(disk + off, zero_block, next - off) == 0;
        int r = buse_add_extent(ex, off, next - off,
                                zero ? BUSE_EXTENT_HOLE | BUSE_EXTENT_ZERO : 0);
        if (r == -E2BIG)
            return 0;
        if (r < 0)
            broken("buse_add_extent refused a valid extent", off, next - off);
        off = next;
    }
    return 0;
}

static int m_list_exports(struct buse_export_list *list, void *u)
{
    int r = buse_add_export(list, "disk", "a 256 KiB memory disk");
    if (r == 0)
        r = buse_add_export(list, "ro", NULL);
    if (r == 0)
        r = buse_add_export(list, "odd", "not a multiple of 512");
    return r;
}

static int m_open(const char *name, struct buse_export *exp, void *u)
{
    static const char *names[] = {"", "disk", "ro", "odd"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            struct handle *h = &handles[i];
            if (h->open)
                broken("second open on one connection", 0, 0);
            h->size = i == 3 ? ODD_SIZE : DISK_SIZE;
            h->readonly = i == 2;
            h->open = 1;
            exp->handle = h;
            exp->size = h->size;
            exp->readonly = h->readonly;
            exp->description = i == 1 ? "memory disk" : NULL;
            opens++;
            return 0;
        }
    return strcmp(name, "eio") == 0 ? -EIO : -ENOENT;
}

static void m_close(void *handle)
{
    struct handle *h = handle;
    if (!h->open)
        broken("close of an export that is not open", 0, 0);
    h->open = 0;
    closes++;
}

/* Append an option (header + payload) to the prefix. */
static size_t put_opt(unsigned char *p, uint32_t opt, const void *d,
                      uint32_t len)
{
    buse_put64(p, NBD_IHAVEOPT);
    buse_put32(p + 8, opt);
    buse_put32(p + 12, len);
    if (len)
        memcpy(p + 16, d, len);
    return 16 + len;
}

static size_t make_prefix(unsigned char *p, unsigned mode)
{
    size_t n = 4;
    unsigned kind = mode & 3;
    if (kind == 0)
        return 0;
    buse_put32(p, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    if (kind == 2)
        n += put_opt(p + n, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
    if (kind == 3)
        n += put_opt(p + n, NBD_OPT_EXTENDED_HEADERS, NULL, 0);
    if (kind >= 2) {
        static const char ctx[] = NBD_CONTEXT_BASE_ALLOCATION;
        unsigned char m[8 + 4 + sizeof ctx];
        buse_put32(m, 0); /* export name "" */
        buse_put32(m + 4, 1);
        buse_put32(m + 8, sizeof ctx - 1);
        memcpy(m + 12, ctx, sizeof ctx - 1);
        n += put_opt(p + n, NBD_OPT_SET_META_CONTEXT, m, sizeof m - 1);
    }
    const char *name = (mode & 0x80) ? "odd" : (mode & 8) ? "ro" : "disk";
    unsigned char g[4 + 8 + 2];
    uint32_t nl = (uint32_t)strlen(name);
    buse_put32(g, nl);
    memcpy(g + 4, name, nl);
    buse_put16(g + 4 + nl, 0);
    n += put_opt(p + n, NBD_OPT_GO, g, 4 + nl + 2);
    return n;
}

static char psk_path[256]; /* a key for user "fuzz", written at start */

static void remove_psk(void)
{
    unlink(psk_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(psk_path, sizeof psk_path, "%s/fuzz-nbd-psk.XXXXXX", base);
    int fd = mkstemp(psk_path);
    static const char key[] = "fuzz:0123456789abcdef0123456789abcdef\n";
    if (fd < 0 || write(fd, key, sizeof key - 1) != (ssize_t)(sizeof key - 1)) {
        perror("fuzz-nbd: PSK file");
        abort();
    }
    close(fd); /* mkstemp made it 0600 */
    atexit(remove_psk);
    return 0;
}

static struct buse_server *make_server(unsigned mode)
{
    struct buse_operations ops = {.read = m_read};
    if (mode & 4) {
        ops.write = m_write;
        ops.flush = m_flush;
        ops.trim = m_trim;
        ops.blksize = 512;
        ops.size_blocks = DISK_SIZE / 512;
    } else {
        ops.write_flags = m_write_flags;
        ops.flush = m_flush;
        ops.trim_flags = m_trim_flags;
        ops.write_zeroes = m_write_zeroes;
        ops.cache = m_cache;
        ops.block_status = m_block_status;
        ops.list_exports = m_list_exports;
        ops.open = m_open;
        ops.close = m_close;
        ops.blksize = 4096;
    }
    if (mode & 0x20) {
        ops.max_block = 4096;
        ops.min_block = 512;
    }
    if (mode & 0x40)
        ops.flags |= BUSE_SERIALIZE;
    else
        ops.threads = 1;
    struct buse_server *srv = buse_server_new(&ops, NULL);
    if (!srv) {
        fprintf(stderr, "fuzz-nbd: buse_server_new failed\n");
        abort();
    }
    struct buse_tls_options tls = {
        .mode = (mode & 3) == 0 && (mode & 8) ? BUSE_TLS_REQUIRE : BUSE_TLS_ON,
        .psk_file = psk_path};
    if (buse_server_set_tls(srv, &tls) < 0) {
        fprintf(stderr, "fuzz-nbd: buse_server_set_tls failed\n");
        abort();
    }
    return srv;
}

/* The reply stream of modes 2 and 3, parsed as it arrives (pump thread;
 * read by the fuzz thread after fuzz_pump_join). */
struct reply_check {
    int active;
    unsigned kind;             /* mode & 3: 1 simple, 2 structured, 3 ext */
    const uint8_t *reqs;       /* the requests the client sent */
    size_t reqs_len, reqs_off; /* and where the next one starts */
    int phase;                 /* 0 greeting, 1 option replies, 2 requests */
    unsigned char hdr[32];     /* the header being collected */
    size_t have, need;         /* bytes of hdr held, and wanted */
    uint64_t skip;             /* payload bytes still to skip */
    const char *error;         /* first problem seen, or NULL */
};

/* One worker serves the requests in order, so the k-th reply answers the
 * k-th request of the input: check its cookie, and return the request's
 * command and length (a READ's data follows a simple reply).  Requests
 * are walked as the server reads them: a WRITE's payload (and, with
 * extended headers, any payload announced by PAYLOAD_LEN) follows its
 * header; DISC gets no reply and ends the stream. */
static int next_request(struct reply_check *rc, uint16_t *type, uint64_t *len,
                        uint64_t cookie)
{
    size_t hsize = rc->kind == 3 ? NBD_EXTENDED_REQUEST_SIZE : NBD_REQUEST_SIZE;
    const uint8_t *q = rc->reqs + rc->reqs_off;
    if (rc->reqs_len - rc->reqs_off < hsize) {
        rc->error = "reply to a request the client never sent";
        return -1;
    }
    uint16_t flags = buse_get16(q + 4);
    *type = buse_get16(q + 6);
    *len = rc->kind == 3 ? buse_get64(q + 24) : buse_get32(q + 24);
    if (*type == NBD_CMD_DISC) {
        rc->error = "reply after NBD_CMD_DISC";
        return -1;
    }
    if (buse_get64(q + 8) != cookie) {
        rc->error = "reply cookie is not the next request's";
        return -1;
    }
    uint64_t payload = 0;
    if (*type == NBD_CMD_WRITE ||
        (rc->kind == 3 && (flags & NBD_CMD_FLAG_PAYLOAD_LEN)))
        payload = *len;
    rc->reqs_off += hsize;
    rc->reqs_off += payload < rc->reqs_len - rc->reqs_off
                        ? (size_t)payload
                        : rc->reqs_len - rc->reqs_off;
    return 0;
}

static void reply_header(struct reply_check *rc)
{
    const unsigned char *h = rc->hdr;
    uint64_t len = 0;
    uint16_t type = 0;
    if (rc->phase == 0) {
        if (buse_get64(h) != NBD_MAGIC)
            rc->error = "bad greeting";
        rc->phase = 1;
    } else if (rc->phase == 1) {
        if (buse_get64(h) != NBD_REP_MAGIC)
            rc->error = "bad option reply magic";
        len = buse_get32(h + 16);
        if (buse_get32(h + 8) == NBD_OPT_GO &&
            buse_get32(h + 12) == NBD_REP_ACK)
            rc->phase = 2;
    } else {
        uint32_t magic = buse_get32(h);
        if (rc->have == 4) { /* the magic says how long the header is */
            if (magic == NBD_SIMPLE_REPLY_MAGIC)
                rc->need = 16;
            else if (magic == NBD_STRUCTURED_REPLY_MAGIC)
                rc->need = 20;
            else if (magic == NBD_EXTENDED_REPLY_MAGIC)
                rc->need = 32;
            else
                rc->error = "bad reply magic (stream out of sync)";
            return;
        }
        if ((magic == NBD_SIMPLE_REPLY_MAGIC && rc->kind == 3) ||
            (magic == NBD_STRUCTURED_REPLY_MAGIC && rc->kind != 2) ||
            (magic == NBD_EXTENDED_REPLY_MAGIC && rc->kind != 3)) {
            rc->error = "reply of a kind that was not negotiated";
            return;
        }
        uint16_t rtype;
        uint64_t rlen;
        if (next_request(rc, &rtype, &rlen, buse_get64(h + 8)) < 0)
            return;
        if (magic == NBD_SIMPLE_REPLY_MAGIC) {
            if (rc->kind == 2 &&
                (rtype == NBD_CMD_READ || rtype == NBD_CMD_BLOCK_STATUS))
                rc->error = "simple reply to a structured READ/BLOCK_STATUS";
            else if (rtype == NBD_CMD_READ && buse_get32(h + 4) == 0)
                len = rlen; /* the data follows */
        } else {
            len = magic == NBD_STRUCTURED_REPLY_MAGIC ? buse_get32(h + 16)
                                                      : buse_get64(h + 24);
            type = buse_get16(h + 6);
            if (!(buse_get16(h + 4) & NBD_REPLY_FLAG_DONE))
                rc->error = "reply chunk without DONE";
            else if ((type == NBD_REPLY_TYPE_ERROR && len < 6) ||
                     (type == NBD_REPLY_TYPE_BLOCK_STATUS &&
                      (len < 12 || (len - 4) % 8)) ||
                     (type == NBD_REPLY_TYPE_BLOCK_STATUS_EXT &&
                      (len < 24 || (len - 8) % 16)))
                rc->error = "reply chunk payload too short for its type";
            else if (type == NBD_REPLY_TYPE_OFFSET_DATA &&
                     (rtype != NBD_CMD_READ || len != 8 + rlen))
                rc->error = "OFFSET_DATA chunk not one whole READ";
            else if ((type == NBD_REPLY_TYPE_BLOCK_STATUS ||
                      type == NBD_REPLY_TYPE_BLOCK_STATUS_EXT) &&
                     rtype != NBD_CMD_BLOCK_STATUS)
                rc->error = "BLOCK_STATUS chunk for another command";
            else if (type != NBD_REPLY_TYPE_NONE &&
                     type != NBD_REPLY_TYPE_ERROR &&
                     type != NBD_REPLY_TYPE_OFFSET_DATA &&
                     type != NBD_REPLY_TYPE_BLOCK_STATUS &&
                     type != NBD_REPLY_TYPE_BLOCK_STATUS_EXT)
                rc->error = "unknown reply chunk type";
        }
    }
    rc->skip = len;
    rc->have = 0;
    rc->need = rc->phase == 0 ? 18 : rc->phase == 1 ? 20 : 4;
}

static void on_reply(void *arg, const uint8_t *buf, size_t len)
{
    struct reply_check *rc = arg;
    while (len > 0 && !rc->error) {
        if (rc->skip) {
            size_t n = rc->skip < len ? (size_t)rc->skip : len;
            rc->skip -= n;
            buf += n;
            len -= n;
            continue;
        }
        size_t n = rc->need - rc->have < len ? rc->need - rc->have : len;
        memcpy(rc->hdr + rc->have, buf, n);
        rc->have += n;
        buf += n;
        len -= n;
        if (rc->have == rc->need)
            reply_header(rc);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned mode = data[0];
    unsigned char pre[256];
    size_t pre_len = make_prefix(pre, mode);

    if (disk_dirty)
        memset(disk, 0, sizeof disk);
    disk_dirty = 0;
    memset(handles, 0, sizeof handles);
    opens = closes = 0;
    buse_set_verbose((mode & 0x10) ? 1 : 0);

    struct buse_server *srv = make_server(mode);
    struct buse_conn *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    struct fuzz_pump pump = {0};
    struct reply_check rc = {.active = (mode & 3) != 0,
                             .kind = mode & 3,
                             .reqs = data + 1,
                             .reqs_len = size - 1,
                             .need = 18};
    if (rc.active) {
        pump.on_reply = on_reply;
        pump.on_reply_arg = &rc;
    }
    c->srv = srv;
    c->fd = fuzz_pump_start(&pump, pre, pre_len, data + 1, size - 1, NULL);
    pthread_mutex_init(&c->recv_lock, NULL);
    pthread_mutex_init(&c->send_lock, NULL);

    /* What conn_main() does for a socket connection (server.c). */
    if (buse_handshake(c) == 1)
        buse_transmission(c);
    buse_close_export(c);
    buse_tls_end(c);
    if (c->export_name)
        broken("export name left after close", 0, 0);
    close(c->fd);
    fuzz_pump_join(&pump);
    if (rc.error)
        broken(rc.error, pump.received, 0);
    if (rc.active && (rc.skip || rc.have))
        broken("reply stream ends inside a reply", pump.received, rc.skip);

    pthread_mutex_destroy(&c->recv_lock);
    pthread_mutex_destroy(&c->send_lock);
    free(c);
    buse_server_free(srv);
    if (opens != closes)
        broken("open and close callbacks do not pair", (uint64_t)opens,
               (uint64_t)closes);
    return 0;
}
