"""Fixtures of the node cache tests: models on the origin, the daemon as a real process.

* ``model_on_origin``: factory ``model_on_origin(origin, name, spec=None)`` -> :class:`OriginModel`
  (a synthetic model written under the origin's ``models`` bucket, its S3 URI and settings).
* ``daemon``: factory ``daemon(*flags, root=None, env=None)`` -> :class:`DaemonProcess`
  (``python -m sidecar`` on a temp cache root, a short socket path and a free TCP port);
  every daemon is stopped at teardown.
* ``cache_config``: factory for an in-process :class:`~sidecar.config.DaemonConfig`.

Both read the operator token :data:`OPERATOR_TOKEN` from a file (``--operator-token-file``),
and ``DaemonProcess.client()`` presents it (what ``weightstream cache ls`` does).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import CacheAPIClient
from sidecar.config import DaemonConfig
from streamer import StorageSettings, synth
from tests.support.moto_server import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY
from tests.support.ports import LOOPBACK, free_port
from tests.support.process import REPO_ROOT, clean_env, dies_with_parent

OPERATOR_TOKEN = "operator-token-for-tests-0123456789"


def operator_token_file(directory: Path) -> Path:
    path = directory / "operator.token"
    if not path.exists():
        path.write_text(OPERATOR_TOKEN + "\n")
        path.chmod(0o600)
    return path


def access_doc(uri: str, storage: StorageSettings) -> dict[str, Any]:
    """The ``credentials`` and ``endpoint`` members of an ensure for ``storage``."""
    from sidecar.credentials import RequesterAccess
    from streamer import parse_uri

    return RequesterAccess.from_settings(parse_uri(uri), storage).to_doc()


def storage_for(endpoint: str) -> StorageSettings:
    """The requester's settings for a test store (explicit test keys)."""
    return StorageSettings(endpoint_url=endpoint, region=TEST_REGION,
                           access_key_id=TEST_ACCESS_KEY, secret_access_key=TEST_SECRET_KEY)


@dataclass
class OriginModel:
    name: str
    path: Path  # the files as the origin serves them
    uri: str  # s3://models/<name>
    storage: StorageSettings
    files: tuple[str, ...]
    size: int  # bytes over all files

    def bytes_of(self, rel: str) -> bytes:
        return (self.path / rel).read_bytes()


@pytest.fixture(autouse=True)
async def _roomy_default_executor() -> None:
    """The in-process origin lists on the loop's default executor, and so does the S3
    backend (botocore, in threads) waiting for it: with the default 6 threads, 8
    concurrent listings would starve the origin. Only a test hosts both on one loop."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(48))


@pytest.fixture
def model_on_origin() -> Callable[..., OriginModel]:
    def make(origin: Any, name: str, spec: Any = None) -> OriginModel:
        spec = spec or synth.llama(dtype="f16", shards=2)
        model = synth.generate(spec, origin.root / "models" / name)
        return OriginModel(name=name, path=model.path, uri=f"s3://models/{name}",
                           storage=storage_for(origin.url), files=model.files,
                           size=model.file_bytes)

    return make


@pytest.fixture
def origin_root(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    (root / "models").mkdir(parents=True)
    return root


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (unix socket paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="wsc", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cache_config(short_dir: Path) -> Callable[..., DaemonConfig]:
    def make(**overrides: Any) -> DaemonConfig:
        values: dict[str, Any] = dict(cache_root=short_dir / "cache", min_free=0,
                                      listen=None, chunk_size=64 << 10, max_memory=4 << 20,
                                      concurrency=4, housekeeping_interval=3600.0,
                                      progress_interval=0.05, proof_ttl=0.0,
                                      operator_token_file=operator_token_file(short_dir),
                                      # the test stores listen on loopback
                                      allow_endpoints=(f"http://{LOOPBACK}",))
        values.update(overrides)
        return DaemonConfig(**values)

    return make


@dataclass
class DaemonProcess:
    """A ``python -m sidecar`` subprocess and how to reach it."""

    root: Path
    socket: Path
    port: int
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    _logs: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def client(self, *, operator: bool = True) -> CacheAPIClient:
        """A client of the socket API; ``operator``: it presents the operator token."""
        return CacheAPIClient(self.socket, token=OPERATOR_TOKEN if operator else None)

    def start(self) -> DaemonProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self.proc = subprocess.Popen(dies_with_parent(self.argv), env=self.env, cwd=REPO_ROOT,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self

    async def ready(self, timeout: float = 30.0) -> DaemonProcess:
        """Wait until the socket answers /readyz (the daemon recovered its cache)."""
        import aiohttp

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.logs()}")
            try:
                conn = aiohttp.UnixConnector(path=str(self.socket))
                async with aiohttp.ClientSession(connector=conn) as s, \
                        s.get("http://d/readyz") as r:
                    if r.status == 200:
                        return self
            except (aiohttp.ClientError, OSError):
                pass
            if loop.time() > deadline:
                raise RuntimeError(f"daemon not ready after {timeout}s:\n{self.logs()}")
            await asyncio.sleep(0.05)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in self._logs:
            f.close()
        self._logs.clear()
        return self.proc.returncode if self.proc is not None else None


@pytest.fixture
def daemon(short_dir: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []
    counter = [0]

    def make(*flags: str, root: Path | None = None, env: dict[str, str] | None = None,
             start: bool = True) -> DaemonProcess:
        counter[0] += 1
        root = root or short_dir / "cache"
        sock = short_dir / f"d{counter[0]}.sock"
        port = free_port()
        argv = [sys.executable, "-m", "sidecar", "--cache-root", str(root), "--socket",
                str(sock), "--listen", f"{LOOPBACK}:{port}", "--min-free", "0",
                "--chunk-size", "64Ki", "--max-memory", "4Mi", "--concurrency", "4",
                "--proof-ttl", "0", "--allow-endpoint", f"http://{LOOPBACK}",
                "--operator-token-file",
                str(operator_token_file(short_dir)), *flags]
        d = DaemonProcess(root=root, socket=sock, port=port, argv=argv,
                          env=clean_env(env or {}), log_path=short_dir / f"d{counter[0]}.log")
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        d.stop()


def origin_data_gets(origin: Any, name: str) -> list[Any]:
    """The origin's GETs of a model's files (not listings, not HEADs)."""
    return [r for r in origin.requests(method="GET", path=f"models/{name}/*")]


def fetched_bytes(origin: Any, name: str) -> int:
    return sum(r.bytes_sent for r in origin_data_gets(origin, name))


__all__ = ["OPERATOR_TOKEN", "DaemonProcess", "OriginModel", "access_doc", "fetched_bytes",
           "origin_data_gets", "storage_for"]

