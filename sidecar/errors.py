"""The node cache's errors: part of the one taxonomy of :mod:`streamer.errors`.

Each type carries its stable API ``code``, the ``http_status`` the daemon answers it with
and its process ``exit_code``, like every :class:`~streamer.errors.WeightstreamError`. The
daemon answers every failure as JSON ``{"code": ..., "message": ...}``; the code is the
contract (clients branch on it), the message is for people. :func:`classify` reads those
attributes off any weightstream error, and sorts the rest (OS errors by errno) without
ever matching message text.
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
    """Root of the node cache's errors (``internal``, 500, exit 1 unless a type says more)."""

    def __init__(self, message: str, *, model_id: str | None = None) -> None:
        self.message = message
        self.model_id = model_id
        super().__init__(message)


class BadRequestError(CacheError, ValueError):
    """The request is malformed (bad JSON, wrong types, unknown fields, bad URI)."""

    code = "bad_request"
    http_status = 400
    exit_code = 2


class NotAllowedError(CacheError, PermissionError):
    """The URI is outside the daemon's allow-list (or a scheme the daemon never fetches)."""

    code = "not_allowed"
    http_status = 403
    exit_code = 4


class CredentialsRequiredError(CacheError, PermissionError):
    """The requester sent no credentials of its own (the daemon never lends its own)."""

    code = "credentials_required"
    http_status = 401
    exit_code = 4


class GrantRequiredError(CacheError, PermissionError):
    """A file or lease call without a valid grant from a successful ``ensure``."""

    code = "grant_required"
    http_status = 401
    exit_code = 4


class NotCacheableError(CacheError):
    """The source has no validator the daemon can pin a version with (an ``http(s)://``
    object without a strong ETag): it is not cached rather than served stale."""

    code = "not_cacheable"
    http_status = 422


class TooManyGrantsError(CacheError):
    """The daemon holds as many live grants as it keeps; new ones wait for old to expire
    (no requester's live grant is ever pushed out by another's)."""

    code = "too_many_grants"
    http_status = 429


class ModelNotFoundError(CacheError, LookupError):
    """No model with this id is known to the daemon."""

    code = "model_not_found"
    http_status = 404
    exit_code = 3


class FileNotInModelError(CacheError, LookupError):
    """The model has no such file."""

    code = "file_not_found"
    http_status = 404
    exit_code = 3


class PathEscapeError(CacheError, ValueError):
    """A path would leave the directory it must stay in (``..``, absolute, symlink)."""

    code = "path_escape"
    http_status = 400
    exit_code = 2


class NotReadyError(CacheError):
    """The model is not (yet) ready: its files cannot be served or leased."""

    code = "not_ready"
    http_status = 409


class PeerCycleError(NotReadyError):
    """A peer asked for bytes this daemon is reading from that peer (two daemons would
    wait on each other): it reads them elsewhere (:mod:`sidecar.peers.fill`)."""

    code = "peer_cycle"
    http_status = 423


class LeasedError(CacheError):
    """Eviction refused: the model holds live leases."""

    code = "leased"
    http_status = 409


class BusyError(CacheError):
    """Eviction refused: the model is being pulled."""

    code = "busy"
    http_status = 409


class InsufficientCapacityError(CacheError, OSError):
    """The model cannot fit under the capacity / free-disk watermark without evicting
    leased models (or the disk filled up during the pull)."""

    code = "insufficient_space"
    http_status = 507

    def __init__(self, message: str, *, needed: int = 0, model_id: str | None = None) -> None:
        self.needed = needed
        CacheError.__init__(self, message, model_id=model_id)
        self.errno = errno.ENOSPC

    def __str__(self) -> str:
        return self.message


class KubeApiError(CacheError, ConnectionError):
    """The Kubernetes API server could not be reached or answered an error (``status`` 0
    when no answer came); ``what`` names the request (``list pods``), never a token. The
    daemon's own business (pod awareness, peer discovery): never an API answer, so it has
    no code of its own."""

    def __init__(self, what: str, *, status: int = 0, reason: str = "") -> None:
        self.what = what
        self.status = status
        self.reason = reason
        answer = f"HTTP {status} {reason}".strip() if status else reason or "no answer"
        super().__init__(f"{what}: {answer}")


class DaemonUnavailableError(CacheError, ConnectionError):
    """Client side: no daemon answers on the socket."""

    code = "daemon_unavailable"
    http_status = 503


class PeerAuthError(CacheError, PermissionError):
    """A request on the peer listener not signed with the cluster secret (or stale, or
    replayed): :mod:`sidecar.peers.auth`."""

    code = "peer_auth"
    http_status = 403
    exit_code = 4


class PeerReadError(CacheError, ConnectionError):
    """A read from a peer failed (refused, stalled, short, wrong range): the range falls
    back to the origin. ``kind`` is a bounded metrics label."""

    code = "peer_read"
    http_status = 502

    def __init__(self, message: str, *, peer: str, kind: str) -> None:
        super().__init__(message)
        self.peer = peer
        self.kind = kind


class ApiError(CacheError):
    """Client side: the daemon answered with an error document.

    ``status`` is the answer's HTTP status, ``code`` its API code; the exit code is that of
    the error type standing for the code (:func:`streamer.errors.error_type`).
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code  # type: ignore[misc]  # the daemon's code, not this type's
        self.exit_code = se.error_type(code).exit_code  # type: ignore[misc]
        super().__init__(message)


def classify(exc: BaseException) -> tuple[str, int, str]:
    """Map any exception to ``(code, status, message)`` for the API.

    Unknown exceptions become ``internal`` with a generic message: their text may hold
    paths or details that do not belong in an API answer (the daemon logs them).
    """
    if isinstance(exc, CacheError):
        return exc.code, exc.http_status, scrub(exc.message)
    if isinstance(exc, se.WeightstreamError) and type(exc).code != se.WeightstreamError.code:
        return exc.code, exc.http_status, scrub(str(exc))
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        full = InsufficientCapacityError
        return full.code, full.http_status, f"the cache disk is full ({exc.strerror})"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        up = se.UpstreamError
        return up.code, up.http_status, f"upstream connection failed: {type(exc).__name__}"
    root = se.WeightstreamError
    return root.code, root.http_status, "internal error (see the daemon's log)"
