#!/usr/bin/env python3
"""Time to tensors (issue 6): weightstream's streaming API vs runai-model-streamer vs obstore.

One run serves a synthetic safetensors model (default 4 shards x 512 MiB) from nginx on
loopback as a path-style S3 endpoint (reusing ``bench/download_bench.py``'s model
generator, listing and nginx launcher), then, in alternating rounds, each contender turns
``s3://models/<prefix>`` into CPU tensors in a process of its own:

* ``weightstream``  ``streamer.tensors.stream_tensors`` (our engine: bounded reusable
                    buffers, ranged reads through the S3 backend, retries, If-Match)
* ``weightstream-4k`` (not run by default) the same with ``huge_pages=False``: tensors in
                    ``torch.empty`` memory (4 KiB pages) instead of transparent huge pages
* ``runai``         runai-model-streamer's ``SafetensorsStreamer`` as vLLM's
                    ``runai_streamer`` loader drives it (defaults, CPU)
* ``obstore``       obstore ranged reads (8 MiB, 16 in flight, a sliding window) straight
                    into one allocation per tensor: the fastest plain client measured here

Every contender consumes each tensor as it arrives and lets it go, the way vLLM copies a
weight into its parameter. Reported per contender: time from the first request to the last
tensor (inside the process, after imports), GB/s, peak RSS of the process and its CPU
seconds (user + sys, from wait4; the least load-sensitive number on a shared machine). The
median over rounds goes into the table, with speed ratios against weightstream. Results:
stdout and ``bench/out/tensors_bench.json``.

Usage::

    .venv/bin/python bench/tensors_bench.py                     # 2 GiB, 3 rounds
    .venv/bin/python bench/tensors_bench.py --size 512MiB --rounds 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import download_bench  # a sibling script: bench/ is sys.path[0] when one runs

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = ("weightstream", "runai", "obstore")
SMALL_PAGES = "weightstream-4k"  # weightstream with huge_pages=False
MiB = 1 << 20


# --------------------------------------------------------------------------- contenders
# Each runs in its own process: ``tensors_bench.py --child NAME --url URL --prefix P``.


def child_weightstream(url: str, prefix: str, args: argparse.Namespace) -> tuple[int, int]:
    from streamer import StorageSettings
    from streamer.tensors import TensorStreamOptions, stream_tensors

    storage = StorageSettings.from_env(os.environ)
    options = TensorStreamOptions(
        max_memory=args.max_memory, concurrency=args.concurrency, chunk_size=args.chunk_size,
        huge_pages=args.child != SMALL_PAGES,
    )  # fmt: skip
    n = nbytes = 0
    for _, tensor in stream_tensors(f"s3://models/{prefix}", options=options, storage=storage):
        n += 1
        nbytes += tensor.numel() * tensor.element_size()
    return n, nbytes


def child_runai(url: str, prefix: str, args: argparse.Namespace) -> tuple[int, int]:
    from runai_model_streamer import SafetensorsStreamer, list_safetensors

    files = sorted(list_safetensors(f"s3://models/{prefix}"))
    n = nbytes = 0
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(files, device="cpu")
        for _, tensor in streamer.get_tensors():
            n += 1
            nbytes += tensor.numel() * tensor.element_size()
    return n, nbytes


def child_obstore(url: str, prefix: str, args: argparse.Namespace) -> tuple[int, int]:
    import asyncio
    import struct

    import obstore
    import torch
    from obstore.store import S3Store

    from streamer.backends.base import ObjectInfo
    from streamer.plan import PlannedFile
    from streamer.tensors.layout import parse_shard

    store = S3Store(
        "models", endpoint=url, region="us-east-1", access_key_id="bench",
        secret_access_key="bench", virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )  # fmt: skip

    async def run() -> tuple[int, int]:
        objects = [o for page in obstore.list(store, prefix + "/") for o in page]
        shards = sorted(o["path"] for o in objects if o["path"].endswith(".safetensors"))
        window = asyncio.Semaphore(args.concurrency)
        n = nbytes = 0

        async def read(key: str, start: int, end: int, out: memoryview) -> None:
            async with window:
                data = await obstore.get_range_async(store, key, start=start, end=end)
            out[:] = memoryview(data)

        async def tensor(key: str, start: int, end: int, dtype, shape) -> None:
            nonlocal n, nbytes
            raw = torch.empty(end - start, dtype=torch.uint8)
            view = memoryview(raw.numpy())
            step = args.chunk_size
            await asyncio.gather(*(
                read(key, a, min(a + step, end), view[a - start : min(a + step, end) - start])
                for a in range(start, end, step)
            ))  # fmt: skip
            raw.view(dtype).view(shape)
            n += 1
            nbytes += end - start

        for key in shards:
            size = (await obstore.head_async(store, key))["size"]
            head = bytes(await obstore.get_range_async(store, key, start=0, end=min(size, MiB)))
            total = 8 + struct.unpack("<Q", head[:8])[0]
            if total > len(head):
                head += bytes(await obstore.get_range_async(store, key, start=len(head), end=total))
            layout = parse_shard(PlannedFile(ObjectInfo(key, size, None), key, key), head[:total])
            await asyncio.gather(*(
                tensor(key, t.start, t.end, t.dtype, t.shape) for t in layout.tensors
            ))  # fmt: skip
        return n, nbytes

    return asyncio.run(run())


# Imported before the clock starts: module import time (torch alone takes 1-2 s here) is not
# time to tensors. Clients, sessions and connections are made inside the timed part.
PRELOAD = {
    "weightstream": ("torch", "streamer.tensors", "streamer.backends.s3"),
    SMALL_PAGES: ("torch", "streamer.tensors", "streamer.backends.s3"),
    "runai": ("torch", "runai_model_streamer"),
    "obstore": ("torch", "obstore", "obstore.store", "streamer.tensors.layout"),
}


def run_child(name: str, args: argparse.Namespace) -> int:
    func = {"weightstream": child_weightstream, SMALL_PAGES: child_weightstream,
            "runai": child_runai, "obstore": child_obstore}  # fmt: skip
    for module in PRELOAD[name]:
        importlib.import_module(module)
    start = time.perf_counter()
    n, nbytes = func[name](args.url, args.prefix, args)
    seconds = time.perf_counter() - start
    print(json.dumps({"tensors": n, "bytes": nbytes, "seconds": seconds}))
    return 0


# --------------------------------------------------------------------------- driver


def child_env(url: str) -> dict[str, str]:
    db = download_bench
    env = db.tool_env(url)
    env.update({
        # runai's S3 client: path-style on a local endpoint (see docs/vllm.md).
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        "RUNAI_STREAMER_S3_ENDPOINT": url,
        "RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS": "30000",
    })  # fmt: skip
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="2GiB", help="tensor bytes of the model (default 2GiB)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument(
        "--work",
        type=Path,
        default=REPO / ".work" / "bench",
        help="scratch dir shared with download_bench.py (the model is reused)",
    )
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    p.add_argument("--max-memory", type=int, default=512 * MiB, help="weightstream budget")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=8 * MiB)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--child", choices=(*CONTENDERS, SMALL_PAGES), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return run_child(args.child, args)

    db = download_bench
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    size = db.parse_size(args.size)
    prefix = f"bench-{size // MiB}m-{args.shards}s"
    work = args.work.resolve()
    root = work / "origin"
    db.generate_model(root / db.BUCKET / prefix, size=size, shards=args.shards)
    mine = work / "tensors"
    mine.mkdir(parents=True, exist_ok=True)
    list_file = mine / "list.xml"
    objects = db.write_listing(root, db.BUCKET, prefix, list_file)
    total = sum(s for k, s in objects if k.endswith(".safetensors"))  # shard bytes
    nginx, url = db.start_nginx(mine, root, list_file)
    print(f"origin: nginx at {url}, s3://models/{prefix} ({total / MiB:.0f} MiB of shards)")
    env = child_env(url)
    runs: list[dict] = []
    try:
        for rnd in range(1, args.rounds + 1):
            order = contenders[rnd - 1 :] + contenders[: rnd - 1]
            for name in order:
                log = mine / f"{name}-{rnd}.log"
                argv_ = [sys.executable, str(Path(__file__).resolve()), "--child", name,
                         "--url", url, "--prefix", prefix, "--max-memory", str(args.max_memory),
                         "--concurrency", str(args.concurrency),
                         "--chunk-size", str(args.chunk_size)]  # fmt: skip
                load = os.getloadavg()[0]
                measured = db.run_measured(argv_, env=env, log=log, timeout=args.timeout)
                rc, wall, _, rss = measured[:4]
                cpu = measured[4] if len(measured) > 4 else None  # user+sys of the process
                result = _last_json(log) if rc == 0 else None
                ok = bool(result) and result["bytes"] > 0
                run = {"contender": name, "round": rnd, "rc": rc, "ok": ok, "wall_s": wall,
                       "seconds": result["seconds"] if result else None,
                       "peak_rss_mib": rss / MiB, "cpu_s": cpu, "load": load}  # fmt: skip
                runs.append(run)
                run["bytes"] = result["bytes"] if result else 0
                gbs = run["bytes"] / 1e9 / run["seconds"] if ok else 0
                status = "ok" if ok else f"FAILED (rc {rc}; log {log})"
                print(f"round {rnd} {name:<13} {run['seconds'] or 0:7.2f}s {gbs:6.2f} GB/s "
                      f"rss {run['peak_rss_mib']:6.0f} MiB  cpu {cpu or 0:6.2f}s  "
                      f"load {load:4.1f}  {status}", flush=True)  # fmt: skip
    finally:
        nginx.terminate()
        nginx.wait()

    rows = []
    for name in contenders:
        good = [r for r in runs if r["contender"] == name and r["ok"]]
        if not good:
            rows.append({"contender": name, "ok": False})
            continue
        sec = statistics.median(r["seconds"] for r in good)
        nbytes = good[0]["bytes"]
        if any(r["bytes"] != nbytes for r in runs if r["ok"]):
            print(f"WARNING: {name} delivered a different number of tensor bytes")
        cpus = [r["cpu_s"] for r in good if r["cpu_s"] is not None]
        cpu_per_gb = statistics.median(cpus) / (nbytes / 1e9) if cpus else None
        rows.append({"contender": name, "ok": True, "seconds": sec, "gb_s": nbytes / 1e9 / sec,
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in good),
                     "cpu_s_per_gb": cpu_per_gb})  # fmt: skip
    ours = next((r for r in rows if r["contender"] == "weightstream" and r["ok"]), None)
    lines = [
        f"{total / MiB:.0f} MiB of safetensors in {args.shards} shards, nginx on loopback, "
        f"{os.cpu_count()} CPUs, median of {args.rounds} rounds",
        f"{'contender':<14}{'seconds':>9}{'GB/s':>8}{'peak RSS':>11}{'CPU s/GB':>10}"
        f"{'weightstream is':>18}",
    ]
    for r in rows:
        if not r["ok"]:
            lines.append(f"{r['contender']:<14}   failed")
            continue
        ratio = f"{r['seconds'] / ours['seconds']:.2f}x faster" if ours else "-"
        if r is ours:
            ratio = "-"
        cpu = f"{r['cpu_s_per_gb']:10.2f}" if r["cpu_s_per_gb"] is not None else f"{'-':>10}"
        lines.append(f"{r['contender']:<14}{r['seconds']:9.2f}{r['gb_s']:8.2f}"
                     f"{r['peak_rss_mib']:8.0f} MiB{cpu}{ratio:>18}")  # fmt: skip
    busiest = max((r["load"] for r in runs), default=0.0)
    if busiest > (os.cpu_count() or 1):
        lines.append(
            f"WARNING: load average reached {busiest:.1f} on {os.cpu_count()} CPUs; "
            "other work on this machine skews these numbers."
        )
    table = "\n".join(lines)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tensors_bench.json").write_text(json.dumps(
        {"meta": {"size": size, "shards": args.shards, "rounds": args.rounds,
                  "total_bytes": total, "max_memory": args.max_memory, "cpus": os.cpu_count(),
                  "max_load": busiest, "time": time.strftime("%FT%TZ", time.gmtime())},
         "summary": rows, "runs": runs}, indent=2) + "\n")  # fmt: skip
    (args.out / "tensors_bench.txt").write_text(table + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


def _last_json(log: Path) -> dict | None:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


if __name__ == "__main__":
    sys.exit(main())
