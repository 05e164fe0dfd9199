#!/usr/bin/env python3
"""Stream into CPU tensors through the node cache (issue 12): read-through vs the others.

One run, one nginx origin (path-style S3, ``bench/download_bench.py``'s model, listing and
launcher, with an access log so origin bytes are counted), one synthetic model (default
2 GiB in 4 shards), runai-model-streamer's ``SafetensorsStreamer`` into CPU memory as
vLLM's ``runai_streamer`` loader drives it (``bench/tensors_bench.py``'s child):

(a) runai directly from the origin;
(b) today's preset: the daemon downloads the model (ensure, wait until ready), then runai
    reads the local directory (time = both);
(c) runai through the daemon's S3 endpoint, cold (fresh cache: the pull starts with the
    ensure and runai reads through it); also when the model was published;
(d) the same, warm (the model is published);
(e) runai from the published local directory (the floor);
(f) weightstream's own stream (``streamer.tensors``, what the ``weightstream`` load format
    uses) through the daemon's S3 endpoint, cold;
(g) 4 runai readers at once through a cold daemon (a TP=4 stand-in; ``--readers``):
    origin bytes and each reader's time.

Every runai contender runs with the same settings (``RUNAI_ENV``: what the chart gives
vLLM's main container, plus ``--runai-env NAME=VALUE``), so (a) and (c)/(d) compare the
same client. A contender that fails is a ``FAILED`` row with its error, not the end of
the run.

Times are from the ensure (or the first request) to the last tensor, imports excluded.
The daemon's peak RSS (VmHWM) is reported per daemon. Results: stdout,
``bench/out/readthrough_bench.{json,txt,png}``.

Usage::

    .venv/bin/python bench/readthrough_bench.py                 # 2 GiB, 4 shards
    .venv/bin/python bench/readthrough_bench.py --size 512MiB
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MiB = 1 << 20

from sidecar.client import CacheAPIClient  # noqa: E402
from streamer import StorageSettings  # noqa: E402
from tests.support.ports import LOOPBACK, free_port  # noqa: E402


def _module(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


db = _module("download_bench")
tb = _module("tensors_bench")


def child_runai_local(path: str) -> tuple[int, int]:
    from runai_model_streamer import SafetensorsStreamer

    files = sorted(str(p) for p in Path(path).glob("*.safetensors"))
    n = nbytes = 0
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(files, device="cpu")
        for _, tensor in streamer.get_tensors():
            n += 1
            nbytes += tensor.numel() * tensor.element_size()
    return n, nbytes


class Daemon:
    """``python -m sidecar`` on a fresh cache root with the S3 endpoint on."""

    def __init__(self, work: Path, name: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"rt-{name}-", dir=work))
        self.sock = Path(tempfile.mkdtemp(prefix="wsb", dir="/tmp")) / "d.sock"
        self.s3_port = free_port()
        self.log = open(work / f"daemon-{name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "--cache-root", str(self.root), "--socket",
             str(self.sock), "--listen", "off", "--min-free", "0", "--proof-ttl", "0",
             "--allow-endpoint", f"http://{LOOPBACK}",
             "--s3-listen", f"{LOOPBACK}:{self.s3_port}"],
            cwd=REPO, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    async def ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                async with CacheAPIClient(self.sock) as api:
                    await api._json("GET", "/readyz")
                    return
            except Exception:
                await asyncio.sleep(0.1)
        raise RuntimeError("daemon not ready")

    def peak_rss_mib(self) -> float:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.sock.parent, ignore_errors=True)


async def ensure(d: Daemon, uri: str, origin: str, *, wait: bool) -> tuple[dict, dict]:
    storage = StorageSettings(endpoint_url=origin, region="us-east-1",
                              access_key_id=db.ACCESS_KEY, secret_access_key=db.SECRET_KEY)
    async with CacheAPIClient(d.sock) as api:
        answer = await api.ensure(uri, storage=storage)
        creds = await api.s3_credentials(answer["model"]["id"], grant=answer["grant"],
                                         holder=str(uuid.uuid4()))
        if wait:
            state = await wait_ready(api, answer)
            answer["model"] = state
    return answer, creds


async def published(d: Daemon, answer: dict, t0: float) -> float:
    """Seconds from ``t0`` until the model is published (run beside the readers)."""
    async with CacheAPIClient(d.sock) as api:
        await wait_ready(api, answer)
    return time.perf_counter() - t0


async def wait_ready(api: CacheAPIClient, answer: dict) -> dict:
    last = answer["model"]
    async for state in api.events(answer["model"]["id"], grant=answer["grant"], timeout=300):
        last = state
    if last["state"] != "ready":
        raise RuntimeError(f"pull ended {last['state']}: {last.get('error')}")
    return last


# runai's settings, the same for every contender (from the origin, through the daemon,
# from a local directory): what the chart gives vLLM's main container in the
# stream-through-cache mode (docs/sidecar.md, "runai's settings"). A cold read waits for
# the pull, so the first byte may take long (runai gives up after 1 s by default), and a
# connection past the daemon's cap is answered SlowDown, which runai retries.
RUNAI_ENV = {
    "RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS": "600000",
    "RUNAI_STREAMER_S3_MAX_RETRIES": "30",
}


def env_for(endpoint: str, creds: dict | None, knobs: dict[str, str]) -> dict[str, str]:
    env = tb.child_env(endpoint)
    if creds is not None:
        env.update({"AWS_ACCESS_KEY_ID": creds["access_key_id"],
                    "AWS_SECRET_ACCESS_KEY": creds["secret_access_key"]})
    env["PYTHONPATH"] = str(REPO)
    env.update(knobs)
    return env


async def child(name: str, url: str, prefix: str, env: dict, log: Path,
                local: str | None = None) -> dict:
    """Run a contender in its own process; its JSON line (tensors, bytes, seconds)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--url", url,
            "--prefix", prefix] + (["--local", local] if local else [])
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=out,
                                                    stderr=subprocess.STDOUT)
        try:
            rc = await asyncio.wait_for(proc.wait(), 900)
        except TimeoutError:
            proc.kill()
            rc = await proc.wait()
    result = tb._last_json(log)
    if rc != 0 or not result:
        # One failed contender is a row of the table, not the end of the run.
        last = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        print(f"    {name} FAILED (rc {rc}): {last[0][:200]} (see {log})", flush=True)
        return {"error": f"rc {rc}: {last[0][:300]}", "log": str(log)}
    return result


