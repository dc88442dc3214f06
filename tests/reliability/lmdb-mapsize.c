/* lmdb-mapsize.c: an LD_PRELOAD shim for tests/reliability/test-valgrind.sh.
 * The store asks LMDB for a 1 TiB map; valgrind 3.19's address space on
 * amd64 is 128 GiB, so mmap fails (EINVAL) and nothing can be checked under
 * memcheck.  This interposes mdb_env_set_mapsize and clamps the size to
 * $LMDB_MAPSIZE_MAX bytes (default 4 GiB): plenty for the small images of
 * the tests, and the store's code runs unchanged otherwise.
 */
#include <dlfcn.h>
#include <lmdb.h>
#include <stdlib.h>

int mdb_env_set_mapsize(MDB_env *env, size_t size)
{
    static int (*real)(MDB_env *, size_t);
    if (!real)
        real =
            (int (*)(MDB_env *, size_t))dlsym(RTLD_NEXT, "mdb_env_set_mapsize");
    const char *e = getenv("LMDB_MAPSIZE_MAX");
    size_t max = e ? strtoull(e, NULL, 0) : (size_t)4 << 30;
    if (size > max)
        size = max;
    return real(env, size);
}
