#!/usr/bin/env bash
# Set up a development environment from nothing (idempotent): the repo venv with
# weightstream and its test/bench extras, and with --full also what the whole test suite
# needs beyond pip: helm (pinned 3.18.0), nginx and Azurite, vLLM 0.33.0 (CPU recipe), a
# Kubernetes control plane and container tools for tests/e2e (docs/testing.md).
#
#   scripts/setup.sh          # venv + package (enough for the demo and the unit tests)
#   scripts/setup.sh --full   # everything the test suite uses
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
py="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup: creating $venv"
    "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
echo "setup: installing weightstream (editable) with test and bench extras"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo[test,bench]"

if [[ "${1:-}" == "--full" ]]; then
    bash "$repo/scripts/install-helm.sh"
    bash "$repo/scripts/install-test-servers.sh"
    bash "$repo/scripts/install-vllm.sh"
    # tests/e2e: a v1.20.2 control plane (built once per machine, cached in
    # ~/.cache/weightstream) and podman/buildah with a Debian-built stand-in base image.
    bash "$repo/scripts/install-k8s.sh"
    bash "$repo/scripts/install-container-tools.sh"
    bash "$repo/scripts/build-base-image.sh" >/dev/null
fi
