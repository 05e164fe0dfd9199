"""CPU cost of end-to-end checksums per GB, as the engine pays it (see README, "Integrity").

    python bench/checksum_bench.py [--size 1Gi] [--chunk 32Mi] [--repeat 3]

Writes a file of random bytes, warms the page cache (a range the engine just wrote is in
it), then times, in CPU seconds per GB: each CRC computed range by range over an mmap of
the range plus the combine, the MD5 and SHA256 post-passes (hashlib; neither combines),
and a plain memcpy as this machine's yardstick (on a loaded machine every figure inflates
alike). Each is run ``--repeat`` times, interleaved; the lowest and highest are printed
(the lowest is the least disturbed by other load), with the load average before and after.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer import checksum
from streamer.sizes import parse_size


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="1Gi")
    p.add_argument("--chunk", default="32Mi")
    p.add_argument("--repeat", type=int, default=3)
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
        buf = bytearray(len(block))

        def crc(algorithm: str) -> None:
            parts = [(checksum.range_crc(algorithm, fd, o, min(o + chunk, size)),
                      min(chunk, size - o)) for o in range(0, size, chunk)]  # fmt: skip
            checksum.combine(algorithm, parts)

        def digest(name: str) -> None:
            h = hashlib.new(name, usedforsecurity=False)
            with open(f.name, "rb") as r:
                while block_read := r.read(8 << 20):
                    h.update(block_read)

        def memcpy() -> None:
            for _ in range(0, size, len(block)):
                buf[:] = block

        runs: dict[str, tuple[Callable[[], None], str]] = {
            "crc64nvme": (lambda: crc("crc64nvme"), "range by range + combine"),
            "crc32c": (lambda: crc("crc32c"), "range by range + combine"),
            "crc32": (lambda: crc("crc32"), "range by range + combine"),
            "md5": (lambda: digest("md5"), "post-pass"),
            "sha256": (lambda: digest("sha256"), "post-pass"),
            "memcpy": (memcpy, "yardstick"),
        }
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
              f"({os.cpu_count()} CPUs), {size / 2**20:.0f} MiB, {args.repeat} runs each")
        for _ in range(args.repeat):
            for name, (fn, _what) in runs.items():
                t = time.process_time()
                fn()
                seconds[name].append((time.process_time() - t) / gb)
        for name, (_fn, what) in runs.items():
            print(f"{name:10} {min(seconds[name]):.3f}-{max(seconds[name]):.3f} CPU s/GB "
                  f"({what})")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
