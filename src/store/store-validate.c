/* store-validate.c: a damaged index is refused, never a crash.
 *
 * LMDB trusts its pages: it has no checksums, and a page number, a node
 * offset or an overflow count that random bytes changed makes it read
 * outside its map (SIGSEGV) or past the end of a truncated file (SIGBUS).
 * Every open of an image therefore checks the index before this process
 * maps it:
 *
 *  1. the two meta pages, read with pread: LMDB's magic and version, the
 *     page size, and that the file holds every page the newer meta names
 *     (its last page, the roots of both core trees): a truncated file is
 *     reported as such;
 *  2. a walk of every database, every entry, and of LMDB's free list (each
 *     page it names inside the file), in a child process (fork):
 *     whatever LMDB does with a bad page happens there, and a child killed
 *     by a signal, or one that LMDB told MDB_CORRUPTED or
 *     MDB_PAGE_NOTFOUND, becomes a report naming the file, the database
 *     being read and what to do.
 *
 * The walk reads each page once (the cursor's path), about as long as a
 * read of the index file: small next to the replay that follows.  It ends:
 * keys must ascend strictly, so a cycle of pages is an error, not a loop.
 */
#include "store-int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* LMDB 0.9's on-disk meta page (lmdb/mdb.c: MDB_page, MDB_meta, MDB_db),
 * little-endian, 64-bit: the page header is 16 bytes, then the meta. */
#define LM_MAGIC 0xBEEFC0DEu
#define LM_VERSION 1u
#define LM_P_META 0x08u
#define LM_HDR 16u
#define LM_DB                                                                  \
    48u /* MDB_db: pad u32, flags u16, depth u16, 4 x u64 counts, root */
#define LM_OFF_MAGIC (LM_HDR + 0)
#define LM_OFF_VERSION (LM_HDR + 4)
#define LM_OFF_DBS (LM_HDR + 24)
#define LM_OFF_LAST (LM_OFF_DBS + 2 * LM_DB)
#define LM_OFF_TXNID (LM_OFF_LAST + 8)
#define LM_P_INVALID (~(uint64_t)0)

struct lm_meta {
    bool ok;
    uint32_t psize;
    uint64_t root[2], last, txnid;
};

static uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void parse_meta(const uint8_t *pg, struct lm_meta *m)
{
    memset(m, 0, sizeof *m);
    uint16_t flags;
    memcpy(&flags, pg + 10, 2);
    if (!(flags & LM_P_META) || rd32(pg + LM_OFF_MAGIC) != LM_MAGIC ||
        rd32(pg + LM_OFF_VERSION) != LM_VERSION)
        return;
    m->psize = rd32(pg + LM_OFF_DBS); /* FREE_DBI's md_pad: the page size */
    for (int i = 0; i < 2; i++)
        m->root[i] = rd64(pg + LM_OFF_DBS + i * LM_DB + 40);
    m->last = rd64(pg + LM_OFF_LAST);
    m->txnid = rd64(pg + LM_OFF_TXNID);
    m->ok =
        m->psize >= 512 && m->psize <= 65536 && !(m->psize & (m->psize - 1));
}

