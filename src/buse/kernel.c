/* kernel.c: attach socket ends to /dev/nbdN, netlink first, ioctl after.
 *
 * Netlink (NBD_CMD_CONNECT) needs no thread: the kernel takes its own
 * references to the sockets and the device lives until NBD_CMD_DISCONNECT.
 * The ioctl path is BUSE's: one thread opens the device, sets it up
 * (NBD_SET_SOCK must come from the task that will run NBD_DO_IT) and then
 * blocks in NBD_DO_IT until a disconnect; attach waits until that thread
 * is serving or has failed, so errors are reported by attach itself.
 * Invariant: a netlink device is only ever disconnected with netlink (an
 * ioctl disconnect leaves it bound), and detach never touches a device
 * that someone else attached after ours went away (its pid file differs).
 * Called from the libbuse core's main thread; kd is not shared.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <linux/nbd.h>

#include "kernel.h"

struct buse_kdev {
    char name[32]; /* "/dev/nbdN" */
    int index;
    int netlink;
    long pid; /* the device's /sys/block/nbdN/pid while it is ours */

    /* ioctl path */
    struct buse_kdev_params p; /* fds only valid during attach */
    pthread_t thread;
    int thread_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int state;     /* 0 setting up, 1 serving (in NBD_DO_IT), 2 finished */
    int setup_err; /* -errno of the setup step that failed */
    const char *setup_step; /* its name */
    long tid;
    int cancel; /* detach before NBD_DO_IT: the thread must not start it */
};

static void msg(const char *dev, const char *fmt, int err)
{
    fprintf(stderr, "libbuse: %s: %s: %s\n", dev, fmt, strerror(-err));
}

/* /sys/block/nbdN/pid, or 0 when absent (device not connected). */
static long kdev_read_pid(int index)
{
    char path[64];
    long pid = 0;
    FILE *f;

    snprintf(path, sizeof path, "/sys/block/nbd%d/pid", index);
    f = fopen(path, "r");
    if (!f)
        return 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    return pid;
}

static int kdev_exists(int index)
{
    char path[64];

    snprintf(path, sizeof path, "/sys/block/nbd%d", index);
    return access(path, F_OK) == 0;
}

/* Parse "/dev/nbdN", "nbdN" (index N) or "auto", "/dev/nbd", "nbd" (-1).
 * Returns 0 or -EINVAL. */
static int kdev_parse(const char *dev, int *index)
{
    const char *s = dev;
    char *end;
    long n;

    if (!strcmp(dev, "auto")) {
        *index = -1;
        return 0;
    }
    if (!strncmp(s, "/dev/", 5))
        s += 5;
    if (strncmp(s, "nbd", 3))
        return -EINVAL;
    s += 3;
    if (!*s) {
        *index = -1;
        return 0;
    }
    errno = 0;
    n = strtol(s, &end, 10);
    if (*end || errno || n < 0 || n > 1000000 || s[0] == '+' || s[0] == '-')
        return -EINVAL;
    *index = (int)n;
    return 0;
}

/* ---------------------------------------------------------------- ioctl */

static int kdev_ioctl_setup(struct buse_kdev *kd, int fd)
{
    const struct buse_kdev_params *p = &kd->p;
    unsigned i;

#define STEP(name, call)                                                       \
    do {                                                                       \
        if ((call) < 0) {                                                      \
            kd->setup_step = name;                                             \
            return -errno;                                                     \
        }                                                                      \
    } while (0)
    STEP("NBD_SET_BLKSIZE",
         ioctl(fd, NBD_SET_BLKSIZE,
               (unsigned long)(p->blksize ? p->blksize : 512)));
    STEP("NBD_SET_SIZE", ioctl(fd, NBD_SET_SIZE, (unsigned long)p->size));
    STEP("NBD_CLEAR_SOCK", ioctl(fd, NBD_CLEAR_SOCK));
    for (i = 0; i < p->nfds; i++)
        STEP("NBD_SET_SOCK", ioctl(fd, NBD_SET_SOCK, (unsigned long)p->fds[i]));
    STEP("NBD_SET_FLAGS",
         ioctl(fd, NBD_SET_FLAGS, (unsigned long)p->nbd_flags));
    if (p->timeout)
        STEP("NBD_SET_TIMEOUT",
             ioctl(fd, NBD_SET_TIMEOUT, (unsigned long)p->timeout));
#undef STEP
    return 0;
}

