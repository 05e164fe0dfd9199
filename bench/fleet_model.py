"""The flow-level model behind ``fleet_sim.py``: one rollout of one model to n nodes.

What is simulated, per rollout (time advances in adaptive steps; rates are constant within
a step):

* **Readers.** One per node (the daemon, or KServe's per-node LocalModelCache download
  job), or one per pod for KServe's storage initializer (every pod downloads its own copy
  into an emptyDir). A reader keeps ``window`` ranges in flight (a sliding window, not
  waves) and reads every range of the model once; a node starts its readers at a time
  drawn uniformly in ``[0, start_spread]`` (pods are not all scheduled at once).
* **Resources** shared by the flows in flight: the origin's egress (one number for the
  whole object store), each node's ingress (``min(NIC, disk write)``: every byte a node
  receives is written once), each node's egress to peers (NIC, and ``peer_rate``, the
  per-daemon cap), a per-(server, reader) cap (``peer_rate_per_peer``), a cap per ranged
  GET from the origin (``stream_bw``) and a cap per reader (the storage initializer's
  measured-like throughput). Rates come from a few rounds of proportional water-filling
  (flows grow to their own cap, then every overloaded resource scales its flows down),
  which is feasible and close to max-min fair, not exact.
* **The swarm rule as implemented** (weightstream with peers): the members of a version
  are the daemons pulling it at that moment (started and not yet complete, late joiners
  included). Range ``i`` of file ``rel`` is owned by :func:`sidecar.peers.swarm.owner`
  over the members: the table of :func:`sidecar.peers.swarm.weight` for every (member,
  range) is computed once per model and every rollout checks a sample of its owners
  against ``owner()`` itself, so a change to the rule shows here (or fails loudly). When a
  daemon issues a range it reads it, in this order of preference:

  1. from a peer that can serve it: ``reshare="range"`` (as ``sidecar/peers/fill.py``
     does: held, unverified ranges are relayed to peers, who verify) any range it has;
     ``"file"`` (the first implementation) a range it read from the origin at once and a
     range it read from a peer once that range's whole file is complete (verified against
     the origin's checksum); ``"version"``: only complete copies. Only the holders the
     reader knows count. With ``sample`` = K > 0 (as the daemon does, ``--peer-sample``)
     the daemon polls K random peers every ``POLL_SECONDS`` among those the tracker lists
     (the daemons pulling the version and the
     :data:`~sidecar.peers.service.READY_KEEP` that completed last) and keeps each answer
     ``FRESH_SECONDS``: it knows the distinct peers of the last ``sample_rounds`` = R
     samples, here ``P (1 - (1 - K/P)^R)`` of the P listed daemons drawn at random for
     each request, each as it is now (that a status is up to ``FRESH_SECONDS`` old is not
     modelled; ``sample_rounds=1``: only K). ``sample=0``: every daemon (the first
     implementation polled them all). Among the holders it knows, one at random
     (``holder="random"``, as the daemon does) or the highest-weighted
     (``holder="rank"``, ``swarm.rank``);
  2. with ``inflight`` (as the daemon does), else from the daemon reading it from the
     origin right now (once it has it), whoever owns it, if the reader knows it (with
     ``sample``: with probability known / P);
  3. else, if it is the range's owner: with ``runner_up`` (as the daemon does) from the
     member ranked next for the range if that one has it or is reading it now, from the
     origin or a peer (it owned the range before this daemon joined; waits may chain
     along successive joiners, each bounded by ``stall_timeout``), else from the origin
     (in the daemon the runner-up reads it from the origin for the owner: the same origin
     bytes, one hop more). Members are the daemons pulling, as the tracker lists them (its
     lag of up to ``TRACKER_SECONDS`` is not modelled);
  4. else from the owner, once the owner has the range (the request waits; after
     ``stall_timeout`` it goes to the origin, the stall fallback). A request in flight
     stays with its source, as a peer read in the daemon does (``repick``: it is asked
     again whenever the member set changes, what this model did first).

  A peer read fails with probability ``peer_failure_rate`` (a dead, stalled or corrupt
  peer: detected when the range is in, so its whole time is lost); that range is then read
  first from one other holder, then the origin (``fallback="peer"``, as the daemon does:
  ``fill.PEER_TRIES`` = 2 peers) or from the origin at once (``fallback="origin"``, the
  rule as the issue states it).
* **Late joiners.** ``join="member"``: a daemon is a member from the moment it starts
  pulling (the rule as stated; ownership of ranges not yet held moves to it, and a range
  the old owner is still fetching is then fetched twice). ``join="reader"``: only the
  daemons that started within ``join_window`` of the first are members; later ones read
  from peers and own nothing.
* **Order.** ``"file"``: every daemon issues ranges in file order (what the engine does
  without peers). ``"owned-first"``: a daemon first issues the ranges it owns (from the
  origin), then the others starting at a per-daemon offset.
* **Ready.** KServe (both): download complete, then the pod loads from local disk at
  ``load_bw``. weightstream: vLLM streams through the read-through endpoint while the
  cache fills, so ready = ``max(complete, start + size / load_bw)``.

Simplified (said in bench/README.md): no TCP dynamics or latency (a flow runs at its
allocated rate at once), a step may overshoot a completion by up to a quarter of the
typical range time, peer reads wait for the whole range (no pipelining inside a range),
reads from page cache/disk on the serving side are free, one rollout at a time (other
models' traffic is not on the origin), and a node never dies mid-rollout (only reads fail).
Not modelled from ``sidecar/peers/fill.py``: a range a peer asked for is read from the
origin (no wait chains; here the reader waits on the owner, who reads it as its owner),
a peer banned after 3 failures, the engine defers ranges others own in file order
(here from a per-daemon offset), and an owner skips a runner-up whose status it polled
in the last 3 s and that listed nothing of the range (here it asks any runner-up that
has the range or is reading it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sidecar.peers.service import READY_KEEP
from sidecar.peers.swarm import owner, weight

ORIGIN = -1
PENDING = -2  # a slot's source while the sources of its batch are picked
FREE = -1
STRATEGIES = ("kserve-initializer", "kserve-localmodelcache", "weightstream", "weightstream-peers")


@dataclass(frozen=True)
class Params:
    """Everything a rollout depends on besides the model and the node count (bytes, bytes/s,
    seconds)."""

    origin_bw: float
    nic_bw: float
    disk_bw: float
    load_bw: float
    stream_bw: float
    window: int
    initializer_bw: float
    initializer_window: int
    range_size: int
    shard_size: int
    peer_rate: float  # per-daemon egress cap to peers; 0: none
    peer_rate_per_peer: float  # per (server, reader) pair; 0: none
    peer_failure_rate: float
    stall_timeout: float
    reshare: str  # "range" (the daemon) | "file" | "version"
    inflight: bool  # readers wait for a range a peer is reading from the origin
    holder: str  # "random" (the daemon) | "rank": the highest-weighted holder (swarm.rank)
    join: str  # "member": late joiners are members at once | "reader": after join_window, not
    join_window: float
    fallback: str  # "peer": one other peer first (the daemon) | "origin": the origin at once
    sample: int  # peers whose status a reader polls per round (--peer-sample); 0: all
    sample_rounds: int  # rounds a status is kept (FRESH_SECONDS / POLL_SECONDS)
    runner_up: bool  # an owner that knows no holder asks the member ranked next first
    members_max: int  # members: the earliest this many daemons pulling (the tracker's cap)
    repick: bool  # waiting requests pick a source again when the members change
    order: str  # "owned-first" | "file"
    start_spread: float
    gpus_per_node: int
    gpu_mem: int


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    size: int


@dataclass(frozen=True)
class Ranges:
    """A model's ranges as the daemon plans them: shards of ``shard_size``, each split into
    ``range_size`` ranges (index counted per file, as the swarm rule hashes them)."""

    rel: tuple[str, ...]
    index: np.ndarray
    sizes: np.ndarray

    @classmethod
    def plan(cls, model: Model, params: Params) -> Ranges:
        shards = max(1, math.ceil(model.size / params.shard_size))
        rel: list[str] = []
        index: list[int] = []
        sizes: list[int] = []
        left = model.size
        for s in range(shards):
            file_size = min(params.shard_size, left)
            left -= file_size
            name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            for i in range(math.ceil(file_size / params.range_size)):
                rel.append(name)
                index.append(i)
                sizes.append(min(params.range_size, file_size - i * params.range_size))
        return cls(tuple(rel), np.array(index), np.array(sizes, dtype=np.float64))


@dataclass(frozen=True)
class Rollout:
    """What one rollout did."""

    strategy: str
    nodes: int
    model_size: int
    origin_bytes: float
    peer_bytes: float
    ready: np.ndarray  # per node, seconds from the node's start to its pods' readiness
    fallbacks: int  # peer reads that went to the origin (failure or stall)

    @property
    def origin_ratio(self) -> float:
        return self.origin_bytes / self.model_size

    @property
    def time_to_ready(self) -> float:
        return float(self.ready.max())


def node_names(count: int) -> list[str]:
    return [f"node-{i:04d}" for i in range(count)]


def weights_table(model: Model, ranges: Ranges, members: list[str]) -> np.ndarray:
    """``swarm.weight`` of every (member, range): the owner among any subset of members is
    the argmax over that subset's rows (ties go to the first name, as ``owner`` breaks
    them: names are in sorted order)."""
    assert members == sorted(members)
    table = np.empty((len(members), len(ranges.rel)), dtype=np.uint64)
    for m, name in enumerate(members):
        table[m] = [weight(name, model.version, rel, int(i))
                    for rel, i in zip(ranges.rel, ranges.index, strict=True)]
    return table


def check_owners(table: np.ndarray, model: Model, ranges: Ranges, members: list[str],
                 subset: np.ndarray, rng: np.random.Generator, samples: int = 32) -> None:
    """The table's owner equals ``swarm.owner`` on a sample of ranges (raises otherwise)."""
    names = [members[i] for i in np.flatnonzero(subset)]
    for r in rng.choice(len(ranges.rel), size=min(samples, len(ranges.rel)), replace=False):
        ours = members[int(np.argmax(np.where(subset, table[:, r], 0)))]
        theirs = owner(names, model.version, ranges.rel[r], int(ranges.index[r]))
        if ours != theirs:
            raise AssertionError(f"owner table diverges from swarm.owner at range {r}")


