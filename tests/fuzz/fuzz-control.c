/* fuzz-control.c: libFuzzer target for busesnap's control protocol
 * (src/server/control.c framing and hello, control-ops.c operations),
 * issue 7 item 4.
 *
 * Each input is the byte stream of one control client.  control.c is
 * compiled into this file (#include) so that its real per-client loop,
 * client_thread(), serves the input on one end of a socketpair (the pump
 * of fuzz-pump.h feeds and drains the other end): greeting, line framing
 * (\r, blank lines, the 64 KiB limit), JSON parsing, hello and every op of
 * doc/control.md, against a real store (LMDB + chunk file) in a private
 * directory, on tmpfs when /dev/shm exists (FUZZ_STORE_DIR overrides).
 *
 * The input is prefixed with a hello line, unless it begins with a NUL
 * byte (then the rest is sent as is: the pre-hello state).  The store is
 * created once per process with a few written blocks and a snapshot, and
 * recreated every FUZZ_CONTROL_RESET inputs (default 256; 1 makes every
 * input independent, for replaying a crash), which bounds its growth.
 * Oracles: no response may be an ENOMEM error (nothing runs out of memory
 * here), and every non-blank request line gets exactly one response line
 * (expected_responses).  No NBD client is connected: the EBUSY and --force
 * paths are not reached here (tests/test-bsnap-commands.sh covers them).
 */
#include "../../src/server/control.c"

#include <dirent.h>

#include "fuzz-pump.h"

static char store_dir[256];
static char image[300];
static struct store *st;
static struct exports ex;
static struct ctl_server srv;
static unsigned inputs, reset_every = 256;

static void fail_store(const char *what)
{
    fprintf(stderr, "fuzz-control: %s: %s\n", what, store_errmsg());
    abort();
}

static void remove_store_files(void)
{
    DIR *d = opendir(store_dir);
    struct dirent *e;
    char p[600];
    if (!d)
        return;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(p, sizeof p, "%s/%s", store_dir, e->d_name);
            unlink(p);
        }
    closedir(d);
}

static void close_store(void)
{
    if (!st)
        return;
    exports_destroy(&ex);
    store_close(st);
    st = NULL;
    remove_store_files();
}

/* A fresh image: 1 MiB default volume "default" with three data blocks
 * (two equal: a deduplicated chunk), snapshot "s0", then one more block
 * and a trim, so that diff, rollback, clone, gc and check have work. */
static void open_store(void)
{
    struct store_create_opts o = {.size = 1u << 20, .volume_name = NULL};
    struct store_vol *v;
    struct store_obj_info info;
    struct store_info si;
    unsigned char block[STORE_BLOCK];
    struct buse_operations ops;

    close_store();
    if (store_create(image, &o, &st) < 0)
        fail_store("store_create");
    if (store_vol_open(st, "", &v) < 0 && store_vol_open(st, "default", &v))
        fail_store("store_vol_open");
    memset(block, 'a', sizeof block);
    if (store_write(v, block, 0, sizeof block, 0) < 0 ||
        store_write(v, block, 8 * STORE_BLOCK, sizeof block, 0) < 0)
        fail_store("store_write");
    memset(block, 'b', sizeof block);
    if (store_write(v, block, 100, sizeof block, 0) < 0)
        fail_store("store_write");
    if (store_snapshot(st, "default", "s0", &info) < 0)
        fail_store("store_snapshot");
    memset(block, 'c', sizeof block);
    if (store_write(v, block, 16 * STORE_BLOCK, sizeof block, STORE_FUA) < 0 ||
        store_zero(v, 0, STORE_BLOCK, 0) < 0)
        fail_store("store_write");
    store_vol_close(v);
    exports_init(&ex, st, image, &ops);
    srv.ex = &ex;
    if (store_info(st, &si) == 0)
        uuid_unparse_lower(si.uuid, srv.uuid);
}

static void cleanup(void)
{
    close_store();
    rmdir(store_dir);
}

/* The framing promise of doc/control.md: one response line per non-blank
 * request line (after the greeting; check adds progress lines), and one
 * E2BIG error, then the end, for a line longer than CTL_MAX_LINE - 1. */
