"""The typed view of the cache API: the documents the daemon answers with.

One definition shared by the service (which builds them), the client and the CLI (which
read them) and ``docs/openapi-cache.yaml`` (whose schemas of the same names a test checks
against these, key by key, required or not).
"""

# No ``from __future__ import annotations``: TypedDict needs evaluated NotRequired[...]
# to know which keys are required.
from typing import NotRequired, TypedDict


class BytesFrom(TypedDict):
    origin: int
    peers: int


class Progress(TypedDict):
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    rate_bytes_per_s: int
    eta_s: float | None


class Lease(TypedDict):
    holder: str
    expires_at: float
    ttl_seconds: NotRequired[float]


class PullError(TypedDict):
    code: str
    message: str


class Model(TypedDict):
    """One model version as the API shows it (no credentials, no ETags)."""

    id: str
    model_id: str
    version: str
    source: str
    include: list[str]
    exclude: list[str]
    state: str
    seq: int
    size: int
    files: int
    created_at: float
    last_used: float
    leases: list[Lease]
    readers: int  # object reads in progress on the S3 endpoint
    bytes_from: BytesFrom  # where the last pull's bytes came from
    peer_note: NotRequired[str]  # why peers were not used for it
    path: NotRequired[str]  # ready only
    progress: NotRequired[Progress]  # pending or pulling only
    error: NotRequired[PullError]  # failed only


class Ensured(TypedDict):
    model: Model
    grant: str
    outcome: str  # hit, joined, miss
    lease: NotRequired[Lease]  # when the ensure asked for one


class Health(TypedDict):
    status: NotRequired[str]
    models: NotRequired[dict[str, int]]
    used_bytes: NotRequired[int]
    free_bytes: NotRequired[int]
    capacity_bytes: NotRequired[int]
    pid: NotRequired[int]


class FileItem(TypedDict):
    path: str
    size: int


class Eviction(TypedDict):
    id: str
    evicted: bool
    bytes: int


class S3Credentials(TypedDict):
    """Scoped credentials for the S3 endpoint (sidecar.s3.credentials)."""

    access_key_id: str
    secret_access_key: str
    expires_at: float
    holder: str
    bucket: str
    prefix: str
    uri: str


class S3Reader(TypedDict):
    """One reader of the S3 endpoint: a set of scoped credentials from one peer address
    (sidecar.s3.readers); never a secret."""

    access_key_id: str
    holder: str | None  # the lease holder the credentials ride on (a pod UID)
    model: str  # the model version's id
    peer: str  # the remote address
    in_flight: int
    requests: int
    errors: int
    bytes_served: int
    rate_bytes_per_s: int  # over the last 10 s
    range_wait_avg_s: float
    range_wait_max_s: float
    first_seen: float
    last_seen: float


# Views documented under components/schemas in docs/openapi-cache.yaml (same names).
DOCUMENTED: tuple[type, ...] = (Progress, Lease, Model, Ensured, Health, S3Credentials,
                                S3Reader)
