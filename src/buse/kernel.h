/* kernel.h: attaching connected sockets to a Linux /dev/nbdN (private).
 *
 * libbuse serves a kernel device exactly like a socket client, minus the
 * handshake: it makes socketpairs, keeps one end of each as a connection
 * in transmission phase (simple replies), and hands the other ends to the
 * kernel with this module.  Generic netlink ("nbd" family, NBD_CMD_CONNECT)
 * is tried first; the BUSE ioctl sequence (NBD_SET_SOCK ... NBD_DO_IT in a
 * thread) is the fallback.  Not installed; include only from src/buse/.
 * kernel.c holds the device naming, the choice and the ioctl path;
 * netlink.c the generic-netlink requests (the buse_nl_ functions below).
 */
#ifndef BUSE_KERNEL_H
#define BUSE_KERNEL_H

#include <stdint.h>

struct buse_kdev; /* one attached device */

struct buse_kdev_params {
    /* "/dev/nbdN" (or "nbdN"): that device.  "auto", "/dev/nbd" or "nbd":
     * the first free device (netlink NBD_CMD_STATUS, or /sys/block/nbd*
     * without a pid file for ioctl); buse_kdev_name() tells which. */
    const char *dev;
    const int *fds; /* kernel ends of the sockets, nfds of them */
    unsigned nfds;
    uint64_t size;      /* bytes */
    uint32_t blksize;   /* logical block size (512 if 0) */
    uint16_t nbd_flags; /* transmission flags as sent to clients */
    unsigned timeout;   /* seconds, 0 = kernel default */
    int force_ioctl;    /* also forced by env BUSE_FORCE_IOCTL=1 */
};

/* Attach.  On success the kernel holds its own reference to every socket
 * in p->fds (the caller may, and should, close its copies of these kernel
 * ends after the call returns) and *out is set.  More than one fd needs
 * NBD_FLAG_CAN_MULTI_CONN in nbd_flags (-EINVAL otherwise).  Returns 0 or
 * -errno after printing one line naming the device (-ENODEV: no nbd
 * module, -EBUSY: device in use).  Blocks until the device is live (the
 * ioctl path waits for its NBD_DO_IT thread to start serving).  Requests
 * may reach the sockets as soon as this returns, even before. */
int buse_kdev_attach(const struct buse_kdev_params *p, struct buse_kdev **out);

/* "/dev/nbdN" actually attached; owned by kd, valid until detach. */
const char *buse_kdev_name(const struct buse_kdev *kd);

/* 1 if attached through netlink, 0 through ioctl. */
int buse_kdev_is_netlink(const struct buse_kdev *kd);

/* Disconnect and release the device (netlink NBD_CMD_DISCONNECT for a
 * netlink device, NBD_DISCONNECT + NBD_CLEAR_SOCK for ioctl), wait for the
 * ioctl thread if any, free kd.  Safe to call after the kernel already
 * disconnected (nbd-client -d): a device that someone else attached since
 * is left alone.  The kernel sends NBD_CMD_DISC and shuts its socket ends
 * down, so the serving side sees EOF on each of them.  NULL is a no-op. */
void buse_kdev_detach(struct buse_kdev *kd);

/* ---- between kernel.c and netlink.c ---- */

/* Resolve the "nbd" generic-netlink family: 0 if present, -ENOENT if not
 * (module not loaded, or a kernel older than 4.12), other -errno. */
int buse_nl_probe(void);
/* NBD_CMD_CONNECT.  *index: the device, or -1 to let the kernel choose;
 * set to the device the kernel used.  Returns 0 or the kernel's -errno;
 * prints nothing (the caller names the device). */
int buse_nl_connect(int *index, const struct buse_kdev_params *p);
/* NBD_CMD_DISCONNECT of device index.  Returns 0 or -errno. */
int buse_nl_disconnect(int index);
/* NBD_CMD_STATUS: the lowest existing device index with no configuration
 * that is >= from, or -1 if none is free.  Returns 0 or -errno. */
int buse_nl_first_free(int from, int *index);

#endif
