#!/usr/bin/env bash
# Install daemonless container tools for the image test (tests/e2e/test_image.py),
# idempotently, and write the configuration this kind of sandbox needs:
#   - podman, buildah, umoci, runc, fuse-overlayfs, mmdebstrap (Debian packages);
#   - <repo>/.tools/containers/containers.conf and storage.conf. Nothing under
#     /etc/containers is changed: the tests point podman/buildah at these files with
#     CONTAINERS_CONF and CONTAINERS_STORAGE_CONF (tests/support/containers.py).
#
# containers.conf: runc (crun refuses the hybrid cgroup layout here), cgroupfs, ulimits at
# or below the sandbox's hard limits (the defaults fail with EPERM), and host networking
# (podman's default network would create a bridge with iptables rules; host networking
# keeps every test server on loopback). Image storage lives outside the checkout in
# ~/.cache/weightstream/containers so the stand-in base image is built once per machine.
#
# Works as root on a fresh Debian bookworm machine (sudo when not root and sudo exists).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
conf_dir="${repo}/.tools/containers"
store="${WEIGHTSTREAM_CONTAINERS_STORE:-${HOME}/.cache/weightstream/containers}"
log() { echo "install-container-tools: $*"; }

# shellcheck source=lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
sudo=("${apt_sudo[@]}")

debs=(podman buildah umoci runc fuse-overlayfs uidmap slirp4netns mmdebstrap
      containers-storage golang-github-containers-common)
if [ -n "$(apt_missing "${debs[@]}")" ]; then
    apt_install "${debs[@]}"
else
    log "podman $(podman --version | awk '{print $3}'), buildah $(buildah --version | awk '{print $3}') present"
fi

# ulimits no higher than this sandbox allows (the defaults ask for more and fail).
nofile_hard="$(ulimit -Hn)"; nproc_hard="$(ulimit -Hu)"
nofile=20000; nproc=32768
[[ "${nofile_hard}" != unlimited && "${nofile_hard}" -lt "${nofile}" ]] && nofile="${nofile_hard}"
[[ "${nproc_hard}" != unlimited && "${nproc_hard}" -lt "${nproc}" ]] && nproc="${nproc_hard}"

mkdir -p "${conf_dir}" "${store}/storage" "${store}/run"
cat >"${conf_dir}/containers.conf.tmp" <<EOF
# Written by scripts/install-container-tools.sh; used through CONTAINERS_CONF.
[containers]
netns = "host"
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
default_network = "podman"
EOF
mv -f "${conf_dir}/containers.conf.tmp" "${conf_dir}/containers.conf"

driver="${WEIGHTSTREAM_CONTAINERS_DRIVER:-overlay}"
cat >"${conf_dir}/storage.conf.tmp" <<EOF
# Written by scripts/install-container-tools.sh; used through CONTAINERS_STORAGE_CONF.
[storage]
driver = "${driver}"
graphroot = "${store}/storage"
runroot = "${store}/run"
EOF
mv -f "${conf_dir}/storage.conf.tmp" "${conf_dir}/storage.conf"

export CONTAINERS_CONF="${conf_dir}/containers.conf" CONTAINERS_STORAGE_CONF="${conf_dir}/storage.conf"
podman info --format '{{.Store.GraphDriverName}} {{.Host.OCIRuntime.Name}}' >/dev/null \
    || { log "podman does not work with ${conf_dir}/containers.conf" >&2; exit 1; }
log "configuration in ${conf_dir} (storage ${store}, driver ${driver})"
