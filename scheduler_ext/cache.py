"""The cluster cache: every node's GPU slots and what pods hold, kept as kernel arrays.

Fed by events (:meth:`ClusterCache.apply_event` takes the watch's ``{"type", "object"}``
dicts), updated per event for the one node it touches, never rebuilt per request. The
watch I/O lives in :mod:`scheduler_ext.watch`; :func:`from_snapshot` builds the same state
from ``kubectl get nodes,pods -o json``.

What a pod holds: the devices named in its ``gpupack.io/devices`` annotation; without one
(the extender was down, or another scheduler bound it), its count of each resource taken
conservatively from the slots the packing rule would have used (``phantom`` units, whose
replica ids are unknown). Pods bound but not yet running count; finished pods do not.
A bind in flight holds a *reservation* under the pod's uid, so two binds cannot take the
same device. Between prioritize and bind, a pod may hold a *provisional* reservation
(:meth:`ClusterCache.hold`): the devices the kernel would give it on the node it ranked
first, so the next pods of a burst are decided against them. Its bind replaces it, the pod's
binding or deletion event releases it, and it expires after :attr:`ClusterCache.hold_seconds`
by the cache's clock (injectable, so tests move time without sleeping). The pod itself never
sees its own provisional hold (``exclude`` in :meth:`ClusterCache.select_positions`).

``generation`` changes with every change a decision could see (rows, CPU and memory, the
mix of shapes), so callers can memoise per generation.

Each node's free CPU and memory (``Slots.node_cpu_free``/``node_memory_free``) are its
``status.allocatable`` less the requests of every pod bound to it that has not finished, GPU
or not (and of reservations), kept per event like the slots. They only feed the
``fragmentation`` score: kube-scheduler's NodeResourcesFit filters CPU and memory.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy

from gpupack import contract, node_slots
from gpupack import kernel
from scheduler_ext import podspec
from gpupack.kernel import slots as kslots
from gpupack.kernel.verdict_memo import VerdictMemo
from scheduler_ext.podspec import PodDemand, pod_demand
from scheduler_ext.wire import KubeObject

#: Shapes of recent requests (GPU part, CPU, memory; CPU-only pods too) remembered for the
#: fragmentation policy's mix.
MIX_MEMORY = 1000
#: Candidate-list lookups remembered by :meth:`ClusterCache.select_positions`.
SELECTIONS = 4
#: The mix keeps the most frequent shapes that together cover this fraction (FGD: 95 %).
MIX_COVERAGE = 0.95
#: ... and at most this many shapes (each costs one comparison per node and evaluation).
MIX_MAX_SHAPES = 128
#: The mix is worked out again once this fraction of its window has arrived since (so it
#: lags the window by under 5 % of it): every new mix makes every kept verdict stale
#: (:class:`~gpupack.kernel.verdict_memo.VerdictMemo`), and a mix per pod would keep none.
MIX_REFRESH = 0.05
#: ... and replaces the mix in use when the two differ by more than this (total variation
#: distance: the share of pods whose shape would have to change). Traffic of a steady make-up
#: keeps one mix; a rare shape flickering at the edge of the coverage does not replace it.
MIX_TOLERANCE = 0.05
#: Seconds a provisional hold (prioritize -> bind) lasts when no bind or binding event
#: comes: kube-scheduler binds within milliseconds of prioritize unless a PreBind step (volume
#: binding) waits, and a hold left by a pod that was never bound must not block capacity for long.
HOLD_SECONDS = 5.0
#: Candidate lists from this many known nodes up keep a copy of their rows (see
#: :meth:`ClusterCache.rows_of`): below it, copying them afresh costs less than finding and
#: copying the changed rows (measured: the crossing is between 500 and 1,000 rows).
KEEP_ROWS_FROM = 1000


def mix_distance(a: kernel.Mix, b: kernel.Mix) -> float:
    """Total variation distance between two mixes: half the summed frequency differences
    over their shapes (0: the same frequencies; 1: no shape in common). Both empty: 0."""
    pa, pb = dict(a), dict(b)
    return 0.5 * sum(abs(pa.get(s, 0.0) - pb.get(s, 0.0)) for s in pa.keys() | pb.keys())


@dataclasses.dataclass(frozen=True)
class Use:
    """One unit a pod holds: a column and a replica (-1: a phantom unit of unknown replica)."""

    col: int
    replica: int
    memory_mib: int


@dataclasses.dataclass
class NodeState:
    """Host-side truth for one node row; the arrays are written from it."""

    name: str
    row: int
    slots: tuple[node_slots.SlotInfo, ...] = ()
    col_of: dict[str, int] = dataclasses.field(default_factory=dict)
    error: str = ""  # why its inventory could not be read
    used: list[set[int]] = dataclasses.field(default_factory=list)
    phantom: list[int] = dataclasses.field(default_factory=list)
    memory_used: list[int] = dataclasses.field(default_factory=list)
    cpu_allocatable: int = kslots.UNLIMITED  # millicores; UNLIMITED when the node does not say
    memory_allocatable: int = kslots.UNLIMITED  # MiB


@dataclasses.dataclass
class PodRecord:
    demand: PodDemand
    uses: tuple[Use, ...] = ()
    applied_to: str = ""  # node whose counters include ``uses``
    reserved: bool = False
    provisional: bool = False  # a hold from prioritize (reserved too), not yet a bind


@dataclasses.dataclass
class _Selection:
    """A candidate list seen before: its rows, and a copy of them kept current (after its
    second use) by re-copying only the rows changed since (``dirty``)."""

    names: list[str]
    node_generation: int
    idx: numpy.ndarray[Any, Any]  # rows of the known names
    pos: numpy.ndarray[Any, Any]  # their positions in ``names``
    copy: kslots.Slots | None = None
    dirty: set[int] = dataclasses.field(default_factory=set)
    lent: bool = False  # a caller is evaluating on ``copy``
    memo: VerdictMemo | None = None  # per-node sums and recent verdicts of ``copy``, kept with it
    _at: dict[int, list[int]] | None = None  # row -> its positions in ``idx``, built on first need

    def positions_of(self, rows: Iterable[int]) -> numpy.ndarray[Any, Any]:
        """The positions in ``idx`` of the given rows (a name listed twice has two)."""
        if self._at is None:
            self._at = {}
            for p, r in enumerate(self.idx.tolist()):
                self._at.setdefault(r, []).append(p)
        at = self._at
        return numpy.asarray(sorted(p for r in rows for p in at.get(r, ())), dtype=numpy.int64)


class ClusterCache:
    """Nodes x slots arrays plus the pod records behind them. Thread-safe: every public method
    takes the lock; evaluation works on copies (:meth:`select`, :meth:`rows_of`)."""

    def __init__(self, width: int = 8, rows: int = 64, clock: Callable[[], float] = time.monotonic,
                 hold_seconds: float = HOLD_SECONDS, keep_rows_from: int = KEEP_ROWS_FROM) -> None:
        self._lock = threading.RLock()
        self.keep_rows_from = keep_rows_from
        self._clock = clock  # seconds, monotonic; tests pass their own
        self.hold_seconds = hold_seconds
        # provisional holds: uid -> expiry, in expiry order (one lifetime, a monotonic clock)
        self._holds: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.resources = node_slots.Interner()
        self.models = node_slots.Interner()
        self._width = max(width, 1)
        self._arrays = kslots.empty_slots(numpy, max(rows, 1), self._width)
        self._nodes: dict[str, NodeState] = {}
        self._row_of: dict[str, int] = {}  # node name -> row, for fast selection
        self._node_generation = 0  # bumped when a node is added or removed
        self._selections: list[_Selection] = []  # recent candidate lists, newest first
        self._free_rows: list[int] = []
        self._rows_used = 0
        self._pods: dict[str, PodRecord] = {}
        self._node_pods: dict[str, set[str]] = collections.defaultdict(set)
        # CPU and memory requests of bound pods (and reservations): uid -> (node, cpu, memory),
        # and their totals per node name (kept for nodes not seen yet)
        self._node_requests: dict[str, tuple[str, int, int]] = {}
        self._requested: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        self._recent: collections.deque[kernel.Request] = collections.deque(maxlen=MIX_MEMORY)
        # per shape in ``_recent``: how often, and the sequence number of its latest arrival
        self._shape_count: dict[kernel.Request, int] = {}
        self._shape_last: dict[kernel.Request, int] = {}
        self._seen_shapes: set[str] = set()
        self._mix: kernel.Mix | None = None
        self._mix_arrivals = 0  # shapes noted since the mix was last worked out
        self._listed: set[str] = set()
        self.synced = False  # True once nodes and pods have each been listed in full
        self.generation = 0  # bumped on every change, for callers that memoise

    # --- reading ---------------------------------------------------------------------------

    def select(self, names: Iterable[str]) -> tuple[kslots.Slots, list[str], list[str]]:
        """A copy of the rows of ``names`` that are known, those names, and the unknown ones."""
        with self._lock:
            rows: list[int] = []
            known: list[str] = []
            unknown: list[str] = []
            nodes = self._nodes
            for name in names:
                st = nodes.get(name)
                if st is None:
                    unknown.append(name)
                else:
                    rows.append(st.row)
                    known.append(name)
            return self._arrays.rows(numpy.asarray(rows, dtype=numpy.int64)), known, unknown

    def select_positions(
        self, names: Sequence[str], exclude: str = ""
    ) -> tuple[kslots.Slots, numpy.ndarray[Any, Any]]:
        """A copy of the rows of the known ``names``, and their positions in ``names``; the
        provisional hold of pod ``exclude`` (a uid) is left out of the copy, so a pod is never
        refused for the devices held for itself."""
        with self._lock:
            self._expire()
            sel = self._selection(names)
            rows = self._arrays.rows(sel.idx)
            if exclude in self._holds:
                self._give_back(rows, sel.idx, exclude)
            return rows, sel.pos

    @contextlib.contextmanager
    def rows_of(
        self, names: Sequence[str], exclude: str = ""
    ) -> Iterator[tuple[kslots.Slots, numpy.ndarray[Any, Any], VerdictMemo | None]]:
        """:meth:`select_positions` for reading within the ``with`` block only, with a memo of
        the rows' per-node sums and recent verdicts (:class:`~gpupack.kernel.verdict_memo.VerdictMemo`,
        or None). kube-scheduler sends the same candidate list (every node, to filter) pod after
        pod; copying its rows costs a third of a filter at thousands of nodes, so the copy is
        kept and only the rows changed since are copied again; the memo is kept with it and
        recomputes only those rows. The arrays must not be written to."""
        with self._lock:
            self._expire()
            sel = self._selection(names)
            if sel.copy is None or sel.lent:  # first use, or in use by another request
                sel = dataclasses.replace(sel, copy=self._arrays.rows(sel.idx), dirty=set(), memo=None)
            else:
                self._refresh(sel)
                sel.lent = True
                if sel.memo is None:
                    sel.memo = VerdictMemo(sel.idx.shape[0])
            rows = sel.copy
            assert rows is not None
            if exclude in self._holds:
                rec = self._pods.get(exclude)
                st = self._nodes.get(rec.applied_to) if rec is not None else None
                if st is not None:
                    self._give_back(rows, sel.idx, exclude)
                    sel.dirty.add(st.row)  # put back at the next use
                    if sel.memo is not None:
                        sel.memo.mark(numpy.nonzero(sel.idx == st.row)[0])
        try:
            yield rows, sel.pos, sel.memo
        finally:
            with self._lock:
                sel.lent = False

    def _selection(self, names: Sequence[str]) -> _Selection:
        """The selection of ``names``; after its first use its copy is kept (lists seen once,
        such as prioritize's subsets, and short ones keep none)."""
        for sel in self._selections:
            if sel.node_generation == self._node_generation and sel.names == names:
                if sel.copy is None and sel.idx.shape[0] >= self.keep_rows_from:
                    sel.copy, sel.dirty, sel.memo = self._arrays.rows(sel.idx), set(), None
                return sel
        idx = numpy.array(list(map(self._row_of.get, names, itertools.repeat(-1))), dtype=numpy.int64)
        pos = numpy.nonzero(idx >= 0)[0]
        sel = _Selection(list(names), self._node_generation, idx[pos], pos)
        self._selections = [sel, *self._selections[: SELECTIONS - 1]]
        return sel

    def _refresh(self, sel: _Selection) -> None:
        """Copies the rows changed since into the selection's kept copy."""
        copy = sel.copy
        if copy is None or not sel.dirty:
            return
        if 4 * len(sel.dirty) > sel.idx.shape[0]:
            sel.copy = self._arrays.rows(sel.idx)
            sel.memo = None
        else:
            at = sel.positions_of(sel.dirty)
            src = sel.idx[at]
            for f in dataclasses.fields(copy):
                getattr(copy, f.name)[at] = getattr(self._arrays, f.name)[src]
            if sel.memo is not None:
                sel.memo.mark(at)
        sel.dirty = set()

    def _changed(self, row: int) -> None:
        """Row ``row`` of the arrays was written: the kept copies must copy it again."""
        for sel in self._selections:
            if sel.copy is not None:
                sel.dirty.add(row)

    def _give_back(self, rows: kslots.Slots, idx: numpy.ndarray[Any, Any], uid: str) -> None:
        """Adds pod ``uid``'s held units back to the copied ``rows`` (row indices ``idx``)."""
        rec = self._pods.get(uid)
        st = self._nodes.get(rec.applied_to) if rec is not None and rec.applied_to else None
        if rec is None or st is None:
            return
        for j in numpy.nonzero(idx == st.row)[0].tolist():
            for use in rec.uses:
                rows.free[j, use.col] = min(rows.free[j, use.col] + 1, rows.capacity[j, use.col])
                rows.free_memory_mib[j, use.col] = min(rows.free_memory_mib[j, use.col] + use.memory_mib,
                                                       rows.memory_mib[j, use.col])
            _, cpu, mem = self._node_requests.get(uid, ("", 0, 0))
            if rows.node_cpu_free[j] != kslots.UNLIMITED:
                rows.node_cpu_free[j] += cpu
            if rows.node_memory_free[j] != kslots.UNLIMITED:
                rows.node_memory_free[j] += mem

    def all_rows(self) -> tuple[kslots.Slots, list[str]]:
        with self._lock:
            self._expire()
            names = sorted(self._nodes)
            idx = numpy.asarray([self._nodes[n].row for n in names], dtype=numpy.int64)
            return self._arrays.rows(idx), names

    def node(self, name: str) -> NodeState | None:
        with self._lock:
            return self._nodes.get(name)

    def node_error(self, name: str) -> str:
        with self._lock:
            st = self._nodes.get(name)
            return st.error if st else ""

    def pod(self, uid: str) -> PodRecord | None:
        with self._lock:
            return self._pods.get(uid)

    def pods_on(self, node: str) -> list[PodRecord]:
        with self._lock:
            return [self._pods[u] for u in sorted(self._node_pods.get(node, ())) if u in self._pods]

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self._nodes), len(self._pods)

    def holds(self) -> int:
        """How many provisional holds there are now."""
        with self._lock:
            self._expire()
            return len(self._holds)

    def request(self, resource: str, count: int, memory_mib: int, cpu_milli: int = 0,
                node_memory_mib: int = 0, products: frozenset[str] = frozenset()) -> kernel.Request:
        """The kernel's request for a resource name (interning it); ``products``: the GPU
        product label values the pod is pinned to, as the models of the known GPUs that carry
        them (a pin to products no known GPU has pins to none: kube-scheduler's NodeAffinity
        filter turns the nodes down, with its own reason)."""
        with self._lock:
            models = frozenset(i for i, name in enumerate(self.models.names)
                               if contract.label_value(name) in products) if products else frozenset()
            return kernel.Request(self.resources.id(resource), count, memory_mib, cpu_milli, node_memory_mib, models)

    def node_free(self, name: str) -> tuple[int, int]:
        """``(free CPU millicores, free memory MiB)`` of a node (UNLIMITED when not tracked)."""
        with self._lock:
            st = self._nodes.get(name)
            if st is None:
                return kslots.UNLIMITED, kslots.UNLIMITED
            return self._free_cpu_memory(st)

    def record_shape(self, uid: str, req: kernel.Request) -> None:
        """Remember a request shape for the mix, once per pod."""
        with self._lock:
            if uid in self._seen_shapes:
                return
            if len(self._seen_shapes) > 4 * MIX_MEMORY:
                self._seen_shapes.clear()
            self._seen_shapes.add(uid)
            if len(self._recent) == MIX_MEMORY:  # the oldest shape leaves the window
                old = self._recent[0]
                left = self._shape_count[old] - 1
                if left:
                    self._shape_count[old] = left
                else:
                    del self._shape_count[old], self._shape_last[old]
            self._recent.append(req)
            self._shape_count[req] = self._shape_count.get(req, 0) + 1
            self._shape_last[req] = self.generation
            self._mix_arrivals += 1
            self.generation += 1

    def mix(self) -> kernel.Mix:
        """The most frequent recent shapes covering :data:`MIX_COVERAGE`, with frequencies
        (equally frequent shapes: the latest seen first). The counts are kept per arrival, so
        this sorts the distinct shapes only, not the window. It is worked out again once
        :data:`MIX_REFRESH` of the window has arrived since, and replaces the mix in use only
        when it differs from it by more than :data:`MIX_TOLERANCE`: in between it is the same
        object, so that verdicts scored under it can be kept
        (:class:`~gpupack.kernel.verdict_memo.VerdictMemo`; each new mix costs every candidate node
        a full evaluation at its shapes' next pods)."""
        with self._lock:
            if self._mix is None or self._mix_arrivals >= max(1.0, MIX_REFRESH * len(self._recent)):
                self._mix_arrivals = 0
                counts, last = self._shape_count, self._shape_last
                total = len(self._recent)
                chosen: list[tuple[kernel.Request, int]] = []
                covered = 0
                ranked = sorted(counts, key=lambda shape: (-counts[shape], -last[shape]))[:MIX_MAX_SHAPES]
                for shape in ranked:
                    if total and covered >= MIX_COVERAGE * total:
                        break
                    chosen.append((shape, counts[shape]))
                    covered += counts[shape]
                new = tuple((s, n / covered) for s, n in chosen) if covered else ()
                if self._mix is None or mix_distance(self._mix, new) > MIX_TOLERANCE:
                    self._mix = new
            return self._mix

    # --- events ----------------------------------------------------------------------------

    def apply_event(self, event: Mapping[str, Any], kind: str = "") -> None:
        """One watch event: ``{"type": ADDED|MODIFIED|DELETED, "object": Node or Pod}``;
        ``kind`` is "Node" or "Pod" (default: the object's own ``kind``)."""
        obj = event.get("object")
        if not isinstance(obj, dict):
            return
        kind = kind or str(obj.get("kind", ""))
        deleted = event.get("type") == "DELETED"
        if kind == "Node":
            name = str((obj.get("metadata") or {}).get("name", ""))
            self.delete_node(name) if deleted else self.upsert_node(obj)
        elif kind == "Pod":
            uid = str((obj.get("metadata") or {}).get("uid", ""))
            self.delete_pod(uid) if deleted else self.upsert_pod(obj)

    def replace_nodes(self, nodes: Iterable[KubeObject]) -> None:
        """A full list of nodes (start, or resync after 410 Gone): the nodes become exactly these."""
        with self._lock:
            nodes = list(nodes)
            keep = {str((n.get("metadata") or {}).get("name", "")) for n in nodes}
            for name in list(self._nodes):
                if name not in keep:
                    self.delete_node(name)
            for n in nodes:
                self.upsert_node(n)
            self._listed.add("Node")
            self.synced = self._listed >= {"Node", "Pod"}

    def replace_pods(self, pods: Iterable[KubeObject]) -> None:
        """A full list of pods: the pods become exactly these. A bind in flight keeps its
        reservation (its pod is in the list, still pending); a reservation whose pod is gone
        from the list is dropped. Pods are read outside the lock, so requests keep being
        answered meanwhile."""
        demands = [pod_demand(p) for p in pods]
        with self._lock:
            uids = {d.uid for d in demands}
            for uid in list(self._pods) + list(self._node_requests):
                if uid not in uids:
                    self.delete_pod(uid)
            for d in demands:
                self.put_pod(d)
            self._listed.add("Pod")
            self.synced = self._listed >= {"Node", "Pod"}

    def replace_all(self, nodes: Iterable[KubeObject], pods: Iterable[KubeObject]) -> None:
        with self._lock:
            self.replace_nodes(nodes)
            self.replace_pods(pods)

    def upsert_node(self, obj: KubeObject) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        raw = (meta.get("annotations") or {}).get(contract.INVENTORY_ANNOTATION)
        slots: tuple[node_slots.SlotInfo, ...] = ()
        error = ""
        if raw is None:
            error = f"no {contract.INVENTORY_ANNOTATION} annotation (is the gpupack device plugin running there?)"
        else:
            try:
                slots = node_slots.inventory_slots(contract.decode_inventory(str(raw)))
            except contract.ContractError as err:
                error = f"unreadable {contract.INVENTORY_ANNOTATION} annotation: {err}"
        allocatable = _dict((obj.get("status") or {}).get("allocatable"))
        cpu = podspec.cpu_milli(allocatable["cpu"]) if "cpu" in allocatable else kslots.UNLIMITED
        mem = podspec.memory_mib(allocatable["memory"]) if "memory" in allocatable else kslots.UNLIMITED
        with self._lock:
            st = self._nodes.get(name)
            if st is not None and st.slots == slots and st.error == error:
                if (st.cpu_allocatable, st.memory_allocatable) != (cpu, mem):
                    st.cpu_allocatable, st.memory_allocatable = cpu, mem
                    self._write_row(st)
                return  # status-only update: nothing else the kernel sees changed
            if st is None:
                st = NodeState(name, self._new_row())
                self._nodes[name] = st
                self._row_of[name] = st.row
                self._node_generation += 1
            st.slots, st.error = slots, error
            st.cpu_allocatable, st.memory_allocatable = cpu, mem
            st.col_of = {s.device_id: i for i, s in enumerate(slots)}
            self._ensure_width(len(slots))
            self._reapply(st)

    def delete_node(self, name: str) -> None:
        with self._lock:
            st = self._nodes.pop(name, None)
            self._row_of.pop(name, None)
            if st is None:
                return
            self._node_generation += 1
            for rec in self.pods_on(name):
                rec.uses, rec.applied_to = (), ""
            self._clear_row(st.row)
            self._free_rows.append(st.row)
            self.generation += 1

    def upsert_pod(self, obj: KubeObject) -> None:
        self.put_pod(pod_demand(obj))

    def put_pod(self, demand: PodDemand) -> None:
        with self._lock:
            old = self._pods.get(demand.uid)
            if old is not None and old.reserved and not demand.node:
                return  # our own annotation patch, before the Binding: keep the reservation
            self._account(demand.uid, "" if demand.finished else demand.node, demand.cpu_milli,
                          demand.node_memory_mib)
            if not demand.wants_gpu or demand.finished or not demand.node:
                if old is not None:
                    self._release(demand.uid)
                return
            if old is not None and not old.reserved and old.demand == demand:
                return
            self._release(demand.uid)
            rec = PodRecord(demand)
            self._pods[demand.uid] = rec
            self._node_pods[demand.node].add(demand.uid)
            st = self._nodes.get(demand.node)
            if st is not None:
                self._hold(st, rec)
                self._write_row(st)

    def delete_pod(self, uid: str) -> None:
        with self._lock:
            self._account(uid, "", 0, 0)
            self._release(uid)

    # --- reservations (bind) ---------------------------------------------------------------

    def reserve(self, demand: PodDemand, node: str, assignment: contract.Assignment,
                provisional: bool = False) -> None:
        """Holds ``assignment`` for ``demand`` on ``node`` until the pod's event or :meth:`release`
        (``provisional``: or until it expires, see :meth:`hold`)."""
        with self._lock:
            self._release(demand.uid)
            self._account(demand.uid, node, demand.cpu_milli, demand.node_memory_mib)
            held = dataclasses.replace(demand, node=node, assignment=assignment)
            rec = PodRecord(held, reserved=True, provisional=provisional)
            self._pods[demand.uid] = rec
            if provisional:
                self._holds[demand.uid] = self._clock() + self.hold_seconds
            self._node_pods[node].add(demand.uid)
            st = self._nodes.get(node)
            if st is not None:
                self._hold(st, rec)
                self._write_row(st)

    def release(self, uid: str) -> None:
        """Drops a reservation (a bind that failed); a pod the watch confirmed is kept."""
        with self._lock:
            rec = self._pods.get(uid)
            if rec is not None and rec.reserved:
                self._account(uid, "", 0, 0)
                self._release(uid)

    def hold(self, demand: PodDemand, node: str, policy: kernel.Policy) -> contract.Assignment | None:
        """A provisional reservation for a pod not bound yet: the devices the kernel would choose
        for it on ``node``, held until its bind (which replaces it), its binding or deletion
        event (which releases it), or :attr:`hold_seconds` by the clock. A pod already bound or
        binding keeps what it has; None when nothing was held."""
        with self._lock:
            old = self._pods.get(demand.uid)
            if demand.node or not demand.wants_gpu or (old is not None and not old.provisional):
                return None
            return self.assign(demand, node, policy, provisional=True)

    def held(self, uid: str) -> str:
        """The node of pod ``uid``'s provisional hold, or ""."""
        with self._lock:
            self._expire()
            rec = self._pods.get(uid) if uid in self._holds else None
            return rec.applied_to if rec is not None else ""

    def assign(self, demand: PodDemand, node: str, policy: kernel.Policy,
               provisional: bool = False) -> contract.Assignment | None:
        """Chooses devices for ``demand`` on ``node`` with the kernel and reserves them, in one
        step under the lock; None when they do not fit (any more). The pod's own provisional
        hold does not count against it."""
        with self._lock:
            st = self._nodes.get(node)
            if st is None:
                return None
            if demand.uid in self._holds:
                self._release(demand.uid)
            rows = self._arrays.rows(numpy.asarray([st.row]))
            chosen: dict[str, list[str]] = {}
            for resource, count in demand.totals().items():
                req = self.request(resource, count, demand.memory_mib, products=demand.products)
                picks = kernel.choose_devices(rows, 0, req, numpy)
                if not picks:
                    return None
                ids = node_slots.device_ids(st.slots, st.used, picks)
                chosen[resource] = ids
            assignment: contract.Assignment = {}
            for ask in demand.asks:
                ids = chosen[ask.resource]
                assignment.setdefault(ask.container, {})[ask.resource] = ids[: ask.count]
                chosen[ask.resource] = ids[ask.count :]
            self.reserve(demand, node, assignment, provisional)
            return assignment

    # --- what a node would have without some pods (preemption) -----------------------------

    def without(self, node: str, uids: Iterable[str]) -> kslots.Slots | None:
        """The node's row as it would be once the pods ``uids`` are gone."""
        with self._lock:
            st = self._nodes.get(node)
            if st is None:
                return None
            row = self._arrays.rows(numpy.asarray([st.row]))
            for uid in uids:
                rec = self._pods.get(uid)
                if rec is None or rec.applied_to != node:
                    continue
                for use in rec.uses:
                    row.free[0, use.col] += 1
                    row.free_memory_mib[0, use.col] += use.memory_mib
            return row

    # --- internals -------------------------------------------------------------------------

    def _new_row(self) -> int:
        if self._free_rows:
            return self._free_rows.pop()
        if self._rows_used == self._arrays.shape[0]:
            self._arrays = self._resized(self._rows_used * 2, self._width)
        self._rows_used += 1
        return self._rows_used - 1

    def _ensure_width(self, n: int) -> None:
        if n > self._width:
            self._width = max(n, self._width * 2)
            self._arrays = self._resized(self._arrays.shape[0], self._width)

    def _resized(self, rows: int, width: int) -> kslots.Slots:
        for sel in self._selections:  # other shapes: the kept copies go
            sel.copy, sel.dirty, sel.memo = None, set(), None
        new = kslots.empty_slots(numpy, rows, width)
        old = self._arrays
        r, w = old.shape
        for f in dataclasses.fields(new):
            dst, src = getattr(new, f.name), getattr(old, f.name)
            if src.ndim == 1:
                dst[:r] = src
            else:
                dst[:r, :w] = src
        return new

    def _clear_row(self, row: int) -> None:
        self._changed(row)
        blank = kslots.empty_slots(numpy, 1, self._width)
        for f in dataclasses.fields(blank):
            getattr(self._arrays, f.name)[row] = getattr(blank, f.name)[0]

    def _reapply(self, st: NodeState) -> None:
        """Rewrites a node's row from its slots and re-holds every pod on it: annotated pods
        (known devices) first, then phantom ones."""
        n = len(st.slots)
        st.used = [set() for _ in range(n)]
        st.phantom = [0] * n
        st.memory_used = [0] * n
        self._clear_row(st.row)
        node_slots.write_slots(self._arrays, st.row, st.slots, self.resources, self.models)
        self._write_row(st)
        recs = [self._pods[u] for u in self._node_pods.get(st.name, ()) if u in self._pods]
        for rec in recs:
            rec.uses, rec.applied_to = (), ""
        recs.sort(key=lambda r: (r.demand.assignment is None, r.demand.uid))
        for rec in recs:
            self._hold(st, rec)
            self._write_row(st)

    def _write_row(self, st: NodeState) -> None:
        a, row = self._arrays, st.row
        for i, s in enumerate(st.slots):
            a.free[row, i] = max(s.replicas - len(st.used[i]) - st.phantom[i], 0)
            a.free_memory_mib[row, i] = max(s.memory_mib - st.memory_used[i], 0)
        a.node_cpu_free[row], a.node_memory_free[row] = self._free_cpu_memory(st)
        self._changed(row)
        self.generation += 1

    def _free_cpu_memory(self, st: NodeState) -> tuple[int, int]:
        cpu_used, mem_used = self._requested.get(st.name, (0, 0))
        cpu = st.cpu_allocatable - cpu_used if st.cpu_allocatable != kslots.UNLIMITED else kslots.UNLIMITED
        mem = st.memory_allocatable - mem_used if st.memory_allocatable != kslots.UNLIMITED else kslots.UNLIMITED
        return cpu, mem

    def _account(self, uid: str, node: str, cpu: int, mem: int) -> None:
        """Records that pod ``uid`` requests ``cpu``/``mem`` on ``node`` ("" = on none now)
        and rewrites the free CPU and memory of the nodes it left and joined."""
        new = (node, cpu, mem) if node else None
        old = self._node_requests.get(uid)
        if old == new:
            return
        if old is not None:
            del self._node_requests[uid]
            used = self._requested[old[0]]
            used[0] -= old[1]
            used[1] -= old[2]
            if used == [0, 0]:
                del self._requested[old[0]]
        if new is not None:
            self._node_requests[uid] = new
            used = self._requested[node]
            used[0] += cpu
            used[1] += mem
        for name in {old[0] if old else "", node} - {""}:
            st = self._nodes.get(name)
            if st is not None:
                a = self._arrays
                a.node_cpu_free[st.row], a.node_memory_free[st.row] = self._free_cpu_memory(st)
                self._changed(st.row)
                self.generation += 1

    def _hold(self, st: NodeState, rec: PodRecord) -> None:
        """Adds the pod's units to the node's counters (the row is written by the caller)."""
        uses: list[Use] = []
        d = rec.demand
        missing: dict[str, int] = dict(d.totals())
        if d.assignment is not None:
            for resources in d.assignment.values():
                for resource, ids in resources.items():
                    for device in ids:
                        col = st.col_of.get(contract.physical_id(device))
                        if col is None:
                            continue  # unknown device: counted below by resource
                        try:
                            replica = contract.replica_of(device) or 0
                        except contract.ContractError:
                            continue
                        info = st.slots[col]
                        st.used[col].add(replica)
                        mem = node_slots.unit_memory(info, d.memory_mib)
                        st.memory_used[col] += mem
                        uses.append(Use(col, replica, mem))
                        if missing.get(resource, 0) > 0:
                            missing[resource] -= 1
        for resource, count in sorted(missing.items()):
            if count <= 0:
                continue
            self._write_row(st)
            rows = self._arrays.rows(numpy.asarray([st.row]))
            req = kernel.Request(self.resources.id(resource), count, d.memory_mib)
            picks = kernel.choose_devices(rows, 0, req, numpy)
            if not picks:
                # it is there even though we see no room: take what is left of the resource
                avail = kslots.units(rows, dataclasses.replace(req, memory_mib=0), numpy, healthy_only=False)
                picks = tuple((int(c), int(avail[0, c])) for c in numpy.nonzero(avail[0])[0])
            for col, n in picks:
                info = st.slots[col]
                mem = node_slots.unit_memory(info, d.memory_mib)
                for _ in range(n):
                    st.phantom[col] += 1
                    st.memory_used[col] += mem
                    uses.append(Use(col, -1, mem))
        rec.uses, rec.applied_to = tuple(uses), st.name

    def _expire(self) -> None:
        """Releases the provisional holds whose time is up."""
        if not self._holds:
            return
        now = self._clock()
        while self._holds:
            uid, until = next(iter(self._holds.items()))
            if until > now:
                break
            self._account(uid, "", 0, 0)
            self._release(uid)

    def _release(self, uid: str) -> None:
        self._holds.pop(uid, None)
        rec = self._pods.pop(uid, None)
        if rec is None:
            return
        self._node_pods.get(rec.demand.node, set()).discard(uid)
        st = self._nodes.get(rec.applied_to) if rec.applied_to else None
        if st is None:
            return
        for use in rec.uses:
            if use.replica >= 0:
                st.used[use.col].discard(use.replica)
            else:
                st.phantom[use.col] = max(st.phantom[use.col] - 1, 0)
            st.memory_used[use.col] = max(st.memory_used[use.col] - use.memory_mib, 0)
        self._write_row(st)


def _dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else {}


def from_snapshot(path: str) -> ClusterCache:
    """The cache for a ``kubectl get nodes,pods -o json`` file (a List of Nodes and Pods)."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return from_objects(doc.get("items", []) if isinstance(doc, dict) else [])


def from_objects(items: Iterable[KubeObject]) -> ClusterCache:
    nodes: list[KubeObject] = []
    pods: list[KubeObject] = []
    for obj in items:
        if not isinstance(obj, dict):
            continue
        if obj.get("kind") == "Node":
            nodes.append(obj)
        elif obj.get("kind") == "Pod":
            pods.append(obj)
    cache = ClusterCache(rows=max(len(nodes), 1))
    cache.replace_all(nodes, pods)
    return cache
