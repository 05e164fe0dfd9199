"""Fixtures for the KServe compatibility suite: the init container as a subprocess.

* ``run_init(*args, env=..., script=False)``: runs ``python -m initcontainer`` (or the
  ``weightstream-init`` console script) with exactly ``env``, like the kubelet would ->
  :class:`~tests.support.process.ProcResult`.
* ``azurite`` (session): an Azurite blob service on loopback -> :class:`Azurite`.
* ``fakehub``: factory ``fakehub(root)`` -> a Hugging Face Hub stand-in on loopback.
* ``moto_env``: ``moto_env(**extra)`` -> a clean env pointing S3 at the session's moto.

Keep moto objects small (moto rebuilds whole objects for every ranged GET); size goes
through the origin (``origin_process``).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.kserve.azurite import Azurite, start_azurite
from tests.kserve.fakehub import FakeHub, serve_fakehub
from tests.kserve.helpers import s3_client
from tests.support.moto_server import MotoServer
from tests.support.process import ProcResult, run_cmd, script_path


@pytest.fixture
def run_init() -> Callable[..., ProcResult]:
    def run(*args: object, env: dict[str, str], script: bool = False,
            timeout: float = 120) -> ProcResult:  # fmt: skip
        head = [script_path("weightstream-init")] if script else [
            sys.executable, "-m", "initcontainer"]  # fmt: skip
        return run_cmd([*head, *map(str, args)], env=env, timeout=timeout)

    return run


@pytest.fixture
def s3_bucket(moto: MotoServer) -> str:
    """A new bucket on the session's moto (overrides the root fixture to reuse one client)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client(moto).create_bucket(Bucket=name)
    return name


@pytest.fixture
def moto_env(moto: MotoServer, subprocess_env: Callable[..., dict[str, str]]):
    def make(**extra: str) -> dict[str, str]:
        return moto.env(subprocess_env(), **extra)

    return make


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with start_azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@pytest.fixture
def fakehub() -> Iterator[Callable[[Path], FakeHub]]:
    with ExitStack() as stack:
        yield lambda root: stack.enter_context(serve_fakehub(root))