def _owners(table: np.ndarray, pulling: np.ndarray, before: np.ndarray | None,
            owners: np.ndarray) -> np.ndarray:
    """The owner of every range among ``pulling`` (argmax of the weights), updated from
    the owners among ``before``: a member that left hands its ranges to the next-highest,
    a member that joined takes the ranges where it weighs more (ties: the first name)."""
    if before is None or not before.any():
        return np.argmax(np.where(pulling[:, None], table, 0), axis=0)
    owners = owners.copy()
    gone = np.flatnonzero(before & ~pulling)
    if len(gone):
        cols = np.flatnonzero(np.isin(owners, gone))
        if len(cols):
            owners[cols] = np.argmax(np.where(pulling[:, None], table[:, cols], 0), axis=0)
    cols_all = np.arange(table.shape[1])
    for j in np.flatnonzero(pulling & ~before):
        current = table[owners, cols_all]
        better = (table[j] > current) | ((table[j] == current) & (j < owners))
        owners[better] = j
    return owners


def pods_per_node(model: Model, params: Params) -> int:
    """Replicas a node runs: tensor parallel = the smallest power of two whose GPUs hold
    the weights at 60 % of GPU memory; one replica per TP group."""
    tp = 1
    while tp < params.gpus_per_node and model.size > 0.6 * params.gpu_mem * tp:
        tp *= 2
    return max(1, params.gpus_per_node // tp)


def _allocate(demand: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Rates for flows with per-flow caps ``demand``; each group is (resource id per flow,
    capacity per resource). Proportional water-filling, then one feasibility pass."""
    rate = demand.copy()
    for _ in range(4):
        factor = np.full(rate.shape, np.inf)
        for gid, cap in groups:
            load = np.bincount(gid, weights=rate, minlength=len(cap))
            with np.errstate(divide="ignore", invalid="ignore"):
                f = np.where(load > 0, cap / load, np.inf)
            factor = np.minimum(factor, f[gid])
        rate = np.minimum(demand, rate * factor)
    for gid, cap in groups:
        load = np.bincount(gid, weights=rate, minlength=len(cap))
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(load > cap, cap / load, 1.0)
        rate = rate * f[gid]
    return rate


def simulate(strategy: str, model: Model, nodes: int, params: Params,
             rng: np.random.Generator, *, table: np.ndarray | None = None,
             members: list[str] | None = None, max_steps: int = 200_000) -> Rollout:
    """One rollout of ``model`` to ``nodes`` nodes with ``strategy``.

    ``table``/``members``: the weight table (rows for at least ``nodes`` names), needed for
    ``weightstream-peers``.
    """
    p = params
    ranges = Ranges.plan(model, p)
    nranges = len(ranges.sizes)
    peers = strategy == "weightstream-peers"
    pods = pods_per_node(model, p) if strategy == "kserve-initializer" else 1
    readers = nodes * pods
    node_of = np.repeat(np.arange(nodes), pods)
    kserve = strategy.startswith("kserve")
    window = p.initializer_window if kserve else p.window
    reader_cap = p.initializer_bw if kserve else math.inf
    start = np.zeros(nodes)
    if p.start_spread > 0:  # the first node starts the rollout, the others within the spread
        start[1:] = np.sort(rng.uniform(0, p.start_spread, nodes - 1))
    rstart = start[node_of]
    if peers:
        assert table is not None and members is not None
        table = table[:nodes]
        members = members[:nodes]

    # -- state -----------------------------------------------------------------------------
    have = np.zeros((readers, nranges), dtype=bool)
    have_count = np.zeros(readers, dtype=np.int64)
    hold_count = np.zeros(nranges, dtype=np.int64)
    done_at = np.full(readers, np.inf)
    slot_r = np.full((readers, window), FREE, dtype=np.int64)
    slot_src = np.full((readers, window), ORIGIN, dtype=np.int64)
    slot_done = np.zeros((readers, window))
    slot_since = np.zeros((readers, window))  # when a waiting request was made
    slot_failed = np.zeros((readers, window), dtype=np.int64)  # peer failures of this read
    order = np.tile(np.arange(nranges), (readers, 1))
    ordered = np.zeros(readers, dtype=bool)
    pointer = np.zeros(readers, dtype=np.int64)
    pulling_prev: np.ndarray | None = None
    changes = 0
    owners = np.zeros(nranges, dtype=np.int64)
    fetcher = np.full(nranges, -1, dtype=np.int64)  # who is reading the range from the origin
    # What a daemon serves to peers: ranges it read from the origin at once; ranges it read
    # from peers once their file is complete (and verified), or at once with "range".
    servable = np.zeros((nodes, nranges), dtype=bool) if peers else np.zeros((0, 0), bool)
    file_ids = {rel: i for i, rel in enumerate(dict.fromkeys(ranges.rel))}
    file_of = np.array([file_ids[rel] for rel in ranges.rel])
    file_len = np.bincount(file_of)
    file_start = np.concatenate([[0], np.cumsum(file_len)[:-1]])
    file_count = np.zeros((nodes, len(file_len)), dtype=np.int64) if peers else None
    origin_bytes = peer_bytes = 0.0
    fallbacks = 0
    ingress_cap = np.full(nodes, min(p.nic_bw, p.disk_bw))
    egress_cap = np.full(nodes, min(p.nic_bw, p.peer_rate) if p.peer_rate > 0 else p.nic_bw)

    eligible = np.ones(nodes, dtype=bool)  # may be a member of the swarm
    if p.join == "reader":
        eligible = start <= start[0] + p.join_window

    def listed(complete: np.ndarray) -> np.ndarray:
        """The daemons a reader samples from: those pulling, and the READY_KEEP that
        completed last (the tracker's lists)."""
        pool = (rstart <= t) & ~complete
        done = np.flatnonzero(complete)
        if len(done):
            pool[done[np.argsort(done_at[done])[-READY_KEEP:]]] = True
        return pool

    def pick_source(rd: np.ndarray, rs: np.ndarray, complete: np.ndarray,
                    avoid: np.ndarray | None = None) -> np.ndarray:
        src = np.full(len(rd), ORIGIN, dtype=np.int64)
        if not peers:
            return src
        own = owners[rs]
        src = np.where(own == rd, ORIGIN, own)
        if avoid is not None:  # a retry after a failed peer read: another holder, else origin
            src[:] = ORIGIN
        pool = listed(complete) if p.sample > 0 else None
        known = nodes
        if pool is not None:  # distinct peers of the last sample_rounds samples
            others = max(1, int(pool.sum()) - 1)
            known = round(others * (1 - (1 - min(1.0, p.sample / others)) ** p.sample_rounds))
        if p.inflight:
            f = fetcher[rs]
            take = (f >= 0) & (f != rd) & (avoid is None)
            if pool is not None:  # the fetcher is known if it is in the reader's sample
                take &= rng.random(len(rd)) < known / others
            src = np.where(take, f, src)
        if p.reshare != "version":
            cand = np.flatnonzero(hold_count[rs] > 0)
        else:
            cand = np.arange(len(rd)) if complete.any() else np.arange(0)
        for block in np.array_split(cand, max(1, len(cand) // 512)):
            if not len(block):
                continue
            cols = rs[block]
            mask = complete[:, None] if p.reshare == "version" else servable[:, cols]
            mask = mask & (np.arange(nodes)[:, None] != rd[block][None, :])
            if avoid is not None:
                mask = mask & (np.arange(nodes)[:, None] != avoid[block][None, :])
            draw = rng.random(mask.shape)
            if pool is not None and 0 < known < nodes - 1:  # the peers the reader knows
                draw[~pool] = -1
                draw[rd[block], np.arange(len(block))] = -1
                kth = np.partition(draw, nodes - known, axis=0)[nodes - known]
                mask = mask & (draw >= np.maximum(kth, 0)[None, :])
            score = table[:, cols] if p.holder == "rank" else draw + 1
            best = np.argmax(np.where(mask, score, 0), axis=0)
            ok = mask[best, np.arange(len(block))]
            src[block] = np.where(ok, best, src[block])
        if p.runner_up and avoid is None and pulling_prev is not None:
            mine = np.flatnonzero((src == ORIGIN) & (own == rd))
            if len(mine):
                cols = rs[mine]
                rows = pulling_prev[:, None] & (np.arange(nodes)[:, None] != rd[mine][None, :])
                runner = np.argmax(np.where(rows, table[:, cols], 0), axis=0)
                valid = rows[runner, np.arange(len(mine))]
                # reading it from anyone but this daemon (which it refuses: a wait cycle)
                src_of = slot_src[runner]
                reading = ((slot_r[runner] == cols[:, None]) & (src_of != PENDING)
                           & (src_of != rd[mine][:, None])).any(axis=1)
                serves = valid & (servable[runner, cols] | reading)
                src[mine[serves]] = runner[serves]
        mine = (src == ORIGIN) & (fetcher[rs] < 0)
        fetcher[rs[mine]] = rd[mine]
        return src

    t = 0.0
    steps = 0
    while (done_at == np.inf).any():
        steps += 1
        if steps > max_steps:
            raise RuntimeError(f"{strategy} x{nodes}: no end after {max_steps} steps")
        started = rstart <= t
        complete = done_at < np.inf
        live = started & ~complete

        # -- membership and ownership (peers) ----------------------------------------------
        if peers:
            pulling = live & eligible
            if p.members_max > 0:  # the tracker lists the earliest announcers only
                pulling[np.flatnonzero(pulling)[p.members_max:]] = False
            if pulling_prev is None or (pulling != pulling_prev).any():
                if pulling.any():
                    owners = _owners(table, pulling, pulling_prev, owners)
                    changes += 1
                    if changes & (changes - 1) == 0:  # the 1st, 2nd, 4th, 8th... member set
                        check_owners(table, model, ranges, members, pulling, rng, samples=4)
                pulling_prev = pulling
                if p.repick:
                    waiting = (slot_r >= 0) & (slot_src >= 0) & (slot_done == 0)
                    wr, wc = np.nonzero(waiting & ~have[slot_src.clip(0), slot_r.clip(0)])
                    if len(wr):
                        slot_src[wr, wc] = pick_source(wr, slot_r[wr, wc], complete)
            newly = live & ~ordered
            for j in np.flatnonzero(newly):
                ordered[j] = True
                if p.order == "owned-first":
                    mine = owners == j
                    rest = np.roll(np.flatnonzero(~mine), -int(rng.integers(nranges)))
                    order[j] = np.concatenate([np.flatnonzero(mine), rest])

        # -- issue ranges into free slots ----------------------------------------------------
        free_r, free_c = np.nonzero((slot_r == FREE) & live[:, None])
        if len(free_r):
            rank_in_reader = np.arange(len(free_r)) - np.searchsorted(free_r, free_r)
            pos = pointer[free_r] + rank_in_reader
            ok = pos < nranges
            free_r, free_c, pos = free_r[ok], free_c[ok], pos[ok]
            if len(free_r):
                rs = order[free_r, pos]
                np.maximum.at(pointer, free_r, pos + 1)
                slot_r[free_r, free_c] = rs
                slot_done[free_r, free_c] = 0
                slot_failed[free_r, free_c] = 0
                slot_since[free_r, free_c] = t
                slot_src[free_r, free_c] = PENDING  # not reading yet (the runner-up rule)
                slot_src[free_r, free_c] = pick_source(free_r, rs, complete)

        # -- stalls: a request that waited too long goes to the origin -------------------------
        busy = slot_r >= 0
        src_has = np.where(slot_src >= 0, have[slot_src.clip(0), slot_r.clip(0)], True)
        stalled = busy & (slot_src >= 0) & ~src_has & (t - slot_since > p.stall_timeout)
        if stalled.any():
            fallbacks += int(stalled.sum())
            slot_src[stalled] = ORIGIN
            src_has[stalled] = True

        # -- rates ---------------------------------------------------------------------------
        fr, fc = np.nonzero(busy & src_has)
        if not len(fr):  # every request waits: the next start, or the next stall fallback
            waits = slot_since[busy & (slot_src >= 0)] + p.stall_timeout + 1e-6
            nxt = np.concatenate([rstart[rstart > t], waits[waits > t]])
            if not len(nxt):
                raise RuntimeError(f"{strategy} x{nodes}: deadlock at t={t:.1f}s")
            t = float(nxt.min())
            continue
        rng_idx = slot_r[fr, fc]
        src = slot_src[fr, fc]
        left = ranges.sizes[rng_idx] - slot_done[fr, fc]
        from_origin = src == ORIGIN
        demand = np.where(from_origin, p.stream_bw, np.inf)
        dst_node = node_of[fr]
        groups = [
            (np.where(from_origin, 0, 1), np.array([p.origin_bw, np.inf])),
            (dst_node, ingress_cap),
        ]
        if reader_cap < math.inf:
            groups.append((fr, np.full(readers, reader_cap)))
        if peers and (~from_origin).any():
            srv = np.where(from_origin, nodes, src)  # origin flows: a dummy server, no cap
            groups.append((srv, np.append(egress_cap, np.inf)))
            if p.peer_rate_per_peer > 0:
                pair = np.where(from_origin, 0, src * nodes + dst_node + 1)
                uniq, inv, counts = np.unique(pair, return_inverse=True, return_counts=True)
                per_flow = np.where(uniq == 0, np.inf, p.peer_rate_per_peer / counts)
                demand = np.minimum(demand, per_flow[inv])
        demand = np.minimum(demand, min(p.nic_bw, p.disk_bw))
        rate = _allocate(demand, groups)
        with np.errstate(divide="ignore"):
            ttf = np.where(rate > 0, left / rate, np.inf)
        finite = ttf[np.isfinite(ttf)]
        if not len(finite):
            raise RuntimeError(f"{strategy} x{nodes}: no flow moves at t={t:.1f}s")
        dt = max(float(finite.min()), 0.25 * float(np.median(finite)))
        pending = rstart[rstart > t]
        if len(pending):
            dt = min(dt, float(pending.min()) - t)
        moved = np.minimum(rate * dt, left)
        slot_done[fr, fc] += moved
        origin_bytes += float(moved[from_origin].sum())
        peer_bytes += float(moved[~from_origin].sum())
        t += dt

        # -- completions ---------------------------------------------------------------------
        fin = slot_done[fr, fc] >= ranges.sizes[rng_idx] - 1e-6
        cr, cc, crng, csrc = fr[fin], fc[fin], rng_idx[fin], src[fin]
        failed_mask = np.zeros(len(cr), dtype=bool)
        if peers and p.peer_failure_rate > 0:
            failed = (csrc >= 0) & (rng.random(len(cr)) < p.peer_failure_rate)
            if failed.any():
                fallbacks += int(failed.sum())
                fr_, fc_ = cr[failed], cc[failed]
                retry = (slot_failed[fr_, fc_] == 0) if p.fallback == "peer" else np.zeros(
                    len(fr_), dtype=bool)
                slot_failed[fr_, fc_] += 1
                slot_src[fr_, fc_] = ORIGIN
                if retry.any():
                    slot_src[fr_[retry], fc_[retry]] = pick_source(
                        fr_[retry], crng[failed][retry], done_at < np.inf,
                        avoid=csrc[failed][retry])
                slot_done[fr_, fc_] = 0
                slot_since[fr_, fc_] = t
                failed_mask = failed
                cr, cc, crng = cr[~failed], cc[~failed], crng[~failed]
        have[cr, crng] = True
        fetcher[crng[fetcher[crng] == cr]] = -1
        np.add.at(have_count, cr, 1)
        if peers:
            direct = csrc[~failed_mask] == ORIGIN
            if p.reshare == "range":
                direct[:] = True
            fresh = direct & ~servable[cr, crng]
            servable[cr[fresh], crng[fresh]] = True
            np.add.at(hold_count, crng[fresh], 1)
            np.add.at(file_count, (cr, file_of[crng]), 1)
            for j, fi in zip(*np.nonzero(file_count == file_len[None, :]), strict=True):
                file_count[j, fi] = -1  # done once
                sl = slice(file_start[fi], file_start[fi] + file_len[fi])
                new = ~servable[j, sl]
                servable[j, sl] = True
                hold_count[sl] += new
        slot_r[cr, cc] = FREE
        newly_done = (have_count == nranges) & (done_at == np.inf)
        done_at[newly_done] = t

    load_time = model.size / p.load_bw
    # KServe: the pods load after the download; weightstream: vLLM streams through the
    # read-through endpoint while the cache fills.
    ready_reader = done_at + load_time if kserve else np.maximum(done_at, rstart + load_time)
    ready = np.zeros(nodes)  # from the node's own start (its pods' scheduling not counted)
    np.maximum.at(ready, node_of, ready_reader - rstart)
    return Rollout(strategy, nodes, model.size, origin_bytes, peer_bytes, ready, fallbacks)
