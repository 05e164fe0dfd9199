"""Every exception weightstream raises, with the fields a caller needs to act on it.

Each error derives from :class:`WeightstreamError` and, where one fits, from a built-in
(``ObjectNotFoundError`` is a ``FileNotFoundError``), so callers can catch either. Backends
translate SDK errors into these at their edge; :func:`is_retryable` is the one place that
decides whether an error is worth another attempt.

One taxonomy: every error type carries its stable API ``code`` (what clients of the node
cache branch on), the ``http_status`` the daemon answers it with, and the process
``exit_code`` of the CLI and the init container. The packages built on this one add
their errors as subclasses (``sidecar.errors``, ``initcontainer.errors``); there is no
table beside the classes. (``status`` fields, where an error has one, are the HTTP status
seen on the wire, e.g. the store's 503.)
"""

from __future__ import annotations

import errno
from typing import ClassVar


class WeightstreamError(Exception):
    """Root of every weightstream error."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1
    _by_code: ClassVar[dict[str, type[WeightstreamError]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # The first (most general) type declaring a code stands for it: see error_type.
        WeightstreamError._by_code.setdefault(cls.code, cls)


WeightstreamError._by_code["internal"] = WeightstreamError


def error_type(code: str) -> type[WeightstreamError]:
    """The error type that stands for an API ``code`` (the root for unknown codes), so a
    client that receives a code knows its exit code without a table."""
    return WeightstreamError._by_code.get(code, WeightstreamError)


class UsageError(WeightstreamError, ValueError):
    """The caller asked for something that cannot work (bad option, bad argument count)."""

    code = "bad_request"
    http_status = 400
    exit_code = 2


def strip_secrets(uri: str) -> str:
    """Drop userinfo, query string and fragment (presigned signatures, SAS tokens)."""
    uri = uri.split("?", 1)[0].split("#", 1)[0]
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


class InvalidURIError(UsageError):
    """A source or destination URI is malformed (the URI kept here has no secrets)."""

    def __init__(self, uri: str, reason: str) -> None:
        uri = strip_secrets(uri)
        self.uri = uri
        self.reason = reason
        super().__init__(f"invalid URI {uri!r}: {reason}")


class UnsupportedSchemeError(UsageError):
    """No backend handles this URI scheme (or its optional dependency is missing)."""

    def __init__(self, scheme: str, *, hint: str = "") -> None:
        self.scheme = scheme
        self.hint = hint
        msg = f"unsupported URI scheme {scheme!r}"
        super().__init__(f"{msg}: {hint}" if hint else msg)


class ObjectNotFoundError(WeightstreamError, FileNotFoundError):
    """The bucket, prefix or object does not exist (or the prefix matched nothing)."""

    code = "source_not_found"
    http_status = 404
    exit_code = 3

    def __init__(self, uri: str, reason: str = "not found") -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"{uri}: {reason}")

    def __str__(self) -> str:
        return f"{self.uri}: {self.reason}"


class AccessDeniedError(WeightstreamError, PermissionError):
    """The store refused the credentials in use (403, or 401 with bad credentials)."""

    code = "access_denied"
    http_status = 403
    exit_code = 4

    def __init__(self, uri: str, reason: str = "access denied") -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"{uri}: {reason}")

    def __str__(self) -> str:
        return f"{self.uri}: {self.reason}"


class IntegrityError(WeightstreamError):
    """Downloaded bytes do not match what the store or the file format promises."""

    code = "integrity"
    http_status = 502
    exit_code = 5

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class VersionChangedError(IntegrityError):
    """The object changed while it was being read (If-Match failed, ETag differs)."""

    code = "version_changed"
    http_status = 409

    def __init__(self, path: str, *, expected: str | None, actual: str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        detail = f"expected ETag {expected}" + (f", store now has {actual}" if actual else "")
        super().__init__(path, f"object changed during download ({detail})")


class ObjectSizeError(IntegrityError):
    """The object's size is not the one the download was planned with (a listing or HEAD
    that under-reports, or the object replaced by one of another size)."""

    def __init__(self, path: str, *, expected: int, actual: int | None) -> None:
        self.expected = expected
        self.actual = actual
        got = "an unknown size" if actual is None else f"{actual} bytes"
        super().__init__(path, f"the store now reports {got}; the download was planned "
                               f"for {expected} bytes")  # fmt: skip


class ObjectReplacedError(VersionChangedError):
    """An object without a strong ETag changed while it was read (its size or
    Last-Modified differ afterwards): the bytes written may mix two versions."""

    def __init__(self, path: str, *, detail: str) -> None:
        IntegrityError.__init__(self, path, f"object changed during download ({detail})")
        self.expected = None
        self.actual = None


class ChecksumMismatchError(IntegrityError):
    """The bytes written do not match the checksum the store holds for the object."""

    def __init__(self, path: str, *, algorithm: str, expected: str, actual: str) -> None:
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        super().__init__(path, f"{algorithm} {actual} differs from the store's {expected}; "
                               "nothing published")  # fmt: skip


class SafetensorsError(IntegrityError):
    """A ``.safetensors`` file or its index is malformed."""


class UpstreamError(WeightstreamError):
    """The store failed us (base of the transport failures)."""

    code = "upstream_failed"
    http_status = 502


class TransientError(UpstreamError):
    """A failure worth retrying: 5xx, SlowDown, reset, timeout, short body."""

    def __init__(self, uri: str, reason: str, *, status: int | None = None) -> None:
        self.uri = uri
        self.reason = reason
        self.status = status
        super().__init__(f"{uri}: {reason}")


class StoreError(UpstreamError):
    """The store rejected a request for a reason retrying will not fix (e.g. 400)."""

    def __init__(self, uri: str, reason: str, *, status: int | None = None) -> None:
        self.uri = uri
        self.reason = reason
        self.status = status
        super().__init__(f"{uri}: {reason}")


class RangeNotSupportedError(UpstreamError):
    """The server answered a ranged GET with the whole object."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        super().__init__(f"{uri}: server ignored the Range header")


