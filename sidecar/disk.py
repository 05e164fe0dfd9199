"""Blocking filesystem steps of the cache (run on the service's executors).

Recovery after a restart, adopting a partial pull, the atomic publish of a verified
model, and removal through ``trash/``. Every function here keeps the invariant of
:mod:`sidecar.layout`: a directory under ``models/`` is complete and verified.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamer.manifest import STATE_DIR, fsync_dir, load_manifest

from .layout import ENTRY_ID, MANIFEST, CacheLayout, StagingDir, dir_size
from .layout import write_json_atomic as write_json_atomic
from .models import Entry, State

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Orphan:
    """A partial pull on disk that no running pull owns (kept for resuming)."""

    staging: StagingDir
    size: int
    mtime: float


@dataclass
class Recovered:
    entries: list[Entry] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    discarded: int = 0


def recover(layout: CacheLayout, *, now: float) -> Recovered:
    """Rebuild the cache's state from disk after a (clean or unclean) restart."""
    layout.create()
    out = Recovered()
    for p in layout.trash.iterdir():
        remove_tree(p)
    records: dict[str, Entry] = {}
    for f in layout.state.iterdir():
        if f.name.startswith(".") and f.name.endswith(".tmp"):
            f.unlink(missing_ok=True)  # an interrupted atomic write
            continue
        try:
            entry = Entry.from_record(json.loads(f.read_text()), now=now)
            if f.name != f"{entry.id}.json" or not ENTRY_ID.match(entry.id):
                raise ValueError("record name does not match its id")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("dropping unreadable state file %s: %s", f.name, e)
            f.unlink(missing_ok=True)
            continue
        records[entry.id] = entry
    for d in layout.models.iterdir():
        entry = records.pop(d.name, None)
        if not ENTRY_ID.match(d.name) or not d.is_dir() or d.is_symlink():
            log.warning("discarding unexpected %s under models/", d.name)
            move_to_trash(layout, d)
            out.discarded += 1
            continue
        if entry is not None and entry.state is not State.READY:
            # Published after the record said "pulling" (a crash between the two writes
            # cannot leave this, but the directory is the truth): it is ready.
            entry.state, entry.error, entry.failed_at = State.READY, None, None
        if entry is None:
            entry = _adopt_published(d, now=now)
            if entry is None:
                log.warning("discarding %s: published without a manifest", d.name)
                move_to_trash(layout, d)
                out.discarded += 1
                continue
            write_json_atomic(layout.state_file(entry.id), entry.to_record())
        out.entries.append(entry)
    for entry_id, entry in records.items():
        if entry.state is State.FAILED:  # a pull that was running: kept, with its leases
            out.entries.append(entry)
            continue
        layout.state_file(entry_id).unlink(missing_ok=True)  # its model directory is gone
    for item in layout.staging_dirs():
        if isinstance(item, StagingDir):
            st = item.path.stat()
            out.orphans.append(Orphan(item, dir_size(item.path), st.st_mtime))
        else:
            move_to_trash(layout, item)
            out.discarded += 1
    for p in layout.trash.iterdir():
        remove_tree(p)
    return out


def _adopt_published(d: Path, *, now: float) -> Entry | None:
    """A model directory without its state file (crash between the two writes)."""
    manifest = load_manifest(d)
    if not manifest or not (d / MANIFEST).exists():
        return None
    try:
        doc = json.loads((d / MANIFEST).read_text())
        source = str(doc.get("source", "unknown"))
    except (OSError, ValueError):
        source = "unknown"
    key, version = d.name.split("-")
    files = tuple(sorted(manifest.values(), key=lambda f: f.rel))
    return Entry(id=d.name, model_key=key, version=version, source=source, include=(),
                 exclude=(), files=files, size=sum(f.size for f in files), state=State.READY,
                 created_at=now, last_used=now)


def adopt_staging(layout: CacheLayout, entry_id: str, orphans: list[Orphan]) -> StagingDir:
    """A fresh staging directory for a pull, resuming the newest partial one if any.

    Pulls are not fsynced range by range (durability is a publish-time step): a killed
    daemon's partial files are in the page cache and resume, but one written before a
    reboot may have lost pages its journal claims, so it is discarded (boot id marker).
    """
    fresh = layout.new_staging(entry_id)
    mine = sorted((o for o in orphans if o.staging.entry_id == entry_id),
                  key=lambda o: o.mtime, reverse=True)
    stale = [o for o in mine if _boot_of(o.staging.path) != boot_id()]
    for o in stale:
        log.info("discarding the partial pull of %s: written before the last boot", entry_id)
        discard(layout, o.staging.path)
    mine = [o for o in mine if o not in stale]
    if mine:
        os.rename(mine[0].staging.path, fresh.path)
        for extra in mine[1:]:
            discard(layout, extra.staging.path)
        log.info("resuming the partial pull of %s (%d bytes on disk)", entry_id, mine[0].size)
    else:
        fresh.path.mkdir(mode=0o755)
    marker = fresh.path / STATE_DIR / BOOT_MARKER
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(boot_id())
    return fresh


BOOT_MARKER = "boot_id"


def boot_id() -> str:
    """This boot of the kernel (a page cache survives a process, not a reboot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _boot_of(staging: Path) -> str | None:
    try:
        return (staging / STATE_DIR / BOOT_MARKER).read_text().strip()
    except OSError:
        return None


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path`` (the publish-time durability step)."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def publish(layout: CacheLayout, entry: Entry, staging: StagingDir) -> Path:
    """Make a finished pull visible atomically.

    The pull fetched exactly the proved plan, every range pinned to its file's listed
    version (``streamer.download(plan=...)``), so what is staged is the version proved.
    """
    for dirpath, dirs, files in os.walk(staging.path):
        for name in dirs:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    os.chmod(staging.path, 0o755)
    fsync_tree(staging.path)
    target = layout.model_dir(entry.id)
    if target.exists():  # cannot happen while single flight holds; never serve a mix
        move_to_trash(layout, target)
    write_json_atomic(layout.state_file(entry.id), entry.to_record() | {"pulling": False})
    os.rename(staging.path, target)
    fsync_dir(layout.models)
    return target


def unpublish(layout: CacheLayout, entry_id: str) -> int:
    """Remove a published model: invisible at once (rename), then deleted. Returns bytes."""
    target = layout.model_dir(entry_id)
    size = 0
    if target.exists():
        trash = layout.trash_path(entry_id)
        os.rename(target, trash)
        layout.state_file(entry_id).unlink(missing_ok=True)
        size = dir_size(trash)
        remove_tree(trash)
    else:
        layout.state_file(entry_id).unlink(missing_ok=True)
    return size


def discard(layout: CacheLayout, path: Path) -> None:
    """Remove a staging directory (or any junk) through trash/."""
    if path.exists() or path.is_symlink():
        remove_tree(move_to_trash(layout, path))


def move_to_trash(layout: CacheLayout, path: Path) -> Path:
    trash = layout.trash_path(path.name)
    os.rename(path, trash)
    return trash


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def staging_info(staging: StagingDir) -> Orphan:
    """Measure a staging directory left by a failed pull (kept for resuming)."""
    try:
        mtime = staging.path.stat().st_mtime
    except OSError:
        mtime = time.time()
    return Orphan(staging, dir_size(staging.path), mtime)
