/* test-buse-server.c: the parts of libbuse's server API that no NBD client
 * can see, driven from C with raw sockets: several exports by name, open
 * and close pairing, buse_server_connections() counts, buse_server_
 * disconnect() closing exactly one export's connections and returning only
 * after their close() callbacks ran, stop() from another thread, socket
 * file removal, ops validation, and the struct-size versioning (members
 * beyond the size a program was compiled with are never read).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "buse.h"

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "FAIL test-buse-server line %d: ", __LINE__);      \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static int closed_a, closed_b;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int t_read(void *buf, uint32_t len, uint64_t off, void *u)
{
    memset(buf, *(const char *)u, len); /* export name or server fill */
    return 0;
}

static int t_write(const void *buf, uint32_t len, uint64_t off, void *u)
{
    return 0;
}

static int t_list(struct buse_export_list *l, void *u)
{
    int r = buse_add_export(l, "a", "disk a");
    return r < 0 ? r : buse_add_export(l, "b", NULL);
}

static int t_open(const char *name, struct buse_export *exp, void *u)
{
    if (strcmp(name, "a") && strcmp(name, "b"))
        return -ENOENT;
    exp->handle = strdup(name);
    return exp->handle ? 0 : -ENOMEM;
}

static void t_close(void *h)
{
    pthread_mutex_lock(&lock);
    if (strcmp(h, "a") == 0)
        closed_a++;
    else
        closed_b++;
    pthread_mutex_unlock(&lock);
    usleep(20000); /* disconnect() must wait for this */
    free(h);
}

static int get(int *v)
{
    pthread_mutex_lock(&lock);
    int r = *v;
    pthread_mutex_unlock(&lock);
    return r;
}

static int readn(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
}

/* Connect and open export name with NBD_OPT_EXPORT_NAME.  Returns the fd
 * in transmission (and *tflags), or -1 when the server closed. */
static int client(const char *path, const char *name, unsigned *tflags)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    unsigned char b[256];
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    CHECK(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0,
          "connect %s: %s", path, strerror(errno));
    CHECK(readn(fd, b, 18) == 0, "no greeting");
    put32(b, 3); /* FIXED_NEWSTYLE | NO_ZEROES */
    memcpy(b + 4, "IHAVEOPT", 8);
    put32(b + 12, 1); /* NBD_OPT_EXPORT_NAME */
    put32(b + 16, (uint32_t)strlen(name));
    memcpy(b + 20, name, strlen(name));
    CHECK(write(fd, b, 20 + strlen(name)) == (ssize_t)(20 + strlen(name)),
          "write");
    if (readn(fd, b, 10) < 0) {
        close(fd);
        return -1;
    }
    if (tflags)
        *tflags = (unsigned)(b[8] << 8 | b[9]);
    return fd;
}

static int is_closed(int fd)
{
    char c;
    return read(fd, &c, 1) <= 0;
}

static void wait_count(struct buse_server *srv, const char *name, int want)
{
    for (int i = 0; i < 500; i++) {
        if (buse_server_connections(srv, name) == want)
            return;
        usleep(10000);
    }
    CHECK(0, "connections(%s): expected %d, got %d", name ? name : "NULL", want,
          buse_server_connections(srv, name));
}

static void *run_thread(void *srv)
{
    static int r;
    r = buse_server_run(srv);
    return &r;
}

/* Concurrency probe: how many read callbacks run at once. */
static int inflight, max_inflight;

static int slow_read(void *buf, uint32_t len, uint64_t off, void *u)
{
    pthread_mutex_lock(&lock);
    if (++inflight > max_inflight)
        max_inflight = inflight;
    pthread_mutex_unlock(&lock);
    usleep(off == 0 ? 60000 : 3000); /* the first request is the slowest */
    memset(buf, (int)(off / 512), len);
    pthread_mutex_lock(&lock);
    inflight--;
    pthread_mutex_unlock(&lock);
    return 0;
}

/* Two clients each pipeline 16 reads; returns the highest number of
 * callbacks seen at once, and whether any reply overtook an earlier one. */
