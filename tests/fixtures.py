"""Builders of Node and Pod JSON as the API server serves them, for the extender's tests."""

from __future__ import annotations

from typing import Any

from gpupack import contract

A100 = "NVIDIA A100-SXM4-40GB"
A100_MIB = 40960


def gpu(node: str, i: int, *, resource: str = contract.NVIDIA_GPU, replicas: int = 1, healthy: bool = True,
        memory: int = A100_MIB, numa: int = 0, links: tuple[int, ...] = (), vendor: contract.Vendor = "nvidia",
        mig: tuple[contract.MigDevice, ...] = (), model: str = A100) -> contract.Gpu:
    return contract.Gpu(
        id=f"GPU-{node}-{i}", index=i, vendor=vendor, model=model, memory_mib=memory, numa_node=numa,
        healthy=healthy, mig_enabled=bool(mig), mig=mig,
        links=tuple(contract.Link(p, 12) for p in links), resource=resource if not mig else "",
        replicas=replicas,
    )


def node(name: str, gpus: list[contract.Gpu] | None = None, n: int = 0, **kw: Any) -> dict[str, Any]:
    gs = gpus if gpus is not None else [gpu(name, i, **kw) for i in range(n)]
    ann = {contract.INVENTORY_ANNOTATION: contract.encode_inventory(contract.Inventory(name, tuple(gs)))} if gs or n else {}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": ann, "resourceVersion": "1"},
            "spec": {}, "status": {"nodeInfo": {}}}


def pod(name: str, *, gpus: dict[str, int] | None = None, node: str = "", uid: str = "", devices: contract.Assignment | None = None,
        memory: str = "", phase: str = "Pending", priority: int = 0, namespace: str = "default",
        containers: int = 1) -> dict[str, Any]:
    ann: dict[str, str] = {}
    if devices is not None:
        ann[contract.DEVICES_ANNOTATION] = contract.encode_assignment(devices)
    if memory:
        ann[contract.GPU_MEMORY_ANNOTATION] = memory
    limits = {r: str(n) for r, n in (gpus or {}).items()}
    cs = [{"name": f"c{i}", "image": "x", "resources": {"limits": dict(limits), "requests": dict(limits)}}
          for i in range(containers)]
    spec: dict[str, Any] = {"containers": cs, "priority": priority, "schedulerName": "default-scheduler"}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}", "annotations": ann,
                         "resourceVersion": "1"},
            "spec": spec, "status": {"phase": phase}}
