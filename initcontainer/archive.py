"""Extract a single downloaded archive the way KServe does, but never outside the destination.

KServe extracts a lone ``.tar``/``.tar.gz``/``.tgz``/``.zip`` into the destination and
deletes it. Here the safety does not depend on the interpreter's ``tarfile`` (its ``data``
filter is bypassed on Python 3.11 before 3.11.13, CVE-2025-4517: nested long directory
names and symlinks whose real target ``os.path.realpath`` cannot resolve past
``PATH_MAX``, then a link climbing out through them). Extraction runs in three steps:

1. **Inspect** every member header before anything is written: names (absolute, ``..``,
   NUL, over-long), types (files, directories, symlinks, hard links only), no name twice,
   and the caps of :class:`ArchiveLimits` (member count, expanded size, compression
   ratio: a 2 MB zip that expands to 2 GiB is refused here, with nothing written).
2. **Resolve** every link against the complete member tree, in memory, component by
   component (each symlink expanded where it is met, ``..`` applied to the resolved path,
   never to the string), so the result is what the kernel would follow, at any depth and
   whatever the name lengths; a target that leaves the root at any step is refused. No
   file or directory may be written *through* a symlink of the archive.
3. **Write** into a fresh staging directory beside the destination with our own code
   (``O_EXCL | O_NOFOLLOW``; bytes counted against the declared sizes and the caps while
   they land), symlinks last; then move the entries into place. A refused or corrupt
   archive leaves nothing extracted.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from streamer.errors import InsufficientSpaceError
from streamer.manifest import STATE_DIR

from .errors import ArchiveError, ArchiveLimitError, UnsafeArchiveError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)
_BLOCK = 1 << 20
_MAX_LINK_HOPS = 40  # the kernel's own limit on symlinks followed in one lookup
_NAME_MAX = 255
_PATH_MAX = 4000  # below PATH_MAX (4096) once joined to the staging directory


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what one archive may expand to (see README, "Archives").

    Attributes:
        max_members: entries in the archive.
        max_bytes: total expanded size of its files.
        max_ratio: expanded size / archive size, checked once the expanded size passes
            ``ratio_floor`` (safetensors barely compress, 1.1-1.5x; JSON and tokenizers
            5-10x; a zip bomb 1,000x and more).
        ratio_floor: expanded bytes below which any ratio is accepted.
    """

    max_members: int = 100_000
    max_bytes: int = 4 << 40
    max_ratio: float = 100.0
    ratio_floor: int = 64 << 20


Kind = Literal["file", "dir", "symlink", "hardlink"]


@dataclass(frozen=True)
class _Member:
    name: str  # normalised, relative, "/"-separated
    raw: str  # as the archive spells it (for errors)
    kind: Kind
    size: int = 0
    target: str = ""  # symlink target as written, or the hard link's member name
    mode: int = 0o644
    source: object = None  # TarInfo / ZipInfo, to read the bytes


def is_archive(name: str) -> bool:
    """True for the names KServe unpacks (by suffix, case-insensitive)."""
    return name.lower().endswith(TAR_SUFFIXES + ZIP_SUFFIXES)


def extract(
    archive: Path, dest: Path, *, remove: bool = True, limits: ArchiveLimits | None = None
) -> list[str]:
    """Extract ``archive`` into ``dest`` and (by default) delete the archive.

    Returns:
        The top-level names extracted, sorted.

    Raises:
        UnsafeArchiveError: a member would land outside ``dest``; nothing extracted.
        ArchiveLimitError: the archive exceeds a cap of ``limits``; nothing extracted.
        ArchiveError: the archive is corrupt or truncated; nothing extracted.
        InsufficientSpaceError: the extracted size does not fit on the filesystem.
    """
    limits = limits or ArchiveLimits()
    name = archive.name
    staging = dest / STATE_DIR / f"extract-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        try:
            with _open(archive) as (members, read):
                checked = _inspect(name, members, archive.stat().st_size, limits)
                _resolve_links(name, checked)
                _check_space(staging, sum(m.size for m in checked if m.kind == "file"))
                _write(name, checked, read, staging, limits)
        except _CORRUPT as e:
            raise ArchiveError(name, f"cannot extract archive ({type(e).__name__}: {e})") from e
        except OSError as e:
            if isinstance(e, InsufficientSpaceError):
                raise
            raise ArchiveError(name, f"cannot extract archive ({e.strerror or e})") from e
        top = sorted(p.name for p in staging.iterdir())
        _merge(staging, dest)
    except BaseException:
        if remove:
            archive.unlink(missing_ok=True)  # an unusable archive must not look like a model
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if remove:
        archive.unlink(missing_ok=True)
    return top


