"""The import arrows of pyproject.toml's [tool.importlinter] contracts hold, and the CLI
finds the daemon's commands through its entry point (not by importing ``sidecar``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streamer.cli.main import COMMAND_GROUP

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([str(lint)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_cache_command_comes_from_the_entry_point():
    from importlib.metadata import entry_points

    names = {e.name: e.value for e in entry_points(group=COMMAND_GROUP)}
    assert names.get("cache") == "sidecar.cli:register", names
    # In a process of its own: pytest puts tests/ on sys.path, where tests/sidecar would
    # stand in for the sidecar package.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "streamer.cli.main", "cache", "ls", "--help"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "list the models in the node cache" in r.stdout
