/* common.h: small helpers shared by the programs (busesnap, bsnap,
 * busexmp), so that they parse sizes and find the control socket the same
 * way.  Not part of libbuse or the store; linked into each program. */
#ifndef BUSESNAP_COMMON_H
#define BUSESNAP_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Parse "4096", "4096B", "128M", "8g", "1TiB", "2PB", "1.5G" (K, M, G, T,
 * P, E in either case are powers of 1024; "i" and "B" may follow; a
 * fraction must come to whole bytes).  Returns 0, -ERANGE when the value
 * does not fit 64 bits, -EDOM for a fraction of a byte, or -EINVAL for
 * anything else (empty, a sign, spaces, trailing junk, "b").  Zero is accepted;
 * callers reject it where it makes no sense. */
int common_parse_size(const char *s, uint64_t *out);
/* The message for common_parse_size(s)'s failure r, without the program's
 * prefix: names s and what was expected.  Valid until the thread's next
 * call. */
const char *common_size_error(const char *s, int r);

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
 * decimal below 10), as common_parse_size() reads them back.  Writes into
 * buf and returns it. */
const char *common_human_size(unsigned long long bytes, char *buf, size_t len);

/* --single: take the client's stdin and stdout for the protocol.  Moves
 * fds 0 and 1 to new close-on-exec fds (*in, *out), then points 0 at
 * /dev/null and 1 at stderr, so that nothing the program prints later
 * lands in the protocol stream.  Refuses a terminal (-ENOTTY): a person
 * typing is no NBD client.  Returns 0, or -errno after one line on stderr
 * prefixed prog. */
int common_take_stdio(const char *prog, int *in, int *out);

#endif
