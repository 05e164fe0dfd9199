"""S3's XML documents: errors, ListObjectsV2, GetBucketLocation (what moto and AWS send)."""

from __future__ import annotations

import time
from xml.sax.saxutils import escape

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'


def _e(value: object) -> str:
    return escape(str(value))


def error(code: str, message: str, *, resource: str = "", request_id: str = "") -> bytes:
    return (f"{_HEAD}<Error><Code>{_e(code)}</Code><Message>{_e(message)}</Message>"
            f"<Resource>{_e(resource)}</Resource><RequestId>{_e(request_id)}</RequestId>"
            "</Error>").encode()


def iso8601(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def list_v2(*, bucket: str, prefix: str, delimiter: str, max_keys: int,
            contents: list[tuple[str, int, str, float]], common: list[str], truncated: bool,
            token: str, next_token: str, start_after: str) -> bytes:
    parts = [f'{_HEAD}<ListBucketResult xmlns="{NS}">', f"<Name>{_e(bucket)}</Name>",
             f"<Prefix>{_e(prefix)}</Prefix>", f"<MaxKeys>{max_keys}</MaxKeys>",
             f"<KeyCount>{len(contents) + len(common)}</KeyCount>",
             f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
    if delimiter:
        parts.append(f"<Delimiter>{_e(delimiter)}</Delimiter>")
    if token:
        parts.append(f"<ContinuationToken>{_e(token)}</ContinuationToken>")
    if next_token:
        parts.append(f"<NextContinuationToken>{_e(next_token)}</NextContinuationToken>")
    if start_after:
        parts.append(f"<StartAfter>{_e(start_after)}</StartAfter>")
    for key, size, etag, mtime in contents:
        parts.append(f"<Contents><Key>{_e(key)}</Key><LastModified>{iso8601(mtime)}"
                     f"</LastModified><ETag>{_e(etag)}</ETag><Size>{size}</Size>"
                     "<StorageClass>STANDARD</StorageClass></Contents>")
    for p in common:
        parts.append(f"<CommonPrefixes><Prefix>{_e(p)}</Prefix></CommonPrefixes>")
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def location(region: str) -> bytes:
    return f'{_HEAD}<LocationConstraint xmlns="{NS}">{_e(region)}</LocationConstraint>'.encode()


def slow_down_response(*, head: bool = False) -> bytes:
    """A whole HTTP/1.1 ``503 SlowDown`` answer that closes its connection: what the S3
    endpoint sends a connection past its cap (the AWS SDKs back off and retry it)."""
    body = error("SlowDown", "too many connections to this node cache; reduce your "
                 "request rate")
    head_lines = ("HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                  f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n"
                  "\r\n").encode()
    return head_lines if head else head_lines + body
