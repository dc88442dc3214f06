/* relay.c: a client on two separate byte streams (ssh's stdin and stdout
 * pipes) made into the one socket a libbuse connection reads and writes.
 *
 * A connection owns a single fd: the workers read requests from it, send
 * replies to it, and shutdown() ends it.  buse_server_add_client() is
 * given an input and an output fd; when they are one socket it serves it
 * directly, otherwise two detached threads copy input -> socketpair and
 * socketpair -> output here.  End of input half-closes the pair (the
 * connection sees end of stream); the connection closing its end ends the
 * output copy, which closes the output fd so the client sees end of
 * stream too.  The threads block every signal: a write to a vanished
 * reader returns EPIPE instead of killing the process.  The last thread
 * to finish closes the relay's end of the pair; the input copy may stay
 * blocked in read() until the client closes its output (a program that
 * serves one client exits first).
 */
#define BUSE_INTERNAL
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

struct relay {
    int from, to;
    int pair;         /* our end of the socketpair */
    int inbound;      /* from the client's input into the pair */
    atomic_int *refs; /* threads using pair: the last one closes it */
};

static void relay_put(struct relay *r)
{
    if (atomic_fetch_sub(r->refs, 1) == 1) {
        close(r->pair);
        free(r->refs);
    }
    free(r);
}

static int write_all(int fd, const char *p, size_t n, int sock)
{
    while (n > 0) {
        ssize_t w = sock ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void *relay_main(void *arg)
{
    struct relay *r = arg;
    char *buf = malloc(1 << 16);
    for (;;) {
        ssize_t n = buf ? read(r->from, buf, 1 << 16) : -1;
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || write_all(r->to, buf, (size_t)n, r->inbound) < 0)
            break;
    }
    if (r->inbound) {
        /* The client's input ended: the connection reads end of stream.
         * Its replies may still flow out through the other thread. */
        shutdown(r->pair, SHUT_WR);
        close(r->from);
    } else {
        /* The connection is gone (or the client stopped reading): the
         * client sees end of stream, and a connection still reading
         * sees its socket shut. */
        close(r->to);
        shutdown(r->pair, SHUT_RDWR);
    }
    free(buf);
    relay_put(r);
    return NULL;
}

int buse_relay_start(int in_fd, int out_fd, int *conn_fd)
{
    int sv[2], e;
    pthread_attr_t attr;
    pthread_t t;
    sigset_t all, old;
    struct relay *in = calloc(1, sizeof *in), *out = calloc(1, sizeof *out);
    atomic_int *refs = malloc(sizeof *refs);
    if (!in || !out || !refs) {
        free(in);
        free(out);
        free(refs);
        close(in_fd);
        close(out_fd);
        return -ENOMEM;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        e = errno;
        buse_err("client on fds %d/%d: socketpair: %s", in_fd, out_fd,
                 strerror(e));
        free(in);
        free(out);
        free(refs);
        close(in_fd);
        close(out_fd);
        return -e;
    }
    atomic_init(refs, 2);
    *in = (struct relay){
        .from = in_fd, .to = sv[1], .pair = sv[1], .inbound = 1, .refs = refs};
    *out = (struct relay){
        .from = sv[1], .to = out_fd, .pair = sv[1], .refs = refs};
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    e = pthread_create(&t, &attr, relay_main, out);
    if (e == 0) {
        e = pthread_create(&t, &attr, relay_main, in);
        if (e != 0) { /* the output copy closes out_fd when sv[0] closes */
            close(in_fd);
            relay_put(in);
        }
    } else {
        free(in);
        free(out);
        free(refs);
        close(sv[1]);
        close(in_fd);
        close(out_fd);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (e != 0) {
        buse_err("client on fds %d/%d: cannot start a thread: %s", in_fd,
                 out_fd, strerror(e));
        close(sv[0]);
        return -e;
    }
    *conn_fd = sv[0];
    return 0;
}
