/* test-store-snap.c: snapshot isolation, clone isolation both ways,
 * rollback, delete of snapshots and volumes with the collector reclaiming
 * their chunks and the freed slots being reused, diff, list order. */
#include "store-test-util.h"

#define SIZE (16ull << 20)
#define NB 256

static int count_cb(const struct store_obj_info *i, void *arg)
{
    char *s = arg;
    strcat(s, i->name);
    strcat(s, ",");
    return 0;
}

static int diff_cb(uint64_t off, uint64_t len, void *arg)
{
    uint64_t *d = arg;
    d[0]++;
    d[1] += len / STORE_BLOCK;
    return 0;
}

int main(void)
{
    struct store *st;
    struct store_vol *v, *s, *c;
    struct store_info inf;
    t_setup("snap");
    struct store_create_opts o = {.size = SIZE, .volume_name = "vm"};
    OK(store_create(t_img, &o, &st));
    OK(store_vol_open(st, "vm", &v));
    for (uint64_t b = 0; b < NB; b++)
        t_write_pat(v, 1, b);

    /* snapshot isolation */
    struct store_obj_info si;
    OK(store_snapshot(st, "vm", "s1", &si));
    EXPECT(si.kind == STORE_SNAPSHOT && !strcmp(si.parent, "vm"), "s1 info");
    for (uint64_t b = 0; b < NB; b += 2)
        t_write_pat(v, 2, b);
    OK(store_zero(v, 1 * STORE_BLOCK, STORE_BLOCK, 0)); /* tombstone */
    OK(store_vol_open(st, "s1", &s));
    EXPECT(store_vol_readonly(s), "snapshot writable");
    uint8_t buf[STORE_BLOCK];
    EXPECT(store_write(s, buf, 0, STORE_BLOCK, 0) == -EROFS, "snapshot write");
    for (uint64_t b = 0; b < NB; b++) {
        EXPECT_PAT(s, 1, b);
        EXPECT_PAT(v, b == 1 ? 0 : b % 2 ? 1 : 2, b);
    }
    uint64_t d[2] = {0, 0};
    OK(store_diff(st, "s1", "vm", diff_cb, d));
    EXPECT(d[1] == NB / 2 + 1, "diff found %llu blocks",
           (unsigned long long)d[1]);

    /* clone isolation, both ways */
    EXPECT(store_clone(st, "vm", "x", NULL) == -EINVAL, "clone of a volume");
    OK(store_clone(st, "s1", "c1", NULL));
    OK(store_vol_open(st, "c1", &c));
    for (uint64_t b = 0; b < NB; b++)
        EXPECT_PAT(c, 1, b);
    for (uint64_t b = 0; b < NB; b += 3)
        t_write_pat(c, 3, b);
    for (uint64_t b = 0; b < NB; b++) {
        EXPECT_PAT(c, b % 3 ? 1 : 3, b);
        EXPECT_PAT(s, 1, b);
        EXPECT_PAT(v, b == 1 ? 0 : b % 2 ? 1 : 2, b);
    }
    t_write_pat(v, 4, 5);
    EXPECT_PAT(c, 1, 5);

    /* errors name the image (its path as given) and the objects */
    char want[600];
    snprintf(want, sizeof want, "%s: volume \"vm\": no such snapshot \"s3\"",
             t_img);
    EXPECT(store_rollback(st, "vm", "s3") == -ENOENT &&
               !strcmp(store_errmsg(), want),
           "rollback message: %s", store_errmsg());
    EXPECT(store_rollback(st, "vm", "c1") == -EINVAL, "rollback to a volume");

    /* rollback: the open handle sees the snapshot's content */
    OK(store_rollback(st, "vm", "s1"));
    for (uint64_t b = 0; b < NB; b++)
        EXPECT_PAT(v, 1, b);
    t_write_pat(v, 5, 7);
    EXPECT_PAT(v, 5, 7);
    EXPECT_PAT(s, 1, 7);
    OK(store_gc(st));
    EXPECT_CLEAN(st);

    /* list in creation order */
    char names[256] = "";
    OK(store_list(st, count_cb, names));
    EXPECT(!strcmp(names, "vm,s1,c1,"), "list order: %s", names);

    /* delete: busy while open; the clone keeps its content after its
     * snapshot is deleted */
    EXPECT(store_delete(st, "s1") == -EBUSY, "delete of an open snapshot");
    store_vol_close(s);
    OK(store_delete(st, "s1"));
    EXPECT(store_lookup(st, "s1", NULL) == -ENOENT, "s1 still there");
    OK(store_gc(st));
    for (uint64_t b = 0; b < NB; b++) {
        EXPECT_PAT(c, b % 3 ? 1 : 3, b);
        EXPECT_PAT(v, b == 7 ? 5 : 1, b);
    }
    EXPECT_CLEAN(st);
    OK(store_info(st, &inf));
    uint64_t chunks_before = inf.chunks;
    /* deleting the clone releases its own chunks (pattern 3) */
    store_vol_close(c);
    OK(store_delete(st, "c1"));
    OK(store_gc(st));
    EXPECT_CLEAN(st);
    OK(store_info(st, &inf));
    /* (also s1's block 7, shadowed by vm's own entry) */
    EXPECT(inf.chunks == chunks_before - (NB + 2) / 3 - 1,
           "chunks %llu after deleting the clone, expected %llu",
           (unsigned long long)inf.chunks,
           (unsigned long long)(chunks_before - (NB + 2) / 3 - 1));
    EXPECT(inf.gc_pending == 0, "gc pending %llu",
           (unsigned long long)inf.gc_pending);
    for (uint64_t b = 0; b < NB; b++)
        EXPECT_PAT(v, b == 7 ? 5 : 1, b);

    /* freed slots are reused (after the freeing txn is durable) */
    uint64_t free_before = inf.free_slots;
    EXPECT(free_before >= (NB + 2) / 3, "free slots %llu",
           (unsigned long long)free_before);
    char cp[400];
    snprintf(cp, sizeof cp, "%s-chunks", t_img);
    struct stat sb;
    stat(cp, &sb);
    off_t size_before = sb.st_size;
    for (uint64_t b = 0; b < 50; b++)
        t_write_pat(v, 6, b);
    OK(store_flush(st));
    stat(cp, &sb);
    EXPECT(sb.st_size == size_before, "chunk file grew from %lld to %lld",
           (long long)size_before, (long long)sb.st_size);
    OK(store_info(st, &inf));
    EXPECT(inf.free_slots <= free_before - 50 + 50, "free slots");

    /* deleting the default volume: refused while it is the only one */
    store_vol_close(v);
    EXPECT(store_delete(st, "vm") == -EBUSY, "delete of the only volume");
    OK(store_snapshot(st, "vm", "s2", NULL));
    OK(store_clone(st, "s2", "c2", NULL));
    OK(store_delete(st, "vm"));
    struct store_obj_info ci;
    OK(store_lookup(st, "c2", &ci));
    EXPECT(ci.is_default, "c2 did not become the default volume");
    OK(store_gc(st));
    EXPECT_CLEAN(st);
    store_close(st);
    OK(store_open(t_img, 0, &st));
    OK(store_vol_open(st, "c2", &v));
    for (uint64_t b = 0; b < NB; b++)
        EXPECT_PAT(v, b < 50 ? 6 : b == 7 ? 5 : 1, b);
    store_vol_close(v);
    EXPECT_CLEAN(st);
    store_close(st);
    return 0;
}
