"""Node cache benchmark: one pull per node, and the warm-hit latency of the init container.

Run (from the repository root)::

    .venv/bin/python bench/cache_bench.py                 # defaults: 256 MiB model, 8 pods
    .venv/bin/python bench/cache_bench.py --size 1GiB --pods 8 --json

Scenarios (all on loopback; the origin is our S3 path-style test origin as a separate
process, the daemon is ``python -m sidecar`` as a separate process):

1. **8 pods, one model, at once.** Every simulated pod runs the init container's
   :class:`~initcontainer.cacheclient.DaemonClient` (``provide`` in link mode) at the same
   moment. Reported: bytes read from the origin (target: exactly 1x the model) and the
   time until every pod's ``/mnt/models`` is ready. Baseline: the same pods each
   downloading directly (``streamer.download``), which reads the model 8 times (as the
   stock KServe initializer does, one copy per pod).
2. **Warm hit.** A model of 100 shards already in the cache; time from the start of
   ``DaemonClient.provide`` (a fresh client, as a new init container would build) to a
   ready destination, for two model sizes (target <= 50 ms, independent of size). Two
   cases: ``cached`` -- the same credentials proved access within ``--proof-ttl`` (pods
   of one deployment sharing a Secret); ``listed`` -- the daemon lists the source with
   the requester's credentials on every request (``--proof-ttl 0``); ``new-creds`` --
   different credentials each time (per-pod session tokens): the daemon also builds an
   S3 client for them before listing.

Simulated pods are asyncio tasks in this process (each with its own client, session and
destination); the daemon and the origin are real processes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from initcontainer.cacheclient import DaemonClient  # noqa: E402
from streamer import DownloadOptions, StorageSettings, download, synth  # noqa: E402
from streamer.sizes import format_size, parse_size  # noqa: E402
from tests.support.origin import start_origin_process  # noqa: E402
from tests.support.ports import LOOPBACK, free_port, wait_http  # noqa: E402
from tests.support.process import clean_env  # noqa: E402


def storage_for(url: str) -> StorageSettings:
    return StorageSettings(endpoint_url=url, region="us-east-1", access_key_id="bench",
                           secret_access_key="bench")


def origin_bytes(origin, name: str) -> int:
    return sum(r.bytes_sent for r in origin.requests(method="GET", path=f"models/{name}/*"))


class Daemon:
    def __init__(self, work: Path, *flags: str) -> None:
        self.root = work / "cache"
        self.socket = work / "d.sock"
        self.port = free_port()
        self.log = open(work / "daemon.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "--cache-root", str(self.root), "--socket",
             str(self.socket), "--listen", f"{LOOPBACK}:{self.port}", "--min-free", "0",
             "--allow-endpoint", f"http://{LOOPBACK}", *flags],  # the origin is on loopback
            env=clean_env(), cwd=REPO, stdout=self.log, stderr=self.log)
        wait_http(f"http://{LOOPBACK}:{self.port}/readyz", timeout=60, proc=self.proc)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()


async def pods_scenario(origin, work: Path, name: str, pods: int, size: int) -> dict:
    storage = storage_for(origin.url)
    uri = f"s3://models/{name}"
    # Baseline: every pod downloads the model itself.
    origin.clear_log()
    t0 = time.monotonic()
    await asyncio.gather(*(download(uri, work / f"direct-{i}", storage=storage,
                                    options=DownloadOptions()) for i in range(pods)))
    direct_s = time.monotonic() - t0
    direct_bytes = origin_bytes(origin, name)
    for i in range(pods):
        shutil.rmtree(work / f"direct-{i}")
    # Node cache: every pod asks the daemon at once.
    daemon = Daemon(work)
    try:
        origin.clear_log()
        t0 = time.monotonic()
        clients = [DaemonClient(str(daemon.socket), mode="link", pod_uid=f"pod-{i}")
                   for i in range(pods)]
        ok = await asyncio.gather(*(c.provide(uri, work / f"mnt-{i}", storage=storage,
                                              include=(), exclude=()) for i, c in
                                    enumerate(clients)))
        cache_s = time.monotonic() - t0
        assert all(ok), ok
        cache_bytes = origin_bytes(origin, name)
    finally:
        daemon.stop()
    return {"model_bytes": size, "pods": pods,
            "direct": {"origin_bytes": direct_bytes, "x_model": direct_bytes / size,
                       "all_ready_s": direct_s},
            "cache": {"origin_bytes": cache_bytes, "x_model": cache_bytes / size,
                      "all_ready_s": cache_s}}


async def warm_scenario(origin, work: Path, dst_dir: Path, names: list[tuple[str, int]],
                        runs: int) -> list:
    storage = storage_for(origin.url)
    results = []
    cold: dict[str, float] = {}

    async def measure(daemon: Daemon, name: str, size: int, proof: str) -> None:
        uri = f"s3://models/{name}"
        origin.clear_log()
        times = []
        for i in range(runs):
            creds = storage
            if proof == "new-creds":  # the daemon builds an S3 client for them, then lists
                creds = dataclasses.replace(storage, access_key_id=f"{name}-pod-{i}")
            client = DaemonClient(str(daemon.socket), pod_uid=f"{proof}-{i}")
            dst = dst_dir / f"{name}-{proof}-{i}"
            t0 = time.monotonic()
            assert await client.provide(uri, dst, storage=creds, include=(), exclude=())
            times.append(time.monotonic() - t0)
        times.sort()
        results.append({
            "model": name, "model_bytes": size, "proof": proof, "cold_s": cold[name],
            "files": sum(1 for _ in (dst_dir / f"{name}-{proof}-0").iterdir()),
            "warm_median_ms": statistics.median(times) * 1e3,
            "warm_p95_ms": times[int(0.95 * (len(times) - 1))] * 1e3,
            "warm_max_ms": times[-1] * 1e3,
            "origin_bytes_during_warm": origin_bytes(origin, name)})

    daemon = Daemon(work)
    try:
        for name, _ in names:
            t0 = time.monotonic()
            assert await DaemonClient(str(daemon.socket), pod_uid="cold").provide(
                f"s3://models/{name}", work / f"{name}-cold", storage=storage, include=(),
                exclude=())
            cold[name] = time.monotonic() - t0
        for name, size in names:
            await measure(daemon, name, size, "cached")
            await measure(daemon, name, size, "new-creds")
    finally:
        daemon.stop()
    # Same cache root (it survives the restart), proofs never reused: every hit lists.
    daemon = Daemon(work, "--proof-ttl", "0")
    try:
        for name, size in names:
            await measure(daemon, name, size, "listed")
    finally:
        daemon.stop()
    return sorted(results, key=lambda r: (r["model"], ["cached", "listed", "new-creds"]
                                          .index(r["proof"])))


def print_tables(pods: dict, warm: list) -> None:
    print(f"\n8-pods scenario: {pods['pods']} pods, model {format_size(pods['model_bytes'])}")
    print(f"{'path':<28}{'origin bytes':>16}{'x model':>9}{'all ready':>12}")
    for label, key in (("direct download per pod", "direct"), ("node cache (DaemonClient)",
                                                                  "cache")):
        r = pods[key]
        print(f"{label:<28}{format_size(r['origin_bytes']):>16}{r['x_model']:>9.2f}"
              f"{r['all_ready_s']:>11.2f}s")
    print("\nwarm hit: DaemonClient.provide -> ready destination (link mode)")
    print(f"{'model':<14}{'proof':<10}{'files':>6}{'size':>12}{'cold pull':>11}{'median':>10}"
          f"{'p95':>10}{'max':>10}{'origin data':>13}")
    for r in warm:
        print(f"{r['model']:<14}{r['proof']:<10}{r['files']:>6}{format_size(r['model_bytes']):>12}"
              f"{r['cold_s']:>10.2f}s{r['warm_median_ms']:>8.1f}ms{r['warm_p95_ms']:>8.1f}ms"
              f"{r['warm_max_ms']:>8.1f}ms{format_size(r['origin_bytes_during_warm']):>13}")


async def main_async(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="wsb", dir=args.workdir))
    try:
        origin_root = work / "origin"
        size = parse_size(args.size)
        shared = synth.generate(synth.sized(size, shards=8), origin_root / "models" / "shared")
        small = synth.generate(synth.sized(parse_size(args.warm_small), shards=100),
                               origin_root / "models" / "shards100-s")
        large = synth.generate(synth.sized(parse_size(args.warm_large), shards=100),
                               origin_root / "models" / "shards100-l")
        with start_origin_process(origin_root) as origin:
            pods = await pods_scenario(origin, work, "shared", args.pods, shared.file_bytes)
            dst_dir = Path(tempfile.mkdtemp(prefix="wsb", dir=args.dst_dir))
            try:
                models = [("shards100-s", small.file_bytes),
                          ("shards100-l", large.file_bytes)]
                warm = await warm_scenario(origin, work, dst_dir, models, args.runs)
            finally:
                shutil.rmtree(dst_dir, ignore_errors=True)
        return {"pods": pods, "warm": warm}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="256Mi", help="model size for the pods scenario")
    p.add_argument("--pods", type=int, default=8)
    p.add_argument("--warm-small", default="25Mi", help="100-shard model, small")
    p.add_argument("--warm-large", default="400Mi", help="100-shard model, large")
    p.add_argument("--runs", type=int, default=20, help="warm hits measured per model")
    p.add_argument("--workdir", default="/tmp", help="where models and the cache live")
    p.add_argument("--dst-dir", default="/dev/shm" if Path("/dev/shm").is_dir() else "/tmp",
                   help="where the warm-hit destinations (the pods' /mnt/models) are made "
                        "(default /dev/shm: an emptyDir on a node's local disk links in "
                        "microseconds; this VM's root disk takes ~0.3 ms per symlink)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = p.parse_args()
    results = asyncio.run(main_async(args))
    print_tables(results["pods"], results["warm"])
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
