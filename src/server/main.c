/* main.c: the busesnap command line (serve, check, info, create).
 *
 * `busesnap serve` opens (or creates) an image, makes every volume and
 * snapshot an NBD export through libbuse (exports.c), listens on the
 * control socket (control.c) and serves until SIGINT/SIGTERM, then closes
 * the control socket, lets libbuse close every connection and closes the
 * store, which commits.  check/info/create work offline on an image that
 * no server has open.  Exit codes: 0 ok, 1 failure, 2 usage.
 */
#include <errno.h>
#include <limits.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "attrs.h"
#include "control.h"
#include "common/common.h"
#include "exports.h"
#include "notify.h"

#define MAX_ATTACH 16

static const char *prog = "busesnap";

static void usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

static void usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: %s%s", prog, cmd ? cmd : "", cmd ? ": " : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see %s %s%s--help)\n", prog, cmd ? cmd : "",
            cmd ? " " : "");
    exit(2);
}

static uint64_t size_arg(const char *cmd, const char *s)
{
    uint64_t size;
    int r = common_parse_size(s, &size);
    if (r < 0)
        usage_error(cmd, "%s", common_size_error(s, r));
    if (size == 0 || size % STORE_BLOCK)
        usage_error(cmd, "size %s is not a positive multiple of %u bytes", s,
                    STORE_BLOCK);
    return size;
}

/* ---- serve ---- */

static const char serve_help[] =
    "Usage: busesnap serve IMAGE [DEVICE] [OPTIONS]\n"
    "Serve the volumes and snapshots of IMAGE as NBD exports.\n"
    "\n"
    "  DEVICE                attach the default volume to /dev/nbdN, or to\n"
    "                        /dev/ublkbN through the ublk driver\n"
    "  --attach DEV=EXPORT   attach EXPORT (a volume or snapshot) to DEV\n"
    "                        (repeatable)\n"
    "  --socket PATH         serve NBD clients on a Unix socket\n"
    "  --tcp HOST:PORT       serve NBD clients on TCP, on the addresses HOST\n"
    "                        has (:PORT: every address; plaintext on one that\n"
    "                        is not loopback gets a warning: see --tls)\n"
    "  -s, --single          serve one client on stdin/stdout and exit when\n"
    "                        it goes (nbd_connect_command, ssh); no control\n"
    "                        socket unless --control is given\n"
    "  --tls=off|on|require  NBD_OPT_STARTTLS: on offers TLS, require refuses\n"
    "                        every client that does not start it (default:\n"
    "                        off; require when credentials are given)\n"
    "  --tls-certificates DIR  X.509: server-cert.pem, server-key.pem,\n"
    "                        ca-cert.pem (and ca-crl.pem) in DIR\n"
    "  --tls-psk FILE        pre-shared keys, USER:HEXKEY lines (psktool)\n"
    "  --tls-verify-peer     require a client certificate signed by the CA\n"
    "  --read-only           every export read-only for NBD clients\n"
    "  --accept-data-loss    open IMAGE even if it was not shut down cleanly\n"
    "                        and its log does not reach what was made\n"
    "                        durable (missing, truncated, another image's):\n"
    "                        the writes of the missing log blocks are lost,\n"
    "                        and a line says how many\n"
    "  --no-list             refuse to list the exports (NBD_OPT_LIST)\n"
    "  --control PATH        control socket for bsnap (default: "
    "$BSNAP_CONTROL,\n"
    "                        $XDG_RUNTIME_DIR/busesnap.ctl or\n"
    "                        /run/user/UID/busesnap.ctl, /run/busesnap.ctl "
    "for\n"
    "                        root, /tmp/busesnap-UID/busesnap.ctl otherwise)\n"
    "  --size SIZE           create IMAGE with this size if it does not "
    "exist\n"
    "                        (suffixes K, M, G, T, P; KiB too); must match if "
    "it does\n"
    "  --map-size SIZE       index size limit (default 1T, virtual): when\n"
    "                        the index or the disk is full, writes get\n"
    "                        ENOSPC, reads, trims and deletes go on\n"
    "  --connections N       sockets per /dev/nbdN (default 1), queues per\n"
    "                        /dev/ublkbN (default one per CPU); --queues N\n"
    "  --queue-depth N       requests in flight per ublk queue (default 128)\n"
    "  --timeout SECS        kernel request timeout (default: kernel's)\n"
    "  -v, --verbose         log requests to stderr\n"
    "  -h, --help            this help\n"
    "\n"
    "Export \"\" is the default volume (bsnap default); every volume and\n"
    "snapshot is also an export by its name and by its UUID.  Per-export\n"
    "read-only and TLS identities: bsnap access.  Sockets passed by systemd\n"
    "socket activation are served too.  SIGINT/SIGTERM stop cleanly.  See\n"
    "doc/security.md for serving beyond one machine.\n";

