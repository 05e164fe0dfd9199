#!/usr/bin/env bash
# The whole test suite, from a fresh machine: install everything it needs, lint, run it.
# Servers (moto, the fault-injecting origin, the cache daemon, Azurite, nginx) are started
# by the tests' own fixtures on loopback ports and stopped afterwards.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh tests/unit -x   # extra arguments go to pytest
#   PYTEST_WORKERS=1 scripts/test.sh   # one pytest process (default: 3 pytest-xdist workers;
#                                      # many tests wait on real servers, so 3 beat 2 on 2 cores)
#
# With workers, tests that share an expensive server stay on one worker (tests/conftest.py:
# one group per module, one for the Kubernetes control plane, one for vLLM).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh --full
echo "test: ruff"
.venv/bin/ruff check .
echo "test: lint-imports"
.venv/bin/lint-imports
echo "test: pytest"
workers="${PYTEST_WORKERS:-3}"
# The 25 slowest steps end every log: where CI time goes, run by run.
if [[ "$workers" == 1 ]]; then
    exec .venv/bin/python -m pytest --durations=25 "$@"
fi
exec .venv/bin/python -m pytest --durations=25 -n "$workers" --dist loadgroup \
    --no-loadscope-reorder "$@"
