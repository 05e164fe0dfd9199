"""One error taxonomy: every error type carries its code, HTTP status and exit code, the
daemon's errors included, and everything that turns an error into a number reads them."""

from __future__ import annotations

import errno

import pytest

import initcontainer.errors
import sidecar.errors as cache_errors
from streamer import errors

# Imported for their subclasses: every package's errors join the one taxonomy.
assert initcontainer.errors.ArchiveError


def _all_types() -> list[type[errors.WeightstreamError]]:
    seen, todo = [], [errors.WeightstreamError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return seen


TYPES = [t for t in _all_types() if t is not cache_errors.ApiError]


def test_every_type_carries_the_three_numbers():
    for cls in TYPES:
        assert isinstance(cls.code, str) and cls.code, cls
        assert 400 <= cls.http_status < 600, cls
        assert cls.exit_code in (1, 2, 3, 4, 5), cls
        # ``status`` is the name of a status seen on the wire, never of the type's own.
        assert "status" not in vars(cls), cls


def test_types_sharing_a_code_share_their_numbers():
    by_code: dict[str, set[tuple[int, int]]] = {}
    for cls in TYPES:
        by_code.setdefault(cls.code, set()).add((cls.http_status, cls.exit_code))
    assert {code: n for code, n in by_code.items() if len(n) > 1} == {}


@pytest.mark.parametrize("exc, code, status, exit_code", [
    (errors.UsageError("bad flag"), "bad_request", 400, 2),
    (errors.InvalidURIError("s3://", "missing bucket"), "bad_request", 400, 2),
    (errors.ObjectNotFoundError("s3://b/m"), "source_not_found", 404, 3),
    (errors.AccessDeniedError("s3://b/m"), "access_denied", 403, 4),
    (errors.VersionChangedError("m/a", expected='"1"'), "version_changed", 409, 5),
    (errors.SafetensorsError("m/a", "bad header"), "integrity", 502, 5),
    (initcontainer.errors.ArchiveError("m.tar", "truncated"), "integrity", 502, 5),
    (errors.TransientError("s3://b/m", "503", status=503), "upstream_failed", 502, 1),
    (errors.TransferError("s3://b/m", attempts=5, last=TimeoutError()), "upstream_failed",
     502, 1),
    (errors.InsufficientSpaceError("/d", needed=2, available=1), "insufficient_space", 507, 1),
    (cache_errors.NotAllowedError("outside the allow-list"), "not_allowed", 403, 4),
    (cache_errors.ModelNotFoundError("no such model"), "model_not_found", 404, 3),
    (cache_errors.LeasedError("leased"), "leased", 409, 1),
    (OSError(errno.ENOSPC, "No space left on device"), "insufficient_space", 507, 1),
    (ConnectionResetError(), "upstream_failed", 502, 1),
    (RuntimeError("a bug at /secret/path"), "internal", 500, 1),
])
def test_classify_and_exit_codes_read_the_type(exc, code, status, exit_code):
    got_code, got_status, message = cache_errors.classify(exc)
    assert (got_code, got_status) == (code, status)
    assert errors.exit_code(exc) == exit_code
    if code == "internal":
        assert "/secret/path" not in message


@pytest.mark.parametrize("code, exit_code", [
    ("bad_request", 2), ("access_denied", 4), ("credentials_required", 4),
    ("grant_required", 4), ("not_allowed", 4), ("model_not_found", 3),
    ("source_not_found", 3), ("integrity", 5), ("leased", 1), ("no_such_code", 1),
])
def test_a_client_maps_the_daemon_code_to_the_same_exit_code(code, exit_code):
    e = cache_errors.ApiError(418, code, "answer")
    assert (e.status, e.code, e.exit_code) == (418, code, exit_code)
    assert errors.exit_code(e) == exit_code
