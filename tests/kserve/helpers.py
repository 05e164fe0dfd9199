"""Small helpers shared by the KServe compatibility tests."""

from __future__ import annotations

from pathlib import Path

from tests.support.process import ProcResult


def last_line(result: ProcResult) -> str:
    """The line the kubelet would use as the termination message."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def tree(root: Path) -> list[str]:
    """Every file and link under ``root`` (relative, sorted), ignoring weightstream's state."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if (p.is_file() or p.is_symlink()) and ".weightstream" not in p.relative_to(root).parts
    )


_CLIENTS: dict[str, object] = {}


def s3_client(moto):
    """One boto3 client per moto server for the whole session (each costs ~0.1-0.3 s)."""
    if moto.endpoint_url not in _CLIENTS:
        _CLIENTS[moto.endpoint_url] = moto.client()
    return _CLIENTS[moto.endpoint_url]


def seed(moto, bucket: str, objects: dict[str, bytes]) -> None:
    """Write ``objects`` (key -> body) into ``bucket``."""
    client = s3_client(moto)
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