/* 1: the meta pages against the file (open_files' descriptor of it). */
static int check_metas(struct store *st)
{
    int fd = st->lock_fd;
    struct stat sb;
    uint8_t pg[2][256];
    struct lm_meta m[2];
    int rc = 0;
    if (fstat(fd, &sb))
        return 0; /* the open that follows says why */
    if (pread(fd, pg[0], sizeof pg[0], 0) != sizeof pg[0])
        return sb.st_size == 0 ? 0
                               : store_set_err(st, -EIO,
                                               "%s: the index is "
                                               "truncated (%lld bytes)",
                                               st->path, (long long)sb.st_size);
    parse_meta(pg[0], &m[0]);
    uint32_t psize = m[0].ok ? m[0].psize : 4096;
    if (pread(fd, pg[1], sizeof pg[1], psize) != sizeof pg[1])
        memset(pg[1], 0, sizeof pg[1]);
    parse_meta(pg[1], &m[1]);
    if (!m[0].ok && !m[1].ok)
        return 0; /* not LMDB at all: mdb_env_open says "not an image" */
    const struct lm_meta *best =
        !m[1].ok || (m[0].ok && m[0].txnid >= m[1].txnid) ? &m[0] : &m[1];
    uint64_t pages = (uint64_t)sb.st_size / best->psize;
    if (best->last + 1 > pages)
        rc = store_set_err(st, -EIO,
                           "%s: the index is truncated or damaged: its meta "
                           "page names page %llu, the file holds %llu pages "
                           "(%lld bytes); restore the image from a backup",
                           st->path, (unsigned long long)best->last,
                           (unsigned long long)pages, (long long)sb.st_size);
    for (int i = 0; i < 2 && !rc; i++)
        if (best->root[i] != LM_P_INVALID &&
            (best->root[i] < 2 || best->root[i] > best->last))
            rc = store_set_err(st, -EIO,
                               "%s: the index is damaged: its meta page "
                               "names root page %llu of %llu; restore the "
                               "image from a backup",
                               st->path, (unsigned long long)best->root[i],
                               (unsigned long long)best->last + 1);
    return rc;
}

/* 2, the child: walk every database; the name being walked goes to fd
 * before its walk, an LMDB error after it. */
static void walk_child(const char *path, uint64_t map_size, int fd)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k, d;
    char msg[300];
    int rc = mdb_env_create(&env);
    if (!rc) {
        mdb_env_set_maxdbs(env, 64);
        if (map_size) /* else the size the meta page records */
            mdb_env_set_mapsize(env, (size_t)map_size);
        rc = mdb_env_open(env, path, MDB_NOSUBDIR | MDB_RDONLY | MDB_NOLOCK,
                          0644);
    }
    if (!rc)
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc)
        _exit(rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND ? 3 : 0);
    /* the main database names the others */
    char names[32][64];
    unsigned nn = 0;
    MDB_dbi main;
    if (write(fd, "(main)\n", 7) < 0)
        _exit(0);
    if ((rc = mdb_dbi_open(txn, NULL, 0, &main)) ||
        (rc = mdb_cursor_open(txn, main, &c)))
        goto bad;
    unsigned seen = 0;
    for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        if (++seen > 1000) { /* an image has 9: a cycle of pages */
            snprintf(msg, sizeof msg, "!it lists %u databases\n", seen);
            goto report;
        }
        if (nn < 32 && k.mv_size && k.mv_size < 64) {
            memcpy(names[nn], k.mv_data, k.mv_size);
            names[nn++][k.mv_size] = 0;
        }
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND)
        goto bad;
    for (unsigned i = 0; i < nn; i++) {
        int n = snprintf(msg, sizeof msg, "%s\n", names[i]);
        if (write(fd, msg, (size_t)n) < 0)
            _exit(0);
        MDB_dbi dbi;
        if ((rc = mdb_dbi_open(txn, names[i], 0, &dbi)) ||
            (rc = mdb_cursor_open(txn, dbi, &c))) {
            if (rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND)
                goto bad;
            continue; /* not a database of ours: the open decides */
        }
        volatile uint8_t sum = 0;
        unsigned dbflags = 0;
        mdb_dbi_flags(txn, dbi, &dbflags);
        MDB_val pk = {0, NULL}, pd = {0, NULL};
        for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0;
             rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
            /* keys (and a key's duplicates) in strictly ascending order:
             * bytes changed in a key mostly break it, and an entry moved
             * to another key is what no tag could catch (its old place
             * would read as a hole) */
            if (pk.mv_data) {
                int ck = mdb_cmp(txn, dbi, &pk, &k);
                if (ck > 0 || (ck == 0 && (!(dbflags & MDB_DUPSORT) ||
                                           mdb_dcmp(txn, dbi, &pd, &d) >= 0))) {
                    snprintf(msg, sizeof msg,
                             "!its keys are out of order (a damaged page)\n");
                    goto report;
                }
            }
            pk = k;
            pd = d;
            const uint8_t *kp = k.mv_data, *dp = d.mv_data;
            /* every byte of the key and the value is read: a node whose
             * size points past the map faults here, not in the server */
            for (size_t j = 0; j < k.mv_size; j++)
                sum += kp[j];
            for (size_t j = 0; j < d.mv_size; j += 64)
                sum += dp[j];
            if (d.mv_size)
                sum += dp[d.mv_size - 1];
        }
        mdb_cursor_close(c);
        if (rc != MDB_NOTFOUND)
            goto bad;
    }
    /* the free list (LMDB's database 0): a read-write open takes pages
     * from it, so a page number past the file's end would fault there, or
     * a live page named free would be overwritten */
    MDB_envinfo ei;
    mdb_env_info(env, &ei);
    if (write(fd, "(free list)\n", 12) < 0)
        _exit(0);
    if ((rc = mdb_cursor_open(txn, 0, &c)))
        goto bad;
    uint64_t prev_txn = 0;
    for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        const uint8_t *dp = d.mv_data;
        uint64_t n = 0, pg, txnid = 0;
        /* keys are txn ids, ascending (a cycle of pages would repeat) */
        if (k.mv_size == 8)
            memcpy(&txnid, k.mv_data, 8);
        if (k.mv_size != 8 || (prev_txn && txnid <= prev_txn)) {
            snprintf(msg, sizeof msg, "!its keys are out of order\n");
            goto report;
        }
        prev_txn = txnid;
        if (d.mv_size >= 8)
            memcpy(&n, dp, 8);
        if (d.mv_size < 8 || d.mv_size % 8 || n != d.mv_size / 8 - 1) {
            snprintf(msg, sizeof msg, "!a malformed entry (%zu bytes)\n",
                     d.mv_size);
            goto report;
        }
        for (uint64_t j = 1; j <= n; j++) {
            memcpy(&pg, dp + 8 * j, 8);
            if (pg < 2 || pg > ei.me_last_pgno) {
                snprintf(msg, sizeof msg,
                         "!it names page %llu, the last is %llu\n",
                         (unsigned long long)pg,
                         (unsigned long long)ei.me_last_pgno);
                goto report;
            }
        }
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND)
        goto bad;
    _exit(0);
