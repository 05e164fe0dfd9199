"""Parse the source URIs weightstream accepts into one value type.

Accepted forms::

    s3://bucket/prefix          gs://bucket/prefix          az://container/prefix
    hf://org/model[@revision]   http(s)://host[:port]/path  file:///abs/path, ./rel/path
    https://<account>.blob.core.windows.net/<container>/<path>   (Azure Blob)
    webhdfs://namenode[:port]/path   hdfs://namenode[:port]/path   (through fsspec)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import InvalidURIError, UnsupportedSchemeError, strip_secrets

OBJECT_STORE_SCHEMES = ("s3", "gs", "az", "hf")
HTTP_SCHEMES = ("http", "https")
# Schemes with no native backend, served through fsspec (streamer/backends/fsspec.py):
# remote filesystems only; their "bucket" is the server's host[:port].
FSSPEC_SCHEMES = ("webhdfs", "swebhdfs", "hdfs")
_AZURE_BLOB_HOST = re.compile(r"^(?P<account>[a-z0-9]{3,24})\.blob\.core\.windows\.net$")
# S3 bucket names: 3-63 chars, lowercase, digits, dots, hyphens (we also accept the
# legacy underscore form some on-prem stores allow).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")


@dataclass(frozen=True)
class ObjectURI:
    """A parsed source location.

    Attributes:
        scheme: ``s3``, ``gs``, ``az``, ``hf``, ``http``, ``https``, ``file``, or one of
            :data:`FSSPEC_SCHEMES`.
        bucket: bucket / container / repository id; for http(s) the ``scheme://host:port``
            origin; for the fsspec schemes the server's ``host[:port]``; empty for ``file``.
        key: the object key or prefix inside the bucket (no leading slash); for ``file``
            the absolute path.
        raw: the string as the user gave it.
        account: the Azure storage account, when known.
        revision: the Hugging Face revision, when given.
    """

    scheme: str
    bucket: str
    key: str
    raw: str
    account: str = ""
    revision: str = ""

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    def child(self, key: str) -> str:
        """Return a printable URI for ``key`` inside this URI's bucket."""
        if self.scheme == "file":
            return key
        if self.scheme in HTTP_SCHEMES:
            return f"{self.bucket}/{key}"
        return f"{self.scheme}://{self.bucket}/{key}"

    def __str__(self) -> str:
        return redact(self.raw)


def redact(uri: str) -> str:
    """Strip credentials and query strings from a URI before it is logged."""
    return strip_secrets(uri)


def parse_uri(uri: str) -> ObjectURI:
    """Parse ``uri`` into an :class:`ObjectURI`.

    Raises:
        InvalidURIError: the URI is malformed (names the URI and what is wrong).
        UnsupportedSchemeError: the scheme is not one weightstream knows.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidURIError(str(uri), "empty URI")
    if uri != uri.strip() or any(c in uri for c in "\r\n\t\0"):
        raise InvalidURIError(uri, "contains whitespace or control characters")
    if "://" not in uri:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):
            raise InvalidURIError(uri, "expected SCHEME://... (missing '//')")
        try:
            path = Path(uri).expanduser()
        except RuntimeError as e:  # "~user" naming no user
            raise InvalidURIError(uri, "cannot expand '~' (no such user)") from e
        return ObjectURI("file", "", str(path.absolute()), uri)
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidURIError(uri, "file:// URIs take no host; use file:///abs/path")
        if not parts.path:
            raise InvalidURIError(uri, "missing path")
        return ObjectURI("file", "", unquote(parts.path), uri)
    if scheme in HTTP_SCHEMES:
        return _parse_http(uri, parts)
    if scheme in FSSPEC_SCHEMES:
        return _parse_fsspec(uri, parts)
    if scheme not in OBJECT_STORE_SCHEMES:
        raise UnsupportedSchemeError(scheme, hint=f"in {redact(uri)!r}")
    if scheme == "hf":
        return _parse_hf(uri)
    bucket = parts.netloc
    if not bucket:
        raise InvalidURIError(uri, "missing bucket name")
    if "@" in bucket or ":" in bucket:
        raise InvalidURIError(uri, "bucket name must not contain credentials or a port")
    if scheme in ("s3", "gs") and not _BUCKET.match(bucket):
        raise InvalidURIError(uri, f"invalid bucket name {bucket!r}")
    if parts.query or parts.fragment:
        raise InvalidURIError(uri, "query strings and fragments are not allowed")
    key = unquote(parts.path).lstrip("/")
    _check_key(uri, key)
    return ObjectURI(scheme, bucket, key, uri)


def _parse_fsspec(uri: str, parts) -> ObjectURI:
    if not parts.hostname:
        raise InvalidURIError(uri, "missing host")
    if "@" in parts.netloc:
        raise InvalidURIError(uri, "credentials do not go in the URI (FSSPEC_<SCHEME>_USER)")
    try:
        port = parts.port
    except ValueError as e:
        raise InvalidURIError(uri, "invalid port") from e
    if parts.query or parts.fragment:
        raise InvalidURIError(uri, "query strings and fragments are not allowed")
    key = unquote(parts.path).lstrip("/")
    _check_key(uri, key)
    return ObjectURI(parts.scheme.lower(), origin_netloc(parts.hostname, port), key, uri)


def origin_netloc(host: str, port: int | None) -> str:
    """``host[:port]`` as it goes in a URL or a Host header (IPv6 literals bracketed)."""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def _parse_http(uri: str, parts) -> ObjectURI:
    if not parts.hostname:
        raise InvalidURIError(uri, "missing host")
    try:
        port = parts.port
    except ValueError as e:
        raise InvalidURIError(uri, "invalid port") from e
    path = unquote(parts.path).lstrip("/")
    azure = _AZURE_BLOB_HOST.match(parts.hostname)
    if azure and parts.scheme == "https":
        container, _, key = path.partition("/")
        if not container:
            raise InvalidURIError(uri, "missing container name")
        _check_key(uri, key)
        return ObjectURI("az", container, key, uri, account=azure["account"])
    origin = f"{parts.scheme}://{origin_netloc(parts.hostname, port)}"
    if parts.query:
        # Presigned URLs carry their signature in the query: keep it in the key.
        path = f"{path}?{parts.query}"
    return ObjectURI(parts.scheme, origin, path, uri)


def _parse_hf(uri: str) -> ObjectURI:
    rest = uri[len("hf://") :]
    repo, _, revision = rest.partition("@")
    repo = repo.strip("/")
    segments = repo.split("/")
    if len(segments) < 2 or not all(segments[:2]):
        raise InvalidURIError(uri, "expected hf://ORG/MODEL[@REVISION]")
    repo_id = "/".join(segments[:2])
    key = "/".join(segments[2:])
    return ObjectURI("hf", repo_id, key, uri, revision=revision or "main")


def _check_key(uri: str, key: str) -> None:
    if any(c < " " or c == "\x7f" for c in key):
        raise InvalidURIError(uri, "control characters (NUL, newline, ...) in the object key")
    if any(seg == ".." for seg in key.split("/")):
        raise InvalidURIError(uri, "'..' is not allowed in object keys")
