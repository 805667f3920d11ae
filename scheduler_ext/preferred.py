"""The packing rule for one node, for the device plugin's GetPreferredAllocation.

When a pod carries no ``gpupack.io/devices`` annotation (the extender was down, or another
scheduler bound it), the plugin chooses by itself "with the same packing rules". This is
that rule as one call, through the same cache and kernel the extender uses: the node's
inventory becomes a one-row cache, the devices the kubelet does not offer are held, and the
kernel chooses among the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpupack import contract
from scheduler_ext import kernel
from scheduler_ext.cache import ClusterCache
from scheduler_ext.requests import ContainerAsk, PodDemand

_NODE = "local"


def preferred_devices(
    inventory: contract.Inventory,
    resource: str,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    memory_mib: int = 0,
    policy: str = kernel.DEFAULT_POLICY,
) -> list[str]:
    """``size`` device ids of ``resource`` from ``available`` (kubelet ids: UUIDs or share ids),
    ``must_include`` first, the rest chosen by the extender's kernel; fewer when they do not
    fit (the kubelet then falls back to its own choice)."""
    cache = ClusterCache(rows=1)
    node = {"metadata": {"name": _NODE, "annotations": {contract.INVENTORY_ANNOTATION: contract.encode_inventory(inventory)}}}
    cache.upsert_node(node)
    st = cache.node(_NODE)
    if st is None:
        return list(must_include)[:size]
    offered = set(available) | set(must_include)
    held: list[str] = []
    for s in st.slots:
        if s.resource != resource:
            continue
        ids = [s.device_id] if s.replicas <= 1 else [contract.share_id(s.device_id, r) for r in range(s.replicas)]
        held.extend(i for i in ids if i not in offered or i in must_include)
    holder = PodDemand("held", "", "held", _NODE, (ContainerAsk("c", resource, max(len(held), 1)),), memory_mib, 0, False,
                       {"c": {resource: held}})
    if held:
        cache.put_pod(holder)
    want = size - len(must_include)
    if want <= 0:
        return list(must_include)[:size]
    demand = PodDemand("want", "", "want", "", (ContainerAsk("c", resource, want),), memory_mib, 0, False, None)
    chosen = cache.assign(demand, _NODE, kernel.get_policy(policy))
    if chosen is None:
        return list(must_include)
    return list(must_include) + chosen["c"][resource]
