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

/* The default control socket of busesnap, shared by server and bsnap:
 * $BSNAP_CONTROL, else $XDG_RUNTIME_DIR/busesnap.ctl, else
 * /run/busesnap.ctl for root, else /tmp/busesnap-UID.ctl. */
void common_default_control_path(char *buf, size_t len);

/* Bytes for people: "512B", "4.0K", "64M", "8.0G" (powers of 1024; one
 * decimal below 10).  Writes into buf and returns it. */
const char *common_human_size(unsigned long long bytes, char *buf, size_t len);

#endif
