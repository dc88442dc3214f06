/* store-seg.c: segment I/O, the one place chunk-file bytes move.
 *
 * The chunk file is an array of STORE_BLOCK-byte slots cut in segments of
 * STORE_SEG_SLOTS; slot s lives at byte s * STORE_BLOCK.  Everything above
 * this file speaks in slots and segments: reads of slots, vectored writes
 * starting at a slot, a sync that makes every write before it durable, and
 * the reservation of a whole segment's space before its first write (so
 * that a write into a reserved segment cannot fail for space).  A later
 * backend (segments as objects of a distributed store) replaces this file.
 * Any thread may call these; the file descriptor is shared.
 */
#include "store-int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

/* Read n bytes from slot on (n a multiple of STORE_BLOCK, or less). */
int store_seg_read(struct store *st, uint64_t slot, void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(st->chunk_fd, (uint8_t *)buf + done, n - done,
                          (off_t)(slot * STORE_BLOCK + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return store_set_err(st, r < 0 ? -errno : -EIO,
                                 "%s-chunks: read of slot %llu failed: %s",
                                 st->path, (unsigned long long)slot,
                                 r < 0 ? strerror(errno) : "short read");
        done += (size_t)r;
    }
    return 0;
}

/* Write iov (whole slots) from slot on. */
int store_seg_writev(struct store *st, uint64_t slot, const struct iovec *iov,
                     int iovcnt)
{
    size_t want = 0;
    for (int i = 0; i < iovcnt; i++)
        want += iov[i].iov_len;
    ssize_t w = pwritev(st->chunk_fd, iov, iovcnt, (off_t)(slot * STORE_BLOCK));
    if (w == (ssize_t)want)
        return 0;
    if (w >= 0) { /* short: finish it block by block */
        size_t off = 0;
        for (int i = 0; i < iovcnt; i++) {
            size_t l = iov[i].iov_len;
            if (off + l > (size_t)w) {
                size_t skip = off < (size_t)w ? (size_t)w - off : 0;
                ssize_t r =
                    pwrite(st->chunk_fd, (uint8_t *)iov[i].iov_base + skip,
                           l - skip, (off_t)(slot * STORE_BLOCK + off + skip));
                if (r != (ssize_t)(l - skip)) {
                    w = r < 0 ? -1 : 0;
                    break;
                }
            }
            off += l;
        }
        if (off == want)
            return 0;
    }
    int e = w < 0 ? errno : EIO;
    return store_set_err(
        st, -e, "%s-chunks: write of %zu bytes at slot %llu failed: %s",
        st->path, want, (unsigned long long)slot,
        w < 0 ? strerror(e) : "short write");
}

/* Make every write that returned before this call durable. */
int store_seg_sync(struct store *st)
{
    if (fdatasync(st->chunk_fd) == 0)
        return 0;
    int e = errno;
    return store_set_err(st, -e, "%s-chunks: fdatasync failed: %s", st->path,
                         strerror(e));
}

/* Reserve segment seg's space in the file system; the file's size covers
 * it from then on (so the next open knows the segment exists).  -ENOSPC
 * when the file system is full; on a file system that cannot preallocate,
 * the size is extended and writes may still find the disk full. */
int store_seg_prealloc(struct store *st, uint32_t seg)
{
    off_t off = (off_t)seg * STORE_SEG_SLOTS * STORE_BLOCK;
    off_t len = (off_t)STORE_SEG_SLOTS * STORE_BLOCK;
    if (fallocate(st->chunk_fd, 0, off, len) == 0)
        return 0;
    int e = errno;
    if ((e == EOPNOTSUPP || e == ENOSYS) &&
        (lseek(st->chunk_fd, 0, SEEK_END) >= off + len ||
         ftruncate(st->chunk_fd, off + len) == 0))
        return 0;
    if (e == EDQUOT || e == EFBIG)
        e = ENOSPC;
    return store_set_err(st, -e,
                         "%s-chunks: no space left for a new segment: %s",
                         st->path, strerror(e));
}
