"""What makes two requests "the same model": the source identity and the pinned version.

* :func:`model_key` hashes the normalised source URI, the endpoint it is fetched from and
  the include/exclude patterns. The endpoint belongs to the identity: ``s3://b/m`` on a
  requester's own endpoint is not ``s3://b/m`` on AWS, and must not share a directory with
  it (otherwise a rogue endpoint could poison the copy other pods are served).
* :func:`version_of` hashes the pinned listing (each file's path, size and ETag), so a
  changed source gets a new directory instead of overwriting one that pods link into.

Single flight is keyed on both: N requests for the same model and version share one pull.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from streamer import ObjectURI, StorageSettings
from streamer.plan import Plan
from streamer.uri import HTTP_SCHEMES, redact


def normalise_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """Order and duplicates of fnmatch patterns do not change what they select."""
    return tuple(sorted(set(patterns)))


def source_name(uri: ObjectURI) -> str:
    """The printable, credential-free form of a source (also what the API shows)."""
    if uri.scheme in HTTP_SCHEMES:
        return redact(uri.raw)
    if uri.scheme == "hf":
        return f"hf://{uri.bucket}/{uri.key}".rstrip("/") + f"@{uri.revision}"
    if uri.scheme == "file":
        return f"file://{uri.key}"
    return f"{uri.scheme}://{uri.bucket}/{uri.key}"


def endpoint_of(uri: ObjectURI, storage: StorageSettings) -> str:
    """Where the bytes really come from (http(s) URIs carry it; object stores may not)."""
    if uri.scheme in HTTP_SCHEMES or uri.scheme == "file":
        return ""
    endpoint = storage.endpoint_url or f"default:{uri.scheme}"
    return redact(endpoint).rstrip("/")


def model_key(
    uri: ObjectURI,
    storage: StorageSettings,
    *,
    include: Sequence[str],
    exclude: Sequence[str],
) -> str:
    """16 hex digits naming the source identity (see the module docstring)."""
    doc = {
        "source": source_name(uri),
        "endpoint": endpoint_of(uri, storage),
        "include": list(normalise_patterns(include)),
        "exclude": list(normalise_patterns(exclude)),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(files: Sequence[tuple[str, int, str | None]]) -> str:
    """12 hex digits naming a version: sorted (path, size, ETag) of every file."""
    rows = sorted((rel, size, etag or "") for rel, size, etag in files)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:12]


def version_of(plan: Plan) -> str:
    """The version of a planned listing (ETag, or modification time when there is none)."""
    return fingerprint([(f.rel, f.info.size, _pin(f.info.etag, f.info.last_modified))
                        for f in plan.files])


def _pin(etag: str | None, last_modified: float | None) -> str:
    if etag:
        return etag.strip('"')
    return f"mtime:{last_modified}" if last_modified is not None else ""


def pinned_files(plan: Plan) -> tuple[tuple[str, int, str | None], ...]:
    """``(path, size, etag)`` of every planned file, sorted: what a pull must deliver."""
    return tuple(sorted((f.rel, f.info.size, f.info.etag) for f in plan.files))
