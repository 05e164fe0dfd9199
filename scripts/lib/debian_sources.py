"""Print apt source lines for the Debian bookworm suites this machine already uses.

    python3 scripts/lib/debian_sources.py deb-src   # lines for a private apt sources.list
    python3 scripts/lib/debian_sources.py deb       # mirror lines for mmdebstrap

Reads /etc/apt/sources.list.d/*.sources (deb822), /etc/apt/sources.list and *.list, keeps
the enabled `deb` entries of bookworm* suites and prints them with the requested type, so
the scripts never name a mirror host themselves. Exits 1 when there is none.
"""

from __future__ import annotations

import glob
import re
import sys


def _deb822_entries() -> list[tuple[str, str, str, str]]:
    entries = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path, encoding="utf-8") as fh:
            stanzas = fh.read().split("\n\n")
        for stanza in stanzas:
            fields: dict[str, str] = {}
            for raw in stanza.splitlines():
                if raw.startswith("#") or ":" not in raw:
                    continue
                key, value = raw.split(":", 1)
                fields[key.strip()] = value.strip()
            if "deb" not in fields.get("Types", "").split():
                continue
            if fields.get("Enabled", "yes").lower() == "no":
                continue
            signed = fields.get("Signed-By", "")
            opts = f"[signed-by={signed}]" if signed.startswith("/") else ""
            for uri in fields.get("URIs", "").split():
                for suite in fields.get("Suites", "").split():
                    entries.append((opts, uri, suite, fields.get("Components", "main")))
    return entries


def _one_line_entries() -> list[tuple[str, str, str, str]]:
    entries = []
    pattern = re.compile(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.+)$")
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError:
            continue
        for raw in text.splitlines():
            m = pattern.match(raw.strip())
            if m:
                entries.append(((m.group(1) or "").strip(), m.group(2), m.group(3), m.group(4)))
    return entries


def main(argv: list[str]) -> int:
    kind = argv[1] if len(argv) > 1 else "deb"
    if kind not in ("deb", "deb-src"):
        print(f"usage: {argv[0]} deb|deb-src", file=sys.stderr)
        return 2
    lines = []
    for opts, uri, suite, components in _deb822_entries() + _one_line_entries():
        if suite.startswith("bookworm"):
            lines.append(" ".join(p for p in (kind, opts, uri, suite, components) if p))
    if not lines:
        print("no Debian bookworm entry in this machine's apt sources", file=sys.stderr)
        return 1
    print("\n".join(dict.fromkeys(lines)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