static int pipeline(const char *path, unsigned flags, int *reordered)
{
    struct buse_operations ops = {
        .read = slow_read, .size = 1 << 20, .flags = flags, .threads = 4};
    struct buse_server *srv = buse_server_new(&ops, NULL);
    pthread_t th;
    int fd[2];
    CHECK(srv && buse_server_listen_unix(srv, path, 0) == 0, "pipeline srv");
    pthread_create(&th, NULL, run_thread, srv);
    max_inflight = 0;
    *reordered = 0;
    for (int c = 0; c < 2; c++)
        CHECK((fd[c] = client(path, "", NULL)) >= 0, "pipeline client");
    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < 16; i++) {
            unsigned char rq[28] = {0x25, 0x60, 0x95, 0x13};
            rq[15] = (unsigned char)i;         /* cookie */
            put32(rq + 20, (uint32_t)i * 512); /* offset */
            put32(rq + 24, 512);
            CHECK(write(fd[c], rq, 28) == 28, "pipeline write");
        }
    }
    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < 16; i++) {
            unsigned char rep[16 + 512];
            CHECK(readn(fd[c], rep, sizeof rep) == 0, "pipeline reply");
            CHECK(rep[7] == 0 && rep[16] == rep[15] && rep[527] == rep[15],
                  "reply %d: data does not match its cookie", i);
            if (rep[15] != i)
                *reordered = 1;
        }
        close(fd[c]);
    }
    buse_server_stop(srv);
    pthread_join(th, NULL);
    buse_server_free(srv);
    return max_inflight;
}

/* A client hammering its connection with pipelined reads until the
 * server closes it; returns the number of replies it got. */
static void *hammer(void *arg)
{
    int fd = *(int *)arg;
    static __thread unsigned char rep[16 + 4096];
    long replies = 0;
    for (;;) {
        unsigned char rq[4 * 28] = {0};
        for (int i = 0; i < 4; i++) {
            memcpy(rq + 28 * i, "\x25\x60\x95\x13", 4);
            put32(rq + 28 * i + 24, 4096);
        }
        if (write(fd, rq, sizeof rq) != (ssize_t)sizeof rq)
            break;
        int i;
        for (i = 0; i < 4; i++)
            if (readn(fd, rep, sizeof rep) < 0)
                break;
        replies += i;
        if (i < 4)
            break;
    }
    return (void *)replies;
}

