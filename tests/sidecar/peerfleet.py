"""A fleet of node cache daemons on loopback that read from each other (issue 16).

``start_fleet(daemon, short_dir, n)`` starts ``n`` ``python -m sidecar`` processes, each
with its own cache root, socket, API port and peer port, the node name ``n1``..``nN``, a
static ``--peers`` list of the others and one cluster secret file. Helpers wait for a
model on every daemon and compare the published bytes with the origin's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.ports import LOOPBACK, free_port

SECRET = b"cluster-secret-for-peer-tests-0123456789"


@dataclass
class Member:
    name: str
    peer_port: int
    daemon: Any  # conftest.DaemonProcess

    @property
    def peer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.peer_port}"


def secret_file(directory: Path) -> Path:
    path = directory / "peer.secret"
    if not path.exists():
        path.write_bytes(SECRET + b"\n")
        path.chmod(0o600)
    return path


def start_fleet(daemon: Any, short_dir: Path, n: int, *, extra: tuple[str, ...] = (),
                others: dict[str, str] | None = None,
                timeout: float = 3.0) -> list[Member]:
    """``n`` daemons that know each other (and ``others``: name -> peer URL)."""
    names = [f"n{i + 1}" for i in range(n)]
    ports = {name: free_port() for name in names}
    urls = {name: f"http://{LOOPBACK}:{p}" for name, p in ports.items()} | dict(others or {})
    secret = secret_file(short_dir)
    members = []
    for name in names:
        peers = ",".join(f"{m}={u}" for m, u in urls.items() if m != name)
        d = daemon("--node-name", name, "--peer-listen", f"{LOOPBACK}:{ports[name]}",
                   "--peers", peers, "--peer-secret-file", str(secret),
                   "--peer-timeout", str(timeout), *extra, root=short_dir / f"c-{name}")
        members.append(Member(name, ports[name], d))
    return members


async def all_ready(members: list[Member], timeout: float = 120.0) -> None:
    """Every member answers on its socket (startup is slow on a loaded machine)."""
    await asyncio.gather(*(m.daemon.ready(timeout=timeout) for m in members))


async def ensure_everywhere(members: list[Member], model: Any) -> list[dict]:
    """Ensure ``model`` on every member at once; the ready states."""
    async def one(m: Member) -> dict:
        async with m.daemon.client() as api:
            answer = await api.ensure(model.uri, storage=model.storage)
            last = answer["model"]
            async for state in api.events(last["id"], timeout=60):
                last = state
            return last

    return list(await asyncio.gather(*(one(m) for m in members)))


def assert_identical(state: dict, model: Any) -> None:
    """Every published file equals the origin's bytes."""
    assert state["state"] == "ready", state
    path = Path(state["path"])
    for rel in model.files:
        assert (path / rel).read_bytes() == model.bytes_of(rel), rel
