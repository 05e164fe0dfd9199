"""No secret in any output of any entry point, at any level, in either log format.

Every entry point (CLI download, the init container, the node cache daemon) runs with a
session token, a secret key and an HF token in its environment, against a real origin,
with ``--debug`` (botocore's debug output holds the token in headers and canonical
requests) and at the default level, in text and JSON, through a success and through error
paths that carry a presigned-style URL. Everything they print is scanned for the secrets.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamer.logs import scrub
from tests.support.ports import LOOPBACK, free_port
from tests.support.process import REPO_ROOT, clean_env, run_cmd

SESSION_TOKEN = "FwoGZXIvYXdzSESSIONTOKENe0a1b2c3d4e5f6a7b8c9d0"
SECRET_KEY = "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRETKEYa1b2"
HF_TOKEN = "hf_SECRETHFTOKENabcdefghijklmnop"
SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
QUERY_TOKEN = "QUERYTOKENe9f8d7c6b5a4"
SAS_SIG = "SASSIGNATURE0123456789abcdef%3D"
SECRETS = (SESSION_TOKEN, SECRET_KEY, HF_TOKEN, SIGNATURE, QUERY_TOKEN, SAS_SIG,
           SAS_SIG.replace("%3D", "="))  # fmt: skip


def presigned(base: str, path: str) -> str:
    return (f"{base}/{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
            f"&X-Amz-Security-Token={SESSION_TOKEN}&X-Amz-Signature={SIGNATURE}"
            f"&token={QUERY_TOKEN}&sig={SAS_SIG}")  # fmt: skip


def assert_clean(text: str, what: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{what} leaked {leaked}:\n{text[-4000:]}"


@dataclass
class Daemon:
    socket: Path
    log: Path
    port: int = 0

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def start_daemon(tmp: Path, *flags: str, env: dict[str, str]) -> Iterator[Daemon]:
    """``python -m sidecar`` on a short socket path, until /readyz answers (30 s)."""
    short = Path(tempfile.mkdtemp(prefix="ws-sec-", dir="/tmp"))
    d = Daemon(short / "d.sock", tmp / "daemon.log", free_port())
    argv = [sys.executable, "-m", "sidecar", "--cache-root", str(tmp / "cache"), "--socket",
            str(d.socket), "--listen", f"{LOOPBACK}:{d.port}", "--min-free", "0",
            "--proof-ttl", "0", "--allow-endpoint", f"http://{LOOPBACK}", *flags]  # fmt: skip
    with open(d.log, "wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _ready(d.socket):
            assert proc.poll() is None, d.logs()
            assert time.monotonic() < deadline, d.logs()
            time.sleep(0.05)
        yield d
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(short, ignore_errors=True)


def _ready(path: Path) -> bool:
    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(2)
            self.sock.connect(str(path))

    try:
        conn = UnixConnection("d")
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    (root / "models" / "m").mkdir(parents=True)
    (root / "models" / "m" / "config.json").write_bytes(b'{"a": 1}')
    (root / "models" / "m" / "w.bin").write_bytes(b"w" * 100_000)
    return root


def secret_env(origin, home: Path, **extra: str) -> dict[str, str]:
    env = origin.env(clean_env(home=home), AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
                     AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_SESSION_TOKEN=SESSION_TOKEN,
                     HF_TOKEN=HF_TOKEN)  # fmt: skip
    env.update(extra)
    return env


def test_scrub_removes_what_botocore_and_sdks_print():
    samples = [
        f"{{'x-amz-security-token': b'{SESSION_TOKEN}', 'Authorization': b'AWS4-HMAC-SHA256 "
        f"Credential=AKIA/x, SignedHeaders=host, Signature={SIGNATURE}'}}",
        f"CanonicalRequest:\nGET\n/m\n\nx-amz-security-token:{SESSION_TOKEN}\n",
        f"Signature:\n{SIGNATURE}",
        presigned("https://h", "k"),
        f'{{"msg": "Authorization: Bearer {HF_TOKEN}"}}',
    ]
    for text in samples:
        assert_clean(scrub(text), "scrub")
    assert scrub("bytes 0-99 sigma=3 monkey=2") == "bytes 0-99 sigma=3 monkey=2"


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("debug", [True, False], ids=["debug", "default"])
def test_cli_download_prints_no_secret(origin_process, model_root, tmp_path, fmt, debug):
    origin = origin_process(model_root)
    env = secret_env(origin, tmp_path)
    flags = ["--debug"] if debug else []
    cli = [sys.executable, "-m", "streamer.cli.main", *flags, "download"]
    runs = {
        "s3": [*cli, "s3://models/m", str(tmp_path / "a"), "--log-format", fmt],
        "presigned ok": [*cli, presigned(origin.url, "models/m/w.bin"), str(tmp_path / "b"),
                         "--log-format", fmt],
        "presigned 404": [*cli, presigned(origin.url, "models/m/nope.bin"),
                          str(tmp_path / "c"), "--log-format", fmt],
        "presigned refused": [*cli, presigned("http://127.0.0.1:9", "m/w.bin"),
                              str(tmp_path / "d"), "--log-format", fmt, "--retries", "1"],
        "bad uri": [*cli, presigned("s3://", "x"), str(tmp_path / "e")],
    }
    outputs = {name: run_cmd(argv, env=env, cwd=REPO_ROOT, timeout=120)
               for name, argv in runs.items()}  # fmt: skip
    assert outputs["s3"].returncode == 0, outputs["s3"].output
    assert outputs["presigned ok"].returncode == 0, outputs["presigned ok"].output
    for name in ("presigned 404", "presigned refused", "bad uri"):
        assert outputs[name].returncode != 0, outputs[name].output
    for name, r in outputs.items():
        assert_clean(r.output, f"weightstream {name} ({fmt}, debug={debug})")
    if debug:  # botocore's debug output was there and was scrubbed, not absent
        assert "x-amz-security-token" in outputs["s3"].output.lower()
        assert "<redacted>" in outputs["s3"].output


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_init_container_prints_no_secret(origin_process, model_root, tmp_path, fmt):
    origin = origin_process(model_root)
    env = secret_env(origin, tmp_path, WEIGHTSTREAM_LOG_FORMAT=fmt)
    init = [sys.executable, "-m", "initcontainer"]
    ok = run_cmd([*init, "s3://models/m", str(tmp_path / "a")], env=env, cwd=REPO_ROOT,
                 timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.output
    assert_clean(ok.output, f"init ({fmt})")
    for url in (presigned(origin.url, "models/m/nope.bin"),
                presigned("http://127.0.0.1:9", "m/w.bin")):  # fmt: skip
        r = run_cmd([*init, url, str(tmp_path / "b")], env={**env, "S3_MAX_ATTEMPTS": "1"},
                    cwd=REPO_ROOT, timeout=120)  # fmt: skip
        assert r.returncode != 0
        last = r.output.strip().splitlines()[-1]
        assert "weightstream-init failed" in last  # the pod's termination message
        assert_clean(r.output, f"init failure ({fmt})")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_daemon_logs_no_tenant_secret_at_debug(origin_process, model_root, tmp_path, fmt):
    origin = origin_process(model_root)
    env = secret_env(origin, tmp_path, WEIGHTSTREAM_LOG_FORMAT=fmt)
    with start_daemon(tmp_path, "--debug", "--log-format", fmt, env=clean_env()) as d:
        env.update(WEIGHTSTREAM_CACHE_SOCKET=str(d.socket), WEIGHTSTREAM_POD_UID="pod-1")
        init = [sys.executable, "-m", "initcontainer"]
        r = run_cmd([*init, "s3://models/m", str(tmp_path / "a")], env=env, cwd=REPO_ROOT,
                    timeout=120)  # fmt: skip
        assert r.returncode == 0, r.output
        assert "node cache" in r.output
        bad = run_cmd([*init, presigned(origin.url, "models/m/nope.bin"), str(tmp_path / "b")],
                      env=env, cwd=REPO_ROOT, timeout=120)  # fmt: skip
        assert bad.returncode != 0
        logs = d.logs()
    assert_clean(r.output + bad.output, f"init through the daemon ({fmt})")
    assert_clean(logs, f"daemon --debug ({fmt})")
    assert "DEBUG" in logs or '"level": "debug"' in logs


def test_a_newline_in_a_logged_value_cannot_forge_a_line():
    import io
    import logging

    from streamer.logs import configure

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    configure("text", stream=stream)
    try:
        logging.getLogger("t").info("fetching %s", "m/x.json\n2026-01-01 ERROR forged")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "\\n2026-01-01 ERROR forged" in lines[0]
