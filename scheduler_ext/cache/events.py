"""What the watch says, read into the cluster state: Node and Pod objects, one event or a full list.

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
from scheduler_ext import podspec
from scheduler_ext.cache.state import ClusterState
from scheduler_ext.podspec import pod_demand
from scheduler_ext.wire import KubeObject


def _dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else {}


class Events:
    """Node and Pod objects into the :class:`~scheduler_ext.cache.state.ClusterState`, under its
    lock; ``synced`` once nodes and pods have each been listed in full."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self._lock = state.lock
        self._listed: set[str] = set()
        self.synced = False  # True once nodes and pods have each been listed in full

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

    def replace_nodes(self, nodes: Iterable[KubeObject]) -> None:
        """A full list of nodes (start, or resync after 410 Gone): the nodes become exactly these."""
        with self._lock:
            nodes = list(nodes)
            keep = {str((n.get("metadata") or {}).get("name", "")) for n in nodes}
            for name in list(self._state.nodes):
                if name not in keep:
                    self._state.delete_node(name)
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
            for uid in list(self._state.pods) + list(self._state.pod_requests):
                if uid not in uids:
                    self._state.delete_pod(uid)
            for d in demands:
                self._state.put_pod(d)
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
            error = f"no {contract.INVENTORY_ANNOTATION} annotation: is the gpupack device plugin running there?"
        else:
            try:
                slots = node_slots.inventory_slots(contract.decode_inventory(str(raw)))
            except contract.ContractError as err:
                error = f"unreadable {contract.INVENTORY_ANNOTATION} annotation: {err}"
        allocatable = _dict((obj.get("status") or {}).get("allocatable"))
        cpu = podspec.cpu_milli(allocatable["cpu"]) if "cpu" in allocatable else kslots.UNLIMITED
        mem = podspec.memory_mib(allocatable["memory"]) if "memory" in allocatable else kslots.UNLIMITED
        self._state.put_node(name, slots, error, cpu, mem)

    def upsert_pod(self, obj: KubeObject) -> None:
        self._state.put_pod(pod_demand(obj))
