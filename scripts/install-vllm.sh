#!/usr/bin/env bash
# Install vLLM 0.33.0 (light CPU recipe) and runai-model-streamer into the repo venv.
#
#   scripts/install-vllm.sh            # into <repo>/.venv (created by the caller)
#   VENV=/path/to/venv scripts/install-vllm.sh
#
# The recipe (see docs/vllm.md): torch==2.13.0 (the CPU wheel kept in /opt/wheels on these
# machines), vLLM's own requirements without the CUDA-only packages
# (scripts/vllm-cpu-requirements-0.33.0.txt), `vllm==0.33.0 --no-deps`, and
# runai-model-streamer (+ its S3 backend) for vLLM's `runai_streamer` load format.
#
# Idempotent: does nothing when the venv already holds these exact versions and the
# requirements file has not changed (stamp in the venv). Wheels are kept in a wheelhouse
# (WEIGHTSTREAM_WHEELHOUSE, default ~/.cache/weightstream/vllm-wheels) so a second run on
# the same machine installs offline; from nothing it downloads from the package index.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${VENV:-$repo/.venv}"
py="$venv/bin/python"
reqs="$here/vllm-cpu-requirements-0.33.0.txt"
wheelhouse="${WEIGHTSTREAM_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/weightstream/vllm-wheels}"

VLLM_VERSION=0.33.0
TORCH_VERSION=2.13.0
RUNAI_VERSION=0.17.0
# runai-model-streamer 0.17.0's `s3` extra pins runai-model-streamer-s3==0.17.0 (vLLM's
# `runai` extra asks for runai-model-streamer[s3,gcs,azure]); keep them equal.
RUNAI_S3_VERSION=0.17.0

if [[ ! -x "$py" ]]; then
    echo "install-vllm: no python at $py (create the venv first: python3 -m venv $venv)" >&2
    exit 2
fi

# Everything pinned here; the stamp records it together with the requirements file.
pins=(
    "torch==$TORCH_VERSION"
    "vllm==$VLLM_VERSION"
    "runai-model-streamer==$RUNAI_VERSION"
    "runai-model-streamer-s3==$RUNAI_S3_VERSION"
)
# Pinned by vllm's own metadata; xgrammar alone would take a newer one.
extra_constraints=("apache-tvm-ffi==0.1.11")
stamp="$venv/.weightstream-vllm.stamp"
want="$(cat "$reqs" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

installed_ok() {
    "$py" - "$@" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for pin in sys.argv[1:]:
    name, _, want = pin.partition("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if have.split("+")[0] != want:
        sys.exit(1)
PY
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && installed_ok "${pins[@]}"; then
    echo "install-vllm: vllm $VLLM_VERSION already installed in $venv"
    exit 0
fi

start=$SECONDS
pip=("$py" -m pip --disable-pip-version-check)
# pip on these machines warns once per package about index locations it skips; drop that
# noise, keep every other message.
pip_() {
    "${pip[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# torch first, alone: the CPU wheel from /opt/wheels (pip's find-links on these machines).
# A constraints file keeps every later step from swapping it for a CUDA build.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf '%s\n' "${pins[@]}" "${extra_constraints[@]}" >"$constraints"

echo "install-vllm: torch==$TORCH_VERSION"
pip_ install -q "torch==$TORCH_VERSION"

# Fill the wheelhouse (skipped when it already holds this exact set), then install from
# it with no index, so a rerun needs no network.
mkdir -p "$wheelhouse"
if [[ ! -f "$wheelhouse/.stamp" || "$(cat "$wheelhouse/.stamp")" != "$want" ]]; then
    echo "install-vllm: downloading wheels into $wheelhouse"
    # vllm itself goes --no-deps (its full dependency set is CUDA); its CPU subset is
    # the requirements file.
    pip_ download -q -d "$wheelhouse" -c "$constraints" \
        -r "$reqs" "runai-model-streamer==$RUNAI_VERSION" \
        "runai-model-streamer-s3==$RUNAI_S3_VERSION"
    pip_ download -q -d "$wheelhouse" --no-deps "vllm==$VLLM_VERSION"
    echo "$want" >"$wheelhouse/.stamp"
fi

offline=(--no-index --find-links "$wheelhouse" --find-links /opt/wheels)
echo "install-vllm: vLLM requirements (CPU subset)"
pip_ install -q "${offline[@]}" -c "$constraints" -r "$reqs" \
    "runai-model-streamer==$RUNAI_VERSION" "runai-model-streamer-s3==$RUNAI_S3_VERSION"
echo "install-vllm: vllm==$VLLM_VERSION --no-deps"
pip_ install -q "${offline[@]}" --no-deps "vllm==$VLLM_VERSION"

installed_ok "${pins[@]}"
echo "$want" >"$stamp"
echo "install-vllm: done in $((SECONDS - start)) s"
