/* kernel.c: placeholder until the netlink/ioctl attach lands (see kernel.h). */
#include <errno.h>
#include <stdio.h>

#include "kernel.h"

int buse_kdev_attach(const struct buse_kdev_params *p, struct buse_kdev **out)
{
    (void)out;
    fprintf(stderr, "libbuse: %s: kernel attach is not implemented yet\n",
            p->dev);
    return -ENOSYS;
}

void buse_kdev_detach(struct buse_kdev *kd)
{
    (void)kd;
}
