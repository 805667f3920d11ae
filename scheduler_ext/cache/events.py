"""What the watch says, read into the cluster state: Node and Pod objects, one event or a full list
(and, with DRA awareness, the DRA kinds: :mod:`scheduler_ext.cache.dra`).

Events are the watch's ``{"type", "object"}`` dicts (:meth:`Events.apply_event`); a full list
(at start, or a resync after 410 Gone) makes the nodes or the pods exactly those listed. The
watch I/O itself lives in :mod:`scheduler_ext.watch`. Objects are read (inventory annotation,
allocatable CPU and memory, what a pod asks for) outside the lock where a call allows it, so
requests keep being answered meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gpupack import contract, node_slots
from gpupack.kernel import slots as kslots
from scheduler_ext import dra, nodefilter, podspec
from scheduler_ext.cache.dra import KINDS as DRA_KINDS, DraObjects
from scheduler_ext.cache.state import ClusterState
from scheduler_ext.podspec import pod_demand
from scheduler_ext.wire import KubeObject


def _dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else {}


class Events:
    """Node and Pod objects into the :class:`~scheduler_ext.cache.state.ClusterState`, under its
    lock; ``synced`` once nodes and pods have each been listed in full."""

    def __init__(self, state: ClusterState, dra_objects: DraObjects | None = None) -> None:
        self._state = state
        self._lock = state.lock
        self._listed: set[str] = set()
        self.synced = False  # True once nodes and pods have each been listed in full
        # DRA awareness (None: off): its kinds must be listed too before the cache is synced
        self.dra = dra_objects
        self._annotations: dict[str, str] = {}  # node -> its inventory annotation (DRA awareness only)
        self._required = {"Node", "Pod"} | (set(DRA_KINDS) if dra_objects is not None else set())
        if dra_objects is not None:
            dra_objects.refresh_node = self._refresh_node

    def _refresh_node(self, name: str) -> None:
        """Rewrites a known node's row from its slices (a change of its pool), keeping its CPU and memory."""
        st = self._state.nodes.get(name)
        if st is None:
            return  # not listed yet: its Node event reads the slices
        slots, error = self._slots(name, self._annotations.get(name))
        self._state.put_node(name, slots, error, st.cpu_allocatable, st.memory_allocatable)

    def replace_kind(self, kind: str, items: Iterable[KubeObject]) -> None:
        """A full list of one DRA kind (with DRA awareness on; other kinds are the lists above)."""
        if self.dra is None or kind not in DRA_KINDS:
            return
        self.dra.replace(kind, items)
        with self._lock:
            self._listed.add(kind)
            self.synced = self._listed >= self._required

    def _demand(self, obj: KubeObject) -> podspec.PodDemand:
        d = pod_demand(obj)
        if self.dra is None:
            return d
        if d.node and not _dict(obj.get("spec")).get("nodeName") and self.dra.is_dra_node(d.node):
            # placed by gate mode, not bound yet: its claims are not allocated, so what they ask
            # is held on that node until kube-scheduler allocates them and binds the pod
            return self.dra.resolve(d)
        return self.dra.bound_demand(d)

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
            self._state.delete_node(name) if deleted else self.upsert_node(obj)
        elif kind == "Pod":
            uid = str((obj.get("metadata") or {}).get("uid", ""))
            self._state.delete_pod(uid) if deleted else self.upsert_pod(obj)
        elif kind in DRA_KINDS and self.dra is not None:
            self.dra.apply(kind, obj, deleted)

    def replace_nodes(self, nodes: Iterable[KubeObject]) -> None:
        """A full list of nodes (start, or resync after 410 Gone): the nodes become exactly these.
        The list is read in full before the lock is taken (it may come page by page from the API)."""
        nodes = list(nodes)
        with self._lock:
            keep = {str((n.get("metadata") or {}).get("name", "")) for n in nodes}
            for name in list(self._state.nodes):
                if name not in keep:
                    self._state.delete_node(name)
            for n in nodes:
                self.upsert_node(n)
            self._listed.add("Node")
            self.synced = self._listed >= self._required

    def replace_pods(self, pods: Iterable[KubeObject]) -> None:
        """A full list of pods: the pods become exactly these. A bind in flight keeps its
        reservation (its pod is in the list, still pending); a reservation whose pod is gone
        from the list is dropped. Pods are read outside the lock, so requests keep being
        answered meanwhile."""
        demands = [self._demand(p) for p in pods]
        with self._lock:
            uids = {d.uid for d in demands}
            for uid in list(self._state.pods) + list(self._state.pod_requests):
                if uid not in uids and not uid.startswith(dra.CLAIM_UID_PREFIX):  # claims: their own list
                    self._state.delete_pod(uid)
            for d in demands:
                self._state.put_pod(d)
            self._listed.add("Pod")
            self.synced = self._listed >= self._required

    def replace_all(self, nodes: Iterable[KubeObject], pods: Iterable[KubeObject]) -> None:
        with self._lock:
            self.replace_nodes(nodes)
            self.replace_pods(pods)

    def upsert_node(self, obj: KubeObject) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        raw = (meta.get("annotations") or {}).get(contract.INVENTORY_ANNOTATION)
        if self.dra is not None:  # kept for when its slices go (the node back in device-plugin mode)
            if raw is None:
                self._annotations.pop(name, None)
            else:
                self._annotations[name] = str(raw)
        slots, error = self._slots(name, raw)
        self._state.put_facts(name, nodefilter.node_facts(obj))
        allocatable = _dict((obj.get("status") or {}).get("allocatable"))
        cpu = podspec.cpu_milli(allocatable["cpu"]) if "cpu" in allocatable else kslots.UNLIMITED
        mem = podspec.memory_mib(allocatable["memory"]) if "memory" in allocatable else kslots.UNLIMITED
        self._state.put_node(name, slots, error, cpu, mem)

    def _slots(self, name: str, raw: Any) -> tuple[tuple[node_slots.SlotInfo, ...], str]:
        """The node's slots and why there are none: from its ResourceSlices where it has ours
        (a DRA node; an annotation left from device-plugin mode is stale), else its annotation."""
        from_slices = self.dra.node_slots(name) if self.dra is not None else None
        if from_slices is not None:
            return from_slices
        if raw is None:
            if self.dra is not None:
                return (), (f"no {contract.INVENTORY_ANNOTATION} annotation and no ResourceSlices of {dra.DRIVER}: "
                            "is the gpupack device plugin or DRA driver running there?")
            return (), f"no {contract.INVENTORY_ANNOTATION} annotation: is the gpupack device plugin running there?"
        try:
            return node_slots.inventory_slots(contract.decode_inventory(str(raw))), ""
        except contract.ContractError as err:
            return (), f"unreadable {contract.INVENTORY_ANNOTATION} annotation: {err}"

    def upsert_pod(self, obj: KubeObject) -> None:
        self._state.put_pod(self._demand(obj))
