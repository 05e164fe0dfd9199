"""The node cache's directory layout: the one module that knows where things live.

::

    <cache-root>/                          hostPath on the node's NVMe (0755)
    ├── daemon.sock                        unix socket of the API (0666: pods connect)
    ├── daemon.lock                        flock held by the one daemon serving this root
    ├── s3.key                             0600: scoped S3 credentials derive from it
    ├── models/
    │   └── <model-id>-<version>/          a complete, verified model, read-only to pods
    │       ├── config.json
    │       ├── model-00001-of-00002.safetensors
    │       ├── ...
    │       └── .weightstream/manifest.json    written by streamer.download (sizes, ETags)
    ├── staging/
    │   └── <model-id>-<version>.<token>/  a pull in progress: streamer.download's dest,
    │       └── .weightstream/partial/     with its resume journals (*.part, *.journal)
    │           (.weightstream/boot_id: the boot it was written in; S3 readers read the
    │           *.part files while the pull runs, see sidecar.flights)
    ├── state/
    │   └── <model-id>-<version>.json      metadata: source, filters, size, last use, leases
    └── trash/
        └── <model-id>-<version>.<token>/  evicted or discarded, being deleted

* ``model-id`` is a hash of the source identity: the normalised URI, the endpoint, the
  include and exclude patterns (:mod:`sidecar.identity`). ``version`` is a hash of the
  pinned listing (every file's path, size and ETag), so a changed source never replaces a
  directory that pods link into; it gets a new directory instead.
* A model becomes visible by one atomic ``rename(staging/<id>.<token>, models/<id>)``,
  after ``streamer.download`` fetched and verified every file and wrote its manifest.
  Anything under ``models/`` is complete; nothing else is ever served or linked to.
* ``state/`` files are written atomically (temp file, fsync, rename). A model directory
  without a state file is re-adopted from its manifest; a state file without its directory
  is dropped. Credentials are never written anywhere.
* Eviction renames the model directory into ``trash/`` (invisible at once), then deletes.
* After a crash, ``staging/`` keeps the partial pulls: the next pull of the same
  ``<model-id>-<version>`` adopts the newest one and its journals make the engine fetch
  only missing ranges; other leftovers are discarded when space is needed or they age out.
* The daemon is the only writer. Every path built from a request goes through
  :func:`safe_join`, which refuses anything that would leave its base directory.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadRequestError, PathEscapeError

SOCKET_NAME = "daemon.sock"
LOCK_NAME = "daemon.lock"
MANIFEST = Path(".weightstream") / "manifest.json"
INTERNAL_DIR = ".weightstream"
ENTRY_ID = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{12}$")
_STAGING = re.compile(r"^(?P<id>[0-9a-f]{16}-[0-9a-f]{12})\.(?P<token>[0-9a-f]{8,32})$")


def check_entry_id(entry_id: str) -> str:
    """Return ``entry_id`` if it is a well-formed ``<model-id>-<version>``.

    Raises:
        BadRequestError: anything else (this also keeps ids out of path tricks).
    """
    if not isinstance(entry_id, str) or not ENTRY_ID.match(entry_id):
        raise BadRequestError(f"malformed model id {str(entry_id)[:80]!r}")
    return entry_id


def safe_join(base: Path, rel: str) -> Path:
    """Join a request-supplied relative path onto ``base``, refusing any escape.

    Refused: empty paths, absolute paths, ``..`` segments, NUL bytes, backslashes, and
    paths whose resolved location (symlinks followed) is not inside ``base``.

    Raises:
        PathEscapeError: the path would leave ``base``.
    """
    if not rel or "\0" in rel or "\\" in rel or rel.startswith("/"):
        raise PathEscapeError(f"refused path {rel[:200]!r}")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise PathEscapeError(f"refused path {rel[:200]!r}")
    candidate = base.joinpath(*parts)
    resolved_base = base.resolve()
    resolved = candidate.resolve()
    if resolved != resolved_base and not resolved.is_relative_to(resolved_base):
        raise PathEscapeError(f"refused path {rel[:200]!r}")
    return candidate


@dataclass(frozen=True)
class StagingDir:
    """A pull's working directory, found again after a restart."""

    entry_id: str
    token: str
    path: Path


@dataclass(frozen=True)
class CacheLayout:
    """Paths under one cache root."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def s3_key_file(self) -> Path:
        """The key scoped S3 credentials are derived from (0600; see sidecar.s3)."""
        return self.root / "s3.key"

    def create(self) -> None:
        """Create the root and its subdirectories (world-traversable: pods read models)."""
        for d in (self.root, self.models, self.staging, self.state, self.trash):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)

    def model_dir(self, entry_id: str) -> Path:
        return self.models / check_entry_id(entry_id)

    def state_file(self, entry_id: str) -> Path:
        return self.state / f"{check_entry_id(entry_id)}.json"

    def new_staging(self, entry_id: str) -> StagingDir:
        token = secrets.token_hex(8)
        return StagingDir(entry_id, token, self.staging / f"{check_entry_id(entry_id)}.{token}")

    def staging_dirs(self) -> Iterator[StagingDir | Path]:
        """Every entry of ``staging/``: a :class:`StagingDir`, or a bare Path for junk."""
        for p in sorted(self.staging.iterdir()):
            m = _STAGING.match(p.name)
            if m and p.is_dir() and not p.is_symlink():
                yield StagingDir(m["id"], m["token"], p)
            else:
                yield p

    def trash_path(self, name: str) -> Path:
        return self.trash / f"{name}.{secrets.token_hex(8)}"

    def model_file(self, entry_id: str, rel: str) -> Path:
        """The path of ``rel`` inside a published model (escape-checked)."""
        return safe_join(self.model_dir(entry_id), rel)


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write JSON to a temp file, fsync, rename over ``path`` (blocking)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def dir_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed; blocking)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
    return total
