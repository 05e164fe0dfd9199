"""Fleet simulation: origin bytes and time to ready when a model rolls out to 1..1,000 nodes.

Run (from the repository root)::

    .venv/bin/python bench/fleet_sim.py                      # the table in bench/README.md
    .venv/bin/python bench/fleet_sim.py --node-counts 1,20 --rollout-models 1 --no-plot

A fleet of ``--fleet-nodes`` nodes and a catalog of ``--models`` models (sizes lognormal
around ``--size-median``); for each node count, the catalog's quartile models (25th, 50th,
75th percentile of size, ``--rollout-models`` of them) are rolled out to that many nodes
with each strategy:

* ``kserve-initializer``: KServe's storage initializer, every pod downloads the whole model
  from the origin (pods per node from the model size and the GPUs);
* ``kserve-localmodelcache``: KServe LocalModelCache, one download per node;
* ``weightstream``: the node cache without peers (one pull per node, read-through start);
* ``weightstream-peers``: the node cache with the swarm rule of ``sidecar.peers.swarm``.

The model (flows, shared resources, the swarm and fallback rules, what is simplified) is
described in ``bench/fleet_model.py``. Output: a table on stdout, ``fleet_sim.json`` and
``fleet_sim.png`` in ``--out`` (and the PNG copied to ``--docs-img``). The targets of issue
16 for weightstream with peers are checked and printed: origin bytes per rollout <= 1.1x
the model, time to ready at the largest node count <= 2x the time at 1 node.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from fleet_model import STRATEGIES, Model, Params, Ranges, node_names, simulate, weights_table

from sidecar.peers.service import FRESH_SECONDS, POLL_SECONDS
from streamer.sizes import parse_size

ORIGIN_TARGET = 1.1
TIME_TARGET = 2.0


def _rate(text: str) -> float:
    """``10G`` (bytes per second, decimal units) or ``0``."""
    return float(parse_size(text.removesuffix("/s"), name="rate"))


def _params(args: argparse.Namespace) -> Params:
    return Params(
        origin_bw=_rate(args.origin_bw), nic_bw=_rate(args.nic_bw), disk_bw=_rate(args.disk_bw),
        load_bw=_rate(args.load_bw), stream_bw=_rate(args.stream_bw), window=args.window,
        initializer_bw=_rate(args.initializer_bw), initializer_window=args.initializer_window,
        range_size=parse_size(args.range_size), shard_size=parse_size(args.shard_size),
        peer_rate=_rate(args.peer_rate), peer_rate_per_peer=_rate(args.peer_rate_per_peer),
        peer_failure_rate=args.peer_failure_rate, stall_timeout=args.stall_timeout,
        reshare=args.reshare, inflight=args.inflight, holder=args.holder, join=args.join,
        join_window=args.join_window,
        fallback=args.fallback, sample=args.sample, sample_rounds=args.sample_rounds,
        runner_up=args.runner_up, members_max=args.members_max, repick=args.repick,
        order=args.order,
        start_spread=args.start_spread,
        gpus_per_node=args.gpus_per_node, gpu_mem=parse_size(args.gpu_mem),
    )


def catalog(args: argparse.Namespace, rng: np.random.Generator) -> list[Model]:
    """``--models`` models; sizes lognormal, clipped to [1 GB, --size-max]."""
    median = parse_size(args.size_median)
    sizes = np.clip(rng.lognormal(np.log(median), args.size_sigma, args.models),
                    1e9, parse_size(args.size_max))
    return [Model(f"model-{i:03d}", f"v{i:03d}-{int(s):x}", int(s)) for i, s in enumerate(sizes)]


def rollout_models(models: list[Model], count: int) -> list[Model]:
    """The catalog's models at evenly spaced size quantiles (25/50/75 % for three)."""
    ranked = sorted(models, key=lambda m: m.size)
    picks = [round((k + 1) / (count + 1) * (len(ranked) - 1)) for k in range(count)]
    return [ranked[i] for i in picks]


def run(args: argparse.Namespace) -> dict:
    params = _params(args)
    rng = np.random.default_rng(args.seed)
    models = rollout_models(catalog(args, rng), args.rollout_models)
    counts = sorted({int(c) for c in args.node_counts.split(",")})
    strategies = args.strategies.split(",")
    members = node_names(max(counts))
    rows: list[dict] = []
    for k, model in enumerate(models):
        table = None
        if "weightstream-peers" in strategies:
            t0 = time.process_time()
            table = weights_table(model, Ranges.plan(model, params), members)
            print(f"# {model.name} {model.size / 1e9:.1f} GB: swarm weights for "
                  f"{len(members)} daemons in {time.process_time() - t0:.1f} s CPU",
                  file=sys.stderr)
        for strategy in strategies:
            for n in counts:
                result = simulate(strategy, model, n, params, np.random.default_rng(
                    [args.seed, n, k]), table=table, members=members)
                rows.append({
                    "strategy": strategy, "nodes": n, "model": model.name,
                    "model_bytes": model.size, "origin_ratio": result.origin_ratio,
                    "peer_ratio": result.peer_bytes / model.size,
                    "time_to_ready_s": result.time_to_ready,
                    "median_ready_s": float(np.median(result.ready)),
                    "fallbacks": result.fallbacks,
                })
    return {"params": asdict(params), "node_counts": counts, "strategies": strategies,
            "models": [asdict(m) for m in models], "rows": rows}


