#!/usr/bin/env python3
"""Tensor-parallel loads (issue 15): origin bytes per pod and time until every rank is loaded.

One run serves a synthetic safetensors model (default 1 GiB in 4 shards) from nginx on
loopback (path-style S3, as ``bench/tensors_bench.py``; nginx logs the body bytes of every
request, so the origin bytes per pod are counted at the origin), then for TP = 1, 2, 4 starts
one process per rank, joined in a gloo group on CPU, for each contender:

* ``ws-shared``   ``stream_tensors(..., peers=Peers())``: the ranks split the ranged reads
                  and exchange the tensors through a shared-memory ring in /dev/shm (all
                  ranks on this host: ``streamer.tensors.distributed``)
* ``ws-gloo``     the same with ``Peers(exchange="group")``: the tensors are broadcast over
                  gloo (the path between hosts)
* ``ws-full``     ``stream_tensors`` on every rank, no peers: each rank reads everything
                  (what the ``weightstream`` load format did before; TP=1 is both)
* ``runai``       runai-model-streamer's ``SafetensorsStreamer`` on every rank, as vLLM's
                  ``runai_streamer`` loader drives it (``distributed`` off)
* ``runai-dist``  the same with ``is_distributed=True`` (vLLM's ``"distributed": true``),
                  forced onto gloo/CPU with ``RUNAI_STREAMER_DIST=1`` (runai distributes only
                  on NCCL by default)
* ``ws-shared-4k``, ``ws-gloo-4k``, ``ws-full-4k``  (not run by default) the same with
                  ``TensorStreamOptions(huge_pages=False)``: tensors in ``torch.empty``
                  memory (4 KiB pages) instead of transparent huge pages
* ``loopback``    (TP=1 only) this machine's loopback limit: 4 ``curl`` processes reading the
                  same shards from the same nginx into /dev/null

The ranks wait on a barrier after their imports; the time is from the earliest rank's start
to the latest rank's last tensor. Each rank consumes each tensor as it arrives and lets it go
(the way vLLM copies a weight into its parameter). Reported: seconds, GB/s of model bytes,
origin bytes per pod as a multiple of the model (nginx's access log: every byte the ranks
fetched, once each), CPU seconds of the pod (user + system of every rank from the barrier
to its last tensor: on a shared machine the fairer figure), peak RSS of the largest rank. Results:
stdout, ``bench/out/tp_bench.{json,txt,png}``.

Usage::

    .venv/bin/python bench/tp_bench.py                         # 1 GiB, TP=1,2,4, 1 round
    .venv/bin/python bench/tp_bench.py --size 256MiB --ranks 1,2 --rounds 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import download_bench  # a sibling script: bench/ is sys.path[0] when one runs

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = ("ws-shared", "ws-gloo", "ws-full", "runai", "runai-dist")
SMALL_PAGES = ("ws-shared-4k", "ws-gloo-4k", "ws-full-4k")  # huge_pages=False
MiB = 1 << 20


# --------------------------------------------------------------------------- one rank
# ``tp_bench.py --rank-child NAME --rank R --world N --init file://... --prefix P --out F``


def rank_weightstream(
    prefix: str, args: argparse.Namespace, *, exchange: str | None, huge_pages: bool
) -> dict:
    from streamer import StorageSettings
    from streamer.tensors import Peers, StreamStats, TensorStreamOptions, stream_tensors

    options = TensorStreamOptions(
        max_memory=args.max_memory, concurrency=args.concurrency, huge_pages=huge_pages
    )
    stats = StreamStats()
    n = nbytes = 0
    for _, tensor in stream_tensors(
        f"s3://models/{prefix}",
        options=options,
        storage=StorageSettings.from_env(os.environ),
        stats=stats,
        peers=Peers(exchange=exchange) if exchange else None,
    ):
        n += 1
        nbytes += tensor.numel() * tensor.element_size()
    return {"tensors": n, "bytes": nbytes, "fetched": stats.fetched}


def rank_runai(prefix: str, args: argparse.Namespace, *, distributed: bool) -> dict:
    from runai_model_streamer import SafetensorsStreamer, list_safetensors

    files = sorted(list_safetensors(f"s3://models/{prefix}"))
    n = nbytes = 0
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(files, device="cpu", is_distributed=distributed)
        for _, tensor in streamer.get_tensors():
            n += 1
            nbytes += tensor.numel() * tensor.element_size()
    return {"tensors": n, "bytes": nbytes, "fetched": None}


PRELOAD = {
    **{
        n: ("torch", "streamer.tensors", "streamer.backends.s3")
        for n in CONTENDERS + SMALL_PAGES
        if n.startswith("ws-")
    },
    "runai": ("torch", "runai_model_streamer"),
    "runai-dist": ("torch", "runai_model_streamer"),
}


def run_rank(args: argparse.Namespace) -> int:
    import datetime

    import torch.distributed as dist

    for module in PRELOAD[args.rank_child]:
        importlib.import_module(module)
    dist.init_process_group(
        "gloo",
        init_method=args.init,
        rank=args.rank,
        world_size=args.world,
        timeout=datetime.timedelta(seconds=args.timeout),
    )
    dist.barrier()
    start, cpu0 = time.time(), _cpu_seconds()
    name = args.rank_child
    if name.startswith("ws-"):
        exchange = {"ws-shared": "auto", "ws-gloo": "group"}.get(name.removesuffix("-4k"))
        result = rank_weightstream(
            args.prefix, args, exchange=exchange, huge_pages=not name.endswith("-4k")
        )
    else:
        result = rank_runai(args.prefix, args, distributed=name == "runai-dist")
    end, cpu = time.time(), _cpu_seconds() - cpu0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(args.out).write_text(
        json.dumps(result | {"start": start, "end": end, "rss": rss, "cpu": cpu})
    )
    dist.barrier()
    dist.destroy_process_group()
    return 0


def _cpu_seconds() -> float:
    """User + system seconds of this process, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- the driver

