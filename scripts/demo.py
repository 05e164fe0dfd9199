"""The embedded default run: local S3 (moto) + a generated model + ``weightstream download``."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

from streamer import synth


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="64MiB", help="model size (default 64MiB)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--dest", help="where to download (default: a temp dir)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="weightstream-demo-"))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        wait_ready(endpoint)
        model = synth.generate(synth.sized(args.size, shards=args.shards), work / "model")
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="demo",
                          aws_secret_access_key="demo", region_name="us-east-1")  # fmt: skip
        s3.create_bucket(Bucket="models")
        for name in model.files:
            s3.upload_file(str(model.path / name), "models", f"demo-llama/{name}")
        print(f"demo: moto S3 at {endpoint}, bucket 'models', {len(model.files)} files "
              f"({model.total_size >> 20} MiB) under demo-llama/", flush=True)
        dest = args.dest or str(work / "downloaded")
        cmd = [sys.executable, "-m", "streamer.cli.main", "download",
               "s3://models/demo-llama", dest]  # fmt: skip
        print("demo: $ weightstream download s3://models/demo-llama", dest, flush=True)
        return subprocess.call(cmd, env=env)
    finally:
        moto.terminate()
        moto.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
