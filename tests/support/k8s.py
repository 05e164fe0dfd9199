"""A real Kubernetes control plane on loopback for the e2e tests (tests/e2e).

:func:`start_control_plane` runs etcd, kube-apiserver, kube-controller-manager and
kube-scheduler (v1.20.2, built once per machine by ``scripts/install-k8s.sh``) and a fake
kubelet (:mod:`tests.support.fake_kubelet`) as subprocesses, every one bound to 127.0.0.1
on free ports, and yields a :class:`ControlPlane`. Stopping it kills them all and removes
their state; nothing outlives the test session.

Security setup, as a real cluster has it:

* TLS: a CA made with openssl signs the API server's serving certificate (SAN 127.0.0.1);
  clients verify it (``ca.crt``), nobody skips verification.
* Authentication: a static token file (``--token-auth-file``): ``admin`` (system:masters)
  for kubectl/helm, ``system:kube-controller-manager``, ``system:kube-scheduler`` and the
  fake kubelet's node identity; service accounts get tokens signed with a key pair made
  here (``--service-account-signing-key-file``; the TokenRequest API works).
* Authorization: ``--authorization-mode=Node,RBAC``: the default cluster roles and
  whatever the chart creates, nothing more. The controller-manager runs every controller
  with its own service account (``--use-service-account-credentials``).

Limits of v1.20.2 (the newest API server buildable here): CEL ``x-kubernetes-validations``
are unknown (client-side validation rejects them; the server ignores them), no native
sidecars (init containers with ``restartPolicy: Always`` are 1.28+), no OpenAPI v3, and
fields added after 1.20 are dropped or rejected. There is no kube-proxy: Service IPs are
numbers in API objects only, so every process is pointed at ``https://127.0.0.1:<port>``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ports import LOOPBACK, free_port
from tests.support.process import REPO_ROOT, ProcResult, dies_with_parent, run_cmd

KUBECTL = REPO_ROOT / ".tools" / "bin" / "kubectl"
HELM = REPO_ROOT / ".tools" / "bin" / "helm"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-k8s.sh"
SERVER_VERSION = "v1.20.2"
ETCD = Path("/usr/bin/etcd")
ADMIN = "admin"
SERVICE_CIDR = "10.96.0.0/12"


@dataclass(frozen=True, kw_only=True)
class FakeNode:
    """A node the fake kubelet registers (Ready, with the given labels and taints)."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()
    gpus: int = 0

    def to_arg(self) -> str:
        return json.dumps({"name": self.name, "labels": self.labels,
                           "taints": list(self.taints), "gpus": self.gpus})


