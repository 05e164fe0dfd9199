"""``weightstream cache serve|ls|readers|pull|evict``: run the node cache, or talk to a running one.

``serve`` takes the flags of :func:`sidecar.config.add_serve_arguments`; the operator
commands find the daemon through ``--socket``, ``WEIGHTSTREAM_CACHE_SOCKET`` or
``<WEIGHTSTREAM_CACHE_ROOT>/daemon.sock`` and print a table, or JSON with ``--json``.
Registered through the ``weightstream.commands`` entry point (see ``pyproject.toml``);
errors reach ``streamer.cli.main``, which prints one line and maps the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from streamer import StorageSettings
from streamer.logs import configure
from streamer.sizes import format_size

from . import views
from .config import DaemonConfig, add_serve_arguments, client_socket, client_token
from .errors import ApiError
from .text import describe

if TYPE_CHECKING:
    from .client import CacheAPIClient

log = logging.getLogger("weightstream")


def register(sub: argparse._SubParsersAction, environ: Mapping[str, str]) -> None:
    cache = sub.add_parser("cache", help="node cache daemon and operator commands",
                           description="Run the node cache daemon or talk to a running one.")
    csub = cache.add_subparsers(dest="cache_command", metavar="SUBCOMMAND", required=True)

    serve = csub.add_parser("serve", help="run the node cache daemon",
                            description="Run the node cache daemon (same as python -m sidecar).")
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)

    def client_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = csub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--socket", metavar="PATH",
                       help="daemon socket (env WEIGHTSTREAM_CACHE_SOCKET, default "
                            "<WEIGHTSTREAM_CACHE_ROOT>/daemon.sock)")
        p.add_argument("--json", action="store_true", help="print JSON on stdout")
        p.add_argument("--operator-token-file", metavar="PATH",
                       help="the daemon's operator token, needed by ls and evict (env "
                            "WEIGHTSTREAM_CACHE_OPERATOR_TOKEN_FILE)")
        return p

    ls = client_parser("ls", "list the models in the node cache")
    ls.set_defaults(func=run_ls)

    readers = client_parser("readers", "list who reads what on the S3 endpoint: credentials "
                                       "(key id, lease holder), model, peer, bytes, rate, "
                                       "range wait")
    readers.set_defaults(func=run_readers)

    pull = client_parser("pull", "pull a model into the node cache (with this shell's "
                                 "credentials) and wait until it is ready")
    pull.add_argument("uri", metavar="URI")
    pull.add_argument("--include", action="append", default=[], metavar="GLOB")
    pull.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    pull.add_argument("--no-wait", action="store_true", help="return once the pull started")
    pull.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                      help="give up waiting after this long (default %(default)s)")
    pull.set_defaults(func=run_pull)

    evict = client_parser("evict", "evict models (never leased ones, never running pulls)")
    evict.add_argument("ids", nargs="+", metavar="ID", help="model ids as `cache ls` shows")
    evict.set_defaults(func=run_evict)


def run_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from .server import run

    return run(DaemonConfig.from_sources(vars(args), environ), debug=args.debug)


def run_ls(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    async def go() -> list[dict[str, Any]]:
        async with _client(args, environ) as api:
            return await api.models()

    models = asyncio.run(go())
    if args.json:
        _print_json({"models": models})
    else:
        print(render_table(models, now=time.time()))
    return 0


def run_readers(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    async def go() -> list[views.S3Reader]:
        async with _client(args, environ) as api:
            return await api.s3_readers()

    readers = asyncio.run(go())
    if args.json:
        _print_json({"readers": readers})
    else:
        print(render_readers(readers, now=time.time()))
    return 0


def run_pull(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    configure("text")
    storage = StorageSettings.from_env(environ)

    async def go() -> dict[str, Any]:
        async with _client(args, environ) as api:
            answer = await api.ensure(args.uri, include=tuple(args.include),
                                      exclude=tuple(args.exclude), storage=storage)
            state, grant = answer["model"], answer["grant"]
            if args.no_wait or state["state"] in ("ready", "failed"):
                return state
            model_id = state["id"]
            deadline = time.monotonic() + args.timeout
            last = 0.0
            while time.monotonic() < deadline:
                async for state in api.events(model_id, grant=grant,
                                              timeout=min(300.0, deadline - time.monotonic())):
                    if not args.json and time.monotonic() - last >= 2.0:
                        last = time.monotonic()
                        print(describe(state), file=sys.stderr)
                if state["state"] in ("ready", "failed"):
                    break
            return state

    state = asyncio.run(go())
    if args.json:
        _print_json(state)
    else:
        print(describe(state))
    return 1 if state["state"] == "failed" else 0


def run_evict(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    async def go() -> list[dict[str, Any]]:
        results = []
        async with _client(args, environ) as api:
            for model_id in args.ids:
                try:
                    results.append(await api.evict(model_id))
                except ApiError as e:
                    results.append({"id": model_id, "evicted": False, "code": e.code,
                                    "message": e.message})
        return results

    results = asyncio.run(go())
    if args.json:
        _print_json({"results": results})
    else:
        for r in results:
            if r["evicted"]:
                print(f"{r['id']}: evicted ({format_size(r.get('bytes', 0))})")
            else:
                print(f"{r['id']}: not evicted: {r['message']}", file=sys.stderr)
    return 0 if all(r["evicted"] for r in results) else 1


# ---------------------------------------------------------------- output


def render_table(models: list[views.Model], *, now: float) -> str:
    rows = [("ID", "STATE", "SIZE", "LAST USED", "LEASES", "S3 READERS", "FROM ORIGIN",
             "FROM PEERS", "SOURCE")]
    for m in models:
        state = m["state"]
        if state in ("pending", "pulling"):
            p = m.get("progress") or {}
            total = p.get("bytes_total") or 1
            state = f"{state} {p.get('bytes_done', 0) / total:.0%}"
        elif state == "failed":
            state = f"failed ({(m.get('error') or {}).get('code', '?')})"
        rows.append((m["id"], state, format_size(m["size"]), _ago(now - m["last_used"]),
                     str(len(m["leases"])), str(m.get("readers", 0)),
                     format_size(m.get("bytes_from", {}).get("origin", 0)),
                     format_size(m.get("bytes_from", {}).get("peers", 0))
                     + (" (origin only: no checksum)" if m.get("peer_note") else ""),
                     m["source"]))
    if len(rows) == 1:
        return "no models in the node cache"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False))
                     + "  " + r[-1] for r in rows)


def render_readers(readers: list[views.S3Reader], *, now: float) -> str:
    """One line per reader of the S3 endpoint (busiest first)."""
    rows = [("KEY ID", "HOLDER", "MODEL", "PEER", "IN FLIGHT", "REQUESTS", "SERVED", "RATE",
             "WAIT AVG/MAX", "LAST")]
    for r in readers:
        key = r["access_key_id"]
        rows.append((key if len(key) <= 16 else key[:13] + "...", r["holder"] or "-",
                     r["model"], r["peer"], str(r["in_flight"]),
                     f"{r['requests']}" + (f" ({r['errors']} failed)" if r["errors"] else ""),
                     format_size(r["bytes_served"]), f"{format_size(r['rate_bytes_per_s'])}/s",
                     f"{r['range_wait_avg_s']:.3f}/{r['range_wait_max_s']:.3f}s",
                     _ago(now - r["last_seen"])))
    if len(rows) == 1:
        return "no readers on the S3 endpoint"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


def _client(args: argparse.Namespace, environ: Mapping[str, str]) -> CacheAPIClient:
    # Imported here: aiohttp costs 0.3 s to import, which every `weightstream download`
    # would pay for nothing (the CLI registers this module's commands at start-up).
    from .client import CacheAPIClient

    return CacheAPIClient(client_socket(args.socket, environ),
                          token=client_token(args.operator_token_file, environ))
