"""What makes two requests "the same model": the source identity and the pinned version.

* :func:`model_key` hashes the normalised source URI, every setting that picks the server
  it is fetched from, and the include/exclude patterns. The server belongs to the
  identity: ``s3://b/m`` on a requester's own endpoint is not ``s3://b/m`` on AWS, and
  ``hf://org/m`` from a mirror named by ``HF_ENDPOINT`` is not the Hub's, and must not
  share a directory with it (otherwise a rogue endpoint could poison the copy other pods
  are served). The settings: the endpoint URL of every scheme (S3 ``endpoint_url``,
  ``HF_ENDPOINT``, ``STORAGE_EMULATOR_HOST``, ``AZURE_STORAGE_ENDPOINT``), virtual-host
  addressing on a custom S3 endpoint (``bucket.host`` is another host), and the Azure
  account, and the S3 partition of the region on AWS's own endpoints (``cn-north-1`` is
  another bucket namespace than ``eu-west-1``). Within a partition the region is not part
  of it: a bucket name is unique there, the region only routes.
  ``http(s)://`` identities are the whole URL, query string included (``/dl?name=beta`` is
  not ``/dl?name=alpha``); only the printable :func:`source_name` drops the query.
* :func:`require_validators`: an ``http(s)://`` file without a strong ETag has no version
  a listing can pin (a same-size replacement would look unchanged), so it is not cached.
* :func:`version_of` hashes the pinned listing (each file's path, size and ETag), so a
  changed source gets a new directory instead of overwriting one that pods link into.

Single flight is keyed on both: N requests for the same model and version share one pull.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from streamer import ObjectURI
from streamer.plan import Plan, PlannedFile
from streamer.uri import HTTP_SCHEMES, redact

from .credentials import Endpoint
from .errors import NotCacheableError


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


def endpoint_of(uri: ObjectURI, endpoint: Endpoint) -> str:
    """Where the bytes really come from (http(s) URIs carry it; object stores may not)."""
    if uri.scheme in HTTP_SCHEMES or uri.scheme == "file":
        return ""
    return redact(endpoint.url or f"default:{uri.scheme}").rstrip("/")


def model_key(
    uri: ObjectURI,
    endpoint: Endpoint,
    *,
    include: Sequence[str],
    exclude: Sequence[str],
) -> str:
    """16 hex digits naming the source identity (see the module docstring)."""
    doc: dict[str, object] = {
        # The whole URL for http(s) (hashed, never shown): the query picks the object.
        "source": uri.raw if uri.scheme in HTTP_SCHEMES else source_name(uri),
        "endpoint": endpoint_of(uri, endpoint),
        "include": list(normalise_patterns(include)),
        "exclude": list(normalise_patterns(exclude)),
    }
    # Only present when they pick another server, so that identities without them stay
    # what they were (a cache keeps its models across the upgrade).
    if uri.scheme == "s3" and endpoint.url and endpoint.virtual_addressing:
        doc["virtual_addressing"] = True
    if uri.scheme == "s3" and not endpoint.url and _partition(endpoint.region) != "aws":
        doc["partition"] = _partition(endpoint.region)
    if uri.scheme == "az":
        doc["account"] = uri.account or endpoint.account or ""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _partition(region: str | None) -> str:
    """The AWS partition of a region: its own bucket namespace."""
    for prefix, partition in (("cn-", "aws-cn"), ("us-gov-", "aws-us-gov"),
                              ("us-isob-", "aws-iso-b"), ("us-iso-", "aws-iso"),
                              ("eu-isoe-", "aws-iso-e"), ("us-isof-", "aws-iso-f")):
        if (region or "").startswith(prefix):
            return partition
    return "aws"


def require_validators(uri: ObjectURI, plan: Plan) -> None:
    """Raise unless every planned ``http(s)://`` file has a strong ETag.

    Raises:
        NotCacheableError: a file has no ETag or only a weak one (``W/"..."``).
    """
    if uri.scheme not in HTTP_SCHEMES:
        return
    for f in plan.files:
        etag = (f.info.etag or "").strip()
        if not etag or etag.startswith(("W/", "w/")):
            raise NotCacheableError(
                f"{source_name(uri)} has no strong ETag: the node cache cannot tell a "
                "replaced object from the cached one, so it does not cache it (download "
                "it directly)")


def fingerprint(files: Sequence[tuple[str, int, str]]) -> str:
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


def pinned_files(plan: Plan) -> tuple[PlannedFile, ...]:
    """Every planned file, sorted by path: what a pull must deliver."""
    return tuple(sorted(plan.files, key=lambda f: f.rel))
