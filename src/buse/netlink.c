/* netlink.c: the Linux "nbd" generic-netlink family, through libnl-genl-3.
 *
 * Each request opens its own netlink socket, sends one message with
 * NLM_F_ACK and reads until the kernel's ACK (or error) for that message's
 * sequence number: libnl checks sequence numbers, and we do not stop at a
 * reply (NBD_CMD_CONNECT and NBD_CMD_STATUS send one before their ACK), so a
 * stale ACK can never be taken for the answer to a later request.  The
 * kernel's errno is captured raw by our error callback (libnl's own codes
 * lose it).  No shared state: any thread may call these.
 */
#include <errno.h>
#include <string.h>

#include <linux/nbd-netlink.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/netlink.h>

#include "kernel.h"

/* What one request learned from the kernel. */
struct nl_result {
    int done;       /* ACK or error seen */
    int error;      /* 0 or -errno from the kernel */
    int index;      /* NBD_ATTR_INDEX of a CONNECT reply, or -1 */
    int from;       /* STATUS: lowest index to consider */
    int free_index; /* STATUS: lowest unconnected index >= from, or -1 */
};

static int nl_on_error(struct sockaddr_nl *nla, struct nlmsgerr *err, void *arg)
{
    struct nl_result *r = arg;

    r->error = err->error < 0 ? err->error : -EIO;
    r->done = 1;
    return NL_STOP;
}

static int nl_on_ack(struct nl_msg *msg, void *arg)
{
    struct nl_result *r = arg;

    r->done = 1;
    return NL_STOP;
}

/* Read the device list of a STATUS reply. */
static void nl_parse_status(struct nlattr *list, struct nl_result *r)
{
    struct nlattr *item;
    int rem;

    nla_for_each_nested(item, list, rem)
    {
        struct nlattr *tb[NBD_DEVICE_ATTR_MAX + 1];
        int idx;

        if (nla_type(item) != NBD_DEVICE_ITEM ||
            nla_parse_nested(tb, NBD_DEVICE_ATTR_MAX, item, NULL) < 0 ||
            !tb[NBD_DEVICE_INDEX] || !tb[NBD_DEVICE_CONNECTED])
            continue;
        idx = (int)nla_get_u32(tb[NBD_DEVICE_INDEX]);
        if (nla_get_u8(tb[NBD_DEVICE_CONNECTED]) || idx < r->from)
            continue;
        if (r->free_index < 0 || idx < r->free_index)
            r->free_index = idx;
    }
}

static int nl_on_valid(struct nl_msg *msg, void *arg)
{
    struct nl_result *r = arg;
    struct nlattr *tb[NBD_ATTR_MAX + 1];

    if (genlmsg_parse(nlmsg_hdr(msg), 0, tb, NBD_ATTR_MAX, NULL) < 0)
        return NL_OK;
    if (tb[NBD_ATTR_INDEX])
        r->index = (int)nla_get_u32(tb[NBD_ATTR_INDEX]);
    if (tb[NBD_ATTR_DEVICE_LIST])
        nl_parse_status(tb[NBD_ATTR_DEVICE_LIST], r);
    return NL_OK;
}

/* Open a socket and resolve the family.  Returns 0 or -errno (-ENOENT: no
 * "nbd" family). */
static int nl_open(struct nl_sock **skp, int *family)
{
    struct nl_sock *sk = nl_socket_alloc();
    int err;

    if (!sk)
        return -ENOMEM;
    nl_socket_enable_msg_peek(sk); /* STATUS replies grow with nbds_max */
    err = genl_connect(sk);
    if (err < 0) {
        nl_socket_free(sk);
        return -EPROTONOSUPPORT;
    }
    *family = genl_ctrl_resolve(sk, NBD_GENL_FAMILY_NAME);
    if (*family < 0) {
        err = *family == -NLE_OBJ_NOTFOUND ? -ENOENT : -EIO;
        nl_socket_free(sk);
        return err;
    }
    *skp = sk;
    return 0;
}

/* Send msg (consumed) and read up to its ACK. */
static int nl_transact(struct nl_sock *sk, struct nl_msg *msg,
                       struct nl_result *r)
{
    int err;