/* Index size limit for serve (--map-size; 0: the store's 1 TiB). */
static uint64_t map_size;

/* Open IMAGE, creating it when size is nonzero and it does not exist. */
static int open_image(const char *image, uint64_t size, const char *volname,
                      unsigned flags, struct store **st)
{
    struct stat sb;
    int r;
    if (size && stat(image, &sb) < 0 && errno == ENOENT) {
        struct store_create_opts o = {
            .size = size, .volume_name = volname, .map_size = map_size};
        r = store_create(image, &o, st);
        if (r < 0)
            fprintf(stderr, "%s: %s\n", prog, store_errmsg());
        return r;
    }
    r = store_open_map(image, flags, map_size, st);
    if (r == -ENOENT && !size) {
        /* The store says whether the image or its directory is missing. */
        const char *m = store_errmsg();
        size_t n = strlen(m);
        fprintf(stderr, "%s: %s%s\n", prog, m,
                n > 13 && !strcmp(m + n - 13, "no such image")
                    ? " (give --size SIZE to create it)"
                    : "");
        return r;
    }
    if (r == -EBUSY) {
        fprintf(stderr,
                "%s: %s: in use by another process (a running server? use "
                "bsnap for a served image)\n",
                prog, image);
        return r;
    }
    if (r < 0) {
        fprintf(stderr, "%s: %s\n", prog, store_errmsg());
        return r;
    }
    if (size) {
        struct store_info si;
        r = store_info(*st, &si);
        if (r == 0 && si.size != size) {
            char have[24], want[24];
            fprintf(stderr,
                    "%s: %s: the image exists with size %s (%llu bytes), not "
                    "the %s (%llu) given by --size (omit --size to open it)\n",
                    prog, image, common_human_size(si.size, have, sizeof have),
                    (unsigned long long)si.size,
                    common_human_size(size, want, sizeof want),
                    (unsigned long long)size);
            r = -EINVAL;
        }
        if (r < 0) {
            store_close(*st);
            *st = NULL;
        }
    }
    return r;
}

static volatile int quiet_progress;

/* The one line serve prints (stderr) once everything is being served:
 * what it serves, on what, and where bsnap reaches it. */
static void startup_line(const char *image, const char *sock, const char *tcp,
                         int systemd, int single, const char *device,
                         char **attach, int nattach, const char *ctlpath)
{
    char abs[PATH_MAX], line[8192];
    size_t n = 0;
#define ADD(...)                                                               \
    do {                                                                       \
        if (n < sizeof line)                                                   \
            n += (size_t)snprintf(line + n, sizeof line - n, __VA_ARGS__);     \
    } while (0)
    ADD("%s: serving %s on", prog, realpath(image, abs) ? abs : image);
    const char *sep = " ";
    if (sock) {
        ADD("%ssocket %s", sep, sock);
        sep = ", ";
    }
    if (tcp) {
        ADD("%stcp %s", sep, tcp);
        sep = ", ";
    }
    if (systemd) {
        ADD("%ssystemd sockets", sep);
        sep = ", ";
    }
    if (single) {
        ADD("%sstdin/stdout (one client)", sep);
        sep = ", ";
    }
    if (device) {
        ADD("%s%s (default volume)", sep, device);
        sep = ", ";
    }
    for (int i = 0; i < nattach; i++) {
        const char *eq = strchr(attach[i], '=');
        ADD("%s%.*s (export %s)", sep, (int)(eq - attach[i]), attach[i],
            eq + 1);
        sep = ", ";
    }
    if (ctlpath[0])
        ADD("; control socket %s", ctlpath);
    else
        ADD("; no control socket");
#undef ADD
    fprintf(stderr, "%s\n", line);
}

/* Remove an image this run created (and its side files) after a failed
 * start: nothing was served from it.  The exports' attributes file goes
 * too if this run made it (attrs is 1). */
