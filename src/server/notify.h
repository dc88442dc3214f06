/* notify.h: readiness and stopping notices to systemd (sd_notify), written
 * by hand so that busesnap needs no libsystemd.  See notify.c. */
#ifndef BUSESNAP_NOTIFY_H
#define BUSESNAP_NOTIFY_H

/* Send STATE (e.g. "READY=1\nSTATUS=serving") as one datagram to the
 * socket named by $NOTIFY_SOCKET ("/path" or "@abstract").  Returns 1 when
 * sent, 0 when $NOTIFY_SOCKET is unset (not started by systemd with
 * Type=notify), -errno on failure (a message is printed once).  Main
 * thread only. */
int notify_send(const char *state);

#endif