def summarise(report: dict) -> list[dict]:
    """Per (strategy, node count): the worst and median model."""
    out = []
    for strategy in report["strategies"]:
        base = {r["model"]: r["time_to_ready_s"] for r in report["rows"]
                if r["strategy"] == strategy and r["nodes"] == report["node_counts"][0]}
        for n in report["node_counts"]:
            rows = [r for r in report["rows"] if r["strategy"] == strategy and r["nodes"] == n]
            slow = [r["time_to_ready_s"] / base[r["model"]] for r in rows]
            out.append({
                "strategy": strategy, "nodes": n,
                "origin_median": statistics.median(r["origin_ratio"] for r in rows),
                "origin_max": max(r["origin_ratio"] for r in rows),
                "ready_median_s": statistics.median(r["time_to_ready_s"] for r in rows),
                "slowdown_max": max(slow),
            })
    return out


def print_table(report: dict, summary: list[dict]) -> None:
    sizes = ", ".join(f"{m['size'] / 1e9:.0f}" for m in report["models"])
    print(f"models rolled out: {sizes} GB; time to ready = the slowest node, from its start "
          "to its pods ready")
    print("| strategy | nodes | origin bytes / model (median, max) | time to ready s (median) "
          "| slowdown vs 1 node (max) |")
    print("|---|---:|---:|---:|---:|")
    for s in summary:
        print(f"| {s['strategy']} | {s['nodes']} | {s['origin_median']:.2f}x, "
              f"{s['origin_max']:.2f}x | {s['ready_median_s']:.0f} | {s['slowdown_max']:.2f}x |")


