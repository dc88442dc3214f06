# logblocks.py CHUNKFILE: the log's summary blocks found in a chunk file,
# one line each: "offset lsn kind count" (store-log.c's header: magic
# "BSNAPLOG", lsn, sum, image UUID, version, kind, count, seg_next), in lsn
# order.  Tests use it to damage a chosen block or the chunk it names.
import struct
import sys

with open(sys.argv[1], "rb") as f:
    data = f.read()
blocks = []
for off in range(0, len(data), 4096):
    b = data[off:off + 4096]
    if b[:8] != b"BSNAPLOG":
        continue
    lsn, = struct.unpack_from("<Q", b, 8)
    kind, n = struct.unpack_from("<II", b, 44)
    blocks.append((lsn, off, kind, n))
for lsn, off, kind, n in sorted(blocks):
    print(off, lsn, kind, n)