def origin_bytes(access_log: Path, prefix: str) -> int:
    total = 0
    for line in access_log.read_text().splitlines():
        uri, _, sent = line.rpartition(" ")
        if f"/{prefix}/" in uri and ".safetensors" in uri and sent.isdigit():
            total += int(sent)
    return total


def _secs(r: dict, add: float = 0.0) -> float | None:
    """A contender's seconds (plus ``add``), None when it failed."""
    return None if "error" in r else add + r["seconds"]


def _fmt(sec: float | None) -> str:
    return "FAILED" if sec is None else f"{sec:.2f}s"


async def scenarios(args, url: str, prefix: str, work: Path, access_log: Path,
                    shard_bytes: int) -> dict:
    uri = f"s3://models/{prefix}"
    knobs = dict(RUNAI_ENV, **args.runai_env)
    out: dict = {"runai_env": knobs}
    logs = work / "logs"
    logs.mkdir(exist_ok=True)

    def mark() -> int:
        return origin_bytes(access_log, prefix)

    def failed(r: dict) -> dict:
        return {"error": r["error"], "log": r["log"]} if "error" in r else {}

    # (a) runai directly from the origin
    r = await child("runai", url, prefix, env_for(url, None, knobs), logs / "a.log")
    out["a_runai_origin"] = {"seconds": _secs(r), **failed(r)}
    print(f"(a) runai from the origin: {_fmt(_secs(r))}", flush=True)

    # (b) today's preset: daemon download, then runai from the local directory
    d = Daemon(work, "b")
    try:
        await d.ready()
        t0 = time.perf_counter()
        answer, _ = await ensure(d, uri, url, wait=True)
        pulled = time.perf_counter() - t0
        local = answer["model"]["path"]
        r = await child("runai-local", url, prefix, env_for(url, None, knobs), logs / "b.log",
                        local)
        out["b_preset"] = {"seconds": _secs(r, pulled), "pull_s": pulled,
                           "local_s": _secs(r), "daemon_rss_mib": d.peak_rss_mib(), **failed(r)}
        print(f"(b) preset: pull {pulled:.2f}s + local {_fmt(_secs(r))}", flush=True)
        # (e) runai from the published directory (the floor)
        r = await child("runai-local", url, prefix, env_for(url, None, knobs), logs / "e.log",
                        local)
        out["e_runai_local"] = {"seconds": _secs(r), **failed(r)}
        print(f"(e) runai from a local directory: {_fmt(_secs(r))}", flush=True)
    finally:
        d.stop()

    @contextlib.asynccontextmanager
    async def cold(name: str):
        """A fresh daemon with the model ensured, not waited for: ``(daemon, creds, setup
        seconds, done)``; ``await done()`` gives (published seconds, origin ratio)."""
        d = Daemon(work, name)
        try:
            await d.ready()
            before = mark()
            t0 = time.perf_counter()
            answer, creds = await ensure(d, uri, url, wait=False)
            setup = time.perf_counter() - t0
            pub = asyncio.create_task(published(d, answer, t0))

            async def done() -> tuple[float, float]:
                return await pub, (mark() - before) / shard_bytes

            yield d, creds, setup, done
        finally:
            d.stop()

    # (c) runai through the daemon, cold; (d) warm
    async with cold("c") as (d, creds, setup, done):
        r = await child("runai", d.endpoint, prefix, env_for(d.endpoint, creds, knobs),
                        logs / "c.log")
        pub_s, ratio = await done()
        out["c_runai_daemon_cold"] = {"seconds": _secs(r, setup), "published_s": pub_s,
                                      "origin_ratio": ratio,
                                      "daemon_rss_mib": d.peak_rss_mib(), **failed(r)}
        print(f"(c) runai through the daemon, cold: {_fmt(_secs(r, setup))} (published "
              f"{pub_s:.2f}s after the ensure, origin {ratio:.2f}x)", flush=True)
        r = await child("runai", d.endpoint, prefix, env_for(d.endpoint, creds, knobs),
                        logs / "d.log")
        out["d_runai_daemon_warm"] = {"seconds": _secs(r), "daemon_rss_mib": d.peak_rss_mib(),
                                      **failed(r)}
        print(f"(d) runai through the daemon, warm: {_fmt(_secs(r))}", flush=True)

    # (f) weightstream's stream through the daemon, cold
    async with cold("f") as (d, creds, setup, done):
        r = await child("weightstream", d.endpoint, prefix, env_for(d.endpoint, creds, knobs),
                        logs / "f.log")
        _, ratio = await done()
        out["f_weightstream_daemon_cold"] = {"seconds": _secs(r, setup), "origin_ratio": ratio,
                                             "daemon_rss_mib": d.peak_rss_mib(), **failed(r)}
        print(f"(f) weightstream through the daemon, cold: {_fmt(_secs(r, setup))}",
              flush=True)

    # (g) N runai readers of one cold model at once
    async with cold("g") as (d, creds, setup, done):
        results = await asyncio.gather(*(
            child("runai", d.endpoint, prefix, env_for(d.endpoint, creds, knobs),
                  logs / f"g{i}.log")
            for i in range(args.readers)))
        _, ratio = await done()
        out["g_cold_readers"] = {"seconds": [_secs(x, setup) for x in results],
                                 "errors": [x["error"] for x in results if "error" in x],
                                 "origin_ratio": ratio, "daemon_rss_mib": d.peak_rss_mib()}
        g = out["g_cold_readers"]
        print(f"(g) {args.readers} cold readers: {', '.join(_fmt(x) for x in g['seconds'])}, "
              f"origin {g['origin_ratio']:.2f}x", flush=True)
    return out


