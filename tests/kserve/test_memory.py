"""Peak RSS stays under 300 MiB whatever the model size (the stock initializer OOMs at 1Gi).

A 2 GiB synthetic model from the origin process (S3 path-style), the init container as a
subprocess; ``ru_maxrss`` of the child is its peak resident set. The same run checks the
logs a person follows in ``kubectl logs``: what is fetched, periodic progress with bytes,
rate and ETA, and a final summary line.
"""

from __future__ import annotations

import hashlib
import re
import shutil

from streamer import synth
from tests.kserve.helpers import last_line

LIMIT = 300 << 20


def _digest(path, offsets, n=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for off in offsets:
            f.seek(off)
            h.update(f.read(n))
    return h.hexdigest()


def test_peak_rss_under_300_mib_for_a_2_gib_model(synth_factory, origin_process,
                                                   subprocess_env, run_init, tmp_path):  # fmt: skip
    model = synth_factory(synth.sized("2GiB", shards=4), name="root/models/big")
    o = origin_process(tmp_path / "root", etag="mtime")  # no MD5 over 2 GiB in the origin
    dst = tmp_path / "out"
    env = o.env(subprocess_env(), WEIGHTSTREAM_PROGRESS_INTERVAL="0.5")
    try:
        r = run_init("s3://models/big", dst, env=env, timeout=240).check()
        assert r.peak_rss_bytes < LIMIT, f"peak RSS {r.peak_rss_bytes / 2**20:.0f} MiB"
        print(f"peak RSS {r.peak_rss_bytes / 2**20:.0f} MiB for {model.file_bytes / 2**30:.1f}"
              f" GiB in {r.wall_s:.1f}s")
        for f in model.files:
            src, got = model.path / f, dst / f
            assert got.stat().st_size == src.stat().st_size, f
            size = src.stat().st_size
            offsets = sorted({0, size // 3, size // 2, max(0, size - (1 << 20))})
            assert _digest(got, offsets) == _digest(src, offsets), f
        out = r.output
        assert "fetching s3://models/big into" in out
        assert "[1/1] 10 files, 2.0 GiB to fetch" in out
        progress = [line for line in out.splitlines() if "progress:" in line]
        assert progress, out
        assert re.search(r"i?B / 2\.0 GiB \(\d+%\), \d+/\d+ files, \d+ MB/s, ETA ", progress[0])
        assert re.search(r"downloaded \d+ files \(2\.0 GiB\)", out)
        assert "ready: 1 of 1 destinations" in last_line(r)
    finally:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.rmtree(model.path, ignore_errors=True)
