"""Find the backend for a URI scheme; imports are deferred so a run loads only the SDK it uses."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UnsupportedSchemeError
from ..settings import StorageSettings
from ..uri import FSSPEC_SCHEMES, ObjectURI
from .base import Backend

BackendFactory = Callable[[ObjectURI, StorageSettings], Backend]


@dataclass(frozen=True)
class _Entry:
    module: str
    factory: str


_REGISTRY: dict[str, _Entry] = {
    "s3": _Entry("streamer.backends.s3", "S3Backend.from_uri"),
    "http": _Entry("streamer.backends.http", "HTTPBackend.from_uri"),
    "https": _Entry("streamer.backends.http", "HTTPBackend.from_uri"),
    "file": _Entry("streamer.backends.local", "LocalBackend.from_uri"),
    "gs": _Entry("streamer.backends.gcs", "GCSBackend.from_uri"),
    "az": _Entry("streamer.backends.azure", "AzureBackend.from_uri"),
    "hf": _Entry("streamer.backends.hf", "HFBackend.from_uri"),
    # No native backend: fsspec is the fallback (remote filesystems only, see uri.py).
    **{scheme: _Entry("streamer.backends.fsspec", "FsspecBackend.from_uri")
       for scheme in FSSPEC_SCHEMES},
}
_OVERRIDES: dict[str, BackendFactory] = {}


def register_backend(scheme: str, factory: BackendFactory) -> None:
    """Register (or replace) the backend for ``scheme``; used by plugins and tests."""
    _OVERRIDES[scheme] = factory


def has_backend(scheme: str) -> bool:
    """Whether :func:`open_backend` has a backend for ``scheme`` (its module imports)."""
    if scheme in _OVERRIDES:
        return True
    entry = _REGISTRY.get(scheme)
    if entry is None:
        return False
    try:
        importlib.import_module(entry.module)
    except ImportError:
        return False
    return True


def preload(*schemes: str) -> None:
    """Import the backend modules of ``schemes`` now (blocking): a server calls it at
    startup, off its event loop, so that its first request does not stall the loop for
    the SDK imports (botocore and obstore take 0.5-2 s here). Unknown schemes and
    missing optional SDKs are skipped (:func:`open_backend` reports them)."""
    for scheme in schemes:
        has_backend(scheme)


def open_backend(uri: ObjectURI, storage: StorageSettings) -> Backend:
    """Return a backend for ``uri``'s bucket.

    Raises:
        UnsupportedSchemeError: no backend, or its optional dependency is not installed.
    """
    if uri.scheme in _OVERRIDES:
        return _OVERRIDES[uri.scheme](uri, storage)
    entry = _REGISTRY.get(uri.scheme)
    if entry is None:
        raise UnsupportedSchemeError(uri.scheme)
    try:
        module = importlib.import_module(entry.module)
    except ImportError as e:
        # Every built-in backend's SDK is a core dependency: this is a broken install.
        hint = f"backend module {entry.module} cannot be imported ({e})"
        raise UnsupportedSchemeError(uri.scheme, hint=hint) from e
    target: object = module
    for attr in entry.factory.split("."):
        target = getattr(target, attr)
    return target(uri, storage)  # type: ignore[operator]