def check_targets(summary: list[dict]) -> list[str]:
    """The issue's targets for weightstream with peers; one line each, MET or MISSED."""
    peers = [s for s in summary if s["strategy"] == "weightstream-peers"]
    if not peers:
        return []
    origin = max(s["origin_max"] for s in peers)
    slow = peers[-1]["slowdown_max"]
    return [
        f"{'MET' if origin <= ORIGIN_TARGET else 'MISSED'}: origin bytes per rollout "
        f"<= {ORIGIN_TARGET}x the model (worst {origin:.2f}x)",
        f"{'MET' if slow <= TIME_TARGET else 'MISSED'}: time to ready at {peers[-1]['nodes']} "
        f"nodes <= {TIME_TARGET}x the time at {peers[0]['nodes']} (worst {slow:.2f}x)",
    ]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    median_model = report["models"][len(report["models"]) // 2]
    for strategy in report["strategies"]:
        rows = [r for r in report["rows"]
                if r["strategy"] == strategy and r["model"] == median_model["name"]]
        xs = [r["nodes"] for r in rows]
        ax1.plot(xs, [r["origin_ratio"] for r in rows], marker="o", label=strategy)
        ax2.plot(xs, [r["time_to_ready_s"] for r in rows], marker="o", label=strategy)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes in the rollout")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("origin bytes / model size")
    ax2.set_ylabel("time to ready, last node (s)")
    ax1.axhline(ORIGIN_TARGET, color="grey", linestyle=":", linewidth=1)
    ax1.legend(fontsize=8)
    p = report["params"]
    fig.suptitle(
        f"fleet_sim: {median_model['size'] / 1e9:.0f} GB model; origin {p['origin_bw'] / 1e9:g}"
        f" GB/s, NIC {p['nic_bw'] / 1e9:g} GB/s, disk {p['disk_bw'] / 1e9:g} GB/s, "
        f"peer failures {p['peer_failure_rate']:g}/read", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fleet = ap.add_argument_group("fleet and models")
    fleet.add_argument("--node-counts", default="1,10,100,1000")
    fleet.add_argument("--models", type=int, default=300, help="models in the catalog")
    fleet.add_argument("--rollout-models", type=int, default=1,
                       help="catalog models rolled out per point (size quantiles)")
    fleet.add_argument("--size-median", default="30GB")
    fleet.add_argument("--size-sigma", type=float, default=1.0, help="lognormal sigma")
    fleet.add_argument("--size-max", default="800GB")
    fleet.add_argument("--shard-size", default="5GB", help="safetensors shard size")
    fleet.add_argument("--gpus-per-node", type=int, default=8)
    fleet.add_argument("--gpu-mem", default="80GB")
    fleet.add_argument("--start-spread", type=float, default=5.0,
                       help="node start times uniform in [0, this] seconds")
    fleet.add_argument("--strategies", default=",".join(STRATEGIES))
    net = ap.add_argument_group("bandwidth (bytes/s, decimal units: 10G = 10 GB/s)")
    net.add_argument("--origin-bw", default="10G", help="the object store's total egress")
    net.add_argument("--nic-bw", default="12.5G", help="per node, each direction (100 GbE)")
    net.add_argument("--disk-bw", default="6G", help="per node, NVMe write")
    net.add_argument("--load-bw", default="5G", help="per node, weights into GPU memory")
    net.add_argument("--stream-bw", default="250M", help="one ranged GET from the origin")
    net.add_argument("--initializer-bw", default="500M",
                     help="one KServe storage-initializer download (per pod or per node job)")
    engine = ap.add_argument_group("daemon")
    engine.add_argument("--window", type=int, default=16, help="ranges in flight per daemon")
    engine.add_argument("--initializer-window", type=int, default=4,
                        help="the initializer's files at a time")
    engine.add_argument("--range-size", default="32MiB")
    engine.add_argument("--peer-rate", default="0",
                        help="per-daemon cap on bytes/s served to peers (0: NIC only)")
    engine.add_argument("--peer-rate-per-peer", default="0",
                        help="cap per (serving daemon, reader) pair (0: none)")
    engine.add_argument("--peer-failure-rate", type=float, default=0.001,
                        help="probability that one peer range read fails (then: origin)")
    engine.add_argument("--stall-timeout", type=float, default=10.0,
                        help="seconds a request waits on the owner before the origin")
    engine.add_argument("--reshare", choices=("file", "range", "version"), default="range",
                        help="what a daemon serves to peers: any range it has (range, as "
                             "the daemon does: peers verify), origin ranges at once and "
                             "peer ranges once their file verified (file), or only a "
                             "complete version")
    engine.add_argument("--no-inflight", dest="inflight", action="store_false",
                        help="readers do not wait for a range a peer reads from the origin")
    engine.add_argument("--holder", choices=("rank", "random"), default="random",
                        help="which of several holders a reader asks")
    engine.add_argument("--order", choices=("owned-first", "file"), default="owned-first")
    engine.add_argument("--join", choices=("member", "reader"), default="member",
                        help="late joiners become swarm members, or only read")
    engine.add_argument("--join-window", type=float, default=1.0,
                        help="--join reader: members are the daemons started this soon")
    engine.add_argument("--fallback", choices=("origin", "peer"), default="peer",
                        help="after a failed peer read: one other peer first, then the "
                             "origin (peer, as the daemon does), or the origin at once")
    engine.add_argument("--sample", type=int, default=8,
                        help="peers whose holdings a reader knows per request, drawn at "
                             "random among the daemons the tracker lists (the daemon's "
                             "--peer-sample); 0: every daemon")
    engine.add_argument("--sample-rounds", type=int,
                        default=round(FRESH_SECONDS / POLL_SECONDS),
                        help="samples a reader's knowledge is the union of (a status is "
                             "kept FRESH_SECONDS, polled every POLL_SECONDS); 1: K peers only")
    engine.add_argument("--no-runner-up", dest="runner_up", action="store_false",
                        help="an owner that knows no holder reads from the origin at once "
                             "(default: it asks the member ranked next first)")
    engine.add_argument("--members-max", type=int, default=0,
                        help="swarm members: the earliest this many daemons pulling "
                             "(0: every daemon pulling)")
    engine.add_argument("--repick", action="store_true",
                        help="requests waiting on a peer pick a source again whenever the "
                             "members change (the daemon does not)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    ap.add_argument("--docs-img", type=Path, default=Path("docs/img/fleet_sim.png"))
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.process_time()
    report = run(args)
    summary = report["summary"] = summarise(report)
    report["targets"] = check_targets(summary)
    report["cpu_s"] = time.process_time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet_sim.json").write_text(json.dumps(report, indent=1))
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report, summary)
        for line in report["targets"]:
            print(line)
        print(f"simulation CPU time: {report['cpu_s']:.0f} s")
    if not args.no_plot:
        png = args.out / "fleet_sim.png"
        plot(report, png)
        if args.docs_img:
            args.docs_img.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, args.docs_img)
    return 0


if __name__ == "__main__":
    sys.exit(main())
