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
# The editable install is redone only when what it is made from changed (pyproject.toml,
# this script) or it points at another checkout: otherwise pip spends a minute building an
# isolated setuptools environment to install what is already there (source edits need no
# reinstall, the install is editable).
stamp="$venv/.weightstream-setup.stamp"
want="$(cat "$repo/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1) $repo"
installed_here() {
    # -I: the checkout in the working directory must not shadow what the venv installed.
    (cd / && "$venv/bin/python" -I -c 'import streamer, sys; sys.exit(not streamer.__file__.startswith(sys.argv[1] + "/"))' "$repo") 2>/dev/null
}
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && installed_here; then
    echo "setup: weightstream (editable) with test and bench extras already installed ($stamp)"
else
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    echo "setup: installing weightstream (editable) with test and bench extras"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo[test,bench]"
    echo "$want" >"$stamp"
fi

if [[ "${1:-}" == "--full" ]]; then
    # vLLM's install is pip only (no apt), so it runs beside the others, which take turns
    # on apt/dpkg; on a fresh machine it overlaps the control plane's build.
    bash "$repo/scripts/install-vllm.sh" &
    vllm_pid=$!
    trap 'kill "$vllm_pid" 2>/dev/null || true' EXIT  # a failed step stops it too
    bash "$repo/scripts/install-helm.sh"
    bash "$repo/scripts/install-test-servers.sh"
    # tests/e2e: a v1.20.2 control plane (built once per machine, cached in
    # ~/.cache/weightstream) and podman/buildah with a Debian-built stand-in base image.
    bash "$repo/scripts/install-k8s.sh"
    bash "$repo/scripts/install-container-tools.sh"
    bash "$repo/scripts/build-base-image.sh" >/dev/null
    wait "$vllm_pid" || { echo "setup: scripts/install-vllm.sh failed" >&2; exit 1; }
    trap - EXIT
fi
