"""What a pod asks for: GPU resources per container and the memory hint, read from its JSON;
and its CPU and memory requests, for the fragmentation score.

Every number read is range-checked (:data:`MAX_DEVICES`, :data:`MAX_GPU_MEMORY_MIB`,
:data:`MAX_CPU_MILLI`, :data:`MAX_MEMORY_MIB`, int32 priorities): a pod beyond them gets
``error`` naming the field, never a value the kernel's int32/int64 arrays would wrap or a
loop would spin on. :func:`check_shape` refuses what Go's ``encoding/json`` would never
write for a ``v1.Pod`` (a ``metadata`` that is a string, a list of limits); the extender's
HTTP edge answers that with 400, while the watch, fed by the API server, only reads.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from fractions import Fraction
from typing import Any

from gpupack import contract
from gpupack.kernel import slots as kslots
from scheduler_ext.wire import KubeObject

#: Most units of one GPU resource one container, or one pod over its containers, may ask for.
#: The largest nodes today advertise 8 GPUs, 56 MIG slices (8 x 7) or a few hundred
#: time-sliced shares; 1024 is well above any of them, and a count above it is refused with
#: its field named rather than passed on (``"1000000000000000000"`` is a valid quantity).
MAX_DEVICES = 1024
#: Most distinct GPU resources one pod may ask for (each is a kernel pass over every node;
#: a real pod asks for one or two).
MAX_GPU_RESOURCES = 16
#: Largest ``gpupack.io/gpu-memory`` hint, MiB per unit: 16 TiB, sixty times today's largest
#: GPU (288 GB) and far below the kernel's int32 memory columns (2^31 - 1 MiB), where a larger
#: hint would wrap around.
MAX_GPU_MEMORY_MIB = 2**24
#: Largest CPU request of a pod (millicores) and memory request (MiB), summed over its
#: containers: below the kernel's int64 "not tracked" mark (2^62), so ``free - request``
#: never overflows. A single quantity beyond int64 in its own unit (millicores, bytes), as
#: Kubernetes' ``resource.Quantity`` holds them, is refused too.
MAX_CPU_MILLI = kslots.UNLIMITED - 1
MAX_MEMORY_MIB = kslots.UNLIMITED - 1
INT64_MAX = 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Longest quantity text read (``"1.5Gi"``); Kubernetes' own are a few characters, and the
#: exponent of a longer one (``1e999999999``) would cost unbounded time to expand.
MAX_QUANTITY_TEXT = 64
MAX_EXPONENT = 64


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerAsk:
    """``count`` units of ``resource`` for one container."""

    container: str
    resource: str
    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimRef:
    """One entry of a pod's ``spec.resourceClaims`` (Dynamic Resource Allocation): the pod's
    name for it and the ResourceClaim (``claim``) or ResourceClaimTemplate (``template``) it
    names; ``generated``: the claim made from the template for this pod, once
    ``status.resourceClaimStatuses`` names it. Read by :mod:`scheduler_ext.dra`."""

    name: str
    claim: str = ""
    template: str = ""
    generated: str = ""


#: Most ``spec.resourceClaims`` entries read from one pod (the API allows 32 today, as many as
#: a claim's requests); more is refused with the field named.
MAX_POD_CLAIMS = 32

#: One shared empty set: each ``frozenset()`` is a new object in CPython, 216 bytes, and the
#: cache keeps a demand per pod (150,000 pods: 30 MB).
NO_PINS: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True, slots=True)
class PodDemand:
    """The GPU side of one pod. ``error`` is set when a field it reads cannot be used (unreadable,
    or a number out of range): the first such field, named."""

    uid: str
    namespace: str
    name: str
    node: str  # spec.nodeName, or the node gpupack pinned it to (placed_node); "" when neither
    asks: tuple[ContainerAsk, ...]
    memory_mib: int  # per unit, from the gpupack.io/gpu-memory hint; 0 = none
    priority: int
    finished: bool  # phase Succeeded or Failed: holds nothing
    assignment: contract.Assignment | None  # the gpupack.io/devices annotation, when present
    error: str = ""
    cpu_milli: int = 0  # CPU request of the pod (what kube-scheduler counts), millicores
    node_memory_mib: int = 0  # memory request of the pod, MiB (rounded up)
    products: frozenset[str] = NO_PINS  # gpupack.io/gpu.product values it is pinned to; empty: any
    # DRA: the claims it names, not yet read into ``asks`` (:func:`scheduler_ext.dra.pod_demand`
    # reads them and empties this); and the claim kube-scheduler made for its extended
    # resources served by DRA (``status.extendedResourceClaimStatus``), "" when none
    claims: tuple[ClaimRef, ...] = ()
    extended_claim: str = ""

    @property
    def wants_gpu(self) -> bool:
        return bool(self.asks)

    def totals(self) -> dict[str, int]:
        """Units per resource over all containers."""
        out: dict[str, int] = {}
        for ask in self.asks:
            out[ask.resource] = out.get(ask.resource, 0) + ask.count
        return out

    @property
    def lead(self) -> str:
        """The resource with the most units (then the last by name): it leads the score and
        carries the pod's CPU and memory; every resource must fit. "" without GPUs."""
        totals = self.totals()
        return max(totals, key=lambda r: (totals[r], r)) if totals else ""


