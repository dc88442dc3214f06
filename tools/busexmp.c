/* busexmp.c: BUSE's memory-disk example, rebuilt on libbuse.
 *
 * Serves SIZE bytes of anonymous memory as a block device: to the kernel
 * (busexmp SIZE /dev/nbdN, BUSE's original interface, through buse_main;
 * or /dev/ublkbN through the ublk driver),
 * or over a Unix socket, TCP, or sockets passed by systemd.  Memory comes
 * from mmap(MAP_NORESERVE), so untouched space costs nothing; trim and
 * write_zeroes give whole pages back with madvise(MADV_DONTNEED).  A bitmap
 * with one bit per page ("may hold data") answers block_status, so never
 * written or zeroed pages show up as holes.  Callbacks are thread-safe:
 * bytes are plain memory and bitmap updates are atomic.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "buse.h"
#include "common/common.h"

#define PAGE 4096u

struct disk {
    const char *name;
    char description[128];
    unsigned char *mem;
    uint64_t *bits; /* bit set: the page may hold nonzero bytes */
    uint64_t size;
};

static struct disk *disks;
static size_t ndisks;
static int restrict_names; /* --exports given: only those names exist */
static int readonly;
static unsigned delay_ms; /* --delay-ms: slow reads (shutdown tests) */

static void mark(struct disk *d, uint64_t off, uint64_t len)
{
    for (uint64_t p = off / PAGE; p <= (off + len - 1) / PAGE; p++)
        __atomic_fetch_or(&d->bits[p / 64], 1ull << (p % 64), __ATOMIC_RELAXED);
}

static int page_used(const struct disk *d, uint64_t p)
{
    return (__atomic_load_n(&d->bits[p / 64], __ATOMIC_RELAXED) >> (p % 64)) &
           1;
}

static int xmp_read(void *buf, uint32_t len, uint64_t offset, void *userdata)
{
    struct disk *d = userdata;
    if (delay_ms)
        usleep(delay_ms * 1000u);
    memcpy(buf, d->mem + offset, len);
    return 0;
}

static int xmp_write(const void *buf, uint32_t len, uint64_t offset,
                     void *userdata)
{
    struct disk *d = userdata;
    memcpy(d->mem + offset, buf, len);
    mark(d, offset, len);
    return 0;
}

static int xmp_flush(void *userdata)
{
    return 0; /* memory: nothing to make durable */
}

/* Zero a range: memset the partial pages at each end, hand whole pages
 * back to the kernel (they read as zeros afterwards). */
static int zero_range(struct disk *d, uint64_t off, uint64_t len)
{
    uint64_t end = off + len;
    uint64_t first = (off + PAGE - 1) / PAGE * PAGE;
    uint64_t last = end / PAGE * PAGE;
    if (first >= last) {
        memset(d->mem + off, 0, len);
        return 0;
    }
    memset(d->mem + off, 0, first - off);
    memset(d->mem + last, 0, end - last);
    if (madvise(d->mem + first, last - first, MADV_DONTNEED) < 0)
        memset(d->mem + first, 0, last - first);
    for (uint64_t p = first / PAGE; p < last / PAGE; p++)
        __atomic_fetch_and(&d->bits[p / 64], ~(1ull << (p % 64)),
                           __ATOMIC_RELAXED);
    return 0;
}

static int xmp_trim(uint64_t offset, uint64_t len, uint32_t flags,
                    void *userdata)
{
    return zero_range(userdata, offset, len);
}

static int xmp_zero(uint64_t offset, uint64_t len, uint32_t flags,
                    void *userdata)
{
    return zero_range(userdata, offset, len);
}

static int xmp_cache(uint64_t offset, uint64_t len, void *userdata)
{
    return 0; /* already in memory */
}