def _ratio(x: float | None, y: float | None) -> str:
    return "n/a" if x is None or y is None else f"{x / y:.2f}x"


def table(res: dict, meta: dict) -> str:
    a = res["a_runai_origin"]["seconds"]
    b = res["b_preset"]["seconds"]
    c = res["c_runai_daemon_cold"]
    d = res["d_runai_daemon_warm"]["seconds"]
    e = res["e_runai_local"]["seconds"]
    f = res["f_weightstream_daemon_cold"]
    g = res["g_cold_readers"]
    ok = [x for x in g["seconds"] if x is not None]
    slowest = max(ok) if len(ok) == len(g["seconds"]) else None
    rss = max(v.get("daemon_rss_mib", 0) for v in res.values() if isinstance(v, dict))
    gb = meta["shard_bytes"] / 1e9
    rows = [
        ("(a) runai from the origin", a, ""),
        ("(b) preset: daemon pull, then runai local", b,
         f"pull {res['b_preset']['pull_s']:.2f}s + local {_fmt(res['b_preset']['local_s'])}"),
        ("(c) runai through the daemon, cold", c["seconds"],
         f"{_ratio(c['seconds'], a)} (a), {_ratio(c['seconds'], b)} (b); origin "
         f"{c['origin_ratio']:.2f}x; published {c['published_s']:.2f}s after the ensure"),
        ("(d) runai through the daemon, warm", d,
         f"{_ratio(e, d)} the throughput of (e)"),
        ("(e) runai from a local directory", e, "floor"),
        ("(f) weightstream stream via daemon, cold", f["seconds"],
         f"{_ratio(f['seconds'], a)} (a); origin {f['origin_ratio']:.2f}x"),
        (f"(g) {len(g['seconds'])} runai readers via daemon, cold", slowest,
         f"each {', '.join(_fmt(x) for x in g['seconds'])}; origin "
         f"{g['origin_ratio']:.2f}x; slowest {_ratio(slowest, c['seconds'])} (c)"),
    ]
    knobs = " ".join(f"{k}={v}" for k, v in sorted(res["runai_env"].items()))
    lines = [f"{meta['shard_bytes'] / MiB:.0f} MiB of safetensors in {meta['shards']} shards, "
             f"nginx on loopback, {meta['cpus']} CPUs, one run; load average up to "
             f"{meta['max_load']:.1f} (a machine shared with seven other engineers)",
             f"runai's settings, every contender: {knobs}",
             f"{'scenario':<44}{'seconds':>9}{'GB/s':>7}  notes"]
    for name, sec, note in rows:
        if sec is None:
            lines.append(f"{name:<44}{'FAILED':>9}{'':>7}  {note}")
        else:
            lines.append(f"{name:<44}{sec:9.2f}{gb / sec:7.2f}  {note}")
    for key, v in res.items():
        if isinstance(v, dict) and v.get("error"):
            lines.append(f"{key} failed: {v['error']} ({v['log']})")
    for err in g.get("errors", []):
        lines.append(f"a (g) reader failed: {err}")
    lines.append(f"daemon peak RSS (VmHWM, any scenario): {rss:.0f} MiB")
    return "\n".join(lines)