static void remove_image(const char *image, int attrs)
{
    static const char *const sides[] = {"-exports.json", "", "-chunks",
                                        "-lock"};
    char p[PATH_MAX + 32];
    for (size_t i = attrs ? 0 : 1; i < sizeof sides / sizeof sides[0]; i++) {
        snprintf(p, sizeof p, "%s%s", image, sides[i]);
        unlink(p);
    }
}

/* A whole number lo..hi for option opt, or a usage error naming it. */
static unsigned count_arg(const char *opt, const char *arg, unsigned lo,
                          unsigned hi)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(arg, &end, 10);
    if (errno || end == arg || *end || arg[0] == '-' || v < lo || v > hi)
        usage_error("serve",
                    "%s wants a whole number from %u to %u, not "
                    "\"%s\"",
                    opt, lo, hi, arg);
    return (unsigned)v;
}

static int cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, 0, 'k'},
        {"single", no_argument, 0, 's'},
        {"tcp", required_argument, 0, 't'},
        {"control", required_argument, 0, 'c'},
        {"size", required_argument, 0, 'S'},
        {"map-size", required_argument, 0, 'M'},
        {"attach", required_argument, 0, 'a'},
        {"connections", required_argument, 0, 'n'},
        {"queues", required_argument, 0, 'n'},
        {"queue-depth", required_argument, 0, 'D'},
        {"timeout", required_argument, 0, 'T'},
        {"tls", required_argument, 0, 'L'},
        {"tls-certificates", required_argument, 0, 'C'},
        {"tls-psk", required_argument, 0, 'P'},
        {"tls-verify-peer", no_argument, 0, 'V'},
        {"read-only", no_argument, 0, 'R'},
        {"accept-data-loss", no_argument, 0, 'X'},
        {"no-list", no_argument, 0, 'N'},
        {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *sock = NULL, *tcp = NULL, *control = NULL, *device = NULL;
    char ctlpath[256];
    uint64_t size = 0;
    char *attach[MAX_ATTACH];
    int nattach = 0, verbose = 0, c, r, read_only = 0, no_list = 0;
    int single = 0;
    unsigned open_flags = 0;
    unsigned connections = 0, timeout = 0, queue_depth = 0;
    struct buse_tls_options tls = {.mode = -1}; /* -1: --tls not given */

    while ((c = getopt_long(argc, argv, "vhs", opts, NULL)) != -1) {
        switch (c) {
        case 'k':
            sock = optarg;
            break;
        case 's':
            single = 1;
            break;
        case 't':
            tcp = optarg;
            break;
        case 'c':
            control = optarg;
            break;
        case 'S':
            size = size_arg("serve", optarg);
            break;
        case 'M':
            map_size = size_arg("serve", optarg);
            if (map_size < (1u << 20))
                usage_error("serve", "--map-size wants at least 1M");
            break;
        case 'a':
            if (nattach == MAX_ATTACH)
                usage_error("serve", "at most %d --attach", MAX_ATTACH);
            if (!strchr(optarg, '=') || optarg[0] == '=')
                usage_error("serve", "--attach wants DEVICE=EXPORT, not \"%s\"",
                            optarg);
            attach[nattach++] = optarg;
            break;
        case 'n':
            connections = count_arg("--connections", optarg, 1, 64);
            break;
        case 'T':
            timeout = count_arg("--timeout", optarg, 0, 86400);
            break;
        case 'D':
            queue_depth = count_arg("--queue-depth", optarg, 1, 4096);
            break;
        case 'L':
            if (!strcmp(optarg, "off"))
                tls.mode = BUSE_TLS_OFF;
            else if (!strcmp(optarg, "on"))
                tls.mode = BUSE_TLS_ON;
            else if (!strcmp(optarg, "require"))
                tls.mode = BUSE_TLS_REQUIRE;
            else
                usage_error("serve",
                            "--tls wants off, on or require, not "
                            "\"%s\"",
                            optarg);
            break;
        case 'C':
            tls.certificates = optarg;
            break;
        case 'P':
            tls.psk_file = optarg;
            break;
        case 'V':
            tls.verify_peer = 1;
            break;
        case 'R':
            read_only = 1;
            break;
        case 'X':
            open_flags |= STORE_OPEN_ACCEPT_LOSS;
            break;
        case 'N':
            no_list = 1;
            break;
        case 'v':
            verbose++;
            break;
        case 'h':
            fputs(serve_help, stdout);
            exit(0);
        default:
            usage_error("serve", "bad option \"%s\"", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        usage_error("serve", "missing IMAGE");
    const char *image = argv[optind++];
    if (optind < argc)
        device = argv[optind++];
    if (optind < argc)
        usage_error("serve", "unexpected argument \"%s\"", argv[optind]);
    int systemd = !single && getenv("LISTEN_FDS") != NULL;
    if (single && (sock || tcp || device || nattach))
        usage_error("serve", "--single serves stdin/stdout only: no DEVICE, "
                             "--attach, --socket or --tcp with it");
    if (!sock && !tcp && !device && !nattach && !systemd && !single)
        usage_error("serve", "nothing to serve on: give DEVICE, --socket, "
                             "--tcp or --single");
    int creds = tls.certificates || tls.psk_file;
    if (tls.mode == -1) /* credentials alone mean TLS, required (qemu-nbd) */
        tls.mode = creds ? BUSE_TLS_REQUIRE : BUSE_TLS_OFF;
    if (tls.mode != BUSE_TLS_OFF && !creds)
        usage_error("serve", "--tls=%s needs --tls-certificates or --tls-psk",
                    tls.mode == BUSE_TLS_ON ? "on" : "require");
    if (tls.mode == BUSE_TLS_OFF && creds)
        usage_error("serve", "--tls=off with TLS credentials");
    if (tls.verify_peer && !tls.certificates)
        usage_error("serve", "--tls-verify-peer needs --tls-certificates");
    /* --single: a control socket only when asked for (several single
     * servers of several images would fight over the default one). */
    ctlpath[0] = '\0';
    if (control)
        snprintf(ctlpath, sizeof ctlpath, "%s", control);
    else if (!single &&
             common_default_control_path(prog, ctlpath, sizeof ctlpath, 1) < 0)
        return 1;
    if (verbose)
        buse_set_verbose(verbose);

    if ((ctlpath[0] &&
         common_check_socket_path(prog, "control socket", ctlpath) < 0) ||
        (sock && common_check_socket_path(prog, "socket", sock) < 0))
        return 1;
    if (ctlpath[0] && ctl_prepare(ctlpath) < 0)
        return 1;
    struct stat isb;
    int created = size && stat(image, &isb) < 0 && errno == ENOENT;
    char attrs_path[4096];
    snprintf(attrs_path, sizeof attrs_path, "%s-exports.json", image);
    int created_attrs = created && stat(attrs_path, &isb) < 0;
    struct store *st;
    r = open_image(image, size, NULL, open_flags, &st);
    if (r < 0)
        return 1;

    struct exports ex;
    struct buse_operations ops;
    struct ctl_server *ctl = NULL;
    int rc = 1;
    exports_init(&ex, st, image, &ops);
    if (read_only)
        ops.flags |= BUSE_READONLY;
    if (no_list)
        ops.flags |= BUSE_NO_LIST;
    struct buse_server *srv = NULL;
    if (attrs_attach(&ex, attrs_path) < 0)
        goto out_store;
    /* Clones a server that died left behind go before anyone connects. */
    exports_sweep_ephemeral(&ex);
    srv = buse_server_new(&ops, &ex);
    if (!srv)
        goto out_store;
    ex.srv = srv;
    if (tls.mode != BUSE_TLS_OFF && buse_server_set_tls(srv, &tls) < 0)
        goto out_srv;
    if (sock && buse_server_listen_unix(srv, sock, 0) < 0)
        goto out_srv;
    if (tcp && buse_server_listen_tcp(srv, tcp) < 0)
        goto out_srv;
    if (systemd && buse_server_listen_systemd(srv) < 0)
        goto out_srv;
    struct buse_kernel_options ko = {.connections = connections,
                                     .timeout = timeout,
                                     .queue_depth = queue_depth};
    if (device && buse_server_attach_kernel(srv, device, &ko) < 0)
        goto out_srv;
    for (int i = 0; i < nattach; i++) {
        char *eq = strchr(attach[i], '=');
        *eq = '\0';
        ko.export_name = eq + 1;
        r = buse_server_attach_kernel(srv, attach[i], &ko);
        *eq = '=';
        if (r < 0)
            goto out_srv;
    }
    /* Last: once the control socket exists, everything is being served. */
    if (ctlpath[0] && ctl_start(ctlpath, &ex, &ctl) < 0)
        goto out_srv;
    if (single) {
        int in, out;
        if (common_take_stdio(prog, &in, &out) < 0 ||
            buse_server_add_client(srv, in, out) < 0) {
            ctl_stop(ctl);
            goto out_srv;
        }
    }
    startup_line(image, sock, tcp, systemd, single, device, attach, nattach,
                 ctlpath);
    /* Type=notify: the image is open and replayed, every listener and
     * device is live (a client that connects now waits in the backlog until
     * run() accepts it). */
    char status[4200];
    snprintf(status, sizeof status, "READY=1\nSTATUS=serving %s", image);
    notify_send(status);
    r = buse_server_run(srv);
    /* run() returns once SIGINT/SIGTERM or a stop request came and the
     * connections are closed; the store is still to be committed. */
    notify_send("STOPPING=1\nSTATUS=stopping");
    rc = r < 0 ? 1 : 0;
    ctl_stop(ctl);
out_srv:
    buse_server_free(srv); /* closes listeners: their socket files go */
out_store:
    exports_destroy(&ex);
    store_close(st);
    if (rc && created) /* a failed first start leaves no empty image */
        remove_image(image, created_attrs);
    return rc;
}

/* ---- check / info / create ---- */

static void check_progress(uint64_t done, uint64_t total, void *arg)
{
    if (quiet_progress)
        return;
    fprintf(stderr, "\rchecking: %llu / %llu (%.0f%%)  ",
            (unsigned long long)done, (unsigned long long)total,
            total ? 100.0 * (double)done / (double)total : 100.0);
    if (done == total)
        fputc('\n', stderr);
}

static void check_problem(const char *msg, void *arg)
{
    if (!quiet_progress)
        fputc('\n', stderr);
    fprintf(stderr, "%s: problem: %s\n", prog, msg);
}

static const char check_help[] =
    "Usage: busesnap check IMAGE [--progress | --quiet] "
    "[--accept-data-loss]\n"
    "Check the consistency of an image no server has open: every map entry\n"
    "names an existing chunk, every refcount equals its references, every\n"
    "chunk hashes to its key.  Exit 0: consistent, 1: problems (listed on\n"
    "stderr) or failure.  Progress goes to stderr when it is a terminal or\n"
    "with --progress.  An image that was not shut down cleanly has its log\n"
    "replayed first; if the log does not reach what was made durable, check\n"
    "refuses unless --accept-data-loss (see busesnap serve --help).  For a\n"
    "served image use `bsnap check`.\n";

static int cmd_check(int argc, char **argv)
{
    static const struct option opts[] = {
        {"progress", no_argument, 0, 'p'},
        {"quiet", no_argument, 0, 'q'},
        {"accept-data-loss", no_argument, 0, 'D'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c, progress = isatty(2);
    unsigned flags = STORE_OPEN_RDONLY;
    while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
        if (c == 'p')
            progress = 1;
        else if (c == 'D')
            flags |= STORE_OPEN_ACCEPT_LOSS;
        else if (c == 'q')
            progress = 0;
        else if (c == 'h') {
            fputs(check_help, stdout);
            exit(0);
        } else
            usage_error("check", "bad option \"%s\"", argv[optind - 1]);
    }
    if (argc - optind != 1)
        usage_error("check", "expected one IMAGE");
    const char *image = argv[optind];
    struct store *st;
    if (open_image(image, 0, NULL, flags, &st) < 0)
        return 1;
    quiet_progress = !progress;
    int r = store_check(st, check_progress, check_problem, NULL);
    if (r < 0)
        fprintf(stderr, "%s: %s\n", prog, store_errmsg());
    else if (r > 0)
        fprintf(stderr, "%s: %s: %d problem%s found\n", prog, image, r,
                r == 1 ? "" : "s");
    else
        printf("%s: no problems found\n", image);
    store_close(st);
    return r == 0 ? 0 : 1;
}

static void print_bytes(const char *label, uint64_t b)
{
    char h[32];
    printf("%-18s %s (%llu bytes)\n", label,
           common_human_size((unsigned long long)b, h, sizeof h),
           (unsigned long long)b);
}

static const char info_help[] =
    "Usage: busesnap info IMAGE [--json]\n"
    "Show an image no server has open: UUID, format version, logical size,\n"
    "physical bytes, chunks, dedup ratio, free and reclaimable space.  The\n"
    "--json form is the \"info\" object of doc/control.md.\n";

static int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c, json = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'j')
            json = 1;
        else if (c == 'h') {
            fputs(info_help, stdout);
            exit(0);
        } else
            usage_error("info", "bad option \"%s\"", argv[optind - 1]);
    }
    if (argc - optind != 1)
        usage_error("info", "expected one IMAGE");
    const char *image = argv[optind];
    struct store *st;
    struct store_info si;
    if (open_image(image, 0, NULL, STORE_OPEN_RDONLY, &st) < 0)
        return 1;
    int r = store_info(st, &si);
    if (r < 0) {
        fprintf(stderr, "%s: %s\n", prog, store_errmsg());
        store_close(st);
        return 1;
    }
    if (json) {
        json_t *j = ctl_info_json(image, &si);
        json_dumpf(j, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(j);
    } else {
        char id[40];
        uuid_unparse_lower(si.uuid, id);
        printf("%-18s %s\n", "image:", image);
        printf("%-18s %s\n", "uuid:", id);
        printf("%-18s %u\n", "format version:", si.format_version);
        print_bytes("logical size:", si.size);
        print_bytes("physical bytes:", si.file_bytes);
        printf("%-18s %llu\n", "chunks:", (unsigned long long)si.chunks);
        print_bytes("referenced:", si.referenced_bytes);
        printf("%-18s %.2f\n", "dedup ratio:",
               si.chunk_bytes
                   ? (double)si.referenced_bytes / (double)si.chunk_bytes
                   : 1.0);
        print_bytes("free:", si.free_slots * STORE_BLOCK);
        print_bytes("reclaimable:", si.gc_pending * STORE_BLOCK);
        print_bytes("journal:", si.journal_bytes);
        printf("%-18s %u\n", "volumes:", si.volumes);
        printf("%-18s %u\n", "snapshots:", si.snapshots);
        if (si.bad_reads)
            printf("%-18s %llu\n",
                   "bad reads:", (unsigned long long)si.bad_reads);
    }
    store_close(st);
    return 0;
}

static const char create_help[] =
    "Usage: busesnap create IMAGE --size SIZE [--volume NAME]\n"
    "Create a new image whose default volume (named NAME, default "
    "\"" STORE_DEFAULT_VOLUME "\")\n"
    "has SIZE bytes (suffixes K, M, G, T, P; KiB too).  Fails if IMAGE "
    "exists.\n";

static int cmd_create(int argc, char **argv)
{
    static const struct option opts[] = {{"size", required_argument, 0, 's'},
                                         {"volume", required_argument, 0, 'V'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    uint64_t size = 0;
    const char *vol = NULL;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 's')
            size = size_arg("create", optarg);
        else if (c == 'V')
            vol = optarg;
        else if (c == 'h') {
            fputs(create_help, stdout);
            exit(0);
        } else
            usage_error("create", "bad option \"%s\"", argv[optind - 1]);
    }
    if (argc - optind != 1)
        usage_error("create", "expected one IMAGE");
    if (!size)
        usage_error("create", "--size is required");
    struct store *st;
    struct store_create_opts o = {.size = size, .volume_name = vol};
    int r = store_create(argv[optind], &o, &st);
    if (r < 0) {
        fprintf(stderr, "%s: %s\n", prog, store_errmsg());
        return 1;
    }
    store_close(st);
    return 0;
}

static const char main_help[] =
    "Usage: busesnap COMMAND [ARGS]\n"
    "A content-addressed copy-on-write disk server with O(1) snapshots and\n"
    "clones, served over NBD.\n"
    "\n"
    "  serve IMAGE [DEVICE] [OPTIONS]   serve the image (see serve --help)\n"
    "  create IMAGE --size SIZE         create a new image\n"
    "  check IMAGE                      consistency check (offline)\n"
    "  info IMAGE [--json]              space and identity (offline)\n"
    "\n"
    "`busesnap COMMAND --help` for details; `bsnap` controls a running\n"
    "server (`bsnap snapshot` makes a snapshot; `busesnap create` an image).\n"
    "--version prints the version.\n";

int main(int argc, char **argv)
{
    opterr = 0;
    if (argc < 2)
        usage_error(NULL, "missing COMMAND");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(main_help, stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("busesnap %s (libbuse %s, control protocol %d)\n",
               BUSESNAP_VERSION, BUSE_VERSION_STRING, CTL_PROTOCOL_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "serve"))
        return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "check"))
        return cmd_check(argc - 1, argv + 1);
    if (!strcmp(cmd, "info"))
        return cmd_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "create"))
        return cmd_create(argc - 1, argv + 1);
    usage_error(NULL, "unknown command \"%s\"", cmd);
}
