"""N daemons against an origin behind a rate-limited link: what peers change (issue 16).

The origin (``tests.support.origin``, CRC64NVME checksums so peer reads are allowed) runs
in a network namespace this script makes, ``ws-fleet``, reached over a veth pair whose
origin side is shaped with ``tc tbf`` (``--rate``); the daemons run on this host's
loopback and reach each other there, unshaped. Each round starts N fresh daemons, ensures
one model on all of them at once and waits until every one is ready: time to ready (the
slowest) and origin bytes (counted by the origin), for N = 1 and N = ``--nodes``, with
and without peers. Needs root (``ip netns``, ``tc``); removes the namespace on exit.

    sudo .venv/bin/python bench/fleet_netns.py --size 64Mi --rate 200mbit --nodes 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamer import synth  # noqa: E402
from streamer.sizes import parse_size  # noqa: E402
from tests.sidecar.conftest import (  # noqa: E402
    DaemonProcess,
    fetched_bytes,
    operator_token_file,
    storage_for,
)
from tests.sidecar.peerfleet import secret_file  # noqa: E402
from tests.support.origin import OriginProcess  # noqa: E402
from tests.support.ports import LOOPBACK, free_port, wait_http  # noqa: E402
from tests.support.process import clean_env  # noqa: E402

NS, HOST_IF, NS_IF = "ws-fleet", "ws-f0", "ws-f1"
HOST_IP, NS_IP = "10.203.0.1", "10.203.0.2"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


@contextlib.contextmanager
def shaped_namespace(rate: str):
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        sh("ip", "link", "set", NS_IF, "netns", NS)
        sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        ns = ["ip", "netns", "exec", NS]
        sh(*ns, "ip", "addr", "add", f"{NS_IP}/30", "dev", NS_IF)
        sh(*ns, "ip", "link", "set", NS_IF, "up")
        sh(*ns, "ip", "link", "set", "lo", "up")
        # The origin's sending side: everything the daemons read from it.
        sh(*ns, "tc", "qdisc", "add", "dev", NS_IF, "root", "tbf", "rate", rate,
           "burst", "256kb", "latency", "200ms")
        yield
    finally:
        subprocess.run(["ip", "link", "del", HOST_IF], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def origin_in_namespace(root: Path):
    port = 9000
    argv = ["ip", "netns", "exec", NS, sys.executable, "-m", "tests.support.origin",
            "--root", str(root), "--host", NS_IP, "--port", str(port),
            "--checksum", "crc64nvme"]
    proc = subprocess.Popen(argv, cwd=REPO, env=clean_env(), stdin=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://{NS_IP}:{port}"
    try:
        wait_http(f"{url}/_origin/healthz", timeout=30, proc=proc)
        yield OriginProcess(url=url, port=port, root=root, process=proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def start_daemons(work: Path, n: int, *, peers: bool) -> list[DaemonProcess]:
    token = operator_token_file(work)
    names = [f"n{i + 1}" for i in range(n)]
    ports = {name: free_port() for name in names}
    secret = secret_file(work)
    out = []
    for name in names:
        root, sock, api = work / f"c-{name}", work / f"{name}.sock", free_port()
        argv = [sys.executable, "-m", "sidecar", "--cache-root", str(root), "--socket",
                str(sock), "--listen", f"{LOOPBACK}:{api}", "--min-free", "0",
                "--proof-ttl", "0", "--allow-endpoint", f"http://{NS_IP}",
                "--operator-token-file", str(token), "--node-name", name]
        if peers and n > 1:
            others = ",".join(f"{m}=http://{LOOPBACK}:{ports[m]}" for m in names if m != name)
            argv += ["--peer-listen", f"{LOOPBACK}:{ports[name]}", "--peers", others,
                     "--peer-secret-file", str(secret)]
        d = DaemonProcess(root=root, socket=sock, port=api, argv=argv, env=clean_env({}),
                          log_path=work / f"{name}.log")
        out.append(d.start())
    return out


async def one_round(origin: OriginProcess, work: Path, model, n: int, *,
                    peers: bool) -> dict:
    origin.clear_log()
    daemons = start_daemons(work, n, peers=peers)
    try:
        await asyncio.gather(*(d.ready(timeout=120) for d in daemons))

        async def ensure(d: DaemonProcess) -> float:
            async with d.client() as api:
                answer = await api.ensure(model["uri"], storage=model["storage"])
                last = answer["model"]
                async for state in api.events(last["id"], timeout=300):
                    last = state
                if last["state"] != "ready":
                    raise RuntimeError(f"{d.socket}: {last}")
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        times = await asyncio.gather(*(ensure(d) for d in daemons))
    finally:
        for d in daemons:
            d.stop()
    return {"nodes": n, "peers": peers, "ready_s": max(times),
            "origin_x": fetched_bytes(origin, "m") / model["size"]}


async def run(args: argparse.Namespace) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="wsfn", dir="/tmp"))
    root = work / "origin"
    spec = synth.sized(parse_size(args.size), shards=4)
    generated = synth.generate(spec, root / "models" / "m")
    with shaped_namespace(args.rate), origin_in_namespace(root) as origin:
        model = {"uri": "s3://models/m", "storage": storage_for(origin.url),
                 "size": generated.file_bytes}
        results = []
        for n, peers in ((1, False), (args.nodes, False), (args.nodes, True)):
            round_dir = work / f"r{len(results)}"
            round_dir.mkdir()
            r = await one_round(origin, round_dir, model, n, peers=peers)
            print(f"{n} daemon(s), peers {'on' if peers else 'off'}: ready in "
                  f"{r['ready_s']:.1f}s, origin {r['origin_x']:.2f}x", flush=True)
            results.append(r)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="64Mi")
    p.add_argument("--rate", default="200mbit", help="the origin link (tc tbf rate)")
    p.add_argument("--nodes", type=int, default=4)
    args = p.parse_args()
    results = asyncio.run(run(args))
    one = results[0]["ready_s"]
    print(f"\n{args.size} model, origin link {args.rate}, loopback between daemons, 2 CPUs")
    print(f"{'daemons':>7} {'peers':>5} {'ready s':>8} {'vs 1':>6} {'origin':>7}")
    for r in results:
        print(f"{r['nodes']:>7} {'on' if r['peers'] else 'off':>5} {r['ready_s']:>8.1f} "
              f"{r['ready_s'] / one:>5.2f}x {r['origin_x']:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
