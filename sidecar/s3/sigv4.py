"""Server-side verification of AWS Signature Version 4 (what botocore's ``S3SigV4Auth``
and the AWS C++ SDK sign), in both forms:

* header: ``Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/s3/aws4_request,
  SignedHeaders=a;b, Signature=HEX`` with ``X-Amz-Date`` (and ``X-Amz-Content-SHA256``);
* presigned query: ``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``,
  ``X-Amz-Expires``, ``X-Amz-SignedHeaders``, ``X-Amz-Signature``.

The canonical request is rebuilt from what arrived on the wire: the path exactly as sent
(S3 does not normalise it), the query re-encoded and sorted, the signed headers with
whitespace folded, and the payload hash the client declared (``UNSIGNED-PAYLOAD``, a
``STREAMING-...`` marker, or the SHA-256 of the body, which for the read-only API must be
the empty body's). The signature is compared in constant time.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = 15 * 60  # seconds, as S3
MAX_PRESIGN = 7 * 24 * 3600
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,"
    r"\s*Signature=([0-9a-f]{64})\s*$")
_DATE = re.compile(r"^\d{8}T\d{6}Z$")


class SignatureError(Exception):
    """Why a request is refused: ``code`` is the S3 error code (403)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Signed:
    """The part of a request a signature covers (as it arrived)."""

    method: str
    raw_path: str  # percent-encoded, without the query
    raw_query: str
    headers: Mapping[str, str]  # case-insensitive mapping (multi-values joined by ",")


@dataclass(frozen=True)
class Claim:
    """Who the request says it is (verified by :func:`verify`)."""

    access_key_id: str
    date: str  # YYYYMMDD
    region: str
    amz_date: str
    signed_headers: tuple[str, ...]
    signature: str
    presigned: bool
    expires: int = 0


def parse(req: Signed) -> Claim:
    """Read the claimed identity from the Authorization header or the query.

    Raises:
        SignatureError: unsigned (``AccessDenied``) or malformed.
    """
    auth = req.headers.get("Authorization")
    query = dict(_query_pairs(req.raw_query))
    if auth is not None:
        m = _AUTH.match(auth.strip())
        if m is None:
            raise SignatureError("AuthorizationHeaderMalformed",
                                 "the Authorization header is not AWS4-HMAC-SHA256")
        credential, signed, signature = m.groups()
        amz_date = req.headers.get("X-Amz-Date", "")
        presigned, expires = False, 0
    elif "X-Amz-Signature" in query:
        if query.get("X-Amz-Algorithm") != ALGORITHM:
            raise SignatureError("AuthorizationQueryParametersError",
                                 "X-Amz-Algorithm must be AWS4-HMAC-SHA256")
        credential = query.get("X-Amz-Credential", "")
        signed = query.get("X-Amz-SignedHeaders", "")
        signature = query.get("X-Amz-Signature", "")
        amz_date = query.get("X-Amz-Date", "")
        try:
            expires = int(query.get("X-Amz-Expires", ""))
        except ValueError:
            raise SignatureError("AuthorizationQueryParametersError",
                                 "X-Amz-Expires must be a number of seconds") from None
        if not 1 <= expires <= MAX_PRESIGN:
            raise SignatureError("AuthorizationQueryParametersError",
                                 f"X-Amz-Expires must be between 1 and {MAX_PRESIGN}")
        if not re.fullmatch(r"[0-9a-f]{64}", signature):
            raise SignatureError("AuthorizationQueryParametersError", "bad X-Amz-Signature")
        presigned = True
    else:
        raise SignatureError("AccessDenied", "anonymous requests are not accepted; sign "
                             "with the scoped credentials of your grant")
    parts = credential.split("/")
    if len(parts) != 5 or parts[3] != "s3" or parts[4] != "aws4_request" or not parts[0]:
        raise SignatureError("AuthorizationHeaderMalformed",
                             "the credential must be AKID/DATE/REGION/s3/aws4_request")
    if not _DATE.match(amz_date) or amz_date[:8] != parts[1]:
        raise SignatureError("AuthorizationHeaderMalformed",
                             "X-Amz-Date is missing or does not match the credential date")
    names = tuple(signed.split(";"))
    if "host" not in names or list(names) != sorted(set(names)):
        raise SignatureError("AuthorizationHeaderMalformed",
                             "SignedHeaders must be sorted, unique and include host")
    return Claim(access_key_id=parts[0], date=parts[1], region=parts[2], amz_date=amz_date,
                 signed_headers=names, signature=signature, presigned=presigned,
                 expires=expires)


def verify(req: Signed, claim: Claim, secret: str, *,
           clock: Callable[[], float] = time.time) -> None:
    """Check the signature, the clock and the presigned expiry.

    Raises:
        SignatureError: ``SignatureDoesNotMatch``, ``RequestTimeTooSkewed``,
            ``AccessDenied`` (a presigned URL past its expiry).
    """
    when = calendar.timegm(time.strptime(claim.amz_date, "%Y%m%dT%H%M%SZ"))
    now = clock()
    if claim.presigned:
        if now > when + claim.expires:
            raise SignatureError("AccessDenied", "the presigned request has expired")
        if when - now > MAX_SKEW:
            raise SignatureError("RequestTimeTooSkewed", "the request date is in the future")
    elif abs(now - when) > MAX_SKEW:
        raise SignatureError("RequestTimeTooSkewed",
                             "the difference between the request time and the daemon's "
                             "time is too large")
    expected = signature(req, claim, secret)
    if not hmac.compare_digest(expected, claim.signature):
        raise SignatureError("SignatureDoesNotMatch",
                             "the request signature we calculated does not match the "
                             "signature you provided")


def signature(req: Signed, claim: Claim, secret: str) -> str:
    scope = f"{claim.date}/{claim.region}/s3/aws4_request"
    to_sign = "\n".join([ALGORITHM, claim.amz_date, scope,
                         hashlib.sha256(canonical_request(req, claim).encode()).hexdigest()])
    key = _hmac(("AWS4" + secret).encode(), claim.date)
    for part in (claim.region, "s3", "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def canonical_request(req: Signed, claim: Claim) -> str:
    pairs = [(k, v) for k, v in _query_pairs(req.raw_query)
             if not (claim.presigned and k == "X-Amz-Signature")]
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                     for k, v in sorted(pairs))
    headers = "".join(f"{name}:{' '.join(req.headers.get(name, '').split())}\n"
                      for name in claim.signed_headers)
    return "\n".join([req.method.upper(), req.raw_path or "/", query, headers,
                      ";".join(claim.signed_headers), _payload_hash(req, claim)])


def _payload_hash(req: Signed, claim: Claim) -> str:
    if claim.presigned:
        return "UNSIGNED-PAYLOAD"
    declared = req.headers.get("X-Amz-Content-SHA256")
    if declared is None:
        return EMPTY_SHA256
    if declared == "UNSIGNED-PAYLOAD" or declared.startswith("STREAMING-"):
        return declared
    if declared != EMPTY_SHA256:  # the read-only API takes no bodies
        raise SignatureError("XAmzContentSHA256Mismatch",
                             "the declared payload hash is not that of an empty body")
    return declared


def _query_pairs(raw: str) -> list[tuple[str, str]]:
    out = []
    for part in raw.split("&") if raw else ():
        if not part:
            continue
        k, _, v = part.partition("=")
        out.append((unquote(k), unquote(v)))
    return out


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()
