/* kernel.h: attaching connected sockets to a Linux /dev/nbdN (private).
 *
 * libbuse serves a kernel device exactly like a socket client, minus the
 * handshake: it makes socketpairs, keeps one end of each as a connection
 * in transmission phase (simple replies), and hands the other ends to the
 * kernel with this module.  Generic netlink ("nbd" family, NBD_CMD_CONNECT)
 * is tried first; the BUSE ioctl sequence (NBD_SET_SOCK ... NBD_DO_IT in a
 * thread) is the fallback.  Not installed; include only from src/buse/.
 */
#ifndef BUSE_KERNEL_H
#define BUSE_KERNEL_H

#include <stdint.h>

struct buse_kdev; /* one attached device */

struct buse_kdev_params {
    const char *dev; /* "/dev/nbdN" */
    const int *fds;  /* kernel ends of the sockets, nfds of them */
    unsigned nfds;
    uint64_t size;      /* bytes */
    uint32_t blksize;   /* logical block size (512 if 0) */
    uint16_t nbd_flags; /* transmission flags as sent to clients */
    unsigned timeout;   /* seconds, 0 = kernel default */
    int force_ioctl;
};

/* Attach.  On success the kernel owns (a dup of) every fd in p->fds and
 * *out is set.  Returns 0 or -errno after printing one line naming the
 * device (-ENODEV: no nbd module, -EBUSY: device in use). */
int buse_kdev_attach(const struct buse_kdev_params *p, struct buse_kdev **out);

/* Disconnect and release the device (netlink NBD_CMD_DISCONNECT for a
 * netlink device, NBD_DISCONNECT + NBD_CLEAR_SOCK for ioctl), wait for the
 * ioctl thread if any, free kd.  Safe to call after the kernel already
 * disconnected. */
void buse_kdev_detach(struct buse_kdev *kd);

#endif
