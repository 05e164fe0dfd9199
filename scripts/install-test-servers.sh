#!/usr/bin/env bash
# Install the servers the tests and benchmarks need beyond pip, idempotently:
#   - nginx (Debian package nginx-light), the origin for throughput benchmarks;
#   - Azurite (npm), the Azure Blob emulator, into <repo>/.tools/node_modules.
# Works as root on a fresh Debian machine (uses sudo when not root and sudo exists).
# Prints what it did; exits non-zero if something could not be installed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools"

log() { echo "install-test-servers: $*"; }
# shellcheck source=lib/apt.sh
. "$repo/scripts/lib/apt.sh"

# nginx: the benchmark starts its own nginx (generated config, loopback port); the
# distribution's service is not used, so it is not started or enabled here.
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    echo "install-test-servers: nginx present ($(/usr/sbin/nginx -v 2>&1 || nginx -v 2>&1))"
else
    apt_install nginx-light
    echo "install-test-servers: installed nginx ($(/usr/sbin/nginx -v 2>&1))"
fi

# Node.js + npm for Azurite.
if ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
    echo "install-test-servers: installed node $(node --version), npm $(npm --version)"
fi

azurite="$tools/node_modules/.bin/azurite-blob"
if [ -x "$azurite" ]; then
    echo "install-test-servers: azurite present ($tools/node_modules/azurite, $(node -p "require('$tools/node_modules/azurite/package.json').version"))"
else
    mkdir -p "$tools"
    echo "install-test-servers: npm install --prefix $tools azurite"
    npm install --prefix "$tools" --no-audit --no-fund --loglevel=error azurite >/dev/null
    [ -x "$azurite" ] || { echo "install-test-servers: azurite install failed" >&2; exit 1; }
    echo "install-test-servers: installed azurite $(node -p "require('$tools/node_modules/azurite/package.json').version") into $tools/node_modules"
fi

echo "install-test-servers: done (nginx: $(command -v nginx || echo /usr/sbin/nginx), azurite: $azurite)"
