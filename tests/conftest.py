"""Fixtures shared by all weightstream tests (real servers on loopback, no mocks).

* ``moto`` (session): a moto S3 server subprocess -> :class:`MotoServer`.
* ``s3_bucket``: a fresh, uniquely named bucket on ``moto`` -> its name.
* ``origin``: factory ``await origin(root, **opts)`` -> :class:`RunningOrigin` served on the
  test's event loop; stopped at teardown.
* ``origin_process``: factory ``origin_process(root, **opts)`` -> :class:`OriginProcess`
  (separate process, for CLI subprocess / SIGKILL tests); stopped at teardown.
* ``synth_model``: a small Llama (F16, 2 shards) in a tmp dir -> :class:`SynthModel`.
* ``synth_factory``: factory ``synth_factory(spec, name="model")`` -> :class:`SynthModel`
  written under tmp_path.
* ``subprocess_env``: factory ``subprocess_env(**extra)`` -> clean env dict (HOME in tmp).
* ``run_cli``: ``run_cli(*args, env=..., cwd=None, timeout=300)`` -> :class:`ProcResult`
  (rc, stdout, stderr, wall_s, peak_rss_bytes) of ``python -m streamer.cli.main``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from streamer import synth as _synth

# tests.support is imported as a package of the repository root; pytest's default import
# mode only puts tests/ itself on sys.path.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.moto_server import MotoServer, start_moto  # noqa: E402
from tests.support.origin import (  # noqa: E402
    OriginProcess,
    RunningOrigin,
    serve_origin,
    start_origin_process,
)
from tests.support.process import ProcResult, clean_env  # noqa: E402
from tests.support.process import run_cli as _run_cli  # noqa: E402


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server for the session; use ``s3_bucket`` for per-test isolation."""
    with start_moto(log_dir=tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def s3_bucket(moto: MotoServer) -> str:
    """A new empty bucket with a unique name on the session's moto server."""
    return moto.create_bucket()


@pytest.fixture
async def origin() -> Callable:
    """Factory: ``srv = await origin(root, faults=[...], etag="md5", max_keys=1000)``."""
    async with AsyncExitStack() as stack:

        async def start(root: Path | str, **opts) -> RunningOrigin:
            return await stack.enter_async_context(serve_origin(root, **opts))

        yield start


@pytest.fixture
def origin_process() -> Iterator[Callable[..., OriginProcess]]:
    """Factory: ``proc = origin_process(root, faults=[...])`` (a separate process)."""
    with ExitStack() as stack:

        def start(root: Path | str, **opts) -> OriginProcess:
            return stack.enter_context(start_origin_process(root, **opts))

        yield start


@pytest.fixture
def synth_factory(tmp_path: Path) -> Callable[..., _synth.SynthModel]:
    """Factory: ``synth_factory(spec, name="model")`` writes ``spec`` under ``tmp_path/name``."""

    from streamer import synth as _synth  # deferred: a broken streamer import fails only users

    def make(spec: _synth.LlamaSpec | _synth.SizedSpec, name: str = "model") -> _synth.SynthModel:
        return _synth.generate(spec, tmp_path / name)

    return make


@pytest.fixture
def synth_model(tmp_path: Path) -> _synth.SynthModel:
    """A small Llama model (F16 so ``safetensors.numpy`` can read it; 2 shards, ~200 KB)."""
    from streamer import synth as _synth

    return _synth.generate(_synth.llama(dtype="f16", shards=2), tmp_path / "synth-llama")


@pytest.fixture
def subprocess_env(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """Factory: ``subprocess_env(**extra)`` -> a clean env with HOME in a tmp dir."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)

    def make(**extra: str) -> dict[str, str]:
        return clean_env(extra, home=home)

    return make


@pytest.fixture
def run_cli() -> Callable[..., ProcResult]:
    """``run_cli(*args, env=..., cwd=None, timeout=300)`` runs ``python -m streamer.cli.main``."""
    return _run_cli


# Parallel runs (pytest-xdist, ``-n N --dist loadgroup`` as scripts/test.sh runs them):
# each module runs whole on one worker (its module fixtures start once), and the tests
# that share one expensive server run on the same worker: every tests/e2e module that
# uses the session's Kubernetes control plane, and every test marked ``vllm`` (one vLLM at
# a time; each takes GiBs and both CPUs). The image build (tests/e2e/test_image.py) is its
# own group, so it runs beside the control plane. Session fixtures (moto, Azurite) start
# once per worker, each on its own free port; buckets and directories are per test.
_TESTS = Path(__file__).resolve().parent
_SHARED_GROUPS = {"e2e": "k8s-control-plane", "vllm": "vllm"}
_OWN_GROUP = frozenset({"e2e/test_image.py"})


def xdist_group(path: Path) -> str:
    """The xdist group of a test file (a path relative to tests/, or the shared group)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(_TESTS):
        return resolved.as_posix()
    rel = resolved.relative_to(_TESTS).as_posix()
    if rel in _OWN_GROUP:
        return rel
    return _SHARED_GROUPS.get(rel.split("/", 1)[0], rel)


# Under xdist the longest groups start first (scripts/test.sh passes
# --no-loadscope-reorder, so groups are handed out in collection order): vLLM's, then the
# control plane's, then the image build, each on its own worker while the others share the
# many short modules. Without workers the order is pytest's own.
_FIRST = ("vllm", "k8s-control-plane", "e2e/test_image.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups: dict[str, str] = {}
    for item in items:
        marker = item.get_closest_marker("xdist_group")
        if marker is not None:
            groups[item.nodeid] = str(marker.args[0]) if marker.args else ""
            continue
        # A test that runs vLLM (marked ``vllm``, wherever it lives) joins the vLLM group:
        # two vLLM processes at once would each take GiBs and both CPUs.
        group = "vllm" if item.get_closest_marker("vllm") else xdist_group(Path(item.path))
        item.add_marker(pytest.mark.xdist_group(group))
        groups[item.nodeid] = group
    if hasattr(config, "workerinput"):  # an xdist worker: its order is the schedule's
        rank = {g: i for i, g in enumerate(_FIRST)}
        items.sort(key=lambda it: rank.get(groups[it.nodeid], len(_FIRST)))  # stable


# Tests require what they use (scripts/test.sh installs all of it) instead of skipping
# without it. The one skip is for hardware CI machines do not have (a CUDA device); in CI
# any other skip, say one a new test adds, fails instead of passing silently.
_CI_ALLOWED_SKIPS = ("needs a CUDA device",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail")):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    if not any(allowed in reason for allowed in _CI_ALLOWED_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where it must run: {reason}"