static int xmp_block_status(uint64_t offset, uint64_t len,
                            struct buse_extents *ex, void *userdata)
{
    struct disk *d = userdata;
    uint64_t pos = offset, end = offset + len;
    while (pos < end) {
        uint64_t p = pos / PAGE;
        int used = page_used(d, p);
        uint64_t q = p + 1;
        uint64_t same = used ? ~0ull : 0; /* a word of 64 such pages */
        while (q * PAGE < end) {
            if (q % 64 == 0 &&
                __atomic_load_n(&d->bits[q / 64], __ATOMIC_RELAXED) == same)
                q += 64; /* skip a whole word at a time */
            else if (page_used(d, q) == used)
                q++;
            else
                break;
        }
        uint64_t stop = q * PAGE < end ? q * PAGE : end;
        int r = buse_add_extent(ex, pos, stop - pos,
                                used ? 0 : BUSE_EXTENT_HOLE | BUSE_EXTENT_ZERO);
        if (r < 0)
            return r;
        pos = stop;
    }
    return 0;
}

static int xmp_list(struct buse_export_list *list, void *userdata)
{
    for (size_t i = 0; i < ndisks; i++) {
        int r = buse_add_export(list, disks[i].name, disks[i].description);
        if (r < 0)
            return r;
    }
    return 0;
}

static int xmp_open(const char *name, struct buse_export *exp, void *userdata)
{
    for (size_t i = 0; i < ndisks; i++) {
        if (!restrict_names || strcmp(name, disks[i].name) == 0) {
            exp->handle = &disks[i];
            exp->size = disks[i].size;
            exp->readonly = readonly;
            exp->description = disks[i].description;
            return 0;
        }
    }
    return -ENOENT;
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: busexmp [-v] SIZE /dev/nbdN | /dev/ublkbN\n"
        "       busexmp [-v] SIZE --socket PATH | --tcp HOST:PORT\n"
        "       busexmp [-v] SIZE -s | --single  (one client on stdin/stdout)\n"
        "       busexmp [-v] SIZE            (systemd socket activation)\n"
        "options: --exports NAME,NAME...  several memory disks by name\n"
        "         --read-only             refuse writes (EPERM)\n"
        "         --no-list               refuse to list the exports\n"
        "         --tls=off|on|require    NBD_OPT_STARTTLS (default: off,\n"
        "                                 require when credentials are given)\n"
        "         --tls-certificates DIR  server-cert.pem, server-key.pem,\n"
        "                                 ca-cert.pem (X.509)\n"
        "         --tls-psk FILE          pre-shared keys (psktool's format)\n"
        "         --tls-verify-peer       require a client certificate\n"
        "         --delay-ms N            sleep N ms in every read (tests)\n"
        "         --connections N         sockets per /dev/nbdN, queues per\n"
        "                                 /dev/ublkbN (--queues N)\n"
        "         --queue-depth N         requests in flight per ublk queue\n"
        "         --timeout S             kernel request timeout in seconds\n"
        "         --threads N             worker threads per connection (8)\n"
        "SIZE: bytes, or with K, M, G, T, P (KiB, MiB.. too; powers of "
        "1024).\n");
}