report:
    if (write(fd, msg, strlen(msg)) < 0)
        _exit(3);
    _exit(3);
bad:
    snprintf(msg, sizeof msg, "!%s\n", mdb_strerror(rc));
    if (write(fd, msg, strlen(msg)) < 0)
        _exit(3);
    _exit(3);
}

/* 2, the parent: fork the walk, turn its end into a verdict. */
static int walk(struct store *st)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC))
        return 0; /* no walk, no verdict: the open goes on */
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return 0;
    }
    if (pid == 0) {
        close(p[0]);
        /* the default actions: a fault kills the child, as it would the
         * server (sanitizers' and test harnesses' handlers included) */
        signal(SIGSEGV, SIG_DFL);
        signal(SIGBUS, SIG_DFL);
        walk_child(st->path, st->idx.map_size, p[1]);
    }
    close(p[1]);
    char buf[1024], db[64] = "", err[200] = "";
    size_t have = 0;
    for (;;) {
        ssize_t n = read(p[0], buf + have, sizeof buf - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = 0;
        char *nl;
        while ((nl = strchr(buf, '\n'))) {
            *nl = 0;
            if (buf[0] == '!')
                snprintf(err, sizeof err, "%.199s", buf + 1);
            else
                snprintf(db, sizeof db, "%.63s", buf);
            have -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, have + 1);
        }
        if (have == sizeof buf - 1)
            have = 0;
    }
    close(p[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return 0;
    if (WIFSIGNALED(status))
        return store_set_err(st, -EIO,
                             "%s: the index is damaged: reading database "
                             "\"%s\" crashed (%s); restore the image from a "
                             "backup",
                             st->path, db[0] ? db : "?",
                             strsignal(WTERMSIG(status)));
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
        return store_set_err(st, -EIO,
                             "%s: the index is damaged: database \"%s\": "
                             "%s; restore the image from a backup",
                             st->path, db[0] ? db : "?",
                             err[0] ? err : "corrupted");
    return 0;
}

int store_index_validate(struct store *st)
{
    int rc = check_metas(st);
    return rc ? rc : walk(st);
}
