/* notify.c: the sd_notify protocol, without libsystemd.
 *
 * A unit with Type=notify starts busesnap with $NOTIFY_SOCKET naming a
 * datagram socket (a path, or an abstract name written with a leading
 * '@').  busesnap sends "READY=1" once the image is open, its log replayed
 * and every listener live, and "STOPPING=1" when SIGINT/SIGTERM (or a
 * stop request) begins the shutdown.  Each notice is one datagram of
 * newline-separated VAR=VALUE lines.  $NOTIFY_SOCKET is left in the
 * environment (systemd's own sd_notify(0, ...) leaves it too), so that
 * both notices reach it.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "notify.h"

int notify_send(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len;
    int fd, r = 1;

    if (!path || !*path)
        return 0;
    len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof sa.sun_path) {
        fprintf(stderr,
                "busesnap: NOTIFY_SOCKET=%s: not a socket path or "
                "@abstract name that fits in %zu bytes\n",
                path, sizeof sa.sun_path - 1);
        return -EINVAL;
    }
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract: no terminating NUL counted */
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
                                  (path[0] == '/'));
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        r = -errno;
    else if (sendto(fd, state, strlen(state), MSG_NOSIGNAL,
                    (struct sockaddr *)&sa, salen) < 0)
        r = -errno;
    if (fd >= 0)
        close(fd);
    if (r < 0)
        fprintf(stderr, "busesnap: NOTIFY_SOCKET=%s: %s\n", path, strerror(-r));
    return r;
}
