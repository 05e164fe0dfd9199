"""The manifest written beside a downloaded model, used to skip and verify later.

It records the model's :class:`~streamer.plan.PlannedFile` records as verified::

    {"version": 1, "source": "s3://b/m", "written_at": 1.7e9,
     "files": [{"path": "config.json", "uri": "s3://b/m/config.json", "key": "m/config.json",
                "size": 712, "etag": "\"9a0364b9\"", "md5": null}, ...]}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .backends.base import ObjectInfo
from .plan import PlannedFile

STATE_DIR = ".weightstream"
MANIFEST_NAME = "manifest.json"


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def manifest_path(dest: Path) -> Path:
    return dest / STATE_DIR / MANIFEST_NAME


def load_manifest(dest: Path) -> dict[str, PlannedFile]:
    """Read the manifest; a missing or unreadable one is empty (everything is re-checked).

    Manifests written before keys were recorded load with an empty ``key``.
    """
    try:
        doc = json.loads(manifest_path(dest).read_text())
        files = [
            PlannedFile(ObjectInfo(str(e.get("key", "")), int(e["size"]), e["etag"]),
                        e["path"], e["uri"], e.get("md5"))
            for e in doc["files"]
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {f.rel: f for f in files}


def _record(f: PlannedFile) -> dict[str, object]:
    return {"path": f.rel, "uri": f.uri, "key": f.key, "size": f.size, "etag": f.etag,
            "md5": f.md5}


def write_manifest(dest: Path, source: str, entries: dict[str, PlannedFile]) -> Path:
    """Atomically write the manifest (temp file, fsync, rename)."""
    path = manifest_path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "version": 1,
        "source": source,
        "written_at": time.time(),
        "files": [_record(f) for f in sorted(entries.values(), key=lambda f: f.rel)],
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