_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$")
_SUFFIX = {
    "": Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18), "Ki": Fraction(2**10), "Mi": Fraction(2**20),
    "Gi": Fraction(2**30), "Ti": Fraction(2**40), "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}


def quantity(value: Any) -> Fraction | None:
    """A Kubernetes quantity (``500m``, ``2``, ``1.5Gi``, ``1e9``) in base units; None when it
    cannot be read (also when longer than :data:`MAX_QUANTITY_TEXT` or with an exponent
    beyond :data:`MAX_EXPONENT`: no value that large or small is a real request)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return _quantity(str(value).strip())


@functools.lru_cache(maxsize=4096)  # pods repeat a few quantities, read on every filter and prioritize
def _quantity(text: str) -> Fraction | None:
    if len(text) > MAX_QUANTITY_TEXT or not text.isascii():
        return None
    m = _QUANTITY.match(text)
    if m is None:
        return None
    try:
        number = Fraction(m.group(1))
    except (ValueError, ZeroDivisionError):
        return None
    if m.group(2):
        exponent = int(m.group(2)[1:])
        if abs(exponent) > MAX_EXPONENT:
            return None
        return number * Fraction(10) ** exponent
    return number * _SUFFIX[m.group(3) or ""]


def _cpu(q: Fraction) -> int:
    return -int(-q * 1000 // 1)


def _mib(q: Fraction) -> int:
    return -int(-q // 2**20)


def cpu_milli(value: Any) -> int:
    """A CPU quantity in millicores (rounded up, as kube-scheduler counts it); 0 when
    unreadable or negative, at most :data:`MAX_CPU_MILLI` (a node's allocatable is read here
    too, into the kernel's int64 columns)."""
    q = quantity(value)
    return min(max(_cpu(q), 0), MAX_CPU_MILLI) if q is not None else 0


def memory_mib(value: Any) -> int:
    """A memory quantity in MiB (rounded up); 0 when unreadable or negative, at most
    :data:`MAX_MEMORY_MIB`."""
    q = quantity(value)
    return min(max(_mib(q), 0), MAX_MEMORY_MIB) if q is not None else 0


def _checked(value: Any, where: str, cpu: bool) -> tuple[int, str]:
    """``(millicores or MiB, "")`` of one quantity of a pod, or ``(0, why)`` when it cannot be
    read, is negative, or is beyond int64 in Kubernetes' own unit (millicores, bytes)."""
    q = quantity(value)
    if q is None:
        return 0, f"{where}: {_short(value)} is not a quantity"
    if q < 0:
        return 0, f"{where}: {_short(value)} is negative"
    if (q * 1000 if cpu else q) > INT64_MAX:
        return 0, f"{where}: {_short(value)} is beyond int64 {'millicores' if cpu else 'bytes'}"
    return (_cpu(q) if cpu else _mib(q)), ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _requests(c: Any, where: str, errors: list[str]) -> tuple[int, int]:
    """``(cpu millicores, memory MiB)`` one container requests (its limits where it states no
    request, as the API server defaults them); what cannot be used goes to ``errors``."""
    res = _dict(_dict(c).get("resources"))
    limits, requests = _dict(res.get("limits")), _dict(res.get("requests"))
    out = []
    for name, cpu in (("cpu", True), ("memory", False)):
        key = "requests" if name in requests else "limits"
        value = requests.get(name, limits.get(name))
        if value is None:
            out.append(0)
            continue
        got, error = _checked(value, f"{where} {key}.{name}", cpu)
        if error:
            errors.append(error)
        out.append(got)
    return out[0], out[1]


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


def pinned_to(spec: dict[str, Any]) -> frozenset[str] | None:
    """The node names a pod's required node affinity allows by ``metadata.name In`` fields in
    every term (the terms are ORed: the union), or None when some term names none."""
    required = _dict(_dict(_dict(spec.get("affinity")).get("nodeAffinity")).get(
        "requiredDuringSchedulingIgnoredDuringExecution"))
    terms = required.get("nodeSelectorTerms")
    if not isinstance(terms, list) or not terms:
        return None
    union: set[str] = set()
    for term in terms:
        names = [v for f in (_dict(term).get("matchFields") or []) if isinstance(f, dict)
                 and f.get("key") == "metadata.name" and f.get("operator") == "In"
                 for v in (f.get("values") or []) if isinstance(v, str)]
        if not names:
            return None
        union.update(names)
    return frozenset(union)


def placed_node(spec: dict[str, Any], annotations: dict[str, Any]) -> str:
    """The node gpupack's placement controller pinned this unbound pod to, or "": its
    ``gpupack.io/placed-on`` annotation, believed only when the pod's required node affinity
    allows that node alone (so kube-scheduler can put it nowhere else: an annotation written
    by anyone else on a free-to-go pod reserves nothing)."""
    node = annotations.get(contract.PLACED_ANNOTATION)
    if not isinstance(node, str) or not node or spec.get("nodeName"):
        return ""
    return node if pinned_to(spec) == frozenset({node}) else ""


def pod_requests(spec: dict[str, Any]) -> tuple[int, int]:
    """``(cpu millicores, memory MiB)`` of a pod as kube-scheduler counts them: the sum over
    its containers, or the largest init container when that is larger, plus ``overhead``.
    (Restartable init containers, sidecars, are counted like the others: a close bound.)
    Quantities that cannot be used count 0 (:func:`pod_demand` says why)."""
    return _pod_requests(spec, [])


def _pod_requests(spec: dict[str, Any], errors: list[str]) -> tuple[int, int]:
    containers = spec.get("containers")
    inits = spec.get("initContainers")
    run = [_requests(c, f"container {_name(c)}", errors) for c in (containers if isinstance(containers, list) else [])]
    init = [_requests(c, f"init container {_name(c)}", errors) for c in (inits if isinstance(inits, list) else [])]
    cpu = max(sum(c for c, _ in run), max((c for c, _ in init), default=0))
    mem = max(sum(m for _, m in run), max((m for _, m in init), default=0))
    over = _dict(spec.get("overhead"))
    for name, cpu_field in (("cpu", True), ("memory", False)):
        if over.get(name) is not None:
            got, error = _checked(over[name], f"overhead.{name}", cpu_field)
            if error:
                errors.append(error)
            if cpu_field:
                cpu += got
            else:
                mem += got
    if cpu > MAX_CPU_MILLI:
        errors.append(f"CPU requests sum to {cpu} millicores, more than {MAX_CPU_MILLI}")
        cpu = 0
    if mem > MAX_MEMORY_MIB:
        errors.append(f"memory requests sum to {mem} MiB, more than {MAX_MEMORY_MIB}")
        mem = 0
    return cpu, mem


def _name(c: Any) -> str:
    return repr(_dict(c).get("name"))


def _count(value: Any, where: str) -> int:
    """A whole number of devices, 0..:data:`MAX_DEVICES` (ASCII digits only: ``"²"`` is a
    digit to ``str.isdigit`` but not to ``int``; a JSON number is read as its text)."""
    if isinstance(value, bool):
        raise contract.ContractError(f"{where}: {value!r} is not a whole number of devices")
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()):
        raise contract.ContractError(f"{where}: {_short(value)} is not a whole number of devices")
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(MAX_DEVICES)) or int(digits) > MAX_DEVICES:  # int() of 5,000 digits raises
        raise contract.ContractError(f"{where}: {_short(value)} is more than {MAX_DEVICES} devices")
    return int(digits)


