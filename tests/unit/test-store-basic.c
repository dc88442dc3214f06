/* test-store-basic.c: create, open, reopen (magic, version, UUID checks,
 * -EBUSY from a second process), aligned and unaligned read/write,
 * zero/trim and extents, names and lookups.  The upgrade of older images:
 * test-store-upgrade.c. */
#include "store-test-util.h"

#include <fcntl.h>
#include <lmdb.h>
#include <sys/wait.h>

#define SIZE (64ull << 20)

static int ext_cb(uint64_t off, uint64_t len, unsigned flags, void *arg)
{
    unsigned *n = arg;
    n[0]++;
    if (!(flags & STORE_EXT_HOLE))
        n[1] += len / STORE_BLOCK;
    return 0;
}

/* Set the index's "version", with LMDB directly, as a build of another
 * version would have left it. */
static int index_version(uint32_t set)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 16) ||
        mdb_env_open(env, t_img, MDB_NOSUBDIR, 0644))
        return -1;
    int rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (!rc)
        rc = mdb_dbi_open(txn, "meta", 0, &dbi);
    MDB_val k = {7, "version"}, d = {4, &set};
    if (!rc)
        rc = mdb_put(txn, dbi, &k, &d, 0);
    if (!rc)
        rc = mdb_txn_commit(txn);
    mdb_env_close(env);
    return rc;
}

