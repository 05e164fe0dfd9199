"""One-line text forms of the daemon's answers, for people.

Shared by the operator commands (``weightstream cache pull``) and the init container's
logs (``initcontainer.cacheclient``), so both say the same thing about a model.
"""

from __future__ import annotations

from streamer.sizes import format_size

from . import views


def describe(state: views.Model) -> str:
    """One line about a model's state (also used by the init container's logs)."""
    head = f"{state['id']} {state['source']}: {state['state']}"
    if state["state"] == "ready":
        return f"{head} at {state.get('path', '?')} ({format_size(state['size'])})"
    if state["state"] == "failed":
        err = state.get("error") or {}
        return f"{head}: {err.get('code', '?')}: {err.get('message', '')}"
    p = state.get("progress") or {}
    done, total = p.get("bytes_done", 0), p.get("bytes_total", 0) or state["size"]
    if state["state"] == "pending":
        return f"{head} ({format_size(total)}, {state['files']} files; waiting to start)"
    frac = done / total if total else 0.0
    eta = p.get("eta_s")
    return (f"{head} {format_size(done)} / {format_size(total)} ({frac:.0%}), "
            f"{p.get('rate_bytes_per_s', 0) / 1e6:.0f} MB/s, ETA "
            f"{'--' if eta is None else f'{eta:.0f}s'}")
