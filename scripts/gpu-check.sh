#!/usr/bin/env bash
# The GPU path of streamer.tensors on a machine with a GPU (issue 15), about 5 minutes:
#
#   1. the CUDA tests (tests/unit/test_tensors_cuda.py and the CUDA case of
#      tests/unit/test_tensors.py): pinned buffers, reuse only after the copies' CUDA
#      event, copies on the caller's stream, explicit device; none may be skipped here;
#   2. bench/device_bench.py: a generated multi-GiB model from an HTTP origin on loopback
#      (nginx, or tests/support/origin.py without it) and from the local directory into
#      device memory: weightstream vs runai-model-streamer vs
#      safetensors.torch.load_file(device="cuda"), GB/s and host RSS, as a table.
#
# ROCm builds of torch expose the same torch.cuda API (HIP behind it), so this runs there as
# is. Where torch sees no GPU it says so and exits 0 without running anything.
#
# Usage: scripts/gpu-check.sh [--size 4GiB]     (PYTHON=/path/to/python to pick one)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=4GiB
if [[ "${1:-}" == "--size" && -n "${2:-}" ]]; then SIZE=$2; fi

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  for candidate in .venv/bin/python /work/main/.venv/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY=$candidate; break; fi
  done
fi
if [[ -z "$PY" ]]; then echo "gpu-check: no python found (set PYTHON=...)"; exit 1; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# --- 0. a GPU? -----------------------------------------------------------------------
set +e
"$PY" - <<'PYEOF'
import sys
try:
    import torch
except ImportError as e:
    print(f"gpu-check: torch is not importable ({e}); install it with the CUDA or ROCm build")
    sys.exit(4)
build = f"CUDA {torch.version.cuda}" if torch.version.cuda else (
    f"ROCm/HIP {torch.version.hip}" if getattr(torch.version, "hip", None) else "CPU only")
if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
    print(f"gpu-check: no GPU visible to torch {torch.__version__} ({build}): nothing to check "
          "here. Run this on a machine with an NVIDIA (CUDA) or AMD (ROCm) GPU.")
    sys.exit(3)
names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
print(f"gpu-check: torch {torch.__version__} ({build}), {torch.cuda.device_count()} GPU(s): {names}")
PYEOF
rc=$?
set -e
if [[ $rc == 3 ]]; then exit 0; fi
if [[ $rc != 0 ]]; then exit 1; fi

missing=$("$PY" - <<'PYEOF'
import importlib.util
need = ["streamer", "safetensors", "aiohttp", "pytest", "numpy"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PYEOF
)
if [[ -n "$missing" ]]; then
  echo "gpu-check: missing Python packages: $missing (pip install -e '.[test,tensors]')"
  exit 1
fi
if ! "$PY" -c "import runai_model_streamer" 2>/dev/null; then
  echo "gpu-check: runai-model-streamer not installed: its row will fail (pip install 'runai-model-streamer[s3]==0.17.0')"
fi

# --- 1. the CUDA tests ---------------------------------------------------------------
echo "gpu-check: CUDA tests"
report=$(mktemp)
set +e
timeout 180 "$PY" -m pytest -q -rs -p no:cacheprovider \
  tests/unit/test_tensors_cuda.py "tests/unit/test_tensors.py::test_cuda_stream_is_bit_identical" \
  2>&1 | tee "$report"
tests_rc=${PIPESTATUS[0]}
set -e
if grep -q "SKIPPED" "$report"; then
  echo "gpu-check: a CUDA test was skipped on a machine with a GPU"; tests_rc=1
fi
rm -f "$report"

# --- 2. time to device -----------------------------------------------------------------
echo "gpu-check: time-to-device benchmark ($SIZE)"
set +e
timeout 420 "$PY" bench/device_bench.py --size "$SIZE" --timeout 150
bench_rc=$?
set -e

echo "gpu-check: tests rc=$tests_rc, benchmark rc=$bench_rc (table above; bench/out/device_bench.txt)"
if [[ $tests_rc != 0 || $bench_rc != 0 ]]; then exit 1; fi
