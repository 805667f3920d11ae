"""The packing rule for one node, for the device plugin's GetPreferredAllocation.

When a pod carries no ``gpupack.io/devices`` annotation (the extender was down, or another
scheduler bound it), the plugin chooses by itself "with the same packing rules". This is
that rule as one call, through the same cache and kernel the extender uses: the node's
inventory becomes a one-row cache, the devices the kubelet does not offer are held, and the
kernel chooses among the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from gpupack import contract
from scheduler_ext import kernel
from scheduler_ext.cache import ClusterCache
from scheduler_ext.requests import ContainerAsk, PodDemand

_NODE = "local"


class NodeChooser:
    """The packing rule for one node's inventory, built once and asked many times (the device
    plugin keeps one per inventory version: building the one-row cache is the costly part)."""

    def __init__(self, inventory: contract.Inventory, policy: str = kernel.DEFAULT_POLICY) -> None:
        self.cache = ClusterCache(rows=1)
        self.policy = kernel.get_policy(policy)
        node = {"metadata": {"name": _NODE, "annotations": {contract.INVENTORY_ANNOTATION: contract.encode_inventory(inventory)}}}
        self.cache.upsert_node(node)
        self._lock = threading.Lock()

    def choose(
        self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int, memory_mib: int = 0
    ) -> list[str]:
        """``size`` device ids of ``resource`` from ``available`` (kubelet ids: UUIDs or share
        ids), ``must_include`` first, the rest chosen by the extender's kernel; fewer when they
        do not fit (the kubelet then falls back to its own choice)."""
        st = self.cache.node(_NODE)
        if st is None:
            return list(must_include)[:size]
        want = size - len(must_include)
        if want <= 0:
            return list(must_include)[:size]
        offered = set(available) | set(must_include)
        held: list[str] = []
        for s in st.slots:
            if s.resource != resource:
                continue
            ids = [s.device_id] if s.replicas <= 1 else [contract.share_id(s.device_id, r) for r in range(s.replicas)]
            held.extend(i for i in ids if i not in offered or i in must_include)
        with self._lock:
            if held:
                holder = PodDemand("held", "", "held", _NODE, (ContainerAsk("c", resource, len(held)),), memory_mib, 0, False,
                                   {"c": {resource: held}})
                self.cache.put_pod(holder)
            demand = PodDemand("want", "", "want", "", (ContainerAsk("c", resource, want),), memory_mib, 0, False, None)
            try:
                chosen = self.cache.assign(demand, _NODE, self.policy)
            finally:
                self.cache.release("want")
                if held:
                    self.cache.delete_pod("held")
        if chosen is None:
            return list(must_include)
        return list(must_include) + chosen["c"][resource]


def preferred_devices(
    inventory: contract.Inventory,
    resource: str,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    memory_mib: int = 0,
    policy: str = kernel.DEFAULT_POLICY,
) -> list[str]:
    """One-off :meth:`NodeChooser.choose`."""
    return NodeChooser(inventory, policy).choose(resource, available, must_include, size, memory_mib)
