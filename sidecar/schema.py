"""Strict parsing of the API's request bodies: known fields, right types, bounded sizes.

Unknown fields are an error (a typo must not silently change what is fetched). Error
messages name fields, never values: a credentials object must not echo into a response.
The credentials message has a schema of its own (:mod:`sidecar.credentials`): no file
paths, no environment, no TLS switches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .credentials import KIND_FIELDS, KINDS, OPTIONAL_FIELDS, Credentials, Endpoint, RequesterAccess
from .endpoints import parse_target
from .errors import BadRequestError
from .models import EnsureRequest

MAX_URI = 4096
MAX_PATTERNS = 256
MAX_PATTERN = 1024
HOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}$")

MAX_SECRET = 16384
REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")


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


def parse_credentials(value: Any) -> Credentials:
    """``{"kind": ..., <that kind's fields>}`` (:mod:`sidecar.credentials`); absent: none."""
    if value is None:
        return Credentials("none")
    if not isinstance(value, dict) or value.get("kind") not in KINDS:
        raise BadRequestError(f"credentials must be an object with kind one of "
                              f"{', '.join(KINDS)}")
    kind = value["kind"]
    fields = KIND_FIELDS[kind]
    optional = OPTIONAL_FIELDS.get(kind, ())
    doc = _object(value, f"credentials of kind {kind}", {"kind", *fields, *optional},
                  {"kind", *fields})
    for name in (*fields, *optional):
        item = doc.get(name)
        if item is None and name in optional:
            continue
        if not isinstance(item, str) or not 0 < len(item) <= MAX_SECRET or not item.isprintable():
            raise BadRequestError(f"credentials.{name} must be a non-empty printable string "
                                  f"of at most {MAX_SECRET} characters")
    return Credentials(kind, **{k: v for k, v in doc.items() if k != "kind"})


def parse_endpoint(value: Any) -> Endpoint:
    """``{"url", "region", "virtual_addressing", "account"}``, all optional. The URL is
    checked against the operator's list later (:mod:`sidecar.endpoints`); here its form."""
    if value is None:
        return Endpoint()
    doc = _object(value, "endpoint", {"url", "region", "virtual_addressing", "account"})
    url = doc.get("url")
    if url is not None:
        if not isinstance(url, str) or len(url) > MAX_URI:
            raise BadRequestError(f"endpoint.url must be a string of at most {MAX_URI} "
                                  "characters")
        parse_target(url, what="endpoint.url")
    region = doc.get("region")
    if region is not None and (not isinstance(region, str) or not REGION.match(region)):
        raise BadRequestError("endpoint.region must be a region name like eu-west-1 "
                              "(lowercase letters, digits and dashes)")
    account = doc.get("account")
    if account is not None and (not isinstance(account, str) or not ACCOUNT.match(account)):
        raise BadRequestError("endpoint.account must be an Azure storage account name "
                              "(3-24 lowercase letters and digits)")
    virtual = doc.get("virtual_addressing", False)
    if not isinstance(virtual, bool):
        raise BadRequestError("endpoint.virtual_addressing must be true or false")
    return Endpoint(url=url or None, region=region, virtual_addressing=virtual,
                    account=account)


def parse_ensure(doc: Any) -> EnsureRequest:
    """``{"uri": str, "include": [str], "exclude": [str], "credentials": {...},
    "endpoint": {...}, "lease": {"holder": str, "ttl_seconds": number}}``."""
    doc = _object(doc, "the request",
                  {"uri", "include", "exclude", "credentials", "endpoint", "lease"}, {"uri"})
    uri = doc["uri"]
    if not isinstance(uri, str) or not 0 < len(uri) <= MAX_URI:
        raise BadRequestError(f"uri must be a non-empty string of at most {MAX_URI} characters")
    return EnsureRequest(uri=uri, include=_patterns(doc.get("include"), "include"),
                         exclude=_patterns(doc.get("exclude"), "exclude"),
                         access=RequesterAccess(parse_credentials(doc.get("credentials")),
                                                parse_endpoint(doc.get("endpoint"))),
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
