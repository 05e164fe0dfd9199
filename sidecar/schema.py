"""Strict parsing of the API's request bodies: known fields, right types, bounded sizes.

Unknown fields are an error (a typo must not silently change what is fetched). Error
messages name fields, never values: a credentials object must not echo into a response.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from streamer import StorageSettings
from streamer.errors import UsageError

from .errors import BadRequestError
from .models import EnsureRequest

MAX_URI = 4096
MAX_PATTERNS = 256
MAX_PATTERN = 1024
HOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}$")

_STORAGE_TYPES: dict[str, tuple[type, ...]] = {}
for _f in dataclasses.fields(StorageSettings):
    _STORAGE_TYPES[_f.name] = {
        "str | None": (str, type(None)), "bool": (bool,), "float": (int, float),
        "int": (int,), "Mapping[str, str]": (dict,),
    }.get(str(_f.type), (object,))


def _object(doc: Any, what: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(doc, dict):
        raise BadRequestError(f"{what} must be a JSON object")
    unknown = set(doc) - allowed
    if unknown:
        raise BadRequestError(f"unknown field(s) in {what}: {', '.join(sorted(unknown))[:300]}")
    missing = required - set(doc)
    if missing:
        raise BadRequestError(f"missing field(s) in {what}: {', '.join(sorted(missing))}")
    return doc


def _patterns(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_PATTERNS or not all(
        isinstance(p, str) and 0 < len(p) <= MAX_PATTERN for p in value
    ):
        raise BadRequestError(f"{name} must be a list of at most {MAX_PATTERNS} non-empty "
                              f"strings of at most {MAX_PATTERN} characters")
    return tuple(value)


def parse_storage(value: Any) -> StorageSettings:
    """The requester's settings (``StorageSettings.to_dict()``), type-checked per field."""
    if value is None:
        return StorageSettings()
    doc = _object(value, "credentials", set(_STORAGE_TYPES))
    for name, item in doc.items():
        types = _STORAGE_TYPES[name]
        if not isinstance(item, types) or (bool not in types and isinstance(item, bool)):
            raise BadRequestError(f"credentials.{name} has the wrong type")
        if float in types and not 0 < item < 86400:
            raise BadRequestError(f"credentials.{name} must be a positive number of seconds")
    env = doc.get("env")
    if env is not None and not all(isinstance(k, str) and isinstance(v, str)
                                   for k, v in env.items()):
        raise BadRequestError("credentials.env must map strings to strings")
    try:
        return StorageSettings.from_dict(doc)
    except (UsageError, TypeError, ValueError) as e:
        raise BadRequestError("credentials are not valid storage settings") from e


def parse_ensure(doc: Any) -> EnsureRequest:
    """``{"uri": str, "include": [str], "exclude": [str], "credentials": {...},
    "lease": {"holder": str, "ttl_seconds": number}}``."""
    doc = _object(doc, "the request", {"uri", "include", "exclude", "credentials", "lease"},
                  {"uri"})
    uri = doc["uri"]
    if not isinstance(uri, str) or not 0 < len(uri) <= MAX_URI:
        raise BadRequestError(f"uri must be a non-empty string of at most {MAX_URI} characters")
    return EnsureRequest(uri=uri, include=_patterns(doc.get("include"), "include"),
                         exclude=_patterns(doc.get("exclude"), "exclude"),
                         storage=parse_storage(doc.get("credentials")),
                         lease=None if doc.get("lease") is None else parse_lease(doc["lease"]))


def parse_lease(doc: Any) -> tuple[str, float | None]:
    """``{"holder": str, "ttl_seconds": number}`` -> (holder, ttl or None)."""
    doc = _object(doc, "the lease", {"holder", "ttl_seconds"}, {"holder"})
    holder = parse_holder(doc["holder"])
    ttl = doc.get("ttl_seconds")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                            or not 0 < ttl <= 10 * 365 * 86400):
        raise BadRequestError("ttl_seconds must be a positive number of seconds")
    return holder, None if ttl is None else float(ttl)


def parse_holder(value: Any) -> str:
    if not isinstance(value, str) or not HOLDER.match(value):
        raise BadRequestError("holder must be 1-253 characters of [A-Za-z0-9._:@-] "
                              "(a pod UID, for example)")
    return value


def query_number(query: Mapping[str, str], name: str, default: float, *,
                 minimum: float = 0.0, maximum: float = 86400.0) -> float:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequestError(f"query parameter {name} must be a number") from None
    if not minimum <= value <= maximum or value != value:
        raise BadRequestError(f"query parameter {name} must be between {minimum} and {maximum}")
    return value
