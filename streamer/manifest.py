"""The manifest written beside a downloaded model, used to skip and verify later."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_DIR = ".weightstream"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # relative to the model directory
    uri: str
    size: int
    etag: str | None
    md5: str | None = None


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def manifest_path(dest: Path) -> Path:
    return dest / STATE_DIR / MANIFEST_NAME


def load_manifest(dest: Path) -> dict[str, ManifestEntry]:
    """Read the manifest; a missing or unreadable one is empty (everything is re-checked)."""
    try:
        doc = json.loads(manifest_path(dest).read_text())
        return {e["path"]: ManifestEntry(**e) for e in doc["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_manifest(dest: Path, source: str, entries: dict[str, ManifestEntry]) -> Path:
    """Atomically write the manifest (temp file, fsync, rename)."""
    path = manifest_path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "version": 1,
        "source": source,
        "written_at": time.time(),
        "files": [asdict(e) for e in sorted(entries.values(), key=lambda e: e.path)],
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