static void *map(uint64_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static int bad(const char *msg, const char *arg)
{
    fprintf(stderr, "busexmp: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    usage(stderr);
    return 2;
}

static const char *sock, *tcp;
static char *exports;
static struct buse_tls_options tls = {.mode = -1}; /* -1: not given */
static int no_list;
static int single; /* --single: one client on stdin/stdout */
static struct buse_kernel_options kopt; /* --connections, --timeout */
static unsigned threads;                /* --threads: workers per connection */

/* One command-line option; -1 to go on, or the exit code. */
static int take_option(int c)
{
    switch (c) {
    case 'v':
        buse_set_verbose(1);
        return -1;
    case 'k':
        sock = optarg;
        return -1;
    case 's':
        single = 1;
        return -1;
    case 't':
        tcp = optarg;
        return -1;
    case 'e':
        exports = optarg;
        return -1;
    case 'r':
        readonly = 1;
        return -1;
    case 'L':
        no_list = 1;
        return -1;
    case 'M':
        if (!strcmp(optarg, "off"))
            tls.mode = BUSE_TLS_OFF;
        else if (!strcmp(optarg, "on"))
            tls.mode = BUSE_TLS_ON;
        else if (!strcmp(optarg, "require"))
            tls.mode = BUSE_TLS_REQUIRE;
        else {
            fprintf(stderr, "busexmp: bad --tls: %s (off, on or require)\n",
                    optarg);
            return 2;
        }
        return -1;
    case 'C':
        tls.certificates = optarg;
        return -1;
    case 'P':
        tls.psk_file = optarg;
        return -1;
    case 'V':
        tls.verify_peer = 1;
        return -1;
    case 'd':
        delay_ms = (unsigned)strtoul(optarg, NULL, 10);
        return -1;
    case 'j':
    case 'c':
    case 'D':
    case 'T': {
        char *end;
        unsigned long v = strtoul(optarg, &end, 10);
        if (*end || end == optarg || v > 4096 || (c != 'T' && v == 0)) {
            fprintf(stderr, "busexmp: bad --%s: %s\n",
                    c == 'c'   ? "connections"
                    : c == 'j' ? "threads"
                    : c == 'D' ? "queue-depth"
                               : "timeout",
                    optarg);
            usage(stderr);
            return 2;
        }
        if (c == 'j')
            threads = (unsigned)v;
        else if (c == 'c')
            kopt.connections = (unsigned)v;
        else if (c == 'D')
            kopt.queue_depth = (unsigned)v;
        else
            kopt.timeout = (unsigned)v;
        return -1;
    }
    case 'h':
        usage(stdout);
        return 0;
    case 'X':
        printf("busexmp %s (libbuse %s)\n", BUSESNAP_VERSION,
               BUSE_VERSION_STRING);
        return 0;
    default:
        usage(stderr);
        return 2;
    }
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"socket", required_argument, NULL, 'k'},
        {"single", no_argument, NULL, 's'},
        {"tcp", required_argument, NULL, 't'},
        {"exports", required_argument, NULL, 'e'},
        {"readonly", no_argument, NULL, 'r'},
        {"read-only", no_argument, NULL, 'r'},
        {"no-list", no_argument, NULL, 'L'},
        {"tls", required_argument, NULL, 'M'},
        {"tls-certificates", required_argument, NULL, 'C'},
        {"tls-psk", required_argument, NULL, 'P'},
        {"tls-verify-peer", no_argument, NULL, 'V'},
        {"delay-ms", required_argument, NULL, 'd'},
        {"connections", required_argument, NULL, 'c'},
        {"queues", required_argument, NULL, 'c'},
        {"queue-depth", required_argument, NULL, 'D'},
        {"timeout", required_argument, NULL, 'T'},
        {"threads", required_argument, NULL, 'j'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'X'},
        {NULL, 0, NULL, 0},
    };
    const char *dev = NULL;
    uint64_t size;
    int c, r;

    /* GNU getopt permutes: options may come before or after SIZE and the
     * device, as BUSE's "busexmp [-v] SIZE DEVICE" had them. */
    while ((c = getopt_long(argc, argv, "vhst:e:rd:c:T:j:", longopts, NULL)) !=
           -1)
        if ((r = take_option(c)) >= 0)
            return r;
    if (optind >= argc)
        return bad("missing SIZE", NULL);
    if ((r = common_parse_size(argv[optind], &size)) < 0)
        return bad(common_size_error(argv[optind], r), NULL);
    if (size == 0)
        return bad("SIZE must not be 0", NULL);
    optind++;
    if (optind < argc)
        dev = argv[optind++];
    if (optind < argc)
        return bad("unexpected argument", argv[optind]);
    if (dev && (sock || tcp))
        return bad("give a device or --socket/--tcp, not both", NULL);
    if (single && (dev || sock || tcp))
        return bad("--single serves stdin/stdout only: no device, --socket "
                   "or --tcp with it",
                   NULL);

    /* The disks. */
    const char *names[64];
    size_t n = 0;
    if (exports) {
        restrict_names = 1;
        for (char *s = strtok(exports, ","); s; s = strtok(NULL, ",")) {
            if (n == 64)
                return bad("too many exports (at most 64)", NULL);
            names[n++] = s;
        }
        if (n == 0)
            return bad("--exports needs at least one name", NULL);
    } else {
        names[n++] = "";
    }
    disks = calloc(n, sizeof *disks);
    if (!disks)
        return 1;
    for (size_t i = 0; i < n; i++) {
        struct disk *d = &disks[i];
        uint64_t pages = (size + PAGE - 1) / PAGE;
        d->name = names[i];
        d->size = size;
        snprintf(d->description, sizeof d->description,
                 "busexmp memory disk%s%s", *names[i] ? " " : "", names[i]);
        d->mem = map(size);
        d->bits = map((pages + 63) / 64 * 8);
        if (!d->mem || !d->bits) {
            fprintf(stderr, "busexmp: cannot map %llu bytes: %s\n",
                    (unsigned long long)size, strerror(errno));
            return 1;
        }
    }
    ndisks = n;

    struct buse_operations ops = {
        .read = xmp_read,
        .write = xmp_write,
        .flush = xmp_flush,
        .size = size,
        .trim_flags = xmp_trim,
        .write_zeroes = xmp_zero,
        .cache = xmp_cache,
        .block_status = xmp_block_status,
        .list_exports = xmp_list,
        .open = xmp_open,
        .flags = BUSE_CAN_MULTI_CONN | (no_list ? BUSE_NO_LIST : 0),
        .threads = threads,
    };
    int creds = tls.certificates || tls.psk_file;
    if (tls.mode == -1) /* credentials alone mean TLS, required */
        tls.mode = creds ? BUSE_TLS_REQUIRE : BUSE_TLS_OFF;
    if (tls.mode != BUSE_TLS_OFF && !creds)
        return bad("--tls=on and --tls=require need --tls-certificates or "
                   "--tls-psk",
                   NULL);
    if (tls.mode == BUSE_TLS_OFF && creds)
        return bad("--tls=off with TLS credentials", NULL);
    if (tls.verify_peer && !tls.certificates)
        return bad("--tls-verify-peer needs --tls-certificates", NULL);
    if (dev && tls.mode != BUSE_TLS_OFF)
        return bad("TLS is for --socket and --tcp clients (the kernel device "
                   "needs none)",
                   NULL);

    if (dev && size % 512)
        return bad("a kernel device needs SIZE to be a multiple of 512", NULL);
    if (dev && !kopt.connections && !kopt.timeout && !kopt.queue_depth) {
        /* BUSE's way, kept to show that it still works. */
        r = buse_main(dev, &ops, NULL);
        return r < 0 ? 1 : 0;
    }
    if (!dev && (kopt.connections || kopt.timeout || kopt.queue_depth))
        return bad("--connections, --queue-depth and --timeout need a "
                   "kernel device",
                   NULL);
    struct buse_server *srv = buse_server_new(&ops, NULL);
    if (!srv)
        return 1;
    r = 0;
    if (tls.mode != BUSE_TLS_OFF && (r = buse_server_set_tls(srv, &tls)) < 0) {
        buse_server_free(srv);
        return 1;
    }
    if (dev)
        r = buse_server_attach_kernel(srv, dev, &kopt);
    if (sock)
        r = buse_server_listen_unix(srv, sock, 0);
    if (r == 0 && tcp)
        r = buse_server_listen_tcp(srv, tcp);
    if (r == 0 && single) {
        int in, out;
        r = common_take_stdio("busexmp", &in, &out);
        if (r == 0)
            r = buse_server_add_client(srv, in, out);
    } else if (r == 0 && !dev && !sock && !tcp) {
        r = buse_server_listen_systemd(srv);
        if (r == 0) {
            buse_server_free(srv);
            return bad("nothing to serve: give /dev/nbdN, --socket or "
                       "--tcp (or start under systemd socket activation)",
                       NULL);
        }
        r = r > 0 ? 0 : r;
    }
    if (r == 0)
        r = buse_server_run(srv);
    buse_server_free(srv);
    return r < 0 ? 1 : 0;
}
