"""``weightstream-init webhdfs://...`` (the fsspec fallback) as KServe runs it, black box.

The WebHDFS stand-in runs on a thread of its own (tests/support/webhdfs.py) while the init
container runs as a real process: KServe's layout rules (files relative to the prefix, no
sibling prefixes) and a typed failure for a missing path.
"""

from __future__ import annotations

from tests.kserve.helpers import last_line, tree
from tests.support.webhdfs import webhdfs_in_thread


def test_webhdfs_prefix_lands_relative_to_prefix(subprocess_env, run_init, tmp_path):
    root = tmp_path / "hdfs"
    for rel, data in {"models/llama/config.json": b'{"a": 1}',
                      "models/llama/tokenizer/vocab.txt": b"a\nb\n",
                      "models/llama-old/config.json": b'{"old": true}'}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    dst = tmp_path / "mnt" / "models"
    with webhdfs_in_thread(root) as srv:
        r = run_init(f"webhdfs://{srv.netloc}/models/llama", dst, env=subprocess_env())
        missing = run_init(f"webhdfs://{srv.netloc}/models/none", tmp_path / "x",
                           env=subprocess_env())
    r.check()
    assert tree(dst) == ["config.json", "tokenizer/vocab.txt"]
    assert (dst / "config.json").read_bytes() == b'{"a": 1}'
    assert "ready: 1 of 1 destinations" in last_line(r)
    assert missing.returncode == 3, missing.output
    assert "webhdfs://" in last_line(missing)