static void kdev_set_state(struct buse_kdev *kd, int state, int err)
{
    pthread_mutex_lock(&kd->lock);
    kd->state = state;
    if (err)
        kd->setup_err = err;
    pthread_cond_broadcast(&kd->cond);
    pthread_mutex_unlock(&kd->lock);
}

/* The NBD_DO_IT thread.  Signals are blocked here so that SIGINT/SIGTERM
 * reach the server's threads, never interrupt NBD_DO_IT. */
static void *kdev_ioctl_thread(void *arg)
{
    struct buse_kdev *kd = arg;
    sigset_t all;
    int fd, err;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    kd->tid = (long)syscall(SYS_gettid);
    fd = open(kd->name, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        kd->setup_step = "open";
        kdev_set_state(kd, 2, -errno);
        return NULL;
    }
    err = kdev_ioctl_setup(kd, fd);
    if (err < 0) {
        ioctl(fd, NBD_CLEAR_SOCK);
        close(fd);
        kdev_set_state(kd, 2, err);
        return NULL;
    }
    pthread_mutex_lock(&kd->lock);
    if (kd->cancel) { /* detach came first (attach timed out) */
        pthread_mutex_unlock(&kd->lock);
        ioctl(fd, NBD_CLEAR_SOCK);
        close(fd);
        kdev_set_state(kd, 2, -ECANCELED);
        return NULL;
    }
    pthread_mutex_unlock(&kd->lock);
    kdev_set_state(kd, 1, 0);
    if (ioctl(fd, NBD_DO_IT) < 0) {
        err = -errno;
        kd->setup_step = "NBD_DO_IT";
    }
    /* BUSE's epilogue: the kernel's sockets go, the device is free. */
    ioctl(fd, NBD_CLEAR_QUE);
    ioctl(fd, NBD_CLEAR_SOCK);
    close(fd);
    kdev_set_state(kd, 2, err);
    return NULL;
}

/* The pid file names our NBD_DO_IT thread (6.1 shows the thread id; a
 * kernel showing the process id would do as well). */
static int kdev_pid_is_ours(const struct buse_kdev *kd)
{
    long pid = kdev_read_pid(kd->index);

    return pid && (pid == kd->tid || pid == (long)getpid());
}

/* Start the thread and wait until NBD_DO_IT serves (pid file shows our
 * thread) or the thread failed.  Returns 0 or -errno (message printed). */
static int kdev_ioctl_attach(struct buse_kdev *kd)
{
    struct timespec deadline;
    int err, live = 0, i;

    err = pthread_create(&kd->thread, NULL, kdev_ioctl_thread, kd);
    if (err) {
        msg(kd->name, "cannot start the NBD_DO_IT thread", -err);
        return -err;
    }
    kd->thread_started = 1;
    /* Setup is quick; NBD_DO_IT then makes the pid file appear.  Poll it
     * (the kernel gives no other signal) for up to 10 s. */
    for (i = 0; i < 1000 && !live; i++) {
        pthread_mutex_lock(&kd->lock);
        if (kd->state == 2) {
            pthread_mutex_unlock(&kd->lock);
            break;
        }
        if (kd->state == 1 && kd->tid && kdev_pid_is_ours(kd))
            live = 1;
        else {
            clock_gettime(CLOCK_REALTIME, &deadline);
            deadline.tv_nsec += 10 * 1000 * 1000;
            if (deadline.tv_nsec >= 1000000000L) {
                deadline.tv_sec++;
                deadline.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&kd->cond, &kd->lock, &deadline);
        }
        pthread_mutex_unlock(&kd->lock);
    }
    if (live) {
        kd->pid = kdev_read_pid(kd->index);
        return 0;
    }
    pthread_mutex_lock(&kd->lock);
    err = kd->state == 2 ? kd->setup_err : -ETIMEDOUT;
    pthread_mutex_unlock(&kd->lock);
    if (err == -ETIMEDOUT) {
        /* Still setting up or in NBD_DO_IT without a pid file: give up. */
        fprintf(stderr,
                "libbuse: %s: the kernel did not start the device "
                "within 10 s\n",
                kd->name);
        buse_kdev_detach(kd);
        return -ETIMEDOUT;
    }
    pthread_join(kd->thread, NULL);
    kd->thread_started = 0;
    if (err == 0)
        err = -EIO; /* NBD_DO_IT returned at once without an error */
    if (err == -EBUSY)
        fprintf(stderr, "libbuse: %s: device in use (%s: %s)\n", kd->name,
                kd->setup_step, strerror(-err));
    else if (err == -EINVAL && kd->p.nfds > 1)
        fprintf(stderr,
                "libbuse: %s: %s: %s (the kernel refused %u "
                "connections)\n",
                kd->name, kd->setup_step, strerror(-err), kd->p.nfds);
    else
        fprintf(stderr, "libbuse: %s: %s: %s\n", kd->name,
                kd->setup_step ? kd->setup_step : "ioctl", strerror(-err));
    return err;
}

