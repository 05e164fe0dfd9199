"""Stream-through mode: the node cache pulls the model, the main container streams the
weights from the daemon's S3 endpoint, and the pod starts without waiting for either.

For each ``SRC DST`` pair (``WEIGHTSTREAM_MODE=stream-through``):

1. ``ensure`` with the pod's real credentials (the proof of access) and the pod's lease:
   the daemon starts or joins the single-flight pull; nobody waits for it here;
2. scoped S3 credentials for this pod (``POST /v1/models/{id}/s3-credentials``): they
   open this model version only and end with the pod's lease;
3. every file but the weights (:data:`streamer.stream_mode.WEIGHT_PATTERNS`) downloaded
   into ``DST`` with the pod's credentials (config, tokenizer, index: a few MB);
4. the files the main container needs, written atomically into :data:`S3_DIR` under
   ``DST`` (directory 0700 or 0750, files 0600 or 0640, never world-readable)::

       DST/.weightstream/s3/
       ├── credentials                AWS shared-credentials file: the scoped keys
       ├── config                     AWS config file: region, endpoint_url, path style
       └── vllm-model-redirect.json   {"DST": "s3://bucket/prefix"}

   The main container points ``AWS_SHARED_CREDENTIALS_FILE`` / ``AWS_CONFIG_FILE`` at the
   first two and vLLM's ``VLLM_MODEL_REDIRECT_PATH`` at the third: vLLM 0.33 has no
   ``--model-weights`` flag, and KServe's templates run ``vllm serve /mnt/models``; the
   redirect turns that model path into the ``s3://`` URI, so vLLM's ``runai_streamer``
   loader reads config and weights through the daemon (docs/chart.md). Because both of
   its S3 clients read credentials from the environment before those files, the main
   container also gets :data:`MAIN_ENV_OVERRIDES`.

When the daemon cannot serve the model (no socket, refused, failed), the pair is
downloaded in full instead and no credentials are written (a stale set from an earlier
run is removed): the pod starts without the cache, and vLLM reads the local copy because
the redirect file is absent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.manifest import STATE_DIR
from streamer.stream_mode import WEIGHT_PATTERNS

log = logging.getLogger(__name__)

S3_DIR = f"{STATE_DIR}/s3"
CREDENTIALS_FILE = "credentials"
CONFIG_FILE = "config"
REDIRECT_FILE = "vllm-model-redirect.json"
REGION = "us-east-1"  # the daemon accepts any region in a signature; one is required
PROFILE = "default"  # the profile both files define

#: The environment the chart gives the main container besides the file paths, so that
#: AWS credentials from elsewhere in the pod never shadow the scoped keys: a Secret in the
#: service's ``envFrom`` (a container's ``env`` wins over its ``envFrom``) or the EKS pod
#: identity webhook's IRSA variables (it adds none to a container that defines one).
#: boto3 (runai's listing, vLLM's config pull) tries the environment's keys, then web
#: identity, before the shared files; the AWS C++ SDK (runai's reads) the environment's
#: keys before them; both read an empty value as unset, and both take the profile from
#: AWS_DEFAULT_PROFILE / AWS_PROFILE. tests/chart checks the chart sets exactly these.
MAIN_ENV_OVERRIDES: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": "",
    "AWS_SECRET_ACCESS_KEY": "",
    "AWS_SESSION_TOKEN": "",
    "AWS_ROLE_ARN": "",
    "AWS_WEB_IDENTITY_TOKEN_FILE": "",
    "AWS_PROFILE": PROFILE,
    "AWS_DEFAULT_PROFILE": PROFILE,
}


@dataclass(frozen=True)
class StreamFiles:
    """Where one destination's stream-through files are."""

    directory: Path
    credentials: Path
    config: Path
    redirect: Path

    @classmethod
    def under(cls, dst: Path) -> StreamFiles:
        d = dst / S3_DIR
        return cls(d, d / CREDENTIALS_FILE, d / CONFIG_FILE, d / REDIRECT_FILE)


def local_exclude(exclude: tuple[str, ...]) -> tuple[str, ...]:
    """The model's exclude patterns plus the weights: what stays out of ``DST``."""
    return exclude + tuple(p for p in WEIGHT_PATTERNS if p not in exclude)


def write_stream_files(dst: Path, *, credentials: dict[str, Any], endpoint: str | None,
                       mode: int) -> StreamFiles:
    """Write the credentials, config and redirect files for ``dst`` (each atomically).

    ``credentials`` is the daemon's scoped-credentials answer (``sidecar.views``);
    ``mode`` the files' permission bits (0600 or 0640; the directory gets x bits to match).
    """
    files = StreamFiles.under(dst)
    dir_mode = mode | ((mode & 0o444) >> 2)  # 0600 -> 0700, 0640 -> 0750
    files.directory.mkdir(parents=True, exist_ok=True)
    os.chmod(files.directory, dir_mode)
    akid, secret = credentials["access_key_id"], credentials["secret_access_key"]
    _write(files.credentials, mode,
           f"[{PROFILE}]\naws_access_key_id = {_one_line(akid)}\n"
           f"aws_secret_access_key = {_one_line(secret)}\n")
    config = f"[{PROFILE}]\nregion = {REGION}\n"
    if endpoint:
        config += f"endpoint_url = {_one_line(endpoint)}\n"
    config += "s3 =\n    addressing_style = path\n"
    _write(files.config, mode, config)
    _write(files.redirect, mode, json.dumps({str(dst): str(credentials["uri"])}) + "\n")
    return files


def remove_stream_files(dst: Path) -> None:
    """Drop a stale set (an earlier run's), so a fallback leaves no dead credentials."""
    directory = StreamFiles.under(dst).directory
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)


def _write(path: Path, mode: int, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask must not widen or narrow it
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _one_line(value: str) -> str:
    """A value for an INI line: a newline there could add keys to the file."""
    if any(c in value for c in "\r\n\x00"):
        raise ValueError("a credentials value has a line break")
    return value
