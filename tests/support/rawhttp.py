"""Raw HTTP/1.1 message heads, for the loopback proxies that rewrite them in flight."""

from __future__ import annotations

import asyncio
import contextlib
import re


def header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` in a message head (first match), or None."""
    m = re.search(rb"(?im)^" + re.escape(name) + rb":\s*([^\r\n]*)", head)
    return m.group(1).strip() if m else None


def set_header(head: bytes, name: bytes, value: bytes | None) -> bytes:
    """Replace (or drop, ``value=None``) a header; add it if absent."""
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0]] + [ln for ln in lines[1:] if not ln.lower().startswith(name.lower() + b":")]
    if value is not None:
        kept.append(name + b": " + value)
    return b"\r\n".join(kept) + b"\r\n\r\n"


async def close_all(*writers: asyncio.StreamWriter | None) -> None:
    """Close both sides of a proxied exchange, ignoring what is already gone."""
    for w in writers:
        if w is not None:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
