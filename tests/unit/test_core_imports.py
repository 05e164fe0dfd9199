"""The core install needs nothing beyond its dependencies: every module of ``streamer``,
``initcontainer`` and ``sidecar`` imports with numpy absent, except the optional parts
(``streamer.synth``: the ``synth`` extra; ``streamer.tensors`` and ``streamer.vllm_plugin``:
the ``tensors`` extra)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import importlib, pkgutil, sys
sys.modules["numpy"] = None  # any import of numpy now raises ImportError
OPTIONAL = ("streamer.synth", "streamer.tensors", "streamer.vllm_plugin")
names = []
for top in ("streamer", "initcontainer", "sidecar"):
    pkg = importlib.import_module(top)
    for info in pkgutil.walk_packages(pkg.__path__, top + "."):
        if info.name.startswith(OPTIONAL) or info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
        names.append(info.name)
try:
    import streamer.synth
except ImportError as e:
    print("synth:", e)
print(len(names), "modules")
"""


def test_core_modules_import_without_numpy():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    count = int(r.stdout.strip().splitlines()[-1].split()[0])
    assert count > 40, r.stdout
    assert "pip install 'weightstream[synth]'" in r.stdout
