"""The cluster's state: every node's GPU slots and what pods hold, as records and kernel arrays.

The records are the truth: a :class:`NodeState` per node (its slots and which units pods
hold) and a :class:`PodRecord` per pod. The arrays (nodes x slots, one row per node) are
written from them, row by row, by the change that touches the row, never rebuilt per request.

What a pod holds: the devices named in its ``gpupack.io/devices`` annotation; without one
(the extender was down, or another scheduler bound it), its count of each resource taken
conservatively from the slots the packing rule would have used (``phantom`` units, whose
replica ids are unknown). Pods bound but not yet running count; finished pods do not.

Each node's free CPU and memory (``Slots.node_cpu_free``/``node_memory_free``) are its
``status.allocatable`` less the requests of every pod bound to it that has not finished, GPU
or not (and of reservations), kept per event like the slots. They only feed the
``fragmentation`` score: kube-scheduler's NodeResourcesFit filters CPU and memory.

``generation`` changes with every change a decision could see (rows, CPU and memory, and the
mix of shapes, :mod:`scheduler_ext.cache.mix`), so callers can memoise per generation.

One re-entrant lock, :attr:`ClusterState.lock`, guards this state and everything the other
pieces of the cache keep beside it: every public call holds it; the methods documented
"under the lock" are for those pieces, which already hold it.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Iterable

import numpy

from gpupack import contract, kernel, node_slots
from gpupack.kernel import slots as kslots
from scheduler_ext.podspec import PodDemand
from scheduler_ext.nodefilter import NodeFacts


@dataclasses.dataclass(frozen=True, slots=True)
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
    # per column, the replicas pods hold and how many pods hold each: two records can hold one
    # replica for a moment (a bind's own reservation and another replica's pod the watch just
    # showed bound there), and dropping one must leave the replica taken
    used: list[collections.Counter[int]] = dataclasses.field(default_factory=list)
    phantom: list[int] = dataclasses.field(default_factory=list)
    memory_used: list[int] = dataclasses.field(default_factory=list)
    cpu_allocatable: int = kslots.UNLIMITED  # millicores; UNLIMITED when the node does not say
    memory_allocatable: int = kslots.UNLIMITED  # MiB


@dataclasses.dataclass(slots=True)
class PodRecord:
    demand: PodDemand
    uses: tuple[Use, ...] = ()
    applied_to: str = ""  # node whose counters include ``uses``
    reserved: bool = False
    provisional: bool = False  # a hold from prioritize (reserved too), not yet a bind


def _no_row(row: int) -> None:
    pass


def _nothing() -> None:
    pass


class ClusterState:
    """Node and pod records, the arrays written from them, and each node's CPU and memory."""

    def __init__(self, width: int = 8, rows: int = 64) -> None:
        self.lock = threading.RLock()
        self.resources = node_slots.Interner()
        self.models = node_slots.Interner()
        self._width = max(width, 1)
        self.arrays = kslots.empty_slots(numpy, max(rows, 1), self._width)
        self.nodes: dict[str, NodeState] = {}
        self.row_of: dict[str, int] = {}  # node name -> row, for fast selection
        self.node_generation = 0  # bumped when a node is added or removed
        self._free_rows: list[int] = []
        self._rows_used = 0
        self.pods: dict[str, PodRecord] = {}
        self._node_pods: dict[str, set[str]] = collections.defaultdict(set)
        # CPU and memory requests of bound pods (and reservations): uid -> (node, cpu, memory),
        # and their totals per node name (kept for nodes not seen yet)
        self.pod_requests: dict[str, tuple[str, int, int]] = {}
        # per node: CPU (millicores), memory (MiB) and pods of the pods counted there
        self._requested_on: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
        self.pods_full: set[str] = set()  # nodes holding as many pods as their allocatable.pods
        # provisional holds: uid -> expiry by the cache's clock, in expiry order (set and expired
        # by :mod:`scheduler_ext.cache.holds`); a pod's hold goes when its record goes
        self.hold_expiry: collections.OrderedDict[str, float] = collections.OrderedDict()
        # the kept copies of candidate lists hear of every row written and of new arrays
        # (:class:`scheduler_ext.cache.candidates.Candidates` sets these)
        self.row_written: Callable[[int], None] = _no_row
        self.arrays_replaced: Callable[[], None] = _nothing
        self.generation = 0  # bumped on every change, for callers that memoise
        # what kube-scheduler's node filters read of each Node (gate mode: scheduler_ext/nodefilter.py)
        self.facts: dict[str, NodeFacts] = {}
        self.facts_generation = 0  # bumped when a node's facts change, or a node comes or goes

    # --- reading ---------------------------------------------------------------------------

    def node(self, name: str) -> NodeState | None:
        with self.lock:
            return self.nodes.get(name)

    def node_error(self, name: str) -> str:
        with self.lock:
            st = self.nodes.get(name)
            return st.error if st else ""

    def pod(self, uid: str) -> PodRecord | None:
        with self.lock:
            return self.pods.get(uid)

    def pods_on(self, node: str) -> list[PodRecord]:
        with self.lock:
            return [self.pods[u] for u in sorted(self._node_pods.get(node, ())) if u in self.pods]

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return len(self.nodes), len(self.pods)

    def request(self, resource: str, count: int, memory_mib: int, cpu_milli: int = 0,
                node_memory_mib: int = 0, products: frozenset[str] = frozenset()) -> kernel.Request:
        """The kernel's request for a resource name (interning it); ``products``: the GPU
        product label values the pod is pinned to, as the models of the known GPUs that carry
        them (a pin to products no known GPU has pins to none: kube-scheduler's NodeAffinity
        filter turns the nodes down, with its own reason)."""
        with self.lock:
            models = frozenset(i for i, name in enumerate(self.models.names)
                               if contract.label_value(name) in products) if products else frozenset()
            return kernel.Request(self.resources.id(resource), count, memory_mib, cpu_milli, node_memory_mib, models)

    def node_free(self, name: str) -> tuple[int, int]:
        """``(free CPU millicores, free memory MiB)`` of a node (UNLIMITED when not tracked)."""
        with self.lock:
            st = self.nodes.get(name)
            if st is None:
                return kslots.UNLIMITED, kslots.UNLIMITED
            return self._free_cpu_memory(st)

    def without(self, node: str, uids: Iterable[str]) -> kslots.Slots | None:
        """The node's row as it would be once the pods ``uids`` are gone (preemption)."""
        with self.lock:
            st = self.nodes.get(node)
            if st is None:
                return None
            row = self.arrays.rows(numpy.asarray([st.row]))
            for uid in uids:
                rec = self.pods.get(uid)
                if rec is None or rec.applied_to != node:
                    continue
                for use in rec.uses:
                    row.free[0, use.col] += 1
                    row.free_memory_mib[0, use.col] += use.memory_mib
            return row

    # --- nodes and pods as the watch reports them ------------------------------------------

    def put_node(self, name: str, slots: tuple[node_slots.SlotInfo, ...], error: str, cpu: int,
                 mem: int) -> None:
        """Node ``name`` has these slots (``error``: why its inventory could not be read) and
        this allocatable CPU (millicores) and memory (MiB)."""
        with self.lock:
            st = self.nodes.get(name)
            if st is not None and st.slots == slots and st.error == error:
                if (st.cpu_allocatable, st.memory_allocatable) != (cpu, mem):
                    st.cpu_allocatable, st.memory_allocatable = cpu, mem
                    self._write_row(st)
                return  # status-only update: nothing else the kernel sees changed
            if st is None:
                st = NodeState(name, self._new_row())
                self.nodes[name] = st
                self.row_of[name] = st.row
                self.node_generation += 1
            st.slots, st.error = slots, error
            st.cpu_allocatable, st.memory_allocatable = cpu, mem
            st.col_of = {s.device_id: i for i, s in enumerate(slots)}
            self._ensure_width(len(slots))
            self._reapply(st)

    def put_facts(self, name: str, facts: NodeFacts) -> None:
        with self.lock:
            if self.facts.get(name) != facts:
                self.facts[name] = facts
                self.facts_generation += 1
                self._check_pods_full(name)

    def _check_pods_full(self, name: str) -> None:
        """Keeps :attr:`pods_full` in step with node ``name``'s pods and allocatable.pods. Under the lock."""
        facts = self.facts.get(name)
        used = self._requested_on.get(name)
        if facts is not None and facts.max_pods is not None and (used[2] if used else 0) >= facts.max_pods:
            self.pods_full.add(name)
        else:
            self.pods_full.discard(name)

    def delete_node(self, name: str) -> None:
        with self.lock:
            if self.facts.pop(name, None) is not None:
                self.facts_generation += 1
            self.pods_full.discard(name)
            st = self.nodes.pop(name, None)
            self.row_of.pop(name, None)
            if st is None:
                return
            self.node_generation += 1
            for rec in self.pods_on(name):
                rec.uses, rec.applied_to = (), ""
            self._clear_row(st.row)
            self._free_rows.append(st.row)
            self.generation += 1

    def put_pod(self, demand: PodDemand) -> None:
        with self.lock:
            old = self.pods.get(demand.uid)
            if old is not None and old.reserved and not demand.node:
                return  # our own annotation patch, before the Binding: keep the reservation
            self.account(demand.uid, "" if demand.finished else demand.node, demand.cpu_milli,
                         demand.node_memory_mib)
            if not demand.wants_gpu or demand.finished or not demand.node:
                if old is not None:
                    self.drop_pod(demand.uid)
                return
            if old is not None and not old.reserved and old.demand == demand:
                return
            self.drop_pod(demand.uid)
            self.add_pod(PodRecord(demand))

    def delete_pod(self, uid: str) -> None:
        with self.lock:
            self.account(uid, "", 0, 0)
            self.drop_pod(uid)

    # --- pod records and their units (under the lock) --------------------------------------

    def add_pod(self, rec: PodRecord) -> None:
        """Records the pod on its node (``rec.demand.node``) and counts its units there if the
        node is known. Under the lock."""
        uid, node = rec.demand.uid, rec.demand.node
        self.pods[uid] = rec
        self._node_pods[node].add(uid)
        st = self.nodes.get(node)
        if st is not None:
            self._count_units(st, rec)
            self._write_row(st)

    def drop_pod(self, uid: str) -> None:
        """Forgets the pod's record, and its provisional hold, and frees its units on its node
        (its CPU and memory requests are :meth:`account`'s). Under the lock."""
        self.hold_expiry.pop(uid, None)
        rec = self.pods.pop(uid, None)
        if rec is None:
            return
        self._node_pods.get(rec.demand.node, set()).discard(uid)
        st = self.nodes.get(rec.applied_to) if rec.applied_to else None
        if st is None:
            return
        for use in rec.uses:
            if use.replica >= 0:
                holders = st.used[use.col]
                holders[use.replica] -= 1
                if holders[use.replica] <= 0:
                    del holders[use.replica]
            else:
                st.phantom[use.col] = max(st.phantom[use.col] - 1, 0)
            st.memory_used[use.col] = max(st.memory_used[use.col] - use.memory_mib, 0)
        self._write_row(st)

    def account(self, uid: str, node: str, cpu: int, mem: int) -> None:
        """Records that pod ``uid`` requests ``cpu``/``mem`` on ``node`` ("" = on none now)
        and rewrites the free CPU and memory of the nodes it left and joined. Under the lock."""
        new = (node, cpu, mem) if node else None
        old = self.pod_requests.get(uid)
        if old == new:
            return
        if old is not None:
            del self.pod_requests[uid]
            used = self._requested_on[old[0]]
            used[0] -= old[1]
            used[1] -= old[2]
            used[2] -= 1
            if used == [0, 0, 0]:
                del self._requested_on[old[0]]
        if new is not None:
            self.pod_requests[uid] = new
            used = self._requested_on[node]
            used[0] += cpu
            used[1] += mem
            used[2] += 1
        for name in {old[0] if old else "", node} - {""}:
            self._check_pods_full(name)
            st = self.nodes.get(name)
            if st is not None:
                a = self.arrays
                a.node_cpu_free[st.row], a.node_memory_free[st.row] = self._free_cpu_memory(st)
                self.row_written(st.row)
                self.generation += 1

    def _count_units(self, st: NodeState, rec: PodRecord) -> None:
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
                        st.used[col][replica] += 1
                        mem = node_slots.unit_memory(info, d.memory_mib)
                        st.memory_used[col] += mem
                        uses.append(Use(col, replica, mem))
                        if missing.get(resource, 0) > 0:
                            missing[resource] -= 1
        for resource, count in sorted(missing.items()):
            if count <= 0:
                continue
            self._write_row(st)
            rows = self.arrays.rows(numpy.asarray([st.row]))
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

    # --- rows ------------------------------------------------------------------------------

    def _new_row(self) -> int:
        if self._free_rows:
            return self._free_rows.pop()
        if self._rows_used == self.arrays.shape[0]:
            self.arrays = self._resized(self._rows_used * 2, self._width)
        self._rows_used += 1
        return self._rows_used - 1

    def _ensure_width(self, n: int) -> None:
        if n > self._width:
            self._width = max(n, self._width * 2)
            self.arrays = self._resized(self.arrays.shape[0], self._width)

    def _resized(self, rows: int, width: int) -> kslots.Slots:
        self.arrays_replaced()  # other shapes: the kept copies go
        new = kslots.empty_slots(numpy, rows, width)
        old = self.arrays
        r, w = old.shape
        for f in dataclasses.fields(new):
            dst, src = getattr(new, f.name), getattr(old, f.name)
            if src.ndim == 1:
                dst[:r] = src
            else:
                dst[:r, :w] = src
        return new

    def _clear_row(self, row: int) -> None:
        self.row_written(row)
        blank = kslots.empty_slots(numpy, 1, self._width)
        for f in dataclasses.fields(blank):
            getattr(self.arrays, f.name)[row] = getattr(blank, f.name)[0]

    def _reapply(self, st: NodeState) -> None:
        """Rewrites a node's row from its slots and counts every pod on it again: annotated
        pods (known devices) first, then phantom ones."""
        n = len(st.slots)
        st.used = [collections.Counter() for _ in range(n)]
        st.phantom = [0] * n
        st.memory_used = [0] * n
        self._clear_row(st.row)
        node_slots.write_slots(self.arrays, st.row, st.slots, self.resources, self.models)
        self._write_row(st)
        recs = [self.pods[u] for u in self._node_pods.get(st.name, ()) if u in self.pods]
        for rec in recs:
            rec.uses, rec.applied_to = (), ""
        recs.sort(key=lambda r: (r.demand.assignment is None, r.demand.uid))
        for rec in recs:
            self._count_units(st, rec)
            self._write_row(st)

    def _write_row(self, st: NodeState) -> None:
        a, row = self.arrays, st.row
        for i, s in enumerate(st.slots):
            a.free[row, i] = max(s.replicas - len(st.used[i]) - st.phantom[i], 0)
            a.free_memory_mib[row, i] = max(s.memory_mib - st.memory_used[i], 0)
        a.node_cpu_free[row], a.node_memory_free[row] = self._free_cpu_memory(st)
        self.row_written(row)
        self.generation += 1

    def _free_cpu_memory(self, st: NodeState) -> tuple[int, int]:
        cpu_used, mem_used, _ = self._requested_on.get(st.name, (0, 0, 0))
        cpu = st.cpu_allocatable - cpu_used if st.cpu_allocatable != kslots.UNLIMITED else kslots.UNLIMITED
        mem = st.memory_allocatable - mem_used if st.memory_allocatable != kslots.UNLIMITED else kslots.UNLIMITED
        return cpu, mem
