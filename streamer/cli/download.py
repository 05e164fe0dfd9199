"""``weightstream download SRC DEST``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Mapping

from ..api import DownloadOptions, download
from ..logs import SECRET_ENV_VARS, add_secrets, configure
from ..settings import StorageSettings, add_transfer_arguments, log_format, resolve_transfer
from .render import ProgressPrinter, report_json

log = logging.getLogger("weightstream")


def register(sub: argparse._SubParsersAction, environ: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "download",
        help="download a model (or any prefix) into a directory",
        description=(
            "Download every object under SRC (s3://, gs://, az://, hf://, http(s)://, or a "
            "local path) into the directory DEST with many concurrent ranged reads, "
            "resume, verification and an atomic publish."
        ),
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only files matching GLOB (relative path or basename); repeatable")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip files matching GLOB; repeatable")
    add_transfer_arguments(p)
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="validate safetensors headers and the shard index (default on)")
    p.add_argument("--checksum", action="store_true",
                   help="also compare MD5 with single-part S3 ETags (costs CPU)")
    p.add_argument("--fsync", action="store_true",
                   help="make data durable before journaling/publishing (survives power loss)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--log-format", choices=("text", "json"),
                   help="log format (env WEIGHTSTREAM_LOG_FORMAT, default text)")
    p.set_defaults(func=run)  # fmt: skip


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    configure(log_format(environ, args.log_format),
              level=logging.DEBUG if args.debug else logging.INFO)
    transfer = resolve_transfer(environ, vars(args))
    options = DownloadOptions(
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        verify=args.verify,
        checksum=args.checksum,
        fsync=args.fsync,
        **transfer.transfer_fields(),
    )
    storage = StorageSettings.from_env(environ)
    add_secrets([storage.secret_access_key, storage.session_token,
                 *(environ.get(k) for k in SECRET_ENV_VARS)])  # fmt: skip
    printer = None if args.quiet else ProgressPrinter()
    try:
        report = asyncio.run(
            download(args.src, args.dest, options=options, storage=storage, progress=printer)
        )
    finally:
        if printer is not None:
            printer.close()
    if args.json:
        json.dump(report_json(report), sys.stdout)
        sys.stdout.write("\n")
    elif not args.quiet:
        print(report.summary(), file=sys.stderr)
    return 0