int main(void)
{
    char dir[] = "/tmp/test-buse-server.XXXXXX", path[128];
    CHECK(mkdtemp(dir), "mkdtemp");
    signal(SIGPIPE, SIG_IGN); /* our raw clients write to closed sockets */
    snprintf(path, sizeof path, "%s/sock", dir);

    /* Validation: read is required. */
    struct buse_operations bad = {.size = 1 << 20};
    errno = 0;
    CHECK(!buse_server_new(&bad, NULL) && errno == EINVAL,
          "a server without read was created");

    char fill = 'z';
    struct buse_operations ops = {
        .read = t_read,
        .write = t_write,
        .size = 1 << 20,
        .list_exports = t_list,
        .open = t_open,
        .close = t_close,
    };
    struct buse_server *srv = buse_server_new(&ops, &fill);
    CHECK(srv, "buse_server_new");
    CHECK(buse_server_listen_unix(srv, path, 0) == 0, "listen");
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600,
          "socket mode is not 0600");
    pthread_t th;
    pthread_create(&th, NULL, run_thread, srv);

    int a[3], b0;
    for (int i = 0; i < 3; i++)
        CHECK((a[i] = client(path, "a", NULL)) >= 0, "open a");
    CHECK((b0 = client(path, "b", NULL)) >= 0, "open b");
    CHECK(client(path, "nope", NULL) < 0, "unknown export was accepted");
    wait_count(srv, "a", 3);
    wait_count(srv, "b", 1);
    wait_count(srv, NULL, 4);

    int n = buse_server_disconnect(srv, "a");
    CHECK(n == 3, "disconnect(a) returned %d, expected 3", n);
    CHECK(get(&closed_a) == 3, "disconnect returned before close(): %d",
          get(&closed_a));
    CHECK(buse_server_connections(srv, "a") == 0, "a still counted");
    CHECK(buse_server_connections(srv, "b") == 1, "b was touched");
    for (int i = 0; i < 3; i++)
        CHECK(is_closed(a[i]), "a connection %d still open", i);
    CHECK(get(&closed_b) == 0, "b closed by disconnect(a)");
    CHECK(buse_server_disconnect(srv, "a") == 0, "second disconnect(a)");

    /* b still serves: READ 512 at 0. */
    unsigned char rq[28] = {0x25, 0x60, 0x95, 0x13}, rep[16 + 512];
    rq[7] = 0;   /* NBD_CMD_READ */
    rq[15] = 42; /* cookie */
    put32(rq + 24, 512);
    CHECK(write(b0, rq, 28) == 28, "write request");
    CHECK(readn(b0, rep, sizeof rep) == 0, "no reply from b");
    CHECK(rep[7] == 0 && rep[15] == 42 && rep[16] == 'b' && rep[527] == 'b',
          "bad reply from b");

    buse_server_stop(srv);
    void *ret;
    pthread_join(th, &ret);
    CHECK(*(int *)ret == 0, "run returned %d", *(int *)ret);
    CHECK(get(&closed_b) == 1, "b not closed when run() returned");
    CHECK(is_closed(b0), "b still open after stop");
    CHECK(access(path, F_OK) != 0, "socket file not removed");
    buse_server_free(srv);
    for (int i = 0; i < 3; i++)
        close(a[i]);
    close(b0);

    /* Versioning: a program compiled with only the BUSE 1 members.  The
     * flags member (beyond that size) says read-only; it must be ignored. */
    struct buse_operations v1 = {
        .read = t_read, .write = t_write, .size = 4096, .flags = BUSE_READONLY};
    srv = buse_server_new_sized(
        &v1, offsetof(struct buse_operations, write_flags), &fill);
    CHECK(srv, "buse_server_new_sized with the BUSE 1 size");
    CHECK(buse_server_listen_unix(srv, path, 0) == 0, "listen 2");
    pthread_create(&th, NULL, run_thread, srv);
    unsigned tflags = 0;
    int c = client(path, "anything", &tflags);
    CHECK(c >= 0, "open with the v1 server");
    CHECK(tflags & 1, "HAS_FLAGS missing");
    CHECK(!(tflags & 2), "read-only: a member beyond ops_size was read");
    close(c);
    buse_server_stop(srv);
    pthread_join(th, NULL);
    buse_server_free(srv);

    /* disconnect() while four clients keep requests in flight. */
    closed_a = 0;
    srv = buse_server_new(&ops, &fill);
    CHECK(srv && buse_server_listen_unix(srv, path, 0) == 0, "listen 3");
    pthread_create(&th, NULL, run_thread, srv);
    int hfd[4];
    pthread_t ht[4];
    for (int i = 0; i < 4; i++) {
        CHECK((hfd[i] = client(path, i < 3 ? "a" : "b", NULL)) >= 0,
              "hammer client");
        pthread_create(&ht[i], NULL, hammer, &hfd[i]);
    }
    wait_count(srv, "a", 3);
    usleep(200000);
    n = buse_server_disconnect(srv, "a");
    CHECK(n == 3 && get(&closed_a) == 3,
          "disconnect(a) under load: returned %d, %d close() calls", n,
          get(&closed_a));
    for (int i = 0; i < 3; i++) {
        void *got;
        pthread_join(ht[i], &got);
        CHECK((long)got > 0, "hammer %d got no reply before disconnect", i);
    }
    CHECK(buse_server_connections(srv, "b") == 1, "b lost under load");
    buse_server_stop(srv);
    void *gotb;
    pthread_join(ht[3], &gotb);
    pthread_join(th, NULL);
    buse_server_free(srv);
    for (int i = 0; i < 4; i++)
        close(hfd[i]);

    /* Pipelining: 4 workers per connection, 2 connections: callbacks run
     * concurrently and the slow first read is overtaken. */
    int reordered;
    int most = pipeline(path, 0, &reordered);
    CHECK(most >= 4, "at most %d callbacks at once without BUSE_SERIALIZE",
          most);
    CHECK(reordered, "no reply overtook the slow first one");
    /* BUSE_SERIALIZE: one callback at a time, replies in request order. */
    most = pipeline(path, BUSE_SERIALIZE, &reordered);
    CHECK(most == 1, "%d callbacks at once with BUSE_SERIALIZE", most);
    CHECK(!reordered, "BUSE_SERIALIZE replied out of order");
    rmdir(dir);
    printf("ok\n");
    return 0;
}