/* Free index for the ioctl path: an existing nbdN without a pid file. */
static int kdev_ioctl_first_free(int from)
{
    int i;

    for (i = from; i < 4096 && kdev_exists(i); i++)
        if (!kdev_read_pid(i))
            return i;
    return -1;
}

/* -------------------------------------------------------------- netlink */

static int kdev_netlink_attach(struct buse_kdev *kd, int want_auto)
{
    int err, tries, index;

    if (!want_auto) {
        index = kd->index;
        err = buse_nl_connect(&index, &kd->p);
    } else {
        /* Pick the lowest free device; if someone takes it between
         * STATUS and CONNECT (EBUSY), look again past it. */
        int from = 0;

        for (tries = 0; tries < 16; tries++) {
            err = buse_nl_first_free(from, &index);
            if (err < 0)
                index = -1; /* let the kernel choose */
            kd->index = index;
            err = buse_nl_connect(&index, &kd->p);
            if (err != -EBUSY || kd->index < 0)
                break;
            from = kd->index + 1;
        }
    }
    if (index >= 0) {
        kd->index = index;
        snprintf(kd->name, sizeof kd->name, "/dev/nbd%d", index);
    }
    if (err == -EBUSY) {
        fprintf(stderr,
                "libbuse: %s: device in use (netlink "
                "NBD_CMD_CONNECT: %s)\n",
                kd->name, strerror(-err));
        return err;
    }
    if (err == -EINVAL && kd->p.nfds > 1) {
        fprintf(stderr,
                "libbuse: %s: netlink NBD_CMD_CONNECT: %s (%u "
                "connections need NBD_FLAG_CAN_MULTI_CONN)\n",
                kd->name, strerror(-err), kd->p.nfds);
        return err;
    }
    if (err < 0) {
        fprintf(stderr, "libbuse: %s: netlink NBD_CMD_CONNECT: %s\n", kd->name,
                strerror(-err));
        return err;
    }
    kd->netlink = 1;
    kd->pid = kdev_read_pid(kd->index);
    return 0;
}

/* ------------------------------------------------------------------ API */

