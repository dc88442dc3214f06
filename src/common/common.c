/* common.c: size parsing and the default control socket path, shared by
 * the busesnap, bsnap and busexmp programs, and the one way they print
 * sizes (see common.h).  Pure functions,
 * any thread. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common.h"

int common_parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        return -EINVAL;
    unsigned shift = 0;
    switch (*end) {
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    case 't':
    case 'T':
        shift = 40;
        break;
    case '\0':
        break;
    default:
        return -EINVAL;
    }
    if (shift)
        end++;
    if (*end == 'i' && shift) /* accept "Gi" / "GiB" */
        end++;
    if (*end == 'B' && shift)
        end++;
    if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
        return -EINVAL;
    *out = (uint64_t)v << shift;
    return 0;
}

void common_default_control_path(char *buf, size_t len)
{
    const char *e = getenv("BSNAP_CONTROL");
    if (e && *e) {
        snprintf(buf, len, "%s", e);
        return;
    }
    e = getenv("XDG_RUNTIME_DIR");
    if (e && *e)
        snprintf(buf, len, "%s/busesnap.ctl", e);
    else if (geteuid() == 0)
        snprintf(buf, len, "/run/busesnap.ctl");
    else
        snprintf(buf, len, "/tmp/busesnap-%u.ctl", (unsigned)geteuid());
}

const char *common_human_size(unsigned long long bytes, char *buf, size_t len)
{
    static const char units[] = "BKMGTP";
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%lluB", bytes);
    else
        snprintf(buf, len, "%.*f%c", v < 10 ? 1 : 0, v, units[u]);
    return buf;
}
