/* test-store-resize.c: store_resize() through the store API, where each
 * refusal can be reached exactly: a grow that open handles see at once
 * (zeros past the old end, writes there), snapshots that keep their size,
 * a shrink refused with an open handle, with data, with a zero kept
 * allocated or with a block inherited from a snapshot past the new end,
 * allowed over holes and tombstones; the size after a reopen, a clean
 * check. */
#include "store-test-util.h"

#define MB (1ull << 20)

static uint64_t size_of(struct store *st, const char *name)
{
    struct store_obj_info i;
    OK(store_lookup(st, name, &i));
    return i.size;
}

int main(void)
{
    struct store *st;
    struct store_vol *v;
    t_setup("resize");
    struct store_create_opts o = {.size = 4 * MB};
    OK(store_create(t_img, &o, &st));
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    for (uint64_t b = 0; b < 16; b++)
        t_write_pat(v, 1, b);
    OK(store_snapshot(st, STORE_DEFAULT_VOLUME, "small", NULL));

    /* grow, online */
    OK(store_resize(st, STORE_DEFAULT_VOLUME, 8 * MB));
    EXPECT(store_vol_size(v) == 8 * MB, "open handle kept size %llu",
           (unsigned long long)store_vol_size(v));
    EXPECT(size_of(st, "small") == 4 * MB, "snapshot changed size");
    EXPECT(store_resize(st, "small", 8 * MB) == -EINVAL, "snapshot resized");
    EXPECT(store_resize(st, STORE_DEFAULT_VOLUME, 8 * MB + 512) == -EINVAL,
           "unaligned size");
    uint64_t tail = 6 * MB / STORE_BLOCK;
    EXPECT_PAT(v, 0, tail);
    t_write_pat(v, 2, tail);
    EXPECT_PAT(v, 2, tail);
    for (uint64_t b = 0; b < 16; b++)
        EXPECT_PAT(v, 1, b);

    /* shrink: refused with an open handle, then with data past the end */
    EXPECT(store_resize(st, STORE_DEFAULT_VOLUME, 4 * MB) == -EBUSY,
           "shrink under an open handle");
    store_vol_close(v);
    EXPECT(store_resize(st, STORE_DEFAULT_VOLUME, 4 * MB) == -ENOTEMPTY,
           "shrink over data");
    EXPECT(strstr(store_errmsg(), "offset 6291456"), "message: %s",
           store_errmsg());
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    OK(store_zero(v, tail * STORE_BLOCK, STORE_BLOCK, STORE_NO_HOLE));
    store_vol_close(v);
    EXPECT(store_resize(st, STORE_DEFAULT_VOLUME, 4 * MB) == -ENOTEMPTY,
           "shrink over a zero kept allocated");
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    OK(store_zero(v, tail * STORE_BLOCK, STORE_BLOCK, 0));
    store_vol_close(v);
    OK(store_resize(st, STORE_DEFAULT_VOLUME, 4 * MB));
    EXPECT(size_of(st, STORE_DEFAULT_VOLUME) == 4 * MB, "shrink");

    /* a block inherited from a snapshot past the new end counts; once
     * trimmed in the volume (a tombstone) it does not */
    OK(store_snapshot(st, STORE_DEFAULT_VOLUME, "full", NULL));
    EXPECT(store_resize(st, STORE_DEFAULT_VOLUME, 32 * 1024) == -ENOTEMPTY,
           "shrink over inherited blocks");
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    OK(store_zero(v, 8 * STORE_BLOCK, 8 * STORE_BLOCK, 0));
    store_vol_close(v);
    OK(store_resize(st, STORE_DEFAULT_VOLUME, 32 * 1024));
    OK(store_resize(st, STORE_DEFAULT_VOLUME, 2 * MB)); /* grow again */

    /* the size is in the log and, after a checkpoint, in the index */
    store_close(st);
    OK(store_open(t_img, 0, &st));
    EXPECT(size_of(st, STORE_DEFAULT_VOLUME) == 2 * MB, "size after reopen");
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    for (uint64_t b = 0; b < 8; b++)
        EXPECT_PAT(v, 1, b);
    for (uint64_t b = 8; b < 2 * MB / STORE_BLOCK; b++)
        EXPECT_PAT(v, 0, b);
    store_vol_close(v);
    EXPECT_CLEAN(st);
    store_close(st);
    return 0;
}