ACCESS_LOG = (
    "log_format bytes_only '$body_bytes_sent';\n    access_log {run}/access.log bytes_only;"
)


def start_nginx(db, work: Path, root: Path, list_file: Path):
    """download_bench's nginx, with an access log of the body bytes of each request."""
    original = db.NGINX_CONF
    db.NGINX_CONF = original.replace("access_log off;", ACCESS_LOG)
    try:
        return db.start_nginx(work, root, list_file)
    finally:
        db.NGINX_CONF = original


class OriginBytes:
    """Body bytes nginx sent since the last :meth:`take` (its access log, one line each)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.offset = 0

    def take(self) -> int:
        time.sleep(0.2)  # nginx writes a line when the response is done
        if not self.log.exists():
            return 0
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            data = f.read()
            self.offset = f.tell()
        return sum(int(x) for x in data.split() if x.isdigit())


def run_pod(name: str, world: int, args, *, prefix: str, env: dict, work: Path) -> dict:
    """Start ``world`` ranks of one contender; return the pod's time and memory."""
    pod = work / f"{name}-{world}-{time.monotonic_ns()}"
    pod.mkdir(parents=True)
    procs = []
    for rank in range(world):
        argv = [
            sys.executable, str(Path(__file__).resolve()), "--rank-child", name,
            "--rank", str(rank), "--world", str(world), "--init", f"file://{pod}/rendezvous",
            "--prefix", prefix, "--out", str(pod / f"{rank}.json"),
            "--max-memory", str(args.max_memory), "--concurrency", str(args.concurrency),
            "--timeout", str(args.timeout),
        ]  # fmt: skip
        log = open(pod / f"{rank}.log", "wb")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + args.timeout
    for proc, log in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    results = []
    for rank in range(world):
        path = pod / f"{rank}.json"
        results.append(json.loads(path.read_text()) if path.exists() else None)
    if any(r is None for r in results):
        return {"ok": False, "log": str(pod)}
    return {
        "ok": True,
        "seconds": max(r["end"] for r in results) - min(r["start"] for r in results),
        "bytes": results[0]["bytes"],
        "tensors": results[0]["tensors"],
        "same": all(r["bytes"] == results[0]["bytes"] for r in results),
        "peak_rss_mib": max(r["rss"] for r in results) / MiB,
        "cpu_seconds": sum(r["cpu"] for r in results),
        "fetched_per_rank": [r["fetched"] for r in results],
    }


