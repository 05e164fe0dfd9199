"""``file://`` and local-path sources: linked into the destination, never copied.

Like KServe's ``_download_local``: each top-level entry of a source directory (or the
source file itself) becomes a symlink in the destination; an entry that already exists
there is left alone. With include/exclude patterns, matching files are linked one by one
(directories recreated). A lone archive is extracted instead (see :mod:`.archive`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from streamer.errors import ObjectNotFoundError
from streamer.plan import matches

log = logging.getLogger(__name__)


def link_local(
    src: Path, dst: Path, *, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
) -> list[str]:
    """Symlink ``src`` (a file or a directory's entries) into the directory ``dst``.

    Returns:
        The names linked (relative to ``dst``), sorted.

    Raises:
        ObjectNotFoundError: ``src`` does not exist, or nothing in it matched.
    """
    if not src.exists():
        raise ObjectNotFoundError(str(src), "no such file or directory")
    dst.mkdir(parents=True, exist_ok=True)
    if src.is_file():
        pairs = [(src, src.name)]
    elif include or exclude:
        pairs = [
            (path, rel)
            for path in sorted(p for p in src.rglob("*") if p.is_file())
            if matches(rel := path.relative_to(src).as_posix(), include, exclude)
        ]
    else:
        pairs = [(entry, entry.name) for entry in sorted(src.iterdir())]
    if not pairs:
        raise ObjectNotFoundError(str(src), "no files to link")
    for target, rel in pairs:
        _symlink(target.absolute(), dst / rel)
    return sorted(rel for _, rel in pairs)


def _symlink(target: Path, link: Path) -> None:
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    if link.exists() or link.is_symlink():
        log.info("%s already exists; leaving it as it is", link)
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    os.symlink(target, tmp)
    os.replace(tmp, link)
