/* common.h: small helpers shared by the programs (busesnap, bsnap,
 * busexmp), so that they parse sizes and find the control socket the same
 * way.  Not part of libbuse or the store; linked into each program. */
#ifndef BUSESNAP_COMMON_H
#define BUSESNAP_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Parse "4096", "128M", "8G", "1TiB" (K, M, G, T are powers of 1024; an
 * optional "i" and "B" may follow the suffix).  Returns 0, or -EINVAL for
 * anything else (empty, negative, trailing junk, overflow).  Zero is
 * accepted; callers reject it where it makes no sense. */
int common_parse_size(const char *s, uint64_t *out);

/* The default control socket of busesnap, shared by server and bsnap, in
 * a directory only the user (or root) can write to: $BSNAP_CONTROL, else
 * $XDG_RUNTIME_DIR/busesnap.ctl when that directory is the user's own and
 * private (0700), else /run/user/UID/busesnap.ctl likewise (cron, su and
 * CI jobs have no XDG_RUNTIME_DIR), else /run/busesnap.ctl for root, else
 * /tmp/busesnap-UID/busesnap.ctl, whose directory must be the user's and
 * 0700: with create (the server) it is made so, without (bsnap) it is
 * only checked.  Returns 0, or -errno after one line on stderr prefixed
 * prog naming the directory and its owner. */
int common_default_control_path(const char *prog, char *buf, size_t len,
                                int create);

/* Refuse a socket path that another user could replace: every directory
 * from its parent up to / must belong to us or root, and one that others
 * may write to must be sticky (then an existing path must be ours).
 * Returns 0, or -EPERM (or -errno) after one line on stderr, prefixed
 * prog, naming the directory or file and its owner. */
int common_check_socket_path(const char *prog, const char *what,
                             const char *path);

/* Bytes for people: "512B", "4.0K", "64M", "8.0G" (powers of 1024; one
 * decimal below 10).  Writes into buf and returns it. */
const char *common_human_size(unsigned long long bytes, char *buf, size_t len);

/* --single: take the client's stdin and stdout for the protocol.  Moves
 * fds 0 and 1 to new close-on-exec fds (*in, *out), then points 0 at
 * /dev/null and 1 at stderr, so that nothing the program prints later
 * lands in the protocol stream.  Returns 0, or -errno after one line on
 * stderr prefixed prog. */
int common_take_stdio(const char *prog, int *in, int *out);

#endif
