#!/usr/bin/env bash
# Build the Debian stand-in base image for the image test, once per machine:
#   scripts/build-base-image.sh          # prints the image name on its last line
#
# No base image can be pulled here (no container registry is reachable), so the test
# builds the project's Dockerfile on a bookworm root file system made by mmdebstrap from
# the machine's own apt sources (scripts/lib/debian_sources.py; no mirror is named here)
# and imported into the container storage configured by install-container-tools.sh. The
# test tags it with the name the Dockerfile's FROM uses. It is a stand-in: Debian's
# Python (/usr/bin/python3, 3.11) instead of the official image's /usr/local build.
#
# Cached: an image with the same package list (label weightstream.base.key) is reused.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
conf_dir="${repo}/.tools/containers"
IMAGE="localhost/weightstream-debian-base:bookworm"
# What the Dockerfile needs from a python base: python/python3 with venv + pip (ensurepip),
# groupadd/useradd, CA certificates.
PACKAGES="python3-minimal,python3-venv,python-is-python3,passwd,ca-certificates"
log() { echo "build-base-image: $*" >&2; }

[ -f "${conf_dir}/containers.conf" ] || bash "${repo}/scripts/install-container-tools.sh" >&2
export CONTAINERS_CONF="${conf_dir}/containers.conf" CONTAINERS_STORAGE_CONF="${conf_dir}/storage.conf"

# /etc/xdg/pip exists (empty) so the image test can mount a pip configuration there during
# the build without leaving a mount point behind.
HOOK='mkdir -p "$1/etc/xdg/pip"'
key="$(printf 'bookworm essential %s %s' "${PACKAGES}" "${HOOK}" | sha256sum | cut -c1-16)"
have="$(podman image inspect --format '{{index .Labels "weightstream.base.key"}}' "${IMAGE}" 2>/dev/null || true)"
if [[ "${have}" == "${key}" ]]; then
    log "${IMAGE} present (key ${key})"
    echo "${IMAGE}"
    exit 0
fi

started=$(date +%s)
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
mapfile -t mirrors < <(python3 "${repo}/scripts/lib/debian_sources.py" deb)
log "mmdebstrap bookworm (${PACKAGES})"
mmdebstrap --quiet --variant=essential --include="${PACKAGES}" \
    --aptopt='Acquire::Languages "none"' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="${HOOK}" \
    bookworm "${work}/rootfs.tar" "${mirrors[@]}" >&2
# The official python images are Debian underneath too; mirror their essentials.
podman import --quiet \
    --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
    --change "LABEL weightstream.base.key=${key}" \
    --change 'LABEL weightstream.base.note="Debian-built stand-in for the python base image (tests only)"' \
    "${work}/rootfs.tar" "${IMAGE}" >/dev/null
log "built ${IMAGE} in $(( $(date +%s) - started )) s ($(podman image inspect --format '{{.Size}}' "${IMAGE}") bytes)"
echo "${IMAGE}"
