"""What a pod asks for: GPU resources per container and the memory hint, read from its JSON;
and its CPU and memory requests, for the fragmentation score."""

from __future__ import annotations

import dataclasses
import functools
import re
from fractions import Fraction
from typing import Any

from gpupack import contract
from scheduler_ext.wire import KubeObject


@dataclasses.dataclass(frozen=True)
class ContainerAsk:
    """``count`` units of ``resource`` for one container."""

    container: str
    resource: str
    count: int


#: One shared empty set: each ``frozenset()`` is a new object in CPython, 216 bytes, and the
#: cache keeps a demand per pod (150,000 pods: 30 MB).
NO_PINS: frozenset[str] = frozenset()


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
    cpu_milli: int = 0  # CPU request of the pod (what kube-scheduler counts), millicores
    node_memory_mib: int = 0  # memory request of the pod, MiB (rounded up)
    products: frozenset[str] = NO_PINS  # gpupack.io/gpu.product values it is pinned to; empty: any

    @property
    def wants_gpu(self) -> bool:
        return bool(self.asks)

    def totals(self) -> dict[str, int]:
        """Units per resource over all containers."""
        out: dict[str, int] = {}
        for ask in self.asks:
            out[ask.resource] = out.get(ask.resource, 0) + ask.count
        return out


_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$")
_SUFFIX = {
    "": Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18), "Ki": Fraction(2**10), "Mi": Fraction(2**20),
    "Gi": Fraction(2**30), "Ti": Fraction(2**40), "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}


def quantity(value: Any) -> Fraction | None:
    """A Kubernetes quantity (``500m``, ``2``, ``1.5Gi``, ``1e9``) in base units; None when it
    cannot be read."""
    return _quantity(str(value).strip())


@functools.lru_cache(maxsize=4096)  # pods repeat a few quantities, read on every filter and prioritize
def _quantity(text: str) -> Fraction | None:
    m = _QUANTITY.match(text)
    if m is None:
        return None
    try:
        number = Fraction(m.group(1))
    except (ValueError, ZeroDivisionError):
        return None
    if m.group(2):
        return number * Fraction(10) ** int(m.group(2)[1:])
    return number * _SUFFIX[m.group(3) or ""]


def cpu_milli(value: Any) -> int:
    """A CPU quantity in millicores (rounded up, as kube-scheduler counts it); 0 when unreadable."""
    q = quantity(value)
    return max(-int(-q * 1000 // 1), 0) if q is not None else 0


def memory_mib(value: Any) -> int:
    """A memory quantity in MiB (rounded up); 0 when unreadable."""
    q = quantity(value)
    return max(-int(-q // 2**20), 0) if q is not None else 0


def _requests(c: Any) -> tuple[int, int]:
    """``(cpu millicores, memory MiB)`` one container requests (its limits where it states no
    request, as the API server defaults them)."""
    res = _dict(_dict(c).get("resources"))
    asked = {**_dict(res.get("limits")), **_dict(res.get("requests"))}
    return cpu_milli(asked.get("cpu", 0)), memory_mib(asked.get("memory", 0))


def pinned_products(spec: dict[str, Any]) -> frozenset[str]:
    """The GPU products (``gpupack.io/gpu.product`` label values) a pod may run on, from its
    ``nodeSelector`` and its required node affinity; empty when it names none. The affinity's
    terms are ORed, so it pins only when every term has an ``In`` on the label (the union of
    their values); the selector and the affinity both apply (their intersection). Anything
    else (``NotIn``, other keys) is left to kube-scheduler's NodeAffinity filter."""
    sets: list[frozenset[str]] = []
    selected = _dict(spec.get("nodeSelector")).get(contract.LABEL_PRODUCT)
    if isinstance(selected, str):
        sets.append(frozenset({selected}))
    required = _dict(_dict(_dict(spec.get("affinity")).get("nodeAffinity")).get(
        "requiredDuringSchedulingIgnoredDuringExecution"))
    terms = required.get("nodeSelectorTerms")
    if isinstance(terms, list) and terms:
        union: set[str] = set()
        for term in terms:
            values = [v for e in (_dict(term).get("matchExpressions") or []) if isinstance(e, dict)
                      and e.get("key") == contract.LABEL_PRODUCT and e.get("operator") == "In"
                      for v in (e.get("values") or []) if isinstance(v, str)]
            if not values:
                union = set()
                break
            union.update(values)
        if union:
            sets.append(frozenset(union))
    if not sets:
        return NO_PINS
    out = sets[0]
    for more in sets[1:]:
        out &= more
    return out or frozenset({""})  # pinned to nothing that exists: no node has the label ""


def pod_requests(spec: dict[str, Any]) -> tuple[int, int]:
    """``(cpu millicores, memory MiB)`` of a pod as kube-scheduler counts them: the sum over
    its containers, or the largest init container when that is larger, plus ``overhead``.
    (Restartable init containers, sidecars, are counted like the others: a close bound.)"""
    containers = spec.get("containers")
    inits = spec.get("initContainers")
    run = [_requests(c) for c in (containers if isinstance(containers, list) else [])]
    init = [_requests(c) for c in (inits if isinstance(inits, list) else [])]
    cpu = max(sum(c for c, _ in run), max((c for c, _ in init), default=0))
    mem = max(sum(m for _, m in run), max((m for _, m in init), default=0))
    over = _dict(spec.get("overhead"))
    return cpu + cpu_milli(over.get("cpu", 0)), mem + memory_mib(over.get("memory", 0))


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
    cpu, mem = pod_requests(spec)
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
        cpu_milli=cpu,
        node_memory_mib=mem,
        products=pinned_products(spec),
    )
