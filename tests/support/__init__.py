"""Test infrastructure shared by every weightstream test: real servers on loopback.

Modules:
    moto_server  moto in server mode as a subprocess (S3 semantics, small objects only)
    origin       our own aiohttp origin: plain HTTP + S3 path-style, request log, faults;
                 in-process (``serve_origin``) or as a process (``python -m tests.support.origin``)
    process      subprocess helpers: clean environments, ``run_cli`` with peak RSS, ``spawn_cli``
    ports        free loopback ports and readiness polling
    k8s          a v1.20.2 control plane on loopback (TLS, tokens, RBAC) for tests/e2e
    fake_kubelet Ready nodes, Running pods and finished deletions without a kubelet
    containers   buildah/podman with the sandbox's configuration, Dockerfile bases, wheelhouse

Nothing here mutates ``os.environ``: environments for subprocesses are built as dicts and
passed explicitly.
"""
