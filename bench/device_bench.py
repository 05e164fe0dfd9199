#!/usr/bin/env python3
"""Time to device memory (issue 15): weightstream vs runai-model-streamer vs safetensors.

Run by ``scripts/gpu-check.sh`` on a machine with a GPU (CUDA, or ROCm through torch.cuda).
Serves a generated safetensors model (default 4 GiB in 4 shards) from an HTTP origin on
loopback (nginx when installed, else ``tests/support/origin.py``, which also sends files
with sendfile) and reads it from the local directory too; each contender, in a process of
its own, puts every tensor on the GPU and lets it go, as vLLM copies a weight into its
parameter:

* ``weightstream``  ``stream_tensors(source, device="cuda")``: ranged reads into pinned,
                    reusable host buffers, ``copy_(non_blocking=True)``, CUDA events
* ``runai``         runai-model-streamer's ``SafetensorsStreamer`` (CPU buffers, as vLLM's
                    ``runai_streamer`` loader uses it), then ``.to("cuda")``
* ``safetensors``   ``safetensors.torch.load_file(path, device="cuda")`` (local only)

Reported: seconds from the first request to the last tensor on the device (after
``torch.cuda.synchronize()``; imports and CUDA initialisation before the clock), GB/s and
the peak host RSS of the process. Results: stdout and ``bench/out/device_bench.json``.

Usage::

    python bench/device_bench.py                      # 4 GiB, origin and local directory
    python bench/device_bench.py --size 1GiB --sources local
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import download_bench  # a sibling script: bench/ is sys.path[0] when one runs

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
CONTENDERS = ("weightstream", "runai", "safetensors")


# --------------------------------------------------------------------------- one contender


def child(name: str, source: str, args: argparse.Namespace) -> dict:
    import torch

    torch.cuda.init()
    torch.empty(1, device="cuda")  # the CUDA context, before the clock
    n = nbytes = 0
    start = time.perf_counter()
    if name == "weightstream":
        from streamer import StorageSettings
        from streamer.tensors import TensorStreamOptions, stream_tensors

        options = TensorStreamOptions(max_memory=args.max_memory, concurrency=args.concurrency)
        storage = StorageSettings.from_env(os.environ)
        for _, t in stream_tensors(source, device="cuda", options=options, storage=storage):
            n += 1
            nbytes += t.numel() * t.element_size()
    elif name == "runai":
        from runai_model_streamer import SafetensorsStreamer, list_safetensors

        files = sorted(list_safetensors(source))
        with SafetensorsStreamer() as streamer:
            streamer.stream_files(files, device="cpu")
            for _, t in streamer.get_tensors():
                t = t.to("cuda", non_blocking=False)
                n += 1
                nbytes += t.numel() * t.element_size()
    else:
        from safetensors.torch import load_file

        for shard in sorted(Path(source).glob("*.safetensors")):
            for t in load_file(shard, device="cuda").values():
                n += 1
                nbytes += t.numel() * t.element_size()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"tensors": n, "bytes": nbytes, "seconds": seconds, "rss": rss}


# --------------------------------------------------------------------------- driver


def start_origin(root: Path, work: Path, list_file: Path):
    """nginx when installed, else our own origin process; returns (process, url)."""
    db = download_bench
    if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
        return db.start_nginx(work, root, list_file)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.origin", "--root", str(root), "--port", "0",
         "--print-port", "--etag", "mtime"],
        cwd=REPO, stdout=subprocess.PIPE, env=os.environ | {"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    port = int(proc.stdout.readline().decode().strip())
    return proc, f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="4GiB")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--sources", default="origin,local")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--work", type=Path, default=REPO / ".work" / "bench")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    p.add_argument("--max-memory", type=int, default=512 * MiB)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.source, args)))
        return 0

    db = download_bench
    size = db.parse_size(args.size)
    prefix = f"bench-{size // MiB}m-{args.shards}s"
    work = args.work.resolve()
    root = work / "origin"
    model_dir = root / db.BUCKET / prefix
    db.generate_model(model_dir, size=size, shards=args.shards)
    mine = work / "device"
    mine.mkdir(parents=True, exist_ok=True)
    list_file = mine / "list.xml"
    objects = db.write_listing(root, db.BUCKET, prefix, list_file)
    total = sum(s for k, s in objects if k.endswith(".safetensors"))
    origin, url = start_origin(root, mine, list_file)
    env = db.tool_env(url) | {
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        "RUNAI_STREAMER_S3_ENDPOINT": url,
        "RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS": "30000",
    }
    for key in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "LD_LIBRARY_PATH"):
        if key in os.environ:
            env[key] = os.environ[key]
    sources = {"origin": f"s3://{db.BUCKET}/{prefix}", "local": str(model_dir)}
    rows = []
    try:
        for where in [s.strip() for s in args.sources.split(",") if s.strip()]:
            for name in [c.strip() for c in args.contenders.split(",") if c.strip()]:
                if name == "safetensors" and where != "local":
                    continue  # load_file reads local files only
                argv_ = [sys.executable, str(Path(__file__).resolve()), "--child", name,
                         "--source", sources[where], "--max-memory", str(args.max_memory),
                         "--concurrency", str(args.concurrency)]  # fmt: skip
                try:
                    proc = subprocess.run(argv_, env=env, capture_output=True, text=True,
                                          timeout=args.timeout, cwd=REPO)  # fmt: skip
                    out = proc.stdout.strip().splitlines()
                    result = json.loads(out[-1]) if proc.returncode == 0 and out else None
                    error = None if result else (proc.stderr.strip().splitlines() or ["?"])[-1]
                except subprocess.TimeoutExpired:
                    result, error = None, f"timed out after {args.timeout:.0f}s"
                row = {"source": where, "contender": name, "result": result, "error": error}
                rows.append(row)
                print(_line(row), flush=True)
    finally:
        origin.terminate()
        origin.wait()
    import torch  # for the device name only

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "?"
    lines = [
        f"{total / MiB:.0f} MiB of safetensors in {args.shards} shards into {device} "
        f"({'nginx' if shutil.which('nginx') else 'tests.support.origin'} on loopback "
        "and the local directory)",
        f"{'source':<8}{'contender':<14}{'seconds':>9}{'GB/s':>8}{'host RSS':>12}",
        *(_line(r) for r in rows),
    ]
    table = "\n".join(lines)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_bench.json").write_text(json.dumps(
        {"device": device, "model_bytes": total, "rows": rows}, indent=2) + "\n")  # fmt: skip
    (args.out / "device_bench.txt").write_text(table + "\n")
    return 0 if all(r["result"] for r in rows) else 1


def _line(row: dict) -> str:
    r = row["result"]
    if not r:
        return f"{row['source']:<8}{row['contender']:<14}  failed: {row['error']}"
    gbs = r["bytes"] / 1e9 / r["seconds"]
    return (f"{row['source']:<8}{row['contender']:<14}{r['seconds']:9.2f}{gbs:8.2f}"
            f"{r['rss'] / MiB:8.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
