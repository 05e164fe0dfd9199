"""Errors the init container adds to :mod:`streamer.errors` (same root, same exit codes)."""

from __future__ import annotations

from streamer.errors import IntegrityError


class ArchiveError(IntegrityError):
    """A downloaded archive cannot be extracted (corrupt, truncated, unknown format)."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would land outside the destination (zip-slip, tar-slip, absolute
    paths, links pointing outside, device files); nothing was extracted."""

    def __init__(self, path: str, member: str, reason: str) -> None:
        self.member = member
        super().__init__(path, f"unsafe archive member {member!r}: {reason}; nothing extracted")


class ArchiveLimitError(ArchiveError):
    """An archive exceeds a cap (members, expanded size, compression ratio: a
    decompression bomb); nothing was extracted."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, f"{reason}; nothing extracted")