class ApiError(Exception):
    """The API server answered an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: {status} {body[:400]}")
        self.method = method
        self.path = path
        self.status = status
        self.body = body


@dataclass(frozen=True, kw_only=True)
class ControlPlane:
    """A running control plane: where it is and how to talk to it."""

    api_url: str
    ca_file: Path
    kubeconfig: Path
    admin_token: str
    workdir: Path
    nodes: tuple[FakeNode, ...]

    # --- REST -------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                content_type: str = "application/json", accept: str = "application/json",
                timeout: float = 60.0) -> tuple[int, Any]:
        """One API call -> (status, decoded JSON or text). Does not raise on 4xx/5xx.
        (60 s: a list answers in milliseconds on an idle machine, but took over 15 s on a
        2-core one at load 25.)"""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        req.add_header("Accept", accept)
        if data is not None:
            req.add_header("Content-Type", content_type)
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def api(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """Like :meth:`request` but raises :class:`ApiError` unless the status is 2xx."""
        status, doc = self.request(method, path, body, **kw)
        if not 200 <= status < 300:
            text = doc if isinstance(doc, str) else json.dumps(doc)
            raise ApiError(method, path, status, text)
        return doc

    # --- tools ------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Environment for kubectl/helm: this cluster only, helm state in the work dir."""
        home = self.workdir / "home"
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(home / "helm-cache"),
            "HELM_CONFIG_HOME": str(home / "helm-config"),
            "HELM_DATA_HOME": str(home / "helm-data"),
        }

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True,
                timeout: float = 120) -> ProcResult:
        return self._tool(KUBECTL, args, input_text, check, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> ProcResult:
        """Run helm; install/upgrade skip helm's client-side OpenAPI check, because the
        chart sets ``RollingUpdateDaemonSet.maxSurge`` (1.21+), which 1.20's OpenAPI does
        not know (the server drops it). The server's own validation still applies."""
        if args and args[0] in ("install", "upgrade"):
            args = (*args, "--disable-openapi-validation")
        return self._tool(HELM, args, None, check, timeout)

    @contextlib.contextmanager
    def release(self, name: str, chart: Path | str, namespace: str, *args: str,
                timeout: float = 300) -> Iterator[None]:
        """``helm install NAME CHART --namespace NAMESPACE ARGS...`` for the block, and
        ``helm uninstall`` when it ends, however it ends. A failed test, or a failed
        ``install --wait`` (it leaves a failed release with its objects), must not leave
        the release behind: its cluster-scoped objects (the ClusterStorageContainers, the
        ClusterRoles) would make every later install of the session fail. A block that
        uninstalls the release itself (to check what that leaves) leaves nothing to do.
        A failing uninstall raises unless the block already raised."""
        ok = False
        try:
            self.helm("install", name, str(chart), "--namespace", namespace, *args,
                      timeout=timeout)
            yield
            ok = True
        finally:
            res = self.helm("uninstall", name, "--namespace", namespace, "--ignore-not-found",
                            "--wait", "--timeout", "120s", check=False, timeout=180)
            if ok:
                res.check()

    def _tool(self, binary: Path, args: Sequence[str], input_text: str | None, check: bool,
              timeout: float) -> ProcResult:
        res = run_cmd([str(binary), *args], env=self.env(), timeout=timeout,
                      stdin=input_text.encode() if input_text is not None else None)
        return res.check() if check else res

    def ensure_namespace(self, name: str) -> None:
        """Create the namespace unless it exists."""
        status, body = self.request("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        if status not in (201, 409):
            raise ApiError("POST", "/api/v1/namespaces", status, str(body))

    def service_account_token(self, namespace: str, name: str, *,
                              seconds: int = 3600) -> str:
        """A token for ``namespace/name`` from the TokenRequest API (what projected service
        account volumes hold)."""
        doc = self.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                       {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                        "spec": {"expirationSeconds": seconds}})
        return str(doc["status"]["token"])

    def wait_for(self, what: str, check: Any, *, timeout: float = 60.0,
                 interval: float = 0.5) -> Any:
        """Poll ``check()`` until it returns something truthy; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


# --- installation ------------------------------------------------------------------------
def control_plane_binaries() -> Path:
    """The cached bin/ directory (``scripts/install-k8s.sh`` builds it once per machine)."""
    res = run_cmd(["bash", str(INSTALL_SCRIPT)], env=dict(os.environ), timeout=3600).check()
    cache = Path(res.stdout.strip().splitlines()[-1])
    return cache / "bin"


# --- certificates and credentials ------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_pki(pki: Path) -> None:
    pki.mkdir(parents=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=weightstream-e2e-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=pki)
    (pki / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,IP:10.96.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
             "-keyout", "server.key", "-out", "server.csr", cwd=pki)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
             cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _kubeconfig(path: Path, server: str, ca: Path, user: str, token: str) -> None:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
        "clusters": [{"name": "e2e", "cluster": {"server": server,
                                                 "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
    }
    path.write_text(json.dumps(doc, indent=1))
    path.chmod(0o600)


# --- processes ---------------------------------------------------------------------------------
@dataclass
class _Procs:
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], logdir: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(dies_with_parent(argv), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def check_alive(self, logdir: Path) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (logdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _wait_ready(cp: ControlPlane, procs: _Procs, logdir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        procs.check_alive(logdir)
        try:
            status, body = cp.request("GET", "/readyz", timeout=3)
            if status == 200:
                return
        except OSError:
            body = "not listening"
        if time.monotonic() > deadline:
            raise RuntimeError(f"kube-apiserver not ready after {timeout:.0f} s: {body!r}")
        time.sleep(0.3)


@contextlib.contextmanager
def start_control_plane(workdir: Path, nodes: Sequence[FakeNode], *,
                        bin_dir: Path | None = None, timeout: float = 120.0
                        ) -> Iterator[ControlPlane]:
    """Run a control plane plus a fake kubelet for ``nodes``; everything stops on exit."""
    bin_dir = bin_dir or control_plane_binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    logdir = workdir / "logs"
    logdir.mkdir()
    pki = workdir / "pki"
    _make_pki(pki)

    tokens = {name: os.urandom(16).hex() for name in
              (ADMIN, "controller-manager", "scheduler", "kubelet")}
    (pki / "tokens.csv").write_text(
        f'{tokens[ADMIN]},{ADMIN},uid-admin,"system:masters"\n'
        f'{tokens["controller-manager"]},system:kube-controller-manager,uid-kcm\n'
        f'{tokens["scheduler"]},system:kube-scheduler,uid-sched\n'
        # One identity for all fake nodes; the Node authorizer would limit a real kubelet
        # to its own node, so this one is a cluster admin (it is test plumbing).
        f'{tokens["kubelet"]},fake-kubelet,uid-kubelet,"system:masters"\n')
    (pki / "tokens.csv").chmod(0o600)

    etcd_port, etcd_peer, api_port, kcm_port, sched_port = (free_port() for _ in range(5))
    api_url = f"https://{LOOPBACK}:{api_port}"
    kubeconfig = workdir / "admin.kubeconfig"
    _kubeconfig(kubeconfig, api_url, pki / "ca.crt", ADMIN, tokens[ADMIN])
    for name in ("controller-manager", "scheduler"):
        _kubeconfig(workdir / f"{name}.kubeconfig", api_url, pki / "ca.crt", name, tokens[name])

    cp = ControlPlane(api_url=api_url, ca_file=pki / "ca.crt", kubeconfig=kubeconfig,
                      admin_token=tokens[ADMIN], workdir=workdir, nodes=tuple(nodes))
    procs = _Procs()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)}
    try:
        etcd_url = f"http://{LOOPBACK}:{etcd_port}"
        procs.start("etcd", [
            str(ETCD), "--name=e2e", f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://{LOOPBACK}:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://{LOOPBACK}:{etcd_peer}",
            f"--initial-cluster=e2e=http://{LOOPBACK}:{etcd_peer}",
            "--log-level=warn", "--quota-backend-bytes=1073741824",
            # Server-side applied KServe CRDs (schema + managedFields) exceed the 1.5 MiB default.
            "--max-request-bytes=8388608",
        ], logdir, env)
        procs.start("kube-apiserver", [
            str(bin_dir / "kube-apiserver"), f"--etcd-servers={etcd_url}",
            f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}",
            f"--secure-port={api_port}", "--insecure-port=0",
            f"--tls-cert-file={pki / 'server.crt'}", f"--tls-private-key-file={pki / 'server.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={workdir / 'apiserver-certs'}", "--profiling=false", "--v=1",
        ], logdir, env)
        _wait_ready(cp, procs, logdir, timeout)
        procs.start("kube-controller-manager", [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={workdir / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={workdir / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={workdir / 'controller-manager.kubeconfig'}",
            f"--bind-address={LOOPBACK}", "--port=0", f"--secure-port={kcm_port}",
            f"--cert-dir={workdir / 'kcm-certs'}", "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*,-csrsigning,-csrapproving,-csrcleaner",
            "--profiling=false", "--v=1",
        ], logdir, env)
        procs.start("kube-scheduler", [
            str(bin_dir / "kube-scheduler"), f"--kubeconfig={workdir / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={workdir / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={workdir / 'scheduler.kubeconfig'}",
            f"--bind-address={LOOPBACK}", "--port=0", f"--secure-port={sched_port}",
            f"--cert-dir={workdir / 'sched-certs'}", "--leader-elect=false",
            "--profiling=false", "--v=1",
        ], logdir, env)
        procs.start("fake-kubelet", [
            sys.executable, "-m", "tests.support.fake_kubelet", "--server", api_url,
            "--ca-file", str(pki / "ca.crt"), "--token", tokens["kubelet"],
            *[a for n in nodes for a in ("--node", n.to_arg())],
        ], logdir, {**env, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"})
        # Ready when the default service account exists (the token controller runs) and
        # every fake node is Ready without the not-ready taint.
        cp.wait_for("the default service account", lambda: procs.check_alive(logdir) or
                    cp.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0]
                    == 200, timeout=timeout)
        cp.wait_for("fake nodes Ready", lambda: procs.check_alive(logdir) or
                    _nodes_ready(cp), timeout=timeout)
        yield cp
    finally:
        procs.stop()
        shutil.rmtree(workdir / "etcd", ignore_errors=True)


def _nodes_ready(cp: ControlPlane) -> bool:
    items = cp.api("GET", "/api/v1/nodes")["items"]
    ready = set()
    for node in items:
        conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        taints = {t["key"] for t in node.get("spec", {}).get("taints") or []}
        if conds.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints:
            ready.add(node["metadata"]["name"])
    return ready == {n.name for n in cp.nodes}

