"""One rank of a shared (tensor-parallel style) load, run as a process by the tests.

::

    python -m tests.support.tp_worker --rank R --world N --init file:///tmp/x \\
        --sources '["http://127.0.0.1:P0/models/llama", ...]' --reference DIR --out R.json

Joins a gloo group of N processes, streams the model through ``stream_tensors`` with
``Peers`` (rank R reads through ``sources[R]``: one origin per rank, so the bytes each rank
fetched are counted apart), compares every tensor bit for bit with
``safetensors.torch.load_file`` of ``--reference`` and writes what it saw as JSON. A load
error is written, not raised (``error``, ``error_type``, ``failed_ranks``).
``--exit-after K`` makes the rank die (``os._exit``) after K tensors: a rank lost mid-load.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from streamer.errors import DistributedLoadError
from streamer.retry import RetryPolicy
from streamer.tensors import Peers, StreamStats, TensorStreamOptions, stream_tensors


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--init", required=True, help="init_method, e.g. file:///tmp/rendezvous")
    ap.add_argument("--sources", required=True, help="JSON list: the source of each rank")
    ap.add_argument("--reference", required=True, help="local directory with the same shards")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-memory", type=int, default=4 << 20)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--exit-after", type=int, default=None)
    ap.add_argument("--exchange", default="auto", choices=["auto", "shm", "group"])
    ap.add_argument("--skip-prefix", default=None, help="keep only tensors not starting so")
    args = ap.parse_args()

    dist.init_process_group(
        "gloo",
        init_method=args.init,
        rank=args.rank,
        world_size=args.world,
        timeout=datetime.timedelta(seconds=120),
    )
    source = json.loads(args.sources)[args.rank]
    options = TensorStreamOptions(
        max_memory=args.max_memory,
        buffer_size=256 << 10,
        chunk_size=64 << 10,
        concurrency=4,
        retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02),
    )
    keep = None
    if args.skip_prefix:
        prefix = args.skip_prefix
        keep = lambda name: not name.startswith(prefix)  # noqa: E731
    stats = StreamStats()
    got: dict[str, torch.Tensor] = {}
    result: dict = {"rank": args.rank}
    started = time.perf_counter()
    try:
        for name, tensor in stream_tensors(
            source,
            options=options,
            stats=stats,
            peers=Peers(timeout=args.timeout, exchange=args.exchange),
            keep=keep,
        ):
            got[name] = tensor
            if args.exit_after is not None and len(got) >= args.exit_after:
                os._exit(17)
    except DistributedLoadError as e:
        result |= {
            "error": str(e),
            "error_type": type(e).__name__,
            "failed_ranks": sorted(e.failed),
        }
    except Exception as e:  # recorded for the test to assert on
        result |= {"error": f"{type(e).__name__}: {e}", "error_type": type(e).__name__}
    result["seconds"] = time.perf_counter() - started
    reference: dict[str, torch.Tensor] = {}
    for shard in sorted(glob.glob(os.path.join(args.reference, "*.safetensors"))):
        reference.update(load_file(shard))
    if keep is not None:
        reference = {n: t for n, t in reference.items() if keep(n)}
    result |= {
        "tensors": len(got),
        "missing": sorted(set(reference) - set(got))[:10],
        "unexpected": sorted(set(got) - set(reference))[:10],
        "mismatched": sorted(
            n for n, t in got.items() if n in reference and not _same(t, reference[n])
        ),
        "fetched": stats.fetched,
        "bytes": stats.bytes,
        "shm": bool(stats.extra.get("shm")),
    }
    Path(args.out).write_text(json.dumps(result))
    # Skip the group's teardown barrier after a failure: the other ranks may be gone.
    if "error" in result:
        os._exit(0)
    dist.destroy_process_group()
    return 0


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return (
        a.contiguous().view(-1).view(torch.uint8).equal(b.contiguous().view(-1).view(torch.uint8))
    )


if __name__ == "__main__":
    sys.exit(main())
