"""What every HTTP data path checks the same way: status codes, ``Content-Range``, ETags.

Shared by the aiohttp data paths (:mod:`.http`, :mod:`.hf`); it imports no HTTP client.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import (
    AccessDeniedError,
    ObjectNotFoundError,
    ObjectSizeError,
    StoreError,
    TransientError,
    VersionChangedError,
)

CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def raise_for_status(
    uri: str, status: int, headers: Any, *, etag: str | None = None, denied_hint: str = ""
) -> None:
    """Map an HTTP status to the typed errors (412 version changed, 404/410 not found,
    401/403 denied, 5xx/408/429 retryable, other 4xx final)."""
    if status < 300:
        return
    if status == 412:
        raise VersionChangedError(uri, expected=etag, actual=headers.get("ETag"))
    if status == 404 or status == 410:
        raise ObjectNotFoundError(uri)
    if status in (401, 403):
        hint = f"; {denied_hint}" if denied_hint else ""
        raise AccessDeniedError(uri, f"access denied (HTTP {status}{hint})")
    if status >= 500 or status in (408, 429):
        raise TransientError(uri, f"HTTP {status}", status=status)
    raise StoreError(uri, f"HTTP {status}", status=status)


def check_content_range(
    uri: str, header: str | None, start: int, end: int, *, total: int | None = None
) -> None:
    """A 206 must carry exactly the bytes asked for: ``bytes start-(end-1)/total``.

    With ``total`` (the size the plan was made with), the object's total must be that
    size too: a store (or a HEAD) that reported fewer bytes than the object holds would
    otherwise publish a truncated file.

    Raises:
        TransientError: the range is not the one asked for (a proxy or transport fault).
        ObjectSizeError: the object's total size is not the planned one.
    """
    m = CONTENT_RANGE.match((header or "").strip())
    if not m or int(m.group(1)) != start or int(m.group(2)) != end - 1:
        raise TransientError(
            uri, f"Content-Range {_short(header)} does not match the requested bytes "
            f"{start}-{end - 1}"
        )  # fmt: skip
    if total is not None and m.group(3) != str(total):
        actual = None if m.group(3) == "*" else int(m.group(3))
        raise ObjectSizeError(uri, expected=total, actual=actual)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def check_etag(uri: str, expected: str | None, actual: str | None) -> None:
    """The body must be of the version pinned (weak and strong forms compare equal)."""
    if expected and actual and expected.removeprefix("W/") != actual.removeprefix("W/"):
        raise VersionChangedError(uri, expected=expected, actual=actual)