def run_loopback(url: str, keys: list[str], readers: int = 4) -> float:
    """Seconds for ``readers`` curl processes to read every shard once into /dev/null."""
    parts: list[list[str]] = [keys[i::readers] for i in range(readers)]
    start = time.perf_counter()
    errors: list[str] = []

    def reader(mine: list[str]) -> None:
        for key in mine:
            rc = subprocess.run(
                ["curl", "-sf", "-o", os.devnull, f"{url}/models/{key}"], check=False
            ).returncode
            if rc:
                errors.append(f"curl {key}: rc {rc}")

    threads = [threading.Thread(target=reader, args=(p,)) for p in parts if p]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1GiB", help="tensor bytes of the model (default 1GiB)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--ranks", default="1,2,4", help="TP sizes (default 1,2,4)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--work", type=Path, default=REPO / ".work" / "bench")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    p.add_argument("--max-memory", type=int, default=512 * MiB, help="weightstream budget")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--rank-child", choices=CONTENDERS + SMALL_PAGES, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, help=argparse.SUPPRESS)
    p.add_argument("--init", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rank_child:  # --out is then this rank's result file
        return run_rank(args)

    db = download_bench
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    worlds = [int(x) for x in args.ranks.split(",")]
    size = db.parse_size(args.size)
    prefix = f"bench-{size // MiB}m-{args.shards}s"
    work = args.work.resolve()
    root = work / "origin"
    db.generate_model(root / db.BUCKET / prefix, size=size, shards=args.shards)
    mine = work / "tp"
    mine.mkdir(parents=True, exist_ok=True)
    list_file = mine / "list.xml"
    objects = db.write_listing(root, db.BUCKET, prefix, list_file)
    shard_keys = sorted(k for k, _ in objects if k.endswith(".safetensors"))
    model_bytes = sum(s for k, s in objects if k.endswith(".safetensors"))
    nginx, url = start_nginx(db, mine, root, list_file)
    origin = OriginBytes(mine / "nginx" / "access.log")
    env = db.tool_env(url) | {
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        "RUNAI_STREAMER_S3_ENDPOINT": url,
        "RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS": "30000",
        "RUNAI_STREAMER_DIST": "1",  # only read by runai-dist (is_distributed=True)
        "RUNAI_STREAMER_DIST_TIMEOUT": str(int(args.timeout)),
    }
    print(f"origin: nginx at {url}, s3://models/{prefix} ({model_bytes / MiB:.0f} MiB of shards)")
    runs: list[dict] = []
    try:
        for rnd in range(1, args.rounds + 1):
            for world in worlds:
                names = contenders
                if world == 1:  # one rank shares nothing: its full read, and the limit
                    names = [n for n in contenders if n in ("ws-full", "ws-full-4k", "runai")]
                    names.append("loopback")
                for name in names[rnd - 1 :] + names[: rnd - 1]:
                    origin.take()
                    load = os.getloadavg()[0]
                    if name == "loopback":
                        before = resource.getrusage(resource.RUSAGE_CHILDREN)
                        seconds = run_loopback(url, shard_keys)
                        after = resource.getrusage(resource.RUSAGE_CHILDREN)
                        cpu = (after.ru_utime + after.ru_stime) - (
                            before.ru_utime + before.ru_stime
                        )
                        run = {"ok": True, "seconds": seconds, "bytes": model_bytes,
                               "cpu_seconds": cpu}  # fmt: skip
                    else:
                        run = run_pod(name, world, args, prefix=prefix, env=env, work=mine)
                    run |= {"contender": name, "world": world, "round": rnd, "load": load}
                    run["origin_bytes"] = origin.take()
                    runs.append(run)
                    _print_run(run, model_bytes)
    finally:
        nginx.terminate()
        nginx.wait()

    rows = _summarize(runs, model_bytes)
    table = _table(rows, model_bytes=model_bytes, shards=args.shards, rounds=args.rounds, runs=runs)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"size": size, "shards": args.shards, "rounds": args.rounds, "model_bytes": model_bytes,
            "max_memory": args.max_memory, "cpus": os.cpu_count(),
            "max_load": max((r["load"] for r in runs), default=0.0),
            "time": time.strftime("%FT%TZ", time.gmtime())}  # fmt: skip
    (args.out / "tp_bench.json").write_text(
        json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=2) + "\n"
    )
    (args.out / "tp_bench.txt").write_text(table + "\n")
    _plot(rows, args.out / "tp_bench.png", model_bytes)
    return 0 if all(r["ok"] for r in rows) else 1


def _print_run(run: dict, model_bytes: int) -> None:
    if not run["ok"]:
        print(f"round {run['round']} TP={run['world']} {run['contender']:<11} FAILED ({run})")
        return
    gbs = model_bytes / 1e9 / run["seconds"]
    print(
        f"round {run['round']} TP={run['world']} {run['contender']:<11} {run['seconds']:7.2f}s "
        f"{gbs:5.2f} GB/s  origin {run['origin_bytes'] / model_bytes:5.2f}x  "
        f"cpu {run.get('cpu_seconds', 0):6.2f}s  "
        f"rss {run.get('peak_rss_mib', 0):6.0f} MiB  load {run['load']:4.1f}",
        flush=True,
    )


def _summarize(runs: list[dict], model_bytes: int) -> list[dict]:
    rows = []
    keys = sorted({(r["world"], r["contender"]) for r in runs}, key=lambda k: (k[0], k[1]))
    for world, name in keys:
        good = [r for r in runs if r["world"] == world and r["contender"] == name and r["ok"]]
        if not good:
            rows.append({"world": world, "contender": name, "ok": False})
            continue
        sec = statistics.median(r["seconds"] for r in good)
        rows.append({
            "world": world, "contender": name, "ok": True, "seconds": sec,
            "gb_s": model_bytes / 1e9 / sec,
            "origin_x": statistics.median(r["origin_bytes"] for r in good) / model_bytes,
            "peak_rss_mib": max((r.get("peak_rss_mib", 0.0) for r in good), default=0.0),
            "cpu_seconds": statistics.median(r.get("cpu_seconds", 0.0) for r in good),
        })  # fmt: skip
    return rows


