#!/usr/bin/env bash
# The whole test suite, from a fresh machine: install everything it needs, lint, run it.
# Servers (moto, the fault-injecting origin, the cache daemon, Azurite, nginx) are started
# by the tests' own fixtures on loopback ports and stopped afterwards.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh tests/unit -x   # extra arguments go to pytest
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh --full
echo "test: ruff"
.venv/bin/ruff check .
echo "test: lint-imports"
.venv/bin/lint-imports
echo "test: pytest"
exec .venv/bin/python -m pytest "$@"
