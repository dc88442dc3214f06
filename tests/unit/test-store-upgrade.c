/* test-store-upgrade.c: images of format version 4 (tests/fixtures, made by
 * make-v4.c with the store of that version) open as version 5.  A
 * read-only open refuses them with a message saying how to upgrade; a
 * read-write open converts them, replaying what the version 4 journal held
 * (writes, trims, a snapshot and a clone made durable only there), after
 * which every volume and snapshot reads exactly what version 4 read back
 * (tests/fixtures/v4.sha), the checker is clean, both files say version 5
 * (so that a build of version 4, which refuses versions above its own,
 * no longer opens the image), the journal is gone, and the image takes
 * writes, snapshots and a reopen like a new one. */
#include "store-test-util.h"

#include <fcntl.h>

static const char *fixtures;

static void copy_fixture(const char *name)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "cp '%s/%s.db' '%s/%s.db-chunks' '%s/%s.db-journal' '%s/'",
             fixtures, name, fixtures, name, fixtures, name, t_dir);
    EXPECT(system(cmd) == 0, "copy fixture %s", name);
    snprintf(t_img, sizeof t_img, "%s/%s.db", t_dir, name);
}

/* sha256 of an object's whole content, through sha256sum. */
static void sha_of(struct store *st, const char *name, uint64_t size,
                   char out[65])
{
    struct store_vol *v;
    OK(store_vol_open(st, name, &v));
    uint8_t *all = malloc(size);
    OK(store_read(v, all, 0, (uint32_t)size));
    store_vol_close(v);
    char path[400], cmd[500];
    snprintf(path, sizeof path, "%s/content", t_dir);
    FILE *f = fopen(path, "wb");
    EXPECT(f && fwrite(all, 1, size, f) == size, "write content");
    fclose(f);
    free(all);
    snprintf(cmd, sizeof cmd, "sha256sum < '%s'", path);
    FILE *p = popen(cmd, "r");
    EXPECT(p && fscanf(p, "%64s", out) == 1, "sha256sum");
    pclose(p);
}

struct listed {
    char names[16][STORE_NAME_MAX + 1];
    int n;
};

static int list_cb(const struct store_obj_info *i, void *arg)
{
    struct listed *l = arg;
    if (l->n < 16)
        snprintf(l->names[l->n++], STORE_NAME_MAX + 1, "%s", i->name);
    return 0;
}

static uint32_t chunk_version(void)
{
    char cp[400];
    uint32_t ver = 0;
    snprintf(cp, sizeof cp, "%s-chunks", t_img);
    int fd = open(cp, O_RDONLY);
    EXPECT(fd >= 0 && pread(fd, &ver, 4, 16) == 4, "read chunk header");
    close(fd);
    return ver;
}

static void check_image(const char *name)
{
    struct store *st;
    struct store_info si;
    copy_fixture(name);
    EXPECT(store_open(t_img, STORE_OPEN_RDONLY, &st) == -EPROTO &&
               strstr(store_errmsg(), "upgrade"),
           "%s: read-only open of version 4: %s", name, store_errmsg());
    EXPECT(chunk_version() == 4, "%s: the refused open changed the image",
           name);
    OK(store_open(t_img, 0, &st));
    OK(store_info(st, &si));
    EXPECT(si.format_version == 5, "%s: version %u after the upgrade", name,
           si.format_version);
    EXPECT(chunk_version() == 5, "%s: chunk header not upgraded", name);
    char jp[400];
    snprintf(jp, sizeof jp, "%s-journal", t_img);
    EXPECT(access(jp, F_OK) != 0, "%s: journal left behind", name);
    /* every object as version 4 read it back */
    char path[400], line[256], kind[16], obj[80], sha[80], img[80] = "";
    snprintf(path, sizeof path, "%s/v4.sha", fixtures);
    FILE *f = fopen(path, "r");
    EXPECT(f, "open v4.sha");
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "image %79s", img) == 1)
            continue;
        if (strcmp(img, name) ||
            sscanf(line, "%15s %79s %79s", kind, obj, sha) != 3)
            continue;
        struct store_obj_info oi;
        OK(store_lookup(st, obj, &oi));
        EXPECT(oi.kind ==
                   (!strcmp(kind, "volume") ? STORE_VOLUME : STORE_SNAPSHOT),
               "%s: %s is not a %s", name, obj, kind);
        char got[65];
        sha_of(st, obj, oi.size, got);
        EXPECT(!strcmp(got, sha),
               "%s: %s %s reads differently after the "
               "upgrade",
               name, kind, obj);
        n++;
    }
    fclose(f);
    struct listed l = {.n = 0};
    OK(store_list(st, list_cb, &l));
    EXPECT(n > 0 && l.n == n, "%s: %d objects listed, %d expected", name, l.n,
           n);
    EXPECT_CLEAN(st);
    /* it works like any image: a write, a snapshot, a reopen */
    struct store_vol *v;
    OK(store_vol_open(st, "default", &v));
    t_write_pat(v, 77, 5);
    store_vol_close(v);
    OK(store_snapshot(st, "default", "after", NULL));
    store_close(st);
    OK(store_open(t_img, STORE_OPEN_RDONLY, &st));
    OK(store_vol_open(st, "after", &v));
    EXPECT_PAT(v, 77, 5);
    store_vol_close(v);
    EXPECT_CLEAN(st);
    store_close(st);
}

int main(int argc, char **argv)
{
    /* tests/unit/test-store-upgrade -> tests/fixtures, from any cwd */
    static char dir[600];
    snprintf(dir, sizeof dir, "%s", argv[0]);
    char *slash = strrchr(dir, '/');
    snprintf(slash ? slash + 1 : dir,
             sizeof dir - (slash ? slash + 1 - dir : 0), "../fixtures");
    fixtures = getenv("FIXTURES") ? getenv("FIXTURES") : dir;
    t_setup("upgrade");
    check_image("v4-clean");
    check_image("v4-journal");
    return 0;
}
