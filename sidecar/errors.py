"""Every error the node cache raises, each with a stable API ``code`` and HTTP ``status``.

The daemon answers every failure as JSON ``{"code": ..., "message": ...}``; the code is the
contract (clients branch on it), the message is for people. :func:`classify` is the one
place that maps engine errors (:mod:`streamer.errors`) and OS errors to codes, by type and
errno, never by matching message text.
"""

from __future__ import annotations

import errno
import re

from streamer import errors as se

# Query strings may carry signatures (presigned URLs): never let one into a message.
_URL_QUERY = re.compile(r"""(\b[a-z][a-z0-9+.-]*://[^\s?"'<>]+)\?[^\s"'<>]*""", re.IGNORECASE)


def scrub(message: str) -> str:
    """Remove query strings from any URL in ``message``."""
    return _URL_QUERY.sub(r"\1?<redacted>", message)


class CacheError(se.WeightstreamError):
    """Root of the node cache's errors."""

    code = "internal"
    status = 500

    def __init__(self, message: str, *, model_id: str | None = None) -> None:
        self.message = message
        self.model_id = model_id
        super().__init__(message)


class BadRequestError(CacheError, ValueError):
    """The request is malformed (bad JSON, wrong types, unknown fields, bad URI)."""

    code = "bad_request"
    status = 400
    exit_code = 2


class NotAllowedError(CacheError, PermissionError):
    """The URI is outside the daemon's allow-list (or a scheme the daemon never fetches)."""

    code = "not_allowed"
    status = 403
    exit_code = 4


class CredentialsRequiredError(CacheError, PermissionError):
    """The requester sent no credentials of its own (the daemon never lends its own)."""

    code = "credentials_required"
    status = 401
    exit_code = 4


class GrantRequiredError(CacheError, PermissionError):
    """A file or lease call without a valid grant from a successful ``ensure``."""

    code = "grant_required"
    status = 401
    exit_code = 4


class NotCacheableError(CacheError):
    """The source has no validator the daemon can pin a version with (an ``http(s)://``
    object without a strong ETag): it is not cached rather than served stale."""

    code = "not_cacheable"
    status = 422


class TooManyGrantsError(CacheError):
    """The daemon holds as many live grants as it keeps; new ones wait for old to expire
    (no requester's live grant is ever pushed out by another's)."""

    code = "too_many_grants"
    status = 429


class ModelNotFoundError(CacheError, LookupError):
    """No model with this id is known to the daemon."""

    code = "model_not_found"
    status = 404
    exit_code = 3


class FileNotInModelError(CacheError, LookupError):
    """The model has no such file."""

    code = "file_not_found"
    status = 404
    exit_code = 3


class PathEscapeError(CacheError, ValueError):
    """A path would leave the directory it must stay in (``..``, absolute, symlink)."""

    code = "path_escape"
    status = 400
    exit_code = 2


class NotReadyError(CacheError):
    """The model is not (yet) ready: its files cannot be served or leased."""

    code = "not_ready"
    status = 409


class LeasedError(CacheError):
    """Eviction refused: the model holds live leases."""

    code = "leased"
    status = 409


class BusyError(CacheError):
    """Eviction refused: the model is being pulled."""

    code = "busy"
    status = 409


class InsufficientCapacityError(CacheError, OSError):
    """The model cannot fit under the capacity / free-disk watermark without evicting
    leased models (or the disk filled up during the pull)."""

    code = "insufficient_space"
    status = 507

    def __init__(self, message: str, *, needed: int = 0, model_id: str | None = None) -> None:
        self.needed = needed
        CacheError.__init__(self, message, model_id=model_id)
        self.errno = errno.ENOSPC

    def __str__(self) -> str:
        return self.message


class DaemonUnavailableError(CacheError, ConnectionError):
    """Client side: no daemon answers on the socket."""

    code = "daemon_unavailable"
    status = 503


class ApiError(CacheError):
    """Client side: the daemon answered with an error document."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(message)
        self.exit_code = {400: 2, 401: 4, 403: 4, 404: 3}.get(status, 1)


# Engine errors -> (code, HTTP status). Order matters: subclasses first.
_ENGINE_CODES: tuple[tuple[type[BaseException], str, int], ...] = (
    (se.InvalidURIError, "bad_request", 400),
    (se.UnsupportedSchemeError, "bad_request", 400),
    (se.UsageError, "bad_request", 400),
    (se.ObjectNotFoundError, "source_not_found", 404),
    (se.AccessDeniedError, "access_denied", 403),
    (se.VersionChangedError, "version_changed", 409),
    (se.IntegrityError, "integrity", 502),
    (se.InsufficientSpaceError, "insufficient_space", 507),
    (se.TransferError, "upstream_failed", 502),
    (se.TransientError, "upstream_failed", 502),
    (se.StoreError, "upstream_failed", 502),
    (se.RangeNotSupportedError, "upstream_failed", 502),
)


def classify(exc: BaseException) -> tuple[str, int, str]:
    """Map any exception to ``(code, status, message)`` for the API.

    Unknown exceptions become ``internal`` with a generic message: their text may hold
    paths or details that do not belong in an API answer (the daemon logs them).
    """
    if isinstance(exc, CacheError):
        return exc.code, exc.status, scrub(exc.message)
    for kind, code, status in _ENGINE_CODES:
        if isinstance(exc, kind):
            return code, status, scrub(str(exc))
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "insufficient_space", 507, f"the cache disk is full ({exc.strerror})"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return "upstream_failed", 502, f"upstream connection failed: {type(exc).__name__}"
    return "internal", 500, "internal error (see the daemon's log)"
