#!/usr/bin/env bash
# Set up and run the main job on an embedded default: start a local S3 server (moto),
# generate a small Llama-shaped safetensors model into it, and download it with
# `weightstream download`, printing progress and the summary. Extra arguments are
# passed to the demo (see `.venv/bin/python scripts/demo.py --help`).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
exec "$repo/.venv/bin/python" "$repo/scripts/demo.py" "$@"
