"""Logging setup for entry points (the library itself adds no handlers), and the one
scrubber that keeps secrets out of everything an entry point prints.

Secrets reach log text in more ways than any call site can guard: botocore's debug output
(``x-amz-security-token`` and ``Authorization`` in headers and canonical requests, the
signature), a presigned URL inside an SDK's exception, a tenant's token in a daemon
request. So the handler :func:`configure` installs scrubs every record (message,
traceback, ``extra=`` fields) with :func:`scrub` before any formatter sees it, at every
level and in both formats; entry points pass what they print outside logging (the CLI's
``error:`` line) through :func:`scrub` too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Iterable
from typing import Any, NoReturn

_RESERVED = set(vars(logging.makeLogRecord({})))
REDACTED = "<redacted>"

# Header (or canonical-request line, or dict entry) names whose value is a credential.
_SECRET_HEADERS = (
    r"x-amz-security-token|authorization|proxy-authorization|x-amz-signature|"
    r"x-amz-credential|x-goog-signature|x-goog-credential|x-ms-copy-source-authorization|"
    r"cookie|set-cookie|x-api-key|api-key|ocp-apim-subscription-key|x-hf-token"
)
# Query (or form) parameters that carry a signature or a token (S3/GCS presigned URLs,
# Azure SAS, OAuth tokens); matched case-insensitively as ``name=value``.
_SECRET_PARAMS = (
    r"x-amz-signature|x-amz-security-token|x-amz-credential|x-goog-signature|"
    r"x-goog-credential|signature|sig|token|access_token|id_token|refresh_token|"
    r"client_secret|secret|password|passwd|api_key|apikey|key|code|se|sp|skoid|sktid|"
    r"aws_session_token|aws_secret_access_key|session_token|secret_access_key"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # 'x-amz-security-token': b'...'  /  "Authorization": "..."  (dict reprs, JSON)
    (re.compile(rf"""(?i)(['"]?\b(?:{_SECRET_HEADERS})['"]?\s*[:=]\s*b?)(['"])(?:(?!\2).)*\2"""),
     rf"\1\2{REDACTED}\2"),
    # x-amz-security-token:VALUE / Authorization: AWS4-HMAC-SHA256 ... (header lines)
    (re.compile(rf"(?im)^(\s*(?:{_SECRET_HEADERS})\s*:)[^\r\n]*"), rf"\1 {REDACTED}"),
    # name=value in URLs and forms (up to the next separator)
    (re.compile(rf"(?i)([?&;\s'\"(,]|^)((?:{_SECRET_PARAMS})=)[^&\s'\"<>),;]+"),
     rf"\1\2{REDACTED}"),
    # Credential=AKIA.../scope, Signature=<hex> inside an Authorization value
    (re.compile(r"(?i)\b(credential|signature)=[^,\s'\"&]+"), rf"\1={REDACTED}"),
    # botocore.auth's debug "Signature:\n<hex>" and "StringToSign" signatures
    (re.compile(r"(?i)(signature:\s*)[0-9a-f]{32,}"), rf"\1{REDACTED}"),
    # user:password@ in URLs
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s@'\"]+@"), rf"\1{REDACTED}@"),
    # a bearer token anywhere
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"), rf"\1{REDACTED}"),
)
# Environment variables whose values are credentials (entry points register them).
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
    "GOOGLE_OAUTH_ACCESS_TOKEN", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_STORAGE_CONNECTION_STRING",
)  # fmt: skip
_literals: set[str] = set()


def add_secrets(values: Iterable[str | None]) -> None:
    """Also redact these exact values wherever they appear (an entry point registers the
    credentials it was given; values shorter than 8 characters are ignored)."""
    _literals.update(v for v in values if v and len(v) >= 8)


def scrub(text: str) -> str:
    """``text`` with every credential, signature and token replaced by ``<redacted>``."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    for value in _literals:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


class SecretFilter(logging.Filter):
    """Scrubs a record in place: message (arguments merged, newlines escaped), traceback,
    stack, extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        # One record, one line: a key or URI holding a newline cannot forge log lines.
        record.msg = scrub(record.getMessage()).replace("\r", "\\r").replace("\n", "\\n")
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _RESERVED and not key.startswith("_") and isinstance(value, str):
                setattr(record, key, scrub(value))
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info or record.exc_text:
            doc["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(doc, default=lambda value: scrub(str(value)))


def configure(fmt: str = "text", *, level: int = logging.INFO, stream: Any = None) -> None:
    """Attach one handler to the root logger, text or JSON, that scrubs secrets."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(SecretFilter())
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def exit_process(code: int) -> NoReturn:
    """End an entry point's process: flush logs and streams, then ``os._exit``.

    obstore's Rust runtime can abort the process (SIGABRT) when objects it owns are
    finalized during interpreter shutdown (seen about once in a few hundred failing runs,
    after an access-denied error); by then every file is written and published, so the
    interpreter's own teardown has nothing left to do.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
