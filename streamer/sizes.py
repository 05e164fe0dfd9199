"""Parse and print byte sizes (``16Mi``, ``2GiB``, ``500G``, ``1048576``)."""

from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6,
    "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20,
    "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int, *, name: str = "size") -> int:
    """Parse a human size into bytes.

    Raises:
        UsageError: the text is not a size (names ``name`` and the text).
    """
    if isinstance(text, int):
        if text < 0:
            raise UsageError(f"{name} must not be negative: {text}")
        return text
    m = _SIZE.match(text)
    unit = m and _UNITS.get(m.group(2).lower())
    if not m or unit is None:
        raise UsageError(f"invalid {name} {text!r} (examples: 16Mi, 2GiB, 500G, 1048576)")
    return int(float(m.group(1)) * unit)


def format_size(n: float) -> str:
    """Print bytes with a binary unit, e.g. ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