def _dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else {}


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _interned(assignment: contract.Assignment) -> contract.Assignment:
    """The assignment with its container and resource names shared with every other pod's."""
    return {sys.intern(c): {sys.intern(r): ids for r, ids in resources.items()} for c, resources in assignment.items()}


def pod_demand(pod: KubeObject) -> PodDemand:
    """Reads a Pod object; never raises on bad fields, it sets ``error`` (the first field that
    cannot be used, named) instead."""
    meta = _dict(pod.get("metadata"))
    annotations = _dict(meta.get("annotations"))
    spec = _dict(pod.get("spec"))
    status = _dict(pod.get("status"))
    errors: list[str] = []
    asks: list[ContainerAsk] = []
    totals: dict[str, int] = {}
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
                    errors.append(str(err))
                    continue
                if n > 0:
                    asks.append(ContainerAsk(sys.intern(str(c.get("name", ""))), sys.intern(resource), n))
                    totals[resource] = totals.get(resource, 0) + n
    for resource, total in sorted(totals.items()):
        if total > MAX_DEVICES:
            errors.append(f"{resource}: {total} over the pod's containers, more than {MAX_DEVICES} devices")
    if len(totals) > MAX_GPU_RESOURCES:
        errors.append(f"{len(totals)} GPU resources asked for, more than {MAX_GPU_RESOURCES}")
    memory = 0
    hint = annotations.get(contract.GPU_MEMORY_ANNOTATION)
    if hint is not None:
        try:
            if len(str(hint)) > MAX_QUANTITY_TEXT:
                raise ValueError("too long")
            memory = contract.memory_mib(str(hint))
        except contract.ContractError as err:
            errors.append(str(err))
        except (ValueError, OverflowError):  # a number of 400 digits reads as inf, then nan
            errors.append(f"{contract.GPU_MEMORY_ANNOTATION}: {_short(hint)} is not a memory quantity like '10Gi'")
        if memory > MAX_GPU_MEMORY_MIB:
            errors.append(f"{contract.GPU_MEMORY_ANNOTATION}: {_short(hint)} is more than {MAX_GPU_MEMORY_MIB} MiB per unit")
            memory = 0
    assignment = None
    raw = annotations.get(contract.DEVICES_ANNOTATION)
    if raw is not None:
        try:
            assignment = _interned(contract.decode_assignment(str(raw)))
        except contract.ContractError as err:
            errors.append(str(err))
    priority = spec.get("priority")
    if not isinstance(priority, int) or isinstance(priority, bool):
        priority = 0
    elif not INT32_MIN <= priority <= INT32_MAX:
        errors.append(f"spec.priority: {priority} is outside int32")
        priority = 0
    cpu, mem = _pod_requests(spec, errors)
    claims = pod_claims(spec, status, errors)
    extended = _get(status, "extendedResourceClaimStatus", "resourceClaimName")
    return PodDemand(
        uid=str(meta.get("uid", "")),
        namespace=sys.intern(str(meta.get("namespace", "default"))),
        name=str(meta.get("name", "")),
        node=sys.intern(str(spec.get("nodeName") or "") or placed_node(spec, annotations)),
        asks=tuple(asks),
        memory_mib=memory,
        priority=priority,
        finished=_get(status, "phase") in ("Succeeded", "Failed"),
        assignment=assignment,
        error=errors[0] if errors else "",
        cpu_milli=cpu,
        node_memory_mib=mem,
        products=pinned_products(spec),
        claims=claims,
        extended_claim=extended if isinstance(extended, str) else "",
    )