# -- formats: the members, and a way to read a file member's bytes ---------------------------

Reader = Callable[[_Member], IO[bytes]]


@contextmanager
def _open(archive: Path) -> Iterator[tuple[Iterator[_Member], Reader]]:
    if archive.name.lower().endswith(ZIP_SUFFIXES):
        with zipfile.ZipFile(archive) as zf:
            yield _zip_members(archive.name, zf), lambda m: zf.open(m.source)  # type: ignore[arg-type]
    else:
        with tarfile.open(archive, "r:*") as tf:
            yield _tar_members(archive.name, tf), lambda m: tf.extractfile(m.source)  # type: ignore[arg-type]


def _tar_members(archive: str, tf: tarfile.TarFile) -> Iterator[_Member]:
    for info in tf:  # one header at a time: the caps apply before the next is read
        name = _check_name(archive, info.name)
        if info.isreg():
            mode = 0o755 if info.mode & 0o100 else 0o644
            yield _Member(name, info.name, "file", info.size, mode=mode, source=info)
        elif info.isdir():
            yield _Member(name, info.name, "dir", source=info)
        elif info.issym():
            yield _Member(name, info.name, "symlink", target=info.linkname, source=info)
        elif info.islnk():
            target = _check_name(archive, info.linkname)
            yield _Member(name, info.name, "hardlink", target=target, source=info)
        else:
            raise UnsafeArchiveError(archive, info.name, "not a file, directory or link")


