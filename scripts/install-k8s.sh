#!/usr/bin/env bash
# Install a real Kubernetes control plane for the e2e tests (tests/e2e), idempotently:
#   - etcd (Debian packages etcd-server/etcd-client);
#   - kube-apiserver, kube-controller-manager, kube-scheduler v1.20.2, built from Debian
#     bookworm's *source* package `kubernetes` (no registry ships these binaries) and
#     cached outside the checkout in ~/.cache/weightstream/k8s-<pkgversion>/bin.
#     The build takes about 8 minutes on 2 cores, once per machine; a second run only
#     checks the cache and takes seconds.
#   - kubectl comes from install-helm.sh (v1.33.0; against a 1.20 server it prints a
#     version skew warning; apply/get/patch/auth work).
#
# The source package comes through a private apt configuration (its own sources list,
# lists and cache under the work directory) holding `deb-src` lines made from the
# machine's own apt sources, so the system's apt setup is left untouched and no mirror
# host name is written here.
#
#   scripts/install-k8s.sh            # prints the cache directory on its last line
#   WEIGHTSTREAM_K8S_CACHE=/path ...  # another cache root (default ~/.cache/weightstream)
#
# Works as root on a fresh Debian bookworm machine (sudo when not root and sudo exists).
set -euo pipefail

K8S_SRC_PKG="kubernetes"
K8S_SRC_VERSION="1.20.5+really1.20.2-1.1+deb12u1"   # upstream tree v1.20.2 with vendor/
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${WEIGHTSTREAM_K8S_CACHE:-${HOME}/.cache/weightstream}"
cache="${cache_root}/k8s-${K8S_SRC_VERSION}"
log() { echo "install-k8s: $*"; }

# shellcheck source=lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
sudo=("${apt_sudo[@]}")

# --- Debian packages: etcd and the build dependencies ------------------------------------
apt_install etcd-server etcd-client golang-go golang-github-modern-go-reflect2-dev \
    make gcc libc6-dev rsync jq dpkg-dev ca-certificates openssl
# Debian's etcd-server enables a system service on install; the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    "${sudo[@]}" systemctl disable --now etcd >/dev/null 2>&1 || true
fi

# --- control-plane binaries (cached) -------------------------------------------------------
cached() {
    local b
    for b in "${BINARIES[@]}"; do [ -x "${cache}/bin/${b}" ] || return 1; done
    "${cache}/bin/kube-apiserver" --version 2>/dev/null | grep -q "v1.20.2"
}
if cached; then
    log "control plane cached in ${cache}/bin ($("${cache}/bin/kube-apiserver" --version))"
    echo "${cache}"
    exit 0
fi

mkdir -p "${cache_root}"
# One build per machine at a time: a second run waits here and then finds the cache.
if [ -z "${WEIGHTSTREAM_K8S_LOCKED:-}" ] && command -v flock >/dev/null 2>&1; then
    exec env WEIGHTSTREAM_K8S_LOCKED=1 flock "${cache_root}/k8s-build.lock" bash "$0" "$@"
fi
if cached; then echo "${cache}"; exit 0; fi
work="$(mktemp -d "${cache_root}/k8s-build.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
started=$(date +%s)

# Private apt configuration: deb-src lines for the Debian suites the machine already uses.
mkdir -p "${work}/apt/lists/partial" "${work}/apt/cache/archives/partial" "${work}/apt/parts" "${work}/src"
python3 "${repo}/scripts/lib/debian_sources.py" deb-src >"${work}/apt/sources.list"
apt_private=(-o "Dir::Etc::SourceList=${work}/apt/sources.list" -o "Dir::Etc::SourceParts=${work}/apt/parts"
             -o "Dir::State::Lists=${work}/apt/lists" -o "Dir::Cache=${work}/apt/cache")
log "fetching source package ${K8S_SRC_PKG}=${K8S_SRC_VERSION} (private apt configuration)"
apt-get "${apt_private[@]}" update -qq
(cd "${work}/src" && apt-get "${apt_private[@]}" source --download-only -qq \
    "${K8S_SRC_PKG}=${K8S_SRC_VERSION}" 2>&1 | grep -v "unsandboxed" || true)
orig="$(ls "${work}"/src/*.orig.tar.gz)"
debian_tar="$(ls "${work}"/src/*.debian.tar.xz)"

tree="${work}/kubernetes"
mkdir -p "${tree}"
tar -xzf "${orig}" -C "${tree}" --strip-components=1
tar -xJf "${debian_tar}" -C "${tree}"
while read -r patch; do
    [[ -z "${patch}" || "${patch}" == \#* ]] && continue
    patch -d "${tree}" -p1 -s <"${tree}/debian/patches/${patch}"
done <"${tree}/debian/patches/series"
# The vendored modern-go/reflect2 v1.0.1 corrupts memory under Go >= 1.18 (the API
# server crashes in json-iterator); Debian's 1.0.2 is a drop-in replacement.
rm -rf "${tree}/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "${tree}/vendor/github.com/modern-go/reflect2"
rm -f "${tree}/vendor/github.com/modern-go/reflect2/go.mod"

log "building ${BINARIES[*]} (once per machine; ~8 min on 2 idle cores)"
what=""
for b in "${BINARIES[@]}"; do what+="cmd/${b} "; done
# Go compiles GOMAXPROCS packages at once (all cores), niced; WEIGHTSTREAM_K8S_BUILD_JOBS=1
# limits it on a machine that needs its cores (the build scripts of 1.20 also pass GOFLAGS
# on as build tags, which is harmless).
jobs=()
[ -n "${WEIGHTSTREAM_K8S_BUILD_JOBS:-}" ] && jobs=(GOFLAGS="-p=${WEIGHTSTREAM_K8S_BUILD_JOBS}")
(cd "${tree}" && mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes \
    && env GOPATH="${tree}/.go" HOME="${work}/home" GOCACHE="${work}/gocache" \
        CGO_ENABLED=0 "${jobs[@]}" nice -n 10 make WHAT="${what% }" >"${work}/build.log" 2>&1) \
    || { tail -40 "${work}/build.log" >&2; log "build failed" >&2; exit 1; }

mkdir -p "${cache}.tmp/bin"
for b in "${BINARIES[@]}"; do cp "${tree}/_output/bin/${b}" "${cache}.tmp/bin/${b}"; done
rm -rf "${cache}" && mv "${cache}.tmp" "${cache}"
cached || { log "built binaries do not report v1.20.2" >&2; exit 1; }
log "built ${BINARIES[*]} in $(( $(date +%s) - started )) s into ${cache}/bin"
echo "${cache}"
