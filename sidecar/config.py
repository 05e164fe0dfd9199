"""The daemon's settings: one frozen object per entry point, built from flags then env.

Sources in a fixed order: command-line flags, then the environment, then defaults. This
is the only module of :mod:`sidecar` that reads the environment (the caller passes it in).

=========================  ==============================  ==========================
flag                       environment                     default
=========================  ==============================  ==========================
``--cache-root``           ``WEIGHTSTREAM_CACHE_ROOT``     ``/var/lib/weightstream``
``--capacity``             ``WEIGHTSTREAM_CACHE_CAPACITY`` ``0`` (no limit but disk)
``--min-free``             ``WEIGHTSTREAM_CACHE_MIN_FREE`` ``10Gi``
``--socket``               (daemon) --                     ``<cache-root>/daemon.sock``
``--listen``               ``WEIGHTSTREAM_CACHE_LISTEN``   ``0.0.0.0:8470`` (``off``)
``--s3-listen``            ``WEIGHTSTREAM_CACHE_S3_LISTEN`` ``off`` (S3 read endpoint)
``--s3-max-connections``   --                              ``4096`` (fit to ``ulimit -n``)
``--s3-max-readers``       --                              ``4096``
``--allow`` (repeatable)   ``WEIGHTSTREAM_CACHE_ALLOW``    any (comma separated)
``--allow-endpoint`` (rep.) ``WEIGHTSTREAM_CACHE_ALLOW_ENDPOINTS`` none (comma separated)
``--operator-token-file``  ``WEIGHTSTREAM_CACHE_OPERATOR_TOKEN_FILE`` unset (grants only)
``--log-format``           ``WEIGHTSTREAM_LOG_FORMAT``     ``text``
``--concurrency``          ``WEIGHTSTREAM_CONCURRENCY``    see docs/interfaces.md
``--chunk-size``           ``WEIGHTSTREAM_CHUNK_SIZE``     ("Transfer options")
``--max-memory``           ``WEIGHTSTREAM_MAX_MEMORY``
--                         ``S3_MAX_ATTEMPTS``
``--max-pulls``            --                              ``2``
``--proof-ttl``            --                              ``30`` seconds
``--housekeeping``         --                              ``30`` seconds
``--peer-discovery``       ``WEIGHTSTREAM_PEER_DISCOVERY`` ``static`` (or ``kubernetes``)
``--peer-service``         ``WEIGHTSTREAM_PEER_SERVICE``   unset (kubernetes discovery)
``--kube-namespace``       ``WEIGHTSTREAM_NAMESPACE``      the service account's namespace
``--node-name``            ``WEIGHTSTREAM_NODE_NAME``      unset (no pod awareness)
``--kube-api``             ``KUBERNETES_SERVICE_HOST/PORT`` in-cluster API server
``--peer-listen``          ``WEIGHTSTREAM_PEER_LISTEN``    ``off`` (peer listener)
``--peers``                ``WEIGHTSTREAM_PEERS``          none (``name=url,...``)
``--peer-secret-file``     ``WEIGHTSTREAM_PEER_SECRET_FILE`` unset (required by peers)
``--peer-rate``            ``WEIGHTSTREAM_PEER_RATE``      ``0`` (bytes/s, no cap)
``--peer-rate-per-peer``   ``WEIGHTSTREAM_PEER_RATE_PER_PEER`` ``0``
``--peer-connections``     ``WEIGHTSTREAM_PEER_CONNECTIONS`` ``64``
``--peer-timeout``         --                              ``10`` seconds
``--peer-sample``          ``WEIGHTSTREAM_PEER_SAMPLE``    ``8`` (peers polled per interval)
--                         ``HTTP_PROXY``, ``HTTPS_PROXY``, none (origin traffic direct)
                           ``NO_PROXY`` (and lowercase)
=========================  ==============================  ==========================

Peers (:mod:`sidecar.peers`): the daemon's own name among its peers is ``--node-name``
(else the host name); a daemon with ``--peers`` reads ranges from them, a daemon with
``--peer-listen`` serves its models and running pulls to them; both need the cluster
secret (``--peer-secret-file``).

Pod awareness (leases follow the pods that hold them) is on when a node name and an API
server are known and the service account token file exists. Kubernetes peer discovery
(``--peer-discovery kubernetes``) watches the EndpointSlices of ``--peer-service`` in the
daemon's namespace and needs the node name (a daemon's name among its peers) and an API
server. The forward proxy for origin traffic comes from the daemon's own environment only
(:mod:`streamer.proxy`); a requester's message never names one.

Its length (about 470 lines) is the settings table: one frozen config, its flags and
its sources in one place, as the style asks, rather than spread over the parts it feeds.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.errors import UsageError
from streamer.proxy import ProxySettings
from streamer.settings import (
    TransferOptions,
    add_transfer_arguments,
    log_format,
    resolve_transfer,
)
from streamer.sizes import parse_size

from .layout import SOCKET_NAME
from .listeners import S3_MAX_CONNECTIONS

DEFAULT_ROOT = "/var/lib/weightstream"
DEFAULT_LISTEN = "0.0.0.0:8470"
DEFAULT_MIN_FREE = 10 << 30
# A unix socket path is limited to 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
MAX_REQUEST_BYTES = 1 << 20
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DISCOVERY = ("static", "kubernetes")


@dataclass(frozen=True, kw_only=True)
class DaemonConfig(TransferOptions):
    """Everything the daemon needs, resolved and validated (with the transfer options of
    each pull: ``concurrency``, ``chunk_size``, ``max_memory``, ``retry``).

    Attributes:
        cache_root: the cache directory (hostPath).
        capacity: byte capacity of the models; 0 means no limit but the disk.
        min_free: free-disk watermark kept by evicting unleased models.
        socket_path: unix socket of the full API (node-local).
        listen: ``(host, port)`` of the TCP API (health, metrics, peers); None: off.
        s3_listen: ``(host, port)`` of the S3 read endpoint (scoped credentials, read
            through running pulls); None: off.
        s3_max_connections: open connections on the S3 endpoint (fit to the descriptor
            limit at startup); past it a connection is answered ``503 SlowDown``.
        s3_max_readers: object reads at once on the S3 endpoint; more get ``SlowDown``.
        allow: URI prefixes the daemon may fetch; empty: any object store on its default
            endpoint (``file://`` and ``http(s)://`` only if listed).
        allow_endpoints: endpoints (``scheme://host[:port]``) a requester may name
            (``endpoint_url``, a Hub mirror, a GCS or Azure endpoint) or fetch
            ``http(s)://`` sources from; empty: none (see :mod:`sidecar.endpoints`).
        operator_token_file: file holding the operator credential (listing every model,
            evicting any, peer reads); None: only grants authorise.
        grants_per_requester: live grants one requester keeps (its oldest go first).
        max_grants: live grants in all; past it new ensures answer ``too_many_grants``.
        log_format: ``text`` or ``json``.
        max_pulls: pulls running at once (more wait in ``pending``).
        housekeeping_interval: seconds between lease expiry / capacity passes.
        default_lease_ttl, max_lease_ttl: lease lifetimes in seconds.
        grant_ttl: seconds a grant from ``ensure`` stays valid.
        proof_ttl: seconds a successful listing with the same credentials is reused as
            the proof of access (0: list on every ensure).
        staging_max_age: seconds an orphaned partial pull is kept for resuming.
        max_wait: upper bound on one long-poll or event stream, seconds.
        progress_interval: minimum seconds between progress events of one pull.
        max_request_bytes: largest request body accepted.
        peer_discovery: where the candidate peers come from: ``static`` (a fixed list) or
            ``kubernetes`` (the EndpointSlices of ``peer_service``).
        peer_service: the headless Service of the daemons (kubernetes discovery).
        kube_namespace: the daemon's namespace; None: the service account's namespace file.
        node_name, kube_api, kube_token_file, kube_ca_file: pod awareness (the node this
            daemon serves and how to reach the API server); off without a node or an API.
            The node name is also this daemon's name among its peers (:attr:`own_name`).
        peer_listen: ``(host, port)`` of the peer listener (:mod:`sidecar.peers.http`).
        peers: the static peer directory (``--peers``; :class:`~sidecar.peers.directory.Peer`).
        peer_secret_file: the cluster secret peers sign their requests with.
        peer_rate, peer_rate_per_peer: bytes/s caps of peer traffic (0: none).
        peer_connections: peer connections at once, each way.
        peer_timeout: seconds a peer read may send nothing before it falls back.
        peer_sample: peers whose status a pull polls per interval (K, re-sampled each
            time; :mod:`sidecar.peers.service`).
        proxy: the forward proxy of every pull's origin traffic (``HTTP(S)_PROXY``,
            ``NO_PROXY`` of the daemon's environment).
    """

    cache_root: Path = Path(DEFAULT_ROOT)
    capacity: int = 0
    min_free: int = DEFAULT_MIN_FREE
    socket_path: Path | None = None
    listen: tuple[str, int] | None = ("0.0.0.0", 8470)
    s3_listen: tuple[str, int] | None = None
    s3_max_connections: int = S3_MAX_CONNECTIONS
    s3_max_readers: int = S3_MAX_CONNECTIONS
    proxy: ProxySettings = field(default_factory=ProxySettings)
    allow: tuple[str, ...] = ()
    allow_endpoints: tuple[str, ...] = ()
    operator_token_file: Path | None = None
    grants_per_requester: int = 64
    max_grants: int = 20000
    log_format: str = "text"
    max_pulls: int = 2
    housekeeping_interval: float = 30.0
    default_lease_ttl: float = 24 * 3600.0
    max_lease_ttl: float = 7 * 24 * 3600.0
    grant_ttl: float = 3600.0
    proof_ttl: float = 30.0
    staging_max_age: float = 24 * 3600.0
    max_wait: float = 300.0
    progress_interval: float = 0.5
    max_request_bytes: int = MAX_REQUEST_BYTES
    peer_discovery: str = "static"
    peer_service: str | None = None
    kube_namespace: str | None = None
    node_name: str | None = None
    kube_api: str | None = None
    kube_token_file: Path = SA_DIR / "token"
    kube_ca_file: Path = SA_DIR / "ca.crt"
    peer_listen: tuple[str, int] | None = None
    peers: tuple[Any, ...] = ()  # sidecar.peers.directory.Peer
    peer_secret_file: Path | None = None
    peer_rate: int = 0
    peer_rate_per_peer: int = 0
    peer_connections: int = 64
    peer_timeout: float = 10.0
    peer_sample: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        root = Path(self.cache_root).absolute()
        object.__setattr__(self, "cache_root", root)
        sock = Path(self.socket_path).absolute() if self.socket_path else root / SOCKET_NAME
        object.__setattr__(self, "socket_path", sock)
        if len(str(sock).encode()) > MAX_SOCKET_PATH:
            raise UsageError(
                f"socket path {sock} is {len(str(sock).encode())} bytes; unix sockets allow "
                f"{MAX_SOCKET_PATH} (use a shorter --cache-root or --socket)"
            )
        for name in ("capacity", "min_free"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must not be negative")
        if self.max_pulls < 1:
            raise UsageError("max pulls must be at least 1")
        if self.log_format not in ("text", "json"):
            raise UsageError(f"log format must be text or json, got {self.log_format!r}")
        for prefix in self.allow:
            if "://" not in prefix:
                raise UsageError(f"allow-list entry {prefix!r} is not a URI prefix (s3://b/p)")
        from .endpoints import parse_allowed_endpoint

        for endpoint in self.allow_endpoints:
            parse_allowed_endpoint(endpoint)  # raises UsageError
        if self.s3_max_connections < 1 or self.s3_max_readers < 1:
            raise UsageError("S3 connection and reader limits must be at least 1")
        if self.grants_per_requester < 1 or self.max_grants < 1:
            raise UsageError("grant limits must be at least 1")
        if (self.peer_listen is not None or self.peers) and self.peer_secret_file is None:
            raise UsageError("peers need the cluster secret (--peer-secret-file)")
        if self.peers and self.peer_listen is None:
            raise UsageError("reading from peers needs a peer listener of its own "
                             "(--peer-listen): the swarm rule expects every puller to serve")
        if self.peer_rate < 0 or self.peer_rate_per_peer < 0:
            raise UsageError("peer rates must not be negative")
        if self.peer_connections < 1 or self.peer_timeout <= 0 or self.peer_sample < 1:
            raise UsageError("peer connections, timeout and sample must be positive")

        if self.peer_discovery not in DISCOVERY:
            raise UsageError(f"peer discovery must be one of {', '.join(DISCOVERY)}, "
                             f"got {self.peer_discovery!r}")
        if self.peer_discovery == "kubernetes" and not (
                self.peer_service and self.node_name and self.kube_api):
            raise UsageError("kubernetes peer discovery needs --peer-service, the node name "
                             "(--node-name) and an API server (--kube-api or in-cluster)")
        if self.peer_discovery == "kubernetes" and self.peer_listen is None:
            raise UsageError("kubernetes peer discovery needs a peer listener of its own "
                             "(--peer-listen)")

    @property
    def own_name(self) -> str:
        """This daemon's name among its peers (what the swarm rule hashes)."""
        import socket

        return self.node_name or socket.gethostname()

    @property
    def socket(self) -> Path:
        assert self.socket_path is not None
        return self.socket_path

    @classmethod
    def from_sources(
        cls, args: Mapping[str, Any], environ: Mapping[str, str], **overrides: Any
    ) -> DaemonConfig:
        """Resolve flags (``args``; None means not given), then ``environ``, then defaults.

        Raises:
            UsageError: a value cannot be parsed.
        """

        def pick(flag: str, env: str | None, default: Any) -> Any:
            value = args.get(flag)
            if value is not None:
                return value
            if env is not None and environ.get(env):
                return environ[env]
            return default

        allow_flag = args.get("allow")
        if allow_flag:
            allow = tuple(allow_flag)
        else:
            allow = tuple(p.strip() for p in environ.get("WEIGHTSTREAM_CACHE_ALLOW", "")
                          .split(",") if p.strip())
        endpoints_flag = args.get("allow_endpoint")
        if endpoints_flag:
            endpoints = tuple(endpoints_flag)
        else:
            endpoints = tuple(p.strip() for p in environ.get(
                "WEIGHTSTREAM_CACHE_ALLOW_ENDPOINTS", "").split(",") if p.strip())
        token_file = pick("operator_token_file", "WEIGHTSTREAM_CACHE_OPERATOR_TOKEN_FILE", None)
        values: dict[str, Any] = dict(
            cache_root=Path(pick("cache_root", "WEIGHTSTREAM_CACHE_ROOT", DEFAULT_ROOT)),
            capacity=parse_size(pick("capacity", "WEIGHTSTREAM_CACHE_CAPACITY", 0),
                                name="capacity"),
            min_free=parse_size(pick("min_free", "WEIGHTSTREAM_CACHE_MIN_FREE",
                                     DEFAULT_MIN_FREE), name="min free"),
            socket_path=args.get("socket"),
            listen=parse_listen(pick("listen", "WEIGHTSTREAM_CACHE_LISTEN", DEFAULT_LISTEN)),
            allow=allow,
            allow_endpoints=endpoints,
            operator_token_file=Path(token_file) if token_file else None,
            log_format=log_format(environ, args.get("log_format")),
            max_pulls=int(pick("max_pulls", None, 2)),
            s3_listen=parse_listen(pick("s3_listen", "WEIGHTSTREAM_CACHE_S3_LISTEN", "off")),
            s3_max_connections=int(pick("s3_max_connections", None, S3_MAX_CONNECTIONS)),
            s3_max_readers=int(pick("s3_max_readers", None, S3_MAX_CONNECTIONS)),
            housekeeping_interval=float(pick("housekeeping", None, 30.0)),
            proof_ttl=float(pick("proof_ttl", None, 30.0)),
            peer_discovery=pick("peer_discovery", "WEIGHTSTREAM_PEER_DISCOVERY", "static"),
            peer_service=pick("peer_service", "WEIGHTSTREAM_PEER_SERVICE", None),
            kube_namespace=pick("kube_namespace", "WEIGHTSTREAM_NAMESPACE", None),
            node_name=pick("node_name", "WEIGHTSTREAM_NODE_NAME", None),
            kube_api=pick("kube_api", None, _in_cluster_api(environ)),
            kube_token_file=Path(pick("kube_token_file", None, SA_DIR / "token")),
            kube_ca_file=Path(pick("kube_ca_file", None, SA_DIR / "ca.crt")),
            **_peer_values(pick),
            proxy=ProxySettings.from_env(environ),
            **resolve_transfer(environ, args).transfer_fields(),
        )
        values.update(overrides)
        return cls(**values)


def _peer_values(pick: Any) -> dict[str, Any]:
    from .peers.directory import parse_static

    secret = pick("peer_secret_file", "WEIGHTSTREAM_PEER_SECRET_FILE", None)
    try:
        peers = tuple(parse_static(pick("peers", "WEIGHTSTREAM_PEERS", "") or ""))
    except ValueError as e:
        raise UsageError(f"--peers: {e}") from None
    return dict(
        peer_listen=parse_listen(pick("peer_listen", "WEIGHTSTREAM_PEER_LISTEN", "off")),
        peers=peers,
        peer_secret_file=Path(secret) if secret else None,
        peer_rate=parse_size(pick("peer_rate", "WEIGHTSTREAM_PEER_RATE", 0), name="peer rate"),
        peer_rate_per_peer=parse_size(pick("peer_rate_per_peer",
                                           "WEIGHTSTREAM_PEER_RATE_PER_PEER", 0),
                                      name="peer rate per peer"),
        peer_connections=int(pick("peer_connections", "WEIGHTSTREAM_PEER_CONNECTIONS", 64)),
        peer_timeout=float(pick("peer_timeout", None, 10.0)),
        peer_sample=int(pick("peer_sample", "WEIGHTSTREAM_PEER_SAMPLE", 8)),
    )


def _in_cluster_api(environ: Mapping[str, str]) -> str | None:
    host = environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        return None
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def parse_listen(text: str | None) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::]:8470`` for IPv6) or ``off``.

    Raises:
        UsageError: not an address.
    """
    if text is None or text.strip().lower() in ("", "off", "none"):
        return None
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"listen address must be HOST:PORT or off, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``weightstream cache serve`` and ``python -m sidecar`` (defaults: env)."""
    p.add_argument("--cache-root", metavar="DIR",
                   help=f"cache directory (env WEIGHTSTREAM_CACHE_ROOT, default {DEFAULT_ROOT})")
    p.add_argument("--capacity", metavar="BYTES",
                   help="byte capacity, e.g. 500Gi; 0: no limit but the disk "
                        "(env WEIGHTSTREAM_CACHE_CAPACITY)")
    p.add_argument("--min-free", metavar="BYTES",
                   help="free-disk watermark kept by evicting unleased models "
                        "(env WEIGHTSTREAM_CACHE_MIN_FREE, default 10Gi)")
    p.add_argument("--socket", metavar="PATH",
                   help="unix socket of the API (default <cache-root>/daemon.sock)")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="TCP address of /healthz, /readyz, /metrics and the peer file API, "
                        f"or off (env WEIGHTSTREAM_CACHE_LISTEN, default {DEFAULT_LISTEN})")
    p.add_argument("--s3-listen", metavar="HOST:PORT",
                   help="TCP address of the S3 read endpoint (path-style HEAD/GET/"
                        "ListObjectsV2, SigV4 with scoped credentials), or off "
                        "(env WEIGHTSTREAM_CACHE_S3_LISTEN, default off)")
    p.add_argument("--s3-max-connections", type=int, metavar="N",
                   help="open connections on the S3 endpoint; more are answered 503 "
                        f"SlowDown (default {S3_MAX_CONNECTIONS}, fit to the descriptor limit)")
    p.add_argument("--s3-max-readers", type=int, metavar="N",
                   help=f"object reads at once on the S3 endpoint (default {S3_MAX_CONNECTIONS})")
    p.add_argument("--allow", action="append", metavar="PREFIX",
                   help="URI prefix the daemon may fetch; repeatable "
                        "(env WEIGHTSTREAM_CACHE_ALLOW, comma separated; default any object "
                        "store on its default endpoint)")
    p.add_argument("--allow-endpoint", action="append", metavar="URL",
                   help="endpoint (scheme://host[:port]) requesters may name or fetch "
                        "http(s):// sources from; repeatable (env "
                        "WEIGHTSTREAM_CACHE_ALLOW_ENDPOINTS, comma separated; default none)")
    p.add_argument("--operator-token-file", metavar="PATH",
                   help="file with the operator token (listing, eviction, peer reads); "
                        "env WEIGHTSTREAM_CACHE_OPERATOR_TOKEN_FILE")
    p.add_argument("--log-format", choices=("text", "json"),
                   help="log format (env WEIGHTSTREAM_LOG_FORMAT, default text)")
    add_transfer_arguments(p, scope=" per pull", retries=False)
    p.add_argument("--max-pulls", type=int, metavar="N",
                   help="pulls running at once; more wait as pending (default 2)")
    p.add_argument("--proof-ttl", type=float, metavar="SECONDS",
                   help="reuse a successful listing with the same credentials as the proof "
                        "of access for this long; 0: list on every request (default 30)")
    p.add_argument("--housekeeping", type=float, metavar="SECONDS",
                   help="seconds between lease-expiry and capacity passes (default 30)")
    p.add_argument("--peer-discovery", choices=DISCOVERY,
                   help="where the candidate peers come from: static (--peers) or "
                        "kubernetes (the EndpointSlices of --peer-service); env "
                        "WEIGHTSTREAM_PEER_DISCOVERY, default static")
    p.add_argument("--peer-service", metavar="NAME",
                   help="headless Service of the daemons, for kubernetes discovery "
                        "(env WEIGHTSTREAM_PEER_SERVICE)")
    p.add_argument("--kube-namespace", metavar="NAME",
                   help="the daemon's namespace (env WEIGHTSTREAM_NAMESPACE, default: the "
                        f"service account's, {SA_DIR / 'namespace'})")
    p.add_argument("--node-name", metavar="NAME",
                   help="this node's name, for pod awareness: leases of pods gone from the "
                        "node are released, those of running pods renewed "
                        "(env WEIGHTSTREAM_NODE_NAME)")
    p.add_argument("--kube-api", metavar="URL",
                   help="Kubernetes API server (default: in-cluster, from "
                        "KUBERNETES_SERVICE_HOST/PORT)")
    p.add_argument("--peer-listen", metavar="HOST:PORT",
                   help="TCP address of the peer listener (other daemons read model ranges "
                        "here, authenticated by the cluster secret), or off "
                        "(env WEIGHTSTREAM_PEER_LISTEN, default off)")
    p.add_argument("--peers", metavar="NAME=URL,...",
                   help="the other daemons (a static directory; env WEIGHTSTREAM_PEERS)")
    p.add_argument("--peer-secret-file", metavar="PATH",
                   help="file with the cluster secret peers authenticate with "
                        "(env WEIGHTSTREAM_PEER_SECRET_FILE)")
    p.add_argument("--peer-rate", metavar="BYTES",
                   help="bytes/s this daemon moves to and from peers, e.g. 500Mi; 0: no cap "
                        "(env WEIGHTSTREAM_PEER_RATE)")
    p.add_argument("--peer-rate-per-peer", metavar="BYTES",
                   help="bytes/s to and from any one peer; 0: no cap "
                        "(env WEIGHTSTREAM_PEER_RATE_PER_PEER)")
    p.add_argument("--peer-connections", type=int, metavar="N",
                   help="peer connections at once, each way (env "
                        "WEIGHTSTREAM_PEER_CONNECTIONS, default 64)")
    p.add_argument("--peer-timeout", type=float, metavar="SECONDS",
                   help="a peer read that sends nothing for this long falls back to the "
                        "origin (default 10)")
    p.add_argument("--peer-sample", type=int, metavar="N",
                   help="peers whose status a pull polls every 0.25 s, re-sampled each time "
                        "(env WEIGHTSTREAM_PEER_SAMPLE, default 8)")
    p.add_argument("--kube-token-file", metavar="PATH",
                   help=f"service account token (default {SA_DIR / 'token'})")
    p.add_argument("--kube-ca-file", metavar="PATH",
                   help=f"CA bundle of the API server (default {SA_DIR / 'ca.crt'})")


def client_token(args_token_file: str | None, environ: Mapping[str, str]) -> str | None:
    """The operator token for the operator commands: ``--operator-token-file``, then
    ``WEIGHTSTREAM_CACHE_OPERATOR_TOKEN_FILE``; None when neither is set.

    Raises:
        UsageError: the file cannot be read.
    """
    path = args_token_file or environ.get("WEIGHTSTREAM_CACHE_OPERATOR_TOKEN_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the operator token file {path}: "
                         f"{type(e).__name__}") from None


def client_socket(args_socket: str | None, environ: Mapping[str, str]) -> Path:
    """Socket path for the operator commands: flag, ``WEIGHTSTREAM_CACHE_SOCKET``, then
    ``<WEIGHTSTREAM_CACHE_ROOT or default root>/daemon.sock``."""
    if args_socket:
        return Path(args_socket)
    if environ.get("WEIGHTSTREAM_CACHE_SOCKET"):
        return Path(environ["WEIGHTSTREAM_CACHE_SOCKET"])
    return Path(environ.get("WEIGHTSTREAM_CACHE_ROOT") or DEFAULT_ROOT) / SOCKET_NAME
