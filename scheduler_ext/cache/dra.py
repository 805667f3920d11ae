"""The DRA objects of the cache: ResourceSlices, ResourceClaims, ResourceClaimTemplates, DeviceClasses.

On only with DRA awareness (``gpupack-extender --dra``). Kept under the state's lock, beside
the node and pod records, and read into them by :mod:`scheduler_ext.dra`'s pure functions:

- a node's complete pool of slices becomes its slots (:meth:`DraObjects.node_slots`, consulted
  by :mod:`~scheduler_ext.cache.events` where a Node has no ``gpupack.io/inventory``); a
  change of the pool rewrites the node's row;
- each allocated claim becomes records (uid ``dra-claim/...``) that hold its devices like a
  pod's annotated ones; a share's replica number is given once and kept while the claim
  holds it, so other claims' events never renumber it;
- a GPU pod bound to a DRA node holds its devices through its claims only: its own GPU asks
  (``nvidia.com/gpu: 1`` served by DRA) are not counted again (:meth:`DraObjects.bound_demand`);
- a pending pod's claims are read into its demand (:meth:`DraObjects.resolve`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gpupack import node_slots
from scheduler_ext import dra
from scheduler_ext.cache.state import ClusterState
from scheduler_ext.podspec import PodDemand
from scheduler_ext.wire import KubeObject

KINDS = ("ResourceSlice", "ResourceClaim", "ResourceClaimTemplate", "DeviceClass")


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _key(obj: Mapping[str, Any]) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class DraObjects:
    """The DRA objects, and what they mean for the :class:`ClusterState`, under its lock.
    ``refresh_node(name)`` is the events' way to rewrite a node's row (set by them)."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self._lock = state.lock
        self.slices: dict[str, KubeObject] = {}  # by name
        self.claims: dict[str, KubeObject] = {}  # by namespace/name
        self.templates: dict[str, KubeObject] = {}  # by namespace/name
        self.classes: dict[str, KubeObject] = {}  # by name
        self.class_table: dict[str, str] = {}
        self.nodes: dict[str, dra.NodeDevices] = {}  # by node name: complete, readable pools
        self.errors: dict[str, str] = {}  # by node name: why its slices cannot be used
        self._by_pool: dict[str, dra.NodeDevices] = {}
        self._claim_records: dict[str, list[str]] = {}  # claim key -> record uids
        self._claim_pools: dict[str, set[str]] = {}  # claim key -> pools its allocation names
        # (node, device) -> share key -> (first replica, count)
        self._replicas: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
        self.refresh_node: Callable[[str], None] = lambda name: None

    # --- reading ---------------------------------------------------------------------------

    def node_slots(self, name: str) -> tuple[tuple[node_slots.SlotInfo, ...], str] | None:
        """The node's slots from its slices and "" (or () and why they cannot be used); None
        when it has no slices of our driver."""
        with self._lock:
            if name in self.nodes:
                return node_slots.inventory_slots(self.nodes[name].inventory), ""
            if name in self.errors:
                return (), self.errors[name]
            return None

    def is_dra_node(self, name: str) -> bool:
        with self._lock:
            return name in self.nodes or name in self.errors

    def resolve(self, demand: PodDemand) -> PodDemand:
        """A pending pod's demand with its claims read in (:func:`scheduler_ext.dra.pod_demand`)."""
        if not demand.claims:
            return demand
        with self._lock:
            return dra.pod_demand(demand, self.claims, self.templates, self.class_table)

    def bound_demand(self, demand: PodDemand) -> PodDemand:
        """A bound pod's demand without its GPU asks where its claims hold its devices: on a
        DRA node, or with a claim kube-scheduler made for its extended resources."""
        if demand.asks and demand.node and (demand.extended_claim or self.is_dra_node(demand.node)):
            return dataclasses.replace(demand, asks=())
        return demand

    # --- events ----------------------------------------------------------------------------

    def apply(self, kind: str, obj: KubeObject, deleted: bool) -> None:
        with self._lock:
            if kind == "ResourceSlice":
                name = str(_meta(obj).get("name", ""))
                old = self.slices.pop(name, None)
                if not deleted:
                    self.slices[name] = obj
                self._pools_changed({dra.slice_node(o) for o in (old, obj) if o is not None})
            elif kind == "ResourceClaim":
                key = _key(obj)
                self.claims.pop(key, None)
                if not deleted:
                    self.claims[key] = obj
                self._count_claim(key)
            elif kind == "ResourceClaimTemplate":
                self.templates.pop(_key(obj), None)
                if not deleted:
                    self.templates[_key(obj)] = obj
                self._state.generation += 1
            elif kind == "DeviceClass":
                self.classes.pop(str(_meta(obj).get("name", "")), None)
                if not deleted:
                    self.classes[str(_meta(obj).get("name", ""))] = obj
                self.class_table = dra.class_resources(self.classes.values())
                self._state.generation += 1

    def replace(self, kind: str, items: Iterable[KubeObject]) -> None:
        """A full list of one kind: that kind becomes exactly these (read in full first)."""
        items = list(items)
        with self._lock:
            if kind == "ResourceSlice":
                nodes = {dra.slice_node(o) for o in self.slices.values()}
                self.slices = {str(_meta(o).get("name", "")): o for o in items}
                self._pools_changed(nodes | {dra.slice_node(o) for o in items})
            elif kind == "ResourceClaim":
                old = set(self.claims)
                self.claims = {_key(o): o for o in items}
                for key in sorted(old | set(self.claims)):
                    self._count_claim(key)
            elif kind == "ResourceClaimTemplate":
                self.templates = {_key(o): o for o in items}
            elif kind == "DeviceClass":
                self.classes = {str(_meta(o).get("name", "")): o for o in items}
                self.class_table = dra.class_resources(self.classes.values())
            self._state.generation += 1

    # --- under the lock --------------------------------------------------------------------

    def _pools_changed(self, nodes: set[str]) -> None:
        """Reads the pools of ``nodes`` again; each node whose devices changed gets its pods'
        asks, its row and the claims on its pool counted again."""
        nodes.discard("")
        if not nodes:
            return
        complete, incomplete = dra.current_pools(s for s in self.slices.values() if dra.slice_node(s) in nodes)
        node_of = {str(dra._dict(dra._dict(s.get("spec")).get("pool")).get("name", "")): dra.slice_node(s)
                   for s in self.slices.values() if dra.slice_node(s) in nodes}
        for node in sorted(nodes):
            before = self.nodes.pop(node, None), self.errors.pop(node, None)
            pools = sorted(p for p in complete if node_of.get(p) == node)
            pending = sorted(why for p, why in incomplete.items() if node_of.get(p) == node)
            try:
                if len(pools) > 1:
                    raise dra.DraError(f"node {node}: {len(pools)} pools of {dra.DRIVER} ({', '.join(pools)}), expected one")
                if pools:
                    self.nodes[node] = dra.node_inventory(node, complete[pools[0]])
                elif pending:
                    self.errors[node] = f"not all {pending[0]} are there yet (is the DRA driver writing them?)"
            except dra.DraError as err:
                self.errors[node] = f"unreadable ResourceSlices: {err}"
            if (self.nodes.get(node), self.errors.get(node)) == before:
                continue
            self._by_pool = {nd.pool: nd for nd in self.nodes.values()}
            for rec in self._state.pods_on(node):
                if not rec.reserved and not rec.demand.uid.startswith(dra.CLAIM_UID_PREFIX):
                    self._state.put_pod(self.bound_demand(rec.demand))
            self.refresh_node(node)
            affected = {p.pool for p in before[:1] if p is not None} | {node} | set(pools)
            for key in sorted(self.claims):
                if self._claim_pools.get(key, affected) & affected:
                    self._count_claim(key)

    def _count_claim(self, key: str) -> None:
        """Replaces the records of claim ``key`` by what its allocation holds now; a share keeps
        its replica numbers while the claim holds it."""
        for uid in self._claim_records.pop(key, []):
            self._state.delete_pod(uid)
        self._claim_pools.pop(key, None)
        claim = self.claims.get(key)
        kept: set[str] = set()
        demands: list[PodDemand] = []
        if claim is not None:
            try:
                self._claim_pools[key] = {a.pool for a in dra.allocations(claim)}
                demands = dra.claim_demands(claim, self._by_pool, lambda node, device, share, n: self._replica(
                    node, device, f"{key}#{share}", n, kept))
            except dra.DraError:
                demands = []  # an allocation the API server would not write: nothing counted from it
        prefix = f"{key}#"
        for shares in self._replicas.values():
            for k in [k for k in shares if k.startswith(prefix) and k not in kept]:
                del shares[k]
        for d in demands:
            self._state.put_pod(d)
        if demands:
            self._claim_records[key] = [d.uid for d in demands]
        self._state.generation += 1

    def _replica(self, node: str, device: str, share: str, n: int, kept: set[str]) -> int:
        """The first of ``n`` consecutive replica numbers for a share of a device: the lowest
        free, given once and kept while the claim holds it."""
        kept.add(share)
        shares = self._replicas.setdefault((node, device), {})
        if share in shares:
            return shares[share][0]
        taken = {first + i for k, (first, count) in shares.items() for i in range(count)}
        first = 0
        while any(first + i in taken for i in range(n)):
            first += 1
        shares[share] = (first, n)
        return first
