"""CPU cost of end-to-end checksums per GB, as the engine pays it (see README, "Integrity").

    python bench/checksum_bench.py [--size 1Gi] [--chunk 32Mi]

Writes a file of random bytes, warms the page cache (a range the engine just wrote is in
it), then times, in CPU seconds per GB: each CRC computed range by range over an mmap of
the range plus the combine, the MD5 post-pass, and a plain memcpy as this machine's
yardstick (on a loaded machine every figure inflates alike).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer import checksum
from streamer.sizes import parse_size


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="1Gi")
    p.add_argument("--chunk", default="32Mi")
    args = p.parse_args()
    size, chunk = parse_size(args.size, name="size"), parse_size(args.chunk, name="chunk")
    with tempfile.NamedTemporaryFile(dir=os.environ.get("TMPDIR")) as f:
        block = os.urandom(8 << 20)
        for _ in range(0, size, len(block)):
            f.write(block)
        f.flush()
        fd = f.fileno()
        size = os.fstat(fd).st_size
        checksum.range_crc("crc32", fd, 0, size)  # warm the page cache
        gb = size / 1e9
        for algorithm in ("crc64nvme", "crc32c", "crc32"):
            t = time.process_time()
            parts = [(checksum.range_crc(algorithm, fd, o, min(o + chunk, size)),
                      min(chunk, size - o)) for o in range(0, size, chunk)]  # fmt: skip
            checksum.combine(algorithm, parts)
            print(f"{algorithm:10} {(time.process_time() - t) / gb:.3f} CPU s/GB")
        t = time.process_time()
        checksum.file_md5(f.name)
        print(f"{'md5':10} {(time.process_time() - t) / gb:.3f} CPU s/GB (post-pass)")
        buf = bytearray(len(block))
        t = time.process_time()
        for _ in range(0, size, len(block)):
            buf[:] = block
        print(f"{'memcpy':10} {(time.process_time() - t) / gb:.3f} CPU s/GB (yardstick)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