int buse_kdev_attach(const struct buse_kdev_params *p, struct buse_kdev **out)
{
    struct buse_kdev *kd;
    const char *env = getenv("BUSE_FORCE_IOCTL");
    int force_ioctl = p->force_ioctl || (env && *env && strcmp(env, "0"));
    int err, want_auto, nl;

    kd = calloc(1, sizeof *kd);
    if (!kd)
        return -ENOMEM;
    kd->p = *p;
    pthread_mutex_init(&kd->lock, NULL);
    pthread_cond_init(&kd->cond, NULL);
    snprintf(kd->name, sizeof kd->name, "%s", p->dev);

    if (kdev_parse(p->dev, &kd->index) < 0) {
        fprintf(stderr,
                "libbuse: %s: not an nbd device (expected "
                "/dev/nbdN, or auto for the first free one)\n",
                p->dev);
        err = -EINVAL;
        goto fail;
    }
    want_auto = kd->index < 0;
    if (!want_auto)
        snprintf(kd->name, sizeof kd->name, "/dev/nbd%d", kd->index);
    if (p->nfds == 0) {
        fprintf(stderr, "libbuse: %s: no socket to attach\n", kd->name);
        err = -EINVAL;
        goto fail;
    }
    if (p->nfds > 1 && !(p->nbd_flags & NBD_FLAG_CAN_MULTI_CONN)) {
        fprintf(stderr,
                "libbuse: %s: %u connections need "
                "NBD_FLAG_CAN_MULTI_CONN (BUSE_CAN_MULTI_CONN): the kernel "
                "refuses several sockets otherwise\n",
                kd->name, p->nfds);
        err = -EINVAL;
        goto fail;
    }

    nl = force_ioctl ? -ENOENT : buse_nl_probe();
    if (nl == 0) {
        err = kdev_netlink_attach(kd, want_auto);
        if (err < 0)
            goto fail;
        goto done;
    }

    /* ioctl fallback (forced, or no "nbd" netlink family). */
    if (access("/sys/module/nbd", F_OK) < 0 && !kdev_exists(0)) {
        fprintf(stderr,
                "libbuse: %s: no nbd kernel support (no \"nbd\" "
                "netlink family, no /sys/block/nbd0): run `modprobe nbd` "
                "as root, or serve over a socket instead (--socket PATH)\n",
                kd->name);
        err = -ENODEV;
        goto fail;
    }
    if (want_auto) {
        kd->index = kdev_ioctl_first_free(0);
        if (kd->index < 0) {
            fprintf(stderr, "libbuse: %s: no free nbd device\n", p->dev);
            err = -EBUSY;
            goto fail;
        }
        snprintf(kd->name, sizeof kd->name, "/dev/nbd%d", kd->index);
    }
    if (!kdev_exists(kd->index)) {
        fprintf(stderr,
                "libbuse: %s: no such device (the nbd module's "
                "nbds_max is lower?)\n",
                kd->name);
        err = -ENODEV;
        goto fail;
    }
    if (access(kd->name, F_OK) < 0) {
        fprintf(stderr,
                "libbuse: %s: no device node (is devtmpfs or udev "
                "running?)\n",
                kd->name);
        err = -ENOENT;
        goto fail;
    }
    kd->netlink = 0;
    err = kdev_ioctl_attach(kd);
    if (err < 0) {
        if (err == -ETIMEDOUT)
            return err; /* kd freed by the detach above */
        goto fail;
    }
done:
    if (want_auto) /* the caller named no device: say which it got */
        fprintf(stderr, "libbuse: %s: attached %s (%s)\n", p->dev, kd->name,
                kd->netlink ? "netlink" : "ioctl");
    *out = kd;
    return 0;

fail:
    pthread_mutex_destroy(&kd->lock);
    pthread_cond_destroy(&kd->cond);
    free(kd);
    return err;
}

const char *buse_kdev_name(const struct buse_kdev *kd)
{
    return kd->name;
}

int buse_kdev_is_netlink(const struct buse_kdev *kd)
{
    return kd->netlink;
}

void buse_kdev_detach(struct buse_kdev *kd)
{
    long pid;
    int err, fd;

    if (!kd)
        return;
    if (kd->netlink) {
        /* Ours while the pid file still shows the pid we saw at attach;
         * absent means already released (nbd-client -d). */
        pid = kdev_read_pid(kd->index);
        if (pid && (pid == kd->pid || kd->pid == 0)) {
            err = buse_nl_disconnect(kd->index);
            if (err < 0)
                msg(kd->name, "netlink NBD_CMD_DISCONNECT", err);
        }
    } else if (kd->thread_started) {
        pthread_mutex_lock(&kd->lock);
        int running = kd->state == 1; /* state 0: it will see cancel */
        kd->cancel = 1;
        pthread_mutex_unlock(&kd->lock);
        if (running) {
            /* NBD_DISCONNECT sends DISC; NBD_CLEAR_SOCK shuts the sockets
             * so NBD_DO_IT returns even if the server never closes. */
            fd = open(kd->name, O_RDWR | O_CLOEXEC);
            if (fd < 0) {
                msg(kd->name, "open for disconnect", -errno);
            } else {
                ioctl(fd, NBD_DISCONNECT);
                ioctl(fd, NBD_CLEAR_SOCK);
                close(fd);
            }
        }
        pthread_join(kd->thread, NULL);
    }
    pthread_mutex_destroy(&kd->lock);
    pthread_cond_destroy(&kd->cond);
    free(kd);
}