def _zip_members(archive: str, zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        name = _check_name(archive, info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            if info.file_size > _PATH_MAX:
                raise UnsafeArchiveError(archive, info.filename, "symlink target too long")
            target = zf.read(info).decode("utf-8", errors="replace")
            yield _Member(name, info.filename, "symlink", target=target, source=info)
        elif info.is_dir():
            yield _Member(name, info.filename, "dir", source=info)
        elif kind in (0, stat.S_IFREG):
            mode = 0o755 if (info.external_attr >> 16) & 0o100 else 0o644
            yield _Member(name, info.filename, "file", info.file_size, mode=mode, source=info)
        else:
            raise UnsafeArchiveError(archive, info.filename, "not a file, directory or link")


# -- step 1: inspect ------------------------------------------------------------------------


def _check_name(archive: str, member: str) -> str:
    """The member's name, normalised; refuses names that cannot stay inside the root."""
    if "\x00" in member:
        raise UnsafeArchiveError(archive, member, "NUL in the name")
    path = member.replace("\\", "/")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise UnsafeArchiveError(archive, member, "absolute path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(archive, member, "'..' leaves the destination")
    if not parts:
        raise UnsafeArchiveError(archive, member, "empty name")
    if any(len(p.encode()) > _NAME_MAX for p in parts) or len(path.encode()) > _PATH_MAX:
        raise UnsafeArchiveError(archive, member, "name too long for the filesystem")
    return "/".join(parts)


def _inspect(
    archive: str, members: Iterator[_Member], archive_size: int, limits: ArchiveLimits
) -> list[_Member]:
    out: list[_Member] = []
    seen: dict[str, str] = {}
    expanded = 0
    for m in members:
        if len(out) >= limits.max_members:
            raise ArchiveLimitError(archive, f"more than {limits.max_members} members")
        if m.name in seen and not (m.kind == "dir" and seen[m.name] == "dir"):
            raise UnsafeArchiveError(archive, m.raw, "name appears twice")
        seen[m.name] = m.kind
        expanded += m.size
        _check_expanded(archive, expanded, archive_size, limits)
        out.append(m)
    return out


def _check_expanded(archive: str, expanded: int, archive_size: int, limits: ArchiveLimits) -> None:
    if expanded > limits.max_bytes:
        raise ArchiveLimitError(archive, f"expands past the cap of {limits.max_bytes} bytes")
    if expanded > limits.ratio_floor and expanded > limits.max_ratio * max(archive_size, 1):
        raise ArchiveLimitError(
            archive,
            f"expands to at least {expanded} bytes from {archive_size} "
            f"(ratio above {limits.max_ratio:g}; a decompression bomb?)",
        )


# -- step 2: resolve links against the whole tree --------------------------------------------


def _resolve_links(archive: str, members: list[_Member]) -> None:
    kinds = {m.name: m for m in members}
    links = {m.name: m.target for m in members if m.kind == "symlink"}
    for m in members:
        # Nothing is written through a symlink: every parent must be a plain directory.
        parts = m.name.split("/")
        for i in range(1, len(parts)):
            parent = kinds.get("/".join(parts[:i]))
            if parent is not None and parent.kind != "dir":
                raise UnsafeArchiveError(
                    archive, m.raw, f"its parent {parent.raw!r} is a {parent.kind}, not a directory"
                )
        if m.kind == "symlink":
            if m.target.startswith(("/", "\\")) or "\x00" in m.target or not m.target:
                raise UnsafeArchiveError(archive, m.raw, f"link to {m.target!r} points outside")
            _resolve(archive, m, parts[:-1] + m.target.replace("\\", "/").split("/"), links)
        elif m.kind == "hardlink":
            target = kinds.get(m.target)
            if target is None or target.kind != "file":
                raise UnsafeArchiveError(
                    archive, m.raw, f"hard link to {m.target!r}, which is not a file of the archive"
                )


def _resolve(archive: str, m: _Member, parts: list[str], links: dict[str, str]) -> None:
    """Walk ``parts`` from the root as the kernel would, expanding the archive's symlinks;
    refuse if the walk ever climbs above the root."""
    stack: list[str] = []
    pending = list(reversed(parts))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                raise UnsafeArchiveError(archive, m.raw, f"link to {m.target!r} points outside")
            stack.pop()
            continue
        here = "/".join([*stack, part])
        if here in links:
            hops += 1
            if hops > _MAX_LINK_HOPS:
                raise UnsafeArchiveError(archive, m.raw, "too many levels of symbolic links")
            target = links[here]
            if target.startswith(("/", "\\")):
                raise UnsafeArchiveError(archive, m.raw, f"link to {target!r} points outside")
            pending.extend(reversed(target.replace("\\", "/").split("/")))
            continue  # the link's target is relative to the directory holding it: stack
        stack.append(part)


# -- step 3: write ----------------------------------------------------------------------------


def _write(archive: str, members: list[_Member], read: Reader, root: Path,
           limits: ArchiveLimits) -> None:  # fmt: skip
    written = 0
    for m in members:
        path = root / m.name
        if m.kind == "dir":
            path.mkdir(parents=True, exist_ok=True)
        elif m.kind == "file":
            path.parent.mkdir(parents=True, exist_ok=True)
            with read(m) as src:
                written = _copy(archive, m, src, path, written, limits)
    for m in members:  # links last: nothing is ever written through one
        path = root / m.name
        path.parent.mkdir(parents=True, exist_ok=True)
        if m.kind == "hardlink":
            os.link(root / m.target, path, follow_symlinks=False)
        elif m.kind == "symlink":
            os.symlink(m.target, path)


def _copy(archive: str, m: _Member, src: IO[bytes], path: Path, written: int,
          limits: ArchiveLimits) -> int:  # fmt: skip
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, m.mode)
    got = 0
    try:
        while block := src.read(_BLOCK):
            got += len(block)
            if got > m.size:
                raise ArchiveError(archive, f"{m.raw!r} holds more than its {m.size} bytes")
            if written + got > limits.max_bytes:
                raise ArchiveLimitError(archive, f"expands past {limits.max_bytes} bytes")
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    if got != m.size:
        raise ArchiveError(archive, f"{m.raw!r} ends after {got} of {m.size} bytes")
    return written + got


def _check_space(dest: Path, needed: int) -> None:
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise InsufficientSpaceError(str(dest), needed=needed, available=free)


def _merge(src: Path, dest: Path) -> None:
    """Move every entry of ``src`` into ``dest``, merging directories that exist."""
    for entry in sorted(src.iterdir()):
        target = dest / entry.name
        if _real_dir(entry) and _real_dir(target):
            _merge(entry, target)
            continue
        if _real_dir(target) or (target.is_symlink() and _real_dir(entry)):
            raise ArchiveError(src.name, f"{entry.name} would replace {target}")
        os.replace(entry, target)


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()
