/* fuzz-pump.h: the client side of one fuzzed connection (for the libFuzzer
 * targets fuzz-nbd.c and fuzz-control.c).
 *
 * The project's real connection code reads a socket and writes replies to
 * it.  A fuzz target gives it one end of a socketpair and starts a pump
 * thread on the other: the pump writes the fuzz input (prefix, then data),
 * half-closes (the server sees EOF after the last byte), and reads and
 * discards every reply until the server closes its end, so the server
 * never blocks on a full socket.  Every resource is released by
 * fuzz_pump_join(): nothing leaks across inputs.  An oracle: when forbid
 * is set, the pump counts the replies that contain it (found); when
 * on_reply is set, it sees every byte the server sent, in order.
 */
#ifndef FUZZ_PUMP_H
#define FUZZ_PUMP_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct fuzz_pump {
    int fd; /* client end, owned by the pump thread */
    const uint8_t *pre, *data;
    size_t pre_len, len;
    uint64_t received;  /* reply bytes the server sent */
    const char *forbid; /* a string no reply may contain, or NULL */
    unsigned found;     /* times forbid was seen */
    void (*on_reply)(void *arg, const uint8_t *buf, size_t len);
    void *on_reply_arg;
    pthread_t thread;
};

/* Send from the prefix, then from the data.  Returns bytes sent, 0 when
 * nothing is left, -1 when the server is gone (stop sending). */
static ssize_t fuzz_pump_send(struct fuzz_pump *p, size_t *off)
{
    size_t total = p->pre_len + p->len;
    if (*off >= total)
        return 0;
    const uint8_t *b =
        *off < p->pre_len ? p->pre + *off : p->data + (*off - p->pre_len);
    size_t n = *off < p->pre_len ? p->pre_len - *off : total - *off;
    ssize_t w = send(p->fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    *off += (size_t)w;
    return w;
}

static void *fuzz_pump_main(void *arg)
{
    struct fuzz_pump *p = arg;
    size_t off = 0, total = p->pre_len + p->len;
    int writing = 1;
    char junk[256 + 65536]; /* a tail of the previous reads, then a read */
    size_t keep = 0, flen = p->forbid ? strlen(p->forbid) : 0;
    for (;;) {
        if (writing && off >= total) {
            shutdown(p->fd, SHUT_WR);
            writing = 0;
        }
        struct pollfd pfd = {p->fd, POLLIN | (writing ? POLLOUT : 0), 0};
        if (poll(&pfd, 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (writing && (pfd.revents & POLLOUT) && fuzz_pump_send(p, &off) < 0)
            writing = 0; /* the server closed: only drain now */
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r =
                recv(p->fd, junk + keep, sizeof junk - keep, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
                break;
            if (r > 0 && p->on_reply)
                p->on_reply(p->on_reply_arg, (uint8_t *)junk + keep, (size_t)r);
            if (r > 0 && flen) {
                /* Search the new bytes and the tail before them, keeping
                 * flen - 1 bytes for a match across two reads. */
                size_t n = keep + (size_t)r;
                for (char *q = junk;
                     (q = memmem(q, n - (size_t)(q - junk), p->forbid, flen));
                     q += flen)
                    p->found++;
                keep = flen - 1 < n ? flen - 1 : n;
                memmove(junk, junk + n - keep, keep);
            }
            if (r > 0)
                p->received += (uint64_t)r;
        }
    }
    close(p->fd);
    return NULL;
}

/* Start a pump for pre + data (forbid: see struct fuzz_pump, at most 257
 * bytes, or NULL).  p is zeroed first by the caller, who may set on_reply
 * and on_reply_arg (kept).  Returns the server's end of the socketpair (the
 * caller closes it, or lets the code under test close it). */
static int fuzz_pump_start(struct fuzz_pump *p, const uint8_t *pre,
                           size_t pre_len, const uint8_t *data, size_t len,
                           const char *forbid)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        perror("fuzz: socketpair");
        abort();
    }
    void (*on_reply)(void *, const uint8_t *, size_t) = p->on_reply;
    void *on_reply_arg = p->on_reply_arg;
    *p = (struct fuzz_pump){.fd = sv[1],
                            .on_reply = on_reply,
                            .on_reply_arg = on_reply_arg,
                            .forbid = forbid,
                            .pre = pre,
                            .pre_len = pre_len,
                            .data = data,
                            .len = len};
    if (pthread_create(&p->thread, NULL, fuzz_pump_main, p) != 0) {
        perror("fuzz: pthread_create");
        abort();
    }
    return sv[0];
}

/* Wait for the pump: returns once the server closed its end. */
static void fuzz_pump_join(struct fuzz_pump *p)
{
    pthread_join(p->thread, NULL);
}

#endif