def pod_claims(spec: dict[str, Any], status: dict[str, Any], errors: list[str] | None = None) -> tuple[ClaimRef, ...]:
    """The pod's ``spec.resourceClaims`` (DRA) with the claim names its status gives the
    generated ones; entries that cannot be used go to ``errors``, naming the field."""
    errors = errors if errors is not None else []
    listed = spec.get("resourceClaims")
    if not isinstance(listed, list) or not listed:
        return ()
    if len(listed) > MAX_POD_CLAIMS:
        errors.append(f"spec.resourceClaims: {len(listed)} entries, more than {MAX_POD_CLAIMS}")
        return ()
    generated: dict[str, str] = {}
    for st in status.get("resourceClaimStatuses") or []:
        if isinstance(st, dict) and isinstance(st.get("name"), str) and isinstance(st.get("resourceClaimName"), str):
            generated[st["name"]] = st["resourceClaimName"]
    out: list[ClaimRef] = []
    for i, entry in enumerate(listed):
        where = f"spec.resourceClaims[{i}]"
        name = _dict(entry).get("name")
        claim = _dict(entry).get("resourceClaimName") or ""
        template = _dict(entry).get("resourceClaimTemplateName") or ""
        if not isinstance(name, str) or not name:
            errors.append(f"{where}.name: expected the claim's name in the pod")
            continue
        if not isinstance(claim, str) or not isinstance(template, str) or bool(claim) == bool(template):
            errors.append(f"{where}: expected exactly one of resourceClaimName and resourceClaimTemplateName")
            continue
        out.append(ClaimRef(name, claim, template, generated.get(name, "")))
    return tuple(out)


