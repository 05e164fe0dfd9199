"""Extract a single downloaded archive the way KServe does, but never outside the destination.

KServe extracts a lone ``.tar``/``.tar.gz``/``.tgz``/``.zip`` into the destination and
deletes it. Here every member is checked before anything is written (absolute paths,
``..``, links whose target leaves the destination, device files: tarfile's ``data``
filter plus our own name checks, which also cover zip files), the archive is extracted into
a staging directory beside the destination, and only then are its entries moved into
place. A refused or corrupt archive leaves nothing extracted.
"""

from __future__ import annotations

import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from pathlib import Path

from streamer.errors import InsufficientSpaceError
from streamer.manifest import STATE_DIR

from .errors import ArchiveError, UnsafeArchiveError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)


def is_archive(name: str) -> bool:
    """True for the names KServe unpacks (by suffix, case-insensitive)."""
    return name.lower().endswith(TAR_SUFFIXES + ZIP_SUFFIXES)


def extract(archive: Path, dest: Path, *, remove: bool = True) -> list[str]:
    """Extract ``archive`` into ``dest`` and (by default) delete the archive.

    Returns:
        The top-level names extracted, sorted.

    Raises:
        UnsafeArchiveError: a member would land outside ``dest``; nothing extracted.
        ArchiveError: the archive is corrupt or truncated; nothing extracted.
        InsufficientSpaceError: the extracted size does not fit on the filesystem.
    """
    name = archive.name
    staging = dest / STATE_DIR / f"extract-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        try:
            if name.lower().endswith(ZIP_SUFFIXES):
                _extract_zip(archive, staging)
            else:
                _extract_tar(archive, staging)
        except _CORRUPT as e:
            raise ArchiveError(name, f"cannot extract archive ({type(e).__name__}: {e})") from e
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


# -- checks shared by both formats ------------------------------------------------------


def _check_name(archive: str, member: str) -> str:
    if member.startswith(("/", "\\")) or (len(member) > 1 and member[1] == ":"):
        raise UnsafeArchiveError(archive, member, "absolute path")
    parts = member.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafeArchiveError(archive, member, "'..' leaves the destination")
    return posixpath.normpath(member.replace("\\", "/"))


def _check_link(archive: str, member: str, target: str) -> None:
    if target.startswith(("/", "\\")):
        raise UnsafeArchiveError(archive, member, f"link to absolute path {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(archive, member, f"link to {target!r} points outside")


def _check_space(dest: Path, needed: int) -> None:
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise InsufficientSpaceError(str(dest), needed=needed, available=free)


# -- formats ----------------------------------------------------------------------------


def _extract_tar(archive: Path, staging: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        for m in members:
            norm = _check_name(archive.name, m.name)
            if m.issym():
                _check_link(archive.name, norm, m.linkname)
            elif m.islnk():  # hard link targets are relative to the archive root
                _check_link(archive.name, "", m.linkname)
            try:
                tarfile.data_filter(m, str(staging))
            except tarfile.FilterError as e:
                raise UnsafeArchiveError(archive.name, m.name, str(e)) from e
        _check_space(staging, sum(m.size for m in members if m.isfile()))
        tf.extractall(staging, members=members, filter="data")


def _extract_zip(archive: Path, staging: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            norm = _check_name(archive.name, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                target = zf.read(info).decode("utf-8", errors="replace")
                _check_link(archive.name, norm, target)
        _check_space(staging, sum(i.file_size for i in infos))
        zf.extractall(staging)


def _merge(src: Path, dest: Path) -> None:
    """Move every entry of ``src`` into ``dest``, merging directories that exist."""
    for entry in sorted(src.iterdir()):
        target = dest / entry.name
        if _real_dir(entry) and _real_dir(target):
            _merge(entry, target)
            continue
        if _real_dir(target):
            raise ArchiveError(src.name, f"{entry.name} would replace the directory {target}")
        os.replace(entry, target)


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()
