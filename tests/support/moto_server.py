"""moto in server mode as a real subprocess on loopback, plus boto3 helpers to seed it.

moto gives full S3 semantics (listing, prefixes, credentials, error codes) but rebuilds
the whole object for every ranged GET, so keep objects small here (a few MiB); use the
origin in :mod:`tests.support.origin` for size and faults.

Usage::

    with start_moto() as moto:
        moto.create_bucket("models")
        moto.upload_tree(model_dir, bucket="models", prefix="llama")
        env = moto.env()          # for a subprocess: endpoint + test credentials
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from .ports import LOOPBACK, free_port, wait_http
from .process import clean_env, dies_with_parent, stop_process

TEST_ACCESS_KEY = "testing"
TEST_SECRET_KEY = "testing"
TEST_REGION = "us-east-1"


def s3_env(
    endpoint_url: str,
    base: Mapping[str, str] | None = None,
    *,
    access_key: str = TEST_ACCESS_KEY,
    secret_key: str = TEST_SECRET_KEY,
    region: str = TEST_REGION,
) -> dict[str, str]:
    """Environment for a subprocess talking S3 to ``endpoint_url`` with test credentials.

    Args:
        endpoint_url: ``http://127.0.0.1:PORT``.
        base: starting environment (default :func:`tests.support.process.clean_env`).

    Returns:
        A new dict with ``AWS_ENDPOINT_URL``, the keys, ``AWS_DEFAULT_REGION``,
        ``AWS_EC2_METADATA_DISABLED=true`` and the runai streamer's local-endpoint settings.
    """
    env = dict(base) if base is not None else clean_env()
    env.update({
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        "RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS": "30000",
    })
    return env


def s3_client(endpoint_url: str, *, access_key: str = TEST_ACCESS_KEY,
              secret_key: str = TEST_SECRET_KEY, region: str = TEST_REGION):
    """A boto3 S3 client (path-style) for ``endpoint_url`` with explicit credentials."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def upload_tree(client, local_dir: Path | str, *, bucket: str, prefix: str = "") -> list[str]:
    """Upload every file under ``local_dir`` to ``s3://bucket/prefix/<relative path>``.

    Returns:
        The keys written, sorted.
    """
    local_dir = Path(local_dir)
    prefix = prefix.strip("/")
    keys = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        key = f"{prefix}/{rel}" if prefix else rel
        client.upload_file(str(path), bucket, key)
        keys.append(key)
    return sorted(keys)


@dataclass(frozen=True)
class MotoServer:
    """A running moto server."""

    endpoint_url: str
    process: subprocess.Popen
    log_path: Path

    def env(self, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
        """Subprocess environment for this server (see :func:`s3_env`), plus ``extra``."""
        env = s3_env(self.endpoint_url, base)
        env.update(extra)
        return env

    def client(self):
        """A fresh boto3 S3 client for this server."""
        return s3_client(self.endpoint_url)

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique ``test-<hex>`` name if none given) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def put_object(self, bucket: str, key: str, body: bytes) -> str:
        """Write one object; return its ETag (quoted, as S3 sends it)."""
        return self.client().put_object(Bucket=bucket, Key=key, Body=body)["ETag"]

    def upload_tree(self, local_dir: Path | str, *, bucket: str, prefix: str = "") -> list[str]:
        """Upload a directory tree under ``prefix`` (see :func:`upload_tree`)."""
        return upload_tree(self.client(), local_dir, bucket=bucket, prefix=prefix)

    def reset(self) -> None:
        """Drop every bucket and object (moto's reset API)."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass


@contextmanager
def start_moto(*, port: int | None = None, timeout: float = 60.0,
               log_dir: Path | str | None = None,
               unauthenticated_actions: int | None = None) -> Iterator[MotoServer]:
    """Start ``python -m moto.server`` on 127.0.0.1 and stop it on exit.

    Args:
        port: TCP port (default: a free one).
        timeout: seconds to wait for the server to answer.
        log_dir: where to write the server log (default: a temp dir).
        unauthenticated_actions: turn on moto's IAM authentication (SigV4 signatures are
            checked against IAM users' keys) after this many requests, which may set up
            the users (``INITIAL_NO_AUTH_ACTION_COUNT``). Default: no authentication.
    """
    port = port or free_port()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="moto-"))
    log_path = log_dir / f"moto-{port}.log"
    env = clean_env({"AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
                     "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
                     "AWS_DEFAULT_REGION": TEST_REGION})
    if unauthenticated_actions is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(unauthenticated_actions)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            dies_with_parent([sys.executable, "-m", "moto.server", "-H", LOOPBACK,
                              "-p", str(port)]),
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    endpoint = f"http://{LOOPBACK}:{port}"
    try:
        try:
            wait_http(f"{endpoint}/moto-api/", timeout=timeout, proc=proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; log:\n{log_path.read_text(errors='replace')[-2000:]}") from e
        yield MotoServer(endpoint_url=endpoint, process=proc, log_path=log_path)
    finally:
        stop_process(proc)


if __name__ == "__main__":  # manual use: python -m tests.support.moto_server
    with start_moto() as server:
        print(server.endpoint_url, flush=True)
        with suppress(KeyboardInterrupt):
            server.process.wait()
    os._exit(0)