def plot(res: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["(a) origin", "(b) preset", "(c) daemon cold", "(d) daemon warm", "(e) local",
             "(f) ws cold", "(g) 4 cold (max)"]
    g = res["g_cold_readers"]["seconds"]
    secs = [res["a_runai_origin"]["seconds"], res["b_preset"]["seconds"],
            res["c_runai_daemon_cold"]["seconds"], res["d_runai_daemon_warm"]["seconds"],
            res["e_runai_local"]["seconds"], res["f_weightstream_daemon_cold"]["seconds"],
            None if None in g else max(g)]
    names[-1] = f"(g) {len(g)} cold (max)"
    secs = [0.0 if x is None else x for x in secs]  # a failed contender: an empty bar
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(names[::-1], secs[::-1], color="#4a7bb7")
    ax.set_xlabel("seconds to CPU tensors (lower is better)")
    ax.set_title(title, fontsize=9)
    for i, s in enumerate(secs[::-1]):
        ax.text(s, i, f" {s:.2f}s" if s else " FAILED", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_child(args: argparse.Namespace) -> int:
    if args.child == "runai-local":
        import runai_model_streamer  # noqa: F401
        import torch  # noqa: F401

        start = time.perf_counter()
        n, nbytes = child_runai_local(args.local)
        print(json.dumps({"tensors": n, "bytes": nbytes,
                          "seconds": time.perf_counter() - start}))
        return 0
    ns = argparse.Namespace(url=args.url, prefix=args.prefix, child=args.child,
                            max_memory=512 * MiB, concurrency=16, chunk_size=8 * MiB)
    return tb.run_child(args.child, ns)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="2GiB")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--readers", type=int, default=4, help="cold readers at once in (g)")
    p.add_argument("--runai-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a RUNAI_STREAMER_* setting for every runai contender (repeatable; "
                        "on top of the chart's, RUNAI_ENV)")
    p.add_argument("--work", type=Path, default=REPO / ".work" / "bench")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    p.add_argument("--child", choices=("runai", "weightstream", "runai-local"),
                   help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--local", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.runai_env = dict(kv.split("=", 1) for kv in args.runai_env)
    if args.child:
        return run_child(args)
    size = db.parse_size(args.size)
    prefix = f"bench-{size // MiB}m-{args.shards}s"
    work = args.work.resolve()
    root = work / "origin"
    db.generate_model(root / db.BUCKET / prefix, size=size, shards=args.shards)
    mine = work / "readthrough"
    mine.mkdir(parents=True, exist_ok=True)
    list_file = mine / "list.xml"
    objects = db.write_listing(root, db.BUCKET, prefix, list_file)
    shard_bytes = sum(s for k, s in objects if k.endswith(".safetensors"))
    access_log = mine / "nginx" / "access.log"
    db.NGINX_CONF = db.NGINX_CONF.replace(
        "access_log off;", "log_format bytes '$request_uri $body_bytes_sent'; "
        f"access_log {access_log} bytes;")
    nginx, url = db.start_nginx(mine, root, list_file)
    print(f"origin: nginx at {url}, s3://models/{prefix} ({shard_bytes / MiB:.0f} MiB of shards)")
    loads: list[float] = []
    try:
        started = time.time()
        res = asyncio.run(scenarios(args, url, prefix, mine, access_log, shard_bytes))
        loads.append(os.getloadavg()[0])
    finally:
        nginx.terminate()
        nginx.wait()
    meta = {"size": size, "shards": args.shards, "shard_bytes": shard_bytes,
            "cpus": os.cpu_count(), "max_load": max([*loads, os.getloadavg()[0]]),
            "time": time.strftime("%FT%TZ", time.gmtime(started))}
    text = table(res, meta)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "readthrough_bench.json").write_text(
        json.dumps({"meta": meta, "results": res}, indent=2) + "\n")
    (args.out / "readthrough_bench.txt").write_text(text + "\n")
    plot(res, args.out / "readthrough_bench.png",
         f"runai into CPU tensors, {shard_bytes / MiB:.0f} MiB, nginx origin (shared machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