int main(void)
{
    struct store *st;
    struct store_vol *v;
    t_setup("basic");
    struct store_create_opts o = {.size = SIZE};
    OK(store_create(t_img, &o, &st));
    struct store *st2;
    EXPECT(store_create(t_img, &o, &st2) == -EEXIST, "second create");

    /* a second process gets -EBUSY */
    pid_t pid = fork();
    if (pid == 0) {
        struct store *s2;
        int rc = store_open(t_img, 0, &s2);
        _exit(rc == -EBUSY && strstr(store_errmsg(), "in use") ? 0 : 1);
    }
    int status;
    waitpid(pid, &status, 0);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "second process did not get -EBUSY");

    OK(store_vol_open(st, "", &v) == -ENOENT ? 0 : -1);
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    EXPECT(store_vol_size(v) == SIZE, "size");
    EXPECT(!store_vol_readonly(v), "readonly");

    /* aligned writes and reads */
    for (uint64_t b = 0; b < 100; b++)
        t_write_pat(v, 7, b * 3);
    for (uint64_t b = 0; b < 300; b++)
        EXPECT_PAT(v, b % 3 ? 0 : 7, b);

    /* unaligned read-modify-write */
    uint8_t *big = malloc(5 * STORE_BLOCK), *ref = malloc(5 * STORE_BLOCK);
    OK(store_read(v, ref, 0, 5 * STORE_BLOCK));
    memset(big, 0xab, 5 * STORE_BLOCK);
    OK(store_write(v, big, 1000, 3 * STORE_BLOCK + 17, 0));
    memset(ref + 1000, 0xab, 3 * STORE_BLOCK + 17);
    OK(store_read(v, big, 0, 5 * STORE_BLOCK));
    EXPECT(!memcmp(big, ref, 5 * STORE_BLOCK), "unaligned write");
    uint8_t small[10];
    OK(store_read(v, small, 4095, 10));
    EXPECT(!memcmp(small, ref + 4095, 10), "unaligned read");
    /* last byte of the device */
    uint8_t one = 0x5a;
    OK(store_write(v, &one, SIZE - 1, 1, STORE_FUA));
    one = 0;
    OK(store_read(v, &one, SIZE - 1, 1));
    EXPECT(one == 0x5a, "last byte");
    EXPECT(store_write(v, &one, SIZE, 1, 0) == -EINVAL, "beyond the end");
    EXPECT(store_read(v, &one, SIZE - 1, 2) == -EINVAL, "read beyond end");

    /* zero: partial and whole blocks, trim frees chunks */
    OK(store_zero(v, 100, 10, 0));
    memset(ref + 100, 0, 10);
    OK(store_read(v, big, 0, 5 * STORE_BLOCK));
    EXPECT(!memcmp(big, ref, 5 * STORE_BLOCK), "partial zero");
    struct store_info inf;
    OK(store_info(st, &inf));
    uint64_t chunks_before = inf.chunks;
    OK(store_zero(v, 0, SIZE, 0));
    OK(store_info(st, &inf));
    EXPECT(inf.chunks == 0 && inf.referenced_bytes == 0,
           "trim of the whole disk left %llu chunks (had %llu)",
           (unsigned long long)inf.chunks, (unsigned long long)chunks_before);
    for (uint64_t b = 0; b < 300; b += 7)
        EXPECT_PAT(v, 0, b);
    unsigned n[2] = {0, 0};
    OK(store_extents(v, 0, SIZE, ext_cb, n));
    EXPECT(n[0] == 1 && n[1] == 0, "extents after trim: %u runs", n[0]);
    t_write_pat(v, 9, 10);
    t_write_pat(v, 9, 11);
    OK(store_zero(v, 20 * STORE_BLOCK, STORE_BLOCK, STORE_NO_HOLE));
    n[0] = n[1] = 0;
    OK(store_extents(v, 0, SIZE, ext_cb, n));
    EXPECT(n[0] == 5 && n[1] == 3, "extents: %u runs %u blocks", n[0], n[1]);
    EXPECT_PAT(v, 0, 20);

    /* names */
    struct store_obj_info oi;
    OK(store_lookup(st, STORE_DEFAULT_VOLUME, &oi));
    EXPECT(oi.is_default && oi.kind == STORE_VOLUME, "default volume");
    char us[37];
    uuid_unparse(oi.uuid, us);
    struct store_obj_info oi2;
    OK(store_lookup(st, us, &oi2));
    EXPECT(!strcmp(oi2.name, STORE_DEFAULT_VOLUME), "lookup by uuid");
    EXPECT(store_snapshot(st, STORE_DEFAULT_VOLUME, "-x", NULL) == -EINVAL,
           "name starting with -");
    EXPECT(store_snapshot(st, STORE_DEFAULT_VOLUME, "a/b", NULL) == -EINVAL,
           "name with /");
    EXPECT(store_snapshot(st, STORE_DEFAULT_VOLUME, us, NULL) == -EINVAL,
           "uuid-shaped name");
    EXPECT(store_lookup(st, "nope", NULL) == -ENOENT, "lookup nope");
    EXPECT(strstr(store_errmsg(), "image.db") && strstr(store_errmsg(), "nope"),
           "message names image and object: %s", store_errmsg());
    OK(store_snapshot(st, STORE_DEFAULT_VOLUME, "s1", NULL));
    OK(store_rename(st, "s1", "s2"));
    EXPECT(store_lookup(st, "s1", NULL) == -ENOENT, "old name still there");
    OK(store_lookup(st, "s2", NULL));
    store_vol_close(v);
    EXPECT_CLEAN(st);
    uuid_t image_uuid;
    OK(store_info(st, &inf));
    memcpy(image_uuid, inf.uuid, 16);
    store_close(st);

    /* reopen: same UUID, data kept */
    OK(store_open(t_img, 0, &st));
    OK(store_info(st, &inf));
    EXPECT(!memcmp(inf.uuid, image_uuid, 16), "uuid changed on reopen");
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    EXPECT_PAT(v, 9, 10);
    EXPECT_PAT(v, 0, 12);
    store_vol_close(v);
    EXPECT_CLEAN(st);
    store_close(st);

    /* read-only open refuses writes */
    OK(store_open(t_img, STORE_OPEN_RDONLY, &st));
    OK(store_vol_open(st, STORE_DEFAULT_VOLUME, &v));
    EXPECT(store_write(v, big, 0, STORE_BLOCK, 0) == -EROFS, "rdonly write");
    EXPECT_PAT(v, 9, 11);
    store_vol_close(v);
    EXPECT_CLEAN(st);
    store_close(st);

    /* bad chunk header magic and a non-image file */
    char cp[400];
    snprintf(cp, sizeof cp, "%s-chunks", t_img);
    int fd = open(cp, O_RDWR);
    EXPECT(fd >= 0 && pwrite(fd, "XXXX", 4, 0) == 4, "corrupt header");
    close(fd);
    EXPECT(store_open(t_img, 0, &st) == -EPROTO &&
               strstr(store_errmsg(), "magic"),
           "bad chunk magic accepted");
    EXPECT(store_open(cp, 0, &st) == -EPROTO, "chunk file opened as image");
    /* chunk header: version at offset 16, image UUID at 20 */
    fd = open(cp, O_RDWR);
    uint32_t ver = 6;
    EXPECT(pwrite(fd, "BUSE", 4, 0) == 4 && pwrite(fd, &ver, 4, 16) == 4,
           "patch version");
    EXPECT(store_open(t_img, 0, &st) == -EPROTO &&
               strstr(store_errmsg(), "version 6"),
           "chunk format version 6 accepted: %s", store_errmsg());
    ver = 1;
    EXPECT(pwrite(fd, &ver, 4, 16) == 4, "patch version");
    EXPECT(store_open(t_img, 0, &st) == -EPROTO &&
               strstr(store_errmsg(), "version 1"),
           "chunk format version 1 accepted: %s", store_errmsg());
    ver = 5;
    uint8_t u0;
    EXPECT(pwrite(fd, &ver, 4, 16) == 4 && pread(fd, &u0, 1, 20) == 1,
           "restore version");
    u0 ^= 0xff;
    EXPECT(pwrite(fd, &u0, 1, 20) == 1, "patch uuid");
    EXPECT(store_open(t_img, 0, &st) == -EPROTO &&
               strstr(store_errmsg(), "another image"),
           "chunk file of another image accepted: %s", store_errmsg());
    u0 ^= 0xff;
    EXPECT(pwrite(fd, &u0, 1, 20) == 1, "restore uuid");
    close(fd);
    /* index format version */
    EXPECT(index_version(9) == 0, "lmdb put");
    EXPECT(store_open(t_img, 0, &st) == -EPROTO &&
               strstr(store_errmsg(), "version 9"),
           "index format version 9 accepted: %s", store_errmsg());
    EXPECT(index_version(5) == 0, "lmdb put");
    OK(store_open(t_img, 0, &st));
    EXPECT_CLEAN(st);
    store_close(st);
    snprintf(cp, sizeof cp, "%s/nothing.db", t_dir);
    EXPECT(store_open(cp, 0, &st) == -ENOENT, "missing image");
    free(big);
    free(ref);
    return 0;
}
