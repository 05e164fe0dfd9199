"""Azurite (the Azure Blob emulator) as a real subprocess on loopback, plus a tiny seeding client.

Azurite is installed by ``scripts/install-test-servers.sh`` under ``<repo>/.tools``. The
seeding client signs requests with the emulator's well-known Shared Key itself (a few
lines of HMAC), so the tests need no Azure SDK.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import LOOPBACK, free_port, wait_http
from tests.support.process import REPO_ROOT, stop_process

ACCOUNT = "devstoreaccount1"
# The emulator's published development key (not a secret).
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
API_VERSION = "2021-08-06"


def azurite_binary() -> str:
    """The azurite-blob executable: ``.tools`` first, then ``PATH``."""
    local = REPO_ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    raise RuntimeError(
        "azurite-blob not found: run scripts/install-test-servers.sh (installs it into .tools)"
    )


@dataclass(frozen=True)
class Azurite:
    """A running Azurite blob service and a minimal Shared Key client for seeding it."""

    port: int
    process: subprocess.Popen

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/{ACCOUNT}"

    def env(self, **extra: str) -> dict[str, str]:
        """Variables that point weightstream's Azure backend at this emulator."""
        env = {
            "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT,
            "AZURE_STORAGE_ACCESS_KEY": ACCOUNT_KEY,
            "AZURE_STORAGE_ENDPOINT": self.endpoint,
        }
        env.update(extra)
        return env

    def create_container(self, name: str) -> None:
        self._request("PUT", f"/{name}", query={"restype": "container"})

    def put_blob(self, container: str, name: str, body: bytes) -> None:
        self._request("PUT", f"/{container}/{name}", body=body,
                      headers={"x-ms-blob-type": "BlockBlob"})

    def upload_tree(self, local_dir: Path, *, container: str, prefix: str = "") -> None:
        for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            rel = path.relative_to(local_dir).as_posix()
            self.put_blob(container, f"{prefix.strip('/')}/{rel}" if prefix else rel,
                          path.read_bytes())

    def _request(self, method: str, path: str, *, query: dict[str, str] | None = None,
                 body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        query = query or {}
        hdrs = {
            "x-ms-date": email.utils.formatdate(usegmt=True),
            "x-ms-version": API_VERSION,
            **(headers or {}),
        }
        canonical_headers = "".join(
            f"{k}:{v}\n" for k, v in sorted(hdrs.items()) if k.startswith("x-ms-")
        )
        resource = f"/{ACCOUNT}/{ACCOUNT}{urllib.parse.quote(path)}" + "".join(
            f"\n{k}:{v}" for k, v in sorted(query.items())
        )
        length = str(len(body)) if body else ""
        # urllib would add a form Content-Type to any PUT; name one and sign it.
        ctype = "application/octet-stream" if method == "PUT" else ""
        if ctype:
            hdrs["Content-Type"] = ctype
        to_sign = "\n".join([method, "", "", length, "", ctype, "", "", "", "", "", ""])
        to_sign += "\n" + canonical_headers + resource
        sig = base64.b64encode(
            hmac.new(base64.b64decode(ACCOUNT_KEY), to_sign.encode(), hashlib.sha256).digest()
        ).decode()
        hdrs["Authorization"] = f"SharedKey {ACCOUNT}:{sig}"
        url = self.endpoint + urllib.parse.quote(path)
        if query:
            url += "?" + urllib.parse.urlencode(query)
        req = urllib.request.Request(url, data=body if method == "PUT" else None,
                                     method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"azurite {method} {path}: {e.code} {e.read()[:300]!r}") from e


@contextmanager
def start_azurite(workdir: Path) -> Iterator[Azurite]:
    """Start azurite-blob on a free loopback port (in-memory); stop it on exit."""
    port = free_port()
    log = open(workdir / "azurite.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [azurite_binary(), "--blobHost", LOOPBACK, "--blobPort", str(port),
         "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck",
         "--silent"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
    )
    try:
        wait_http(f"http://{LOOPBACK}:{port}/{ACCOUNT}?comp=list", timeout=30, proc=proc)
        yield Azurite(port=port, process=proc)
    finally:
        stop_process(proc)
        log.close()