    nl_socket_modify_cb(sk, NL_CB_VALID, NL_CB_CUSTOM, nl_on_valid, r);
    nl_socket_modify_cb(sk, NL_CB_ACK, NL_CB_CUSTOM, nl_on_ack, r);
    nl_socket_modify_err_cb(sk, NL_CB_CUSTOM, nl_on_error, r);
    err = nl_send_auto(sk, msg); /* adds NLM_F_ACK and the next seq */
    nlmsg_free(msg);
    if (err < 0)
        return -EIO;
    while (!r->done) {
        err = nl_recvmsgs_default(sk);
        if (err < 0 && !r->done)
            return -EIO;
    }
    return r->error;
}

/* Build, send and wait for one nbd command.  fill adds the attributes. */
static int nl_request(uint8_t cmd, struct nl_result *r,
                      int (*fill)(struct nl_msg *, const void *),
                      const void *arg)
{
    struct nl_sock *sk;
    struct nl_msg *msg;
    int family, err;

    err = nl_open(&sk, &family);
    if (err < 0)
        return err;
    msg = nlmsg_alloc();
    if (!msg) {
        nl_socket_free(sk);
        return -ENOMEM;
    }
    if (!genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, 0, cmd,
                     NBD_GENL_VERSION) ||
        (fill && fill(msg, arg) < 0)) {
        nlmsg_free(msg);
        nl_socket_free(sk);
        return -EMSGSIZE;
    }
    err = nl_transact(sk, msg, r);
    nl_socket_free(sk);
    return err;
}

int buse_nl_probe(void)
{
    struct nl_sock *sk;
    int family, err;

    err = nl_open(&sk, &family);
    if (err == 0)
        nl_socket_free(sk);
    return err;
}

struct connect_arg {
    int index;
    const struct buse_kdev_params *p;
};

static int fill_connect(struct nl_msg *msg, const void *arg)
{
    const struct connect_arg *a = arg;
    const struct buse_kdev_params *p = a->p;
    struct nlattr *socks, *item;
    unsigned i;

    if (a->index >= 0 && nla_put_u32(msg, NBD_ATTR_INDEX, a->index) < 0)
        return -1;
    if (nla_put_u64(msg, NBD_ATTR_SIZE_BYTES, p->size) < 0 ||
        nla_put_u64(msg, NBD_ATTR_BLOCK_SIZE_BYTES,
                    p->blksize ? p->blksize : 512) < 0 ||
        nla_put_u64(msg, NBD_ATTR_SERVER_FLAGS, p->nbd_flags) < 0)
        return -1;
    if (p->timeout && nla_put_u64(msg, NBD_ATTR_TIMEOUT, p->timeout) < 0)
        return -1;
    socks = nla_nest_start(msg, NBD_ATTR_SOCKETS);
    if (!socks)
        return -1;
    for (i = 0; i < p->nfds; i++) {
        item = nla_nest_start(msg, NBD_SOCK_ITEM);
        if (!item || nla_put_u32(msg, NBD_SOCK_FD, (uint32_t)p->fds[i]) < 0)
            return -1;
        nla_nest_end(msg, item);
    }
    nla_nest_end(msg, socks);
    return 0;
}

int buse_nl_connect(int *index, const struct buse_kdev_params *p)
{
    struct connect_arg a = {*index, p};
    struct nl_result r = {.index = -1, .free_index = -1};
    int err;

    err = nl_request(NBD_CMD_CONNECT, &r, fill_connect, &a);
    if (err == 0 && r.index >= 0)
        *index = r.index;
    return err;
}

static int fill_index(struct nl_msg *msg, const void *arg)
{
    return nla_put_u32(msg, NBD_ATTR_INDEX, *(const uint32_t *)arg);
}

int buse_nl_disconnect(int index)
{
    struct nl_result r = {.index = -1, .free_index = -1};
    uint32_t idx = (uint32_t)index;

    return nl_request(NBD_CMD_DISCONNECT, &r, fill_index, &idx);
}

int buse_nl_first_free(int from, int *index)
{
    struct nl_result r = {.index = -1, .from = from, .free_index = -1};
    int err;

    err = nl_request(NBD_CMD_STATUS, &r, NULL, NULL);
    if (err == 0)
        *index = r.free_index;
    return err;
}