class ShapeError(ValueError):
    """A Pod whose JSON is not a ``v1.Pod``'s where it is read; the message names the field."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__)


def _field(obj: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ShapeError(f"{where}.{key}: expected {what}, got {_kind(value)}")
    return value


def _object_at(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    found: dict[str, Any] | None = _field(obj, key, where, dict, "an object")
    return found if found is not None else {}


def _objects_at(obj: dict[str, Any], key: str, where: str) -> list[tuple[str, dict[str, Any]]]:
    items: list[Any] | None = _field(obj, key, where, list, "a list")
    out = []
    for i, item in enumerate(items or []):
        if not isinstance(item, dict):
            raise ShapeError(f"{where}.{key}[{i}]: expected an object, got {_kind(item)}")
        out.append((f"{where}.{key}[{i}]", item))
    return out


def _strings_in(obj: dict[str, Any], where: str) -> None:
    for k, v in obj.items():
        if not isinstance(v, str):
            raise ShapeError(f"{where}[{k!r}]: expected a string, got {_kind(v)}")


def _quantities_in(obj: dict[str, Any], where: str) -> None:
    for k, v in obj.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (str, int, float))):
            raise ShapeError(f"{where}[{k!r}]: expected a quantity (a string), got {_kind(v)}")


def check_shape(pod: Any) -> None:
    """Raises :class:`ShapeError` when a field this module reads has a JSON type that Go's
    ``encoding/json`` never writes for a ``v1.Pod`` (``metadata`` a string, ``containers`` an
    object, an annotation a number). Null or absent is accepted everywhere, as Go omits or
    nulls empty fields; values are judged by :func:`pod_demand`, not here."""
    if not isinstance(pod, dict):
        raise ShapeError(f"Pod: expected an object, got {_kind(pod)}")
    meta = _object_at(pod, "metadata", "Pod")
    for key in ("uid", "name", "namespace"):
        _field(meta, key, "Pod.metadata", str, "a string")
    _strings_in(_object_at(meta, "annotations", "Pod.metadata"), "Pod.metadata.annotations")
    spec = _object_at(pod, "spec", "Pod")
    for key in ("containers", "initContainers"):
        for where, c in _objects_at(spec, key, "Pod.spec"):
            _field(c, "name", where, str, "a string")
            res = _object_at(c, "resources", where)
            for part in ("limits", "requests"):
                _quantities_in(_object_at(res, part, f"{where}.resources"), f"{where}.resources.{part}")
    _quantities_in(_object_at(spec, "overhead", "Pod.spec"), "Pod.spec.overhead")
    _field(spec, "priority", "Pod.spec", int, "an integer")
    _field(spec, "nodeName", "Pod.spec", str, "a string")
    _strings_in(_object_at(spec, "nodeSelector", "Pod.spec"), "Pod.spec.nodeSelector")
    where = "Pod.spec.affinity.nodeAffinity"
    node_affinity = _object_at(_object_at(spec, "affinity", "Pod.spec"), "nodeAffinity", "Pod.spec.affinity")
    required = _object_at(node_affinity, "requiredDuringSchedulingIgnoredDuringExecution", where)
    for term_at, term in _objects_at(required, "nodeSelectorTerms", f"{where}.requiredDuringSchedulingIgnoredDuringExecution"):
        for expr_at, expr in _objects_at(term, "matchExpressions", term_at):
            _field(expr, "key", expr_at, str, "a string")
            _field(expr, "operator", expr_at, str, "a string")
            for i, v in enumerate(_field(expr, "values", expr_at, list, "a list") or []):
                if not isinstance(v, str):
                    raise ShapeError(f"{expr_at}.values[{i}]: expected a string, got {_kind(v)}")
    _field(_object_at(pod, "status", "Pod"), "phase", "Pod.status", str, "a string")