class TransferError(UpstreamError):
    """A range could not be fetched within the retry budget."""

    def __init__(self, uri: str, *, attempts: int, last: BaseException) -> None:
        self.uri = uri
        self.attempts = attempts
        self.last = last
        super().__init__(f"{uri}: giving up after {attempts} attempts: {last}")


class DistributedLoadError(WeightstreamError):
    """A load shared by the ranks of a process group failed; raised on every rank.

    Attributes:
        rank: this process's rank in the group.
        failed: rank -> what went wrong there (its error, or that it did not answer).
    """

    def __init__(self, *, rank: int, failed: dict[int, str], reason: str) -> None:
        self.rank = rank
        self.failed = dict(failed)
        self.reason = reason
        detail = "; ".join(f"rank {r}: {msg}" for r, msg in sorted(self.failed.items()))
        super().__init__(f"distributed load failed on rank {rank}: {reason}" + (
            f" ({detail})" if detail else ""
        ))  # fmt: skip


class InsufficientSpaceError(WeightstreamError, OSError):
    """The destination filesystem cannot hold the download."""

    code = "insufficient_space"
    http_status = 507

    def __init__(self, path: str, *, needed: int, available: int) -> None:
        self.path = path
        self.needed = needed
        self.available = available
        OSError.__init__(
            self,
            errno.ENOSPC,
            f"not enough space in {path}: need {needed} bytes, {available} available",
        )

    def __str__(self) -> str:
        return str(self.args[1])


def is_retryable(exc: BaseException) -> bool:
    """Decide whether another attempt at the same request can succeed."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, WeightstreamError):
        return False
    # Raw socket-level failures that escaped a backend's translation.
    return isinstance(exc, (ConnectionError, TimeoutError))


def exit_code(exc: BaseException) -> int:
    """The process exit code for an exception: its type's, or 1 for anything else."""
    return exc.exit_code if isinstance(exc, WeightstreamError) else 1