static unsigned expected_responses(const uint8_t *s, size_t n)
{
    unsigned count = 1; /* the greeting */
    size_t start = 0;
    for (;;) {
        const uint8_t *nl = memchr(s + start, '\n', n - start);
        size_t len = nl ? (size_t)(nl - (s + start)) : n - start;
        if (len >= CTL_MAX_LINE)
            return count + 1; /* E2BIG, then the connection closes */
        if (!nl)
            return count; /* an unfinished line gets no answer */
        if (len && s[start + len - 1] == '\r')
            len--;
        for (size_t i = 0; i < len; i++)
            if (s[start + i] != ' ' && s[start + i] != '\t') {
                count++;
                break;
            }
        start = (size_t)(nl - s) + 1;
    }
}

struct response_count {
    unsigned lines, progress;
    size_t pos;    /* bytes into the current line */
    char head[11]; /* its first bytes */
};

static void on_reply(void *arg, const uint8_t *buf, size_t len)
{
    static const char progress[] = "{\"progress\"";
    struct response_count *rc = arg;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] == '\n') {
            rc->lines++;
            if (rc->pos >= sizeof rc->head &&
                memcmp(rc->head, progress, sizeof rc->head) == 0)
                rc->progress++;
            rc->pos = 0;
        } else if (rc->pos++ < sizeof rc->head) {
            rc->head[rc->pos - 1] = (char)buf[i];
        }
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = getenv("FUZZ_STORE_DIR");
    const char *every = getenv("FUZZ_CONTROL_RESET");
    if (!base)
        base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(store_dir, sizeof store_dir, "%s/fuzz-control.XXXXXX", base);
    if (!mkdtemp(store_dir)) {
        perror(store_dir);
        abort();
    }
    snprintf(image, sizeof image, "%s/image.db", store_dir);
    if (every && atoi(every) > 0)
        reset_every = (unsigned)atoi(every);
    snprintf(srv.path, sizeof srv.path, "%s/control.sock", store_dir);
    pthread_mutex_init(&srv.lock, NULL);
    pthread_cond_init(&srv.cond, NULL);
    atexit(cleanup);
    open_store();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char hello[] = "{\"op\":\"hello\",\"version\":1}\n";
    const uint8_t *pre = (const uint8_t *)hello;
    size_t pre_len = sizeof hello - 1;
    struct fuzz_pump pump = {0};
    struct response_count rc = {0};

    if (inputs++ % reset_every == 0 && inputs > 1)
        open_store();
    if (size > 0 && data[0] == 0) {
        pre_len = 0;
        data++;
        size--;
    }
    uint8_t *all = malloc(pre_len + size + 1);
    struct ctl_client *cl = calloc(1, sizeof *cl);
    if (!cl || !all)
        abort();
    memcpy(all, pre, pre_len);
    if (size)
        memcpy(all + pre_len, data, size);
    unsigned expected = expected_responses(all, pre_len + size);
    free(all);
    pump.on_reply = on_reply;
    pump.on_reply_arg = &rc;
    cl->c = &srv;
    /* No allocation fails here: an ENOMEM response is a bug (a response
     * that could not be built, reported as out of memory). */
    cl->fd = fuzz_pump_start(&pump, pre, pre_len, data, size,
                             "\"error\":\"ENOMEM\"");
    pthread_mutex_lock(&srv.lock);
    cl->next = srv.clients;
    srv.clients = cl;
    srv.nclients++;
    pthread_mutex_unlock(&srv.lock);
    client_thread(cl); /* frees cl and closes its fd */
    fuzz_pump_join(&pump);
    if (pump.found) {
        fprintf(stderr, "fuzz-control: %u ENOMEM responses\n", pump.found);
        abort();
    }
    if (rc.lines - rc.progress != expected) {
        fprintf(stderr,
                "fuzz-control: %u response lines (%u progress), expected "
                "%u\n",
                rc.lines, rc.progress, expected);
        abort();
    }
    if (srv.nclients != 0 || srv.clients) {
        fprintf(stderr, "fuzz-control: client not removed from the list\n");
        abort();
    }
    return 0;
}
