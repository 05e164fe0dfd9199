"""Turn a source URI into the list of files to fetch: listing, boundaries, filters, paths.

The :class:`Plan` is the currency between modules: a component that already listed (the
node cache's proof of access) passes its plan on (``streamer.download(plan=...)``)
instead of listing again, and :class:`PlannedFile` is the one record of a file that flows
from the plan through the engine, the manifest, the cache and the tensor stream.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from .backends.base import Backend, ObjectInfo
from .errors import InvalidURIError, ObjectNotFoundError
from .uri import ObjectURI


@dataclass(frozen=True)
class PlannedFile:
    """One file: the object as the store listed it (its version pinned) and where it lands.

    Attributes:
        info: key, size and ETag (the version pin sent as ``If-Match``) from the listing.
        rel: the path relative to the destination (a tensor shard: its basename).
        uri: the object's printable URI (no credentials), for errors, logs and manifests.
        md5: the hex MD5 of the content, once a download checked it (else None).
    """

    info: ObjectInfo
    rel: str
    uri: str
    md5: str | None = None

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def etag(self) -> str | None:
        return self.info.etag


@dataclass(frozen=True)
class Plan:
    source: ObjectURI
    files: tuple[PlannedFile, ...]
    exact_object: bool

    @property
    def total_bytes(self) -> int:
        return sum(f.info.size for f in self.files)


def matches(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """fnmatch ``rel`` (and its basename) against include/exclude patterns."""

    def hit(patterns: Sequence[str]) -> bool:
        base = posixpath.basename(rel)
        return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(base, p) for p in patterns)

    if include and not hit(include):
        return False
    return not (exclude and hit(exclude))


def safe_relpath(uri: str, rel: str) -> str:
    """Refuse relative paths that would escape the destination (``..``, absolute)."""
    norm = posixpath.normpath(rel)
    if rel.startswith("/") or norm.startswith("..") or norm in ("", "."):
        raise InvalidURIError(uri, f"object path {rel!r} would land outside the destination")
    if any(c < " " or c == "\x7f" for c in rel):
        raise InvalidURIError(uri, f"object path {rel!r} holds control characters")
    from .manifest import STATE_DIR  # deferred: manifest imports this module

    parts = norm.split("/")
    if parts[0] == STATE_DIR:
        raise InvalidURIError(uri, f"object path {rel!r} is under {STATE_DIR}/, "
                                   "weightstream's own state directory")  # fmt: skip
    if any(len(p.encode()) > 255 for p in parts):
        raise InvalidURIError(uri, f"object path {_short(rel)} has a name over 255 bytes")
    return norm


def _short(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")


def check_collisions(uri: str, rels: Sequence[str]) -> None:
    """Refuse two objects that would land on one path (``m/x.json``, ``m/./x.json``), or
    a file where another needs a directory (``m/a`` and ``m/a/b.json``), before anything
    is written."""
    files = set()
    for rel in rels:
        if rel in files:
            raise InvalidURIError(uri, f"two objects land on {_short(rel)}")
        files.add(rel)
    for rel in rels:
        parent = rel
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            if parent in files:
                raise InvalidURIError(
                    uri, f"object {_short(parent)} is a file where {_short(rel)} needs a "
                    "directory"
                )  # fmt: skip


async def plan(
    backend: Backend,
    source: ObjectURI,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Plan:
    """List ``source`` and decide what to fetch.

    A prefix matches whole path segments: ``s3://b/m`` takes the object ``m`` itself and
    everything under ``m/``, never ``m-old/...``. When ``m/`` has children they are
    fetched relative to it; otherwise the exact object ``m`` lands under its basename.

    Raises:
        ObjectNotFoundError: nothing exists there, or the filters left nothing.
    """
    key = source.key
    objects = await backend.list(key)
    dir_prefix = key if key.endswith("/") or key == "" else key + "/"
    if backend.capabilities.list_prefix:
        children = [o for o in objects if o.key.startswith(dir_prefix) and o.key != dir_prefix]
    else:
        children = []  # the location names one object
    exact = [o for o in objects if o.key == key and key and not key.endswith("/")]
    exact_object = not children and bool(exact)
    if exact_object:
        name = posixpath.basename(key.split("?", 1)[0].rstrip("/")) or "download"
        candidates = [(exact[0], name)]
    else:
        candidates = [
            (o, o.key[len(dir_prefix) :]) for o in children if not o.key.endswith("/")
        ]
    if not candidates:
        raise ObjectNotFoundError(str(source), "no objects at this location")
    files = tuple(
        PlannedFile(info, safe_relpath(str(source), rel), source.child(info.key))
        for info, rel in candidates
        if exact_object or matches(rel, include, exclude)
    )
    check_collisions(str(source), [f.rel for f in files])
    if not files:
        raise ObjectNotFoundError(
            str(source),
            f"{len(candidates)} objects found but none match the include/exclude patterns",
        )
    return Plan(source, files, exact_object)
