"""What a pod asks for: GPU resources per container and the memory hint, read from its JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

from gpupack import contract
from scheduler_ext.wire import KubeObject


@dataclasses.dataclass(frozen=True)
class ContainerAsk:
    """``count`` units of ``resource`` for one container."""

    container: str
    resource: str
    count: int


@dataclasses.dataclass(frozen=True)
class PodDemand:
    """The GPU side of one pod. ``error`` is set when the pod's GPU fields cannot be read."""

    uid: str
    namespace: str
    name: str
    node: str  # spec.nodeName, "" when not bound
    asks: tuple[ContainerAsk, ...]
    memory_mib: int  # per unit, from the gpupack.io/gpu-memory hint; 0 = none
    priority: int
    finished: bool  # phase Succeeded or Failed: holds nothing
    assignment: contract.Assignment | None  # the gpupack.io/devices annotation, when present
    error: str = ""

    @property
    def wants_gpu(self) -> bool:
        return bool(self.asks)

    def totals(self) -> dict[str, int]:
        """Units per resource over all containers."""
        out: dict[str, int] = {}
        for ask in self.asks:
            out[ask.resource] = out.get(ask.resource, 0) + ask.count
        return out


def _count(value: Any, where: str) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise contract.ContractError(f"{where}: {value!r} is not a whole number of devices")
    return int(text)


def _dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else {}


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def pod_demand(pod: KubeObject) -> PodDemand:
    """Reads a Pod object; never raises on bad GPU fields, it sets ``error`` instead."""
    meta = _dict(pod.get("metadata"))
    annotations = _dict(meta.get("annotations"))
    spec = _dict(pod.get("spec"))
    status = _dict(pod.get("status"))
    error = ""
    asks: list[ContainerAsk] = []
    containers = spec.get("containers")
    for c in containers if isinstance(containers, list) else []:
        if not isinstance(c, dict):
            continue
        res = _dict(c.get("resources"))
        wanted = dict(_dict(res.get("requests")))
        wanted.update(_dict(res.get("limits")))  # extended resources: limits decide
        for resource, value in sorted(wanted.items()):
            if isinstance(resource, str) and contract.is_gpu_resource(resource):
                try:
                    n = _count(value, f"container {c.get('name')!r} {resource}")
                except contract.ContractError as err:
                    error = str(err)
                    continue
                if n > 0:
                    asks.append(ContainerAsk(str(c.get("name", "")), resource, n))
    memory = 0
    hint = annotations.get(contract.GPU_MEMORY_ANNOTATION)
    if hint is not None:
        try:
            memory = contract.memory_mib(str(hint))
        except contract.ContractError as err:
            error = str(err)
    assignment = None
    raw = annotations.get(contract.DEVICES_ANNOTATION)
    if raw is not None:
        try:
            assignment = contract.decode_assignment(str(raw))
        except contract.ContractError as err:
            error = error or str(err)
    priority = spec.get("priority")
    return PodDemand(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "default")),
        name=str(meta.get("name", "")),
        node=str(spec.get("nodeName") or ""),
        asks=tuple(asks),
        memory_mib=memory,
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else 0,
        finished=_get(status, "phase") in ("Succeeded", "Failed"),
        assignment=assignment,
        error=error,
    )