def _table(rows: list[dict], *, model_bytes: int, shards: int, rounds: int, runs) -> str:
    cpus = os.cpu_count()
    lines = [
        f"{model_bytes / MiB:.0f} MiB of safetensors in {shards} shards, nginx on loopback, "
        f"{cpus} CPUs, gloo on CPU, median of {rounds} round(s)",
        f"{'TP':>3} {'contender':<12}{'seconds':>9}{'GB/s':>7}{'origin bytes':>14}"
        f"{'CPU s':>8}{'max rank RSS':>14}{'vs TP=1':>9}{'CPU vs TP=1':>13}",
    ]
    base = {r["contender"]: r for r in rows if r["world"] == 1 and r["ok"]}
    ws1 = base.get("ws-full")
    for r in rows:
        if not r["ok"]:
            lines.append(f"{r['world']:>3} {r['contender']:<12}   failed")
            continue
        ref = base.get("runai")
        if r["contender"].startswith("ws-"):
            ref = base.get("ws-full-4k") if r["contender"].endswith("-4k") else ws1
        vs = f"{r['seconds'] / ref['seconds']:.2f}x" if ref and r["world"] > 1 else "-"
        cpu_vs = (
            f"{r['cpu_seconds'] / ref['cpu_seconds']:.2f}x"
            if ref and r["world"] > 1 and ref["cpu_seconds"]
            else "-"
        )
        rss = f"{r['peak_rss_mib']:.0f} MiB" if r["peak_rss_mib"] else "-"
        lines.append(
            f"{r['world']:>3} {r['contender']:<12}{r['seconds']:9.2f}{r['gb_s']:7.2f}"
            f"{r['origin_x']:13.2f}x{r['cpu_seconds']:8.2f}{rss:>14}{vs:>9}{cpu_vs:>13}"
        )
    loop, runai1 = base.get("loopback"), base.get("runai")
    if ws1 and loop:
        lines.append(f"TP=1: weightstream reaches {loop['seconds'] / ws1['seconds']:.2f}x of "
                     f"the loopback limit (4 curl readers, {loop['gb_s']:.2f} GB/s)")  # fmt: skip
    small = base.get("ws-full-4k")
    if small and loop:
        ratio = loop["seconds"] / small["seconds"]
        lines.append(f"TP=1: weightstream on 4 KiB pages reaches {ratio:.2f}x of the limit")
    if ws1 and runai1:
        lines.append(f"TP=1: weightstream is {runai1['seconds'] / ws1['seconds']:.2f}x "
                     "runai-model-streamer")  # fmt: skip
    busiest = max((r["load"] for r in runs), default=0.0)
    lines.append(f"load average up to {busiest:.1f} on {cpus} CPUs during the run")
    return "\n".join(lines)


def _plot(rows: list[dict], png: Path, model_bytes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["ok"] and r["contender"] != "loopback"]
    worlds = sorted({r["world"] for r in rows})
    names = [n for n in CONTENDERS + SMALL_PAGES if any(r["contender"] == n for r in rows)]
    colors = {"ws-shared": "#2a7ab0", "ws-gloo": "#5b9bc6", "ws-full": "#8fbcd8",
              "runai": "#999999", "runai-dist": "#555555", "ws-shared-4k": "#b0602a",
              "ws-gloo-4k": "#c68f5b", "ws-full-4k": "#d8b48f"}  # fmt: skip
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs, secs, origin = [], [], []
        for j, w in enumerate(worlds):
            r = next((r for r in rows if r["world"] == w and r["contender"] == name), None)
            if r is None and name.startswith(("ws-shared", "ws-gloo")) and w == 1:
                full = "ws-full-4k" if name.endswith("-4k") else "ws-full"
                r = next((r for r in rows if r["world"] == 1 and r["contender"] == full), None)
            if r:
                xs.append(j + i * width)
                secs.append(r["seconds"])
                origin.append(r["origin_x"])
        ax1.bar(xs, secs, width, label=name, color=colors[name])
        bars = ax2.bar(xs, origin, width, label=name, color=colors[name])
        ax2.bar_label(bars, fmt="%.1f", fontsize=7)
    for ax in (ax1, ax2):
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(worlds))])
        ax.set_xticklabels([f"TP={w}" for w in worlds])
    ax1.set_ylabel("seconds until every rank has every tensor")
    ax1.set_title("Time to all ranks loaded")
    ax1.legend(fontsize=8)
    ax2.set_ylabel("origin bytes / model bytes")
    ax2.set_title("Origin bytes per pod")
    fig.suptitle(f"{model_bytes / MiB:.0f} MiB model from nginx on loopback, CPU "
                 f"(shared {os.cpu_count()}-CPU machine)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
