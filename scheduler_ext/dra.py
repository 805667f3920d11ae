"""Dynamic Resource Allocation read into the extender's terms: slices -> inventory, claims ->
usage, a pod's claims -> its demand. Pure: JSON dicts (``resource.k8s.io/v1``) in, contract
types and :class:`~scheduler_ext.podspec.PodDemand` out; no I/O, no lock.

One code path scores both kinds of node: a node's ResourceSlices of driver ``gpu.gpupack.io``
become the same :class:`gpupack.contract.Inventory` its ``gpupack.io/inventory`` annotation
would hold in device-plugin mode (:func:`node_inventory`), so :func:`gpupack.node_slots.inventory_slots`
makes the kernel row either way. What a device is for the kernel follows the DeviceClasses of
``deploy/dra/deviceclasses.yaml`` (their selectors read the attributes below):

- ``type=gpu``, not ``migEnabled``, not ``shared``: ``nvidia.com/gpu`` (``amd.com/gpu``,
  ``gpu.intel.com/i915``, ``gpu.intel.com/xe`` by vendor and ``kernelDriver``);
- ``shared`` (``allowMultipleAllocations``): ``nvidia.com/gpu.shared``, as many replicas as
  its ``shares`` capacity;
- ``type=mig``: ``nvidia.com/mig-<profile>``; its GPU (``migEnabled``) is no kernel column:
  the ``gpu-mig-mode.gpupack.io`` class, the whole GPU in MIG mode, is left to kube-scheduler;
- a device with a ``NoSchedule`` or ``NoExecute`` taint is unhealthy.

Only the newest generation of a pool counts, and only once all its ``resourceSliceCount``
slices are there (kube-scheduler's allocator skips an incomplete pool the same way).

Where the devices are in use is the claims' ``status.allocation.devices.results`` (every
allocated claim, as kube-scheduler's allocator counts them, reserved or not): :func:`allocations`.

The names are the driver's, from :mod:`gpupack.dra_names` (the contract of DRA mode).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gpupack import contract, dra_names
from scheduler_ext import podspec
from scheduler_ext.podspec import ClaimRef, ContainerAsk, PodDemand

DRIVER = dra_names.DRIVER
API_VERSION = dra_names.API_VERSION
TYPE, VENDOR, PRODUCT, UUID = dra_names.TYPE, dra_names.VENDOR, dra_names.PRODUCT, dra_names.UUID
INDEX, PCI_BUS_ID, NUMA, NVLINK_GROUP = dra_names.INDEX, dra_names.PCI_BUS_ID, dra_names.NUMA, dra_names.NVLINK_GROUP
KERNEL_DRIVER, MIG_ENABLED, MIG_PROFILE = dra_names.KERNEL_DRIVER, dra_names.MIG_ENABLED, dra_names.MIG_PROFILE
PARENT_UUID, SHARED, MEMORY, SHARES = dra_names.PARENT_UUID, dra_names.SHARED, dra_names.MEMORY, dra_names.SHARES
#: Taint effects that keep new claims off a device (``NoExecute`` also evicts).
BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})

#: Bounds of what is read (the API's own: 128 devices a slice, 32 requests a claim, 32
#: results an allocation, 8 subrequests; 256 slices a pool is far beyond any GPU node).
MAX_SLICES_PER_POOL = 256
MAX_DEVICES_PER_SLICE = 128
MAX_REQUESTS = 32
MAX_RESULTS = 32
MAX_SUBREQUESTS = 8

#: The class that names any MIG device: its profile comes from the claim's own selector
#: (``device.attributes["gpu.gpupack.io"].migProfile == "3g.20gb"``).
ANY_MIG = "mig:"
_PROFILE_IN_CEL = re.compile(r'migProfile\s*==\s*"([^"]+)"')
_MIG_NAME = re.compile(r"^gpu-[0-9]+-mig-(?P<start>[0-9]+)-")
_MEMORY_SLICE = re.compile(r"^memory-slice-(?P<n>[0-9]+)$")
#: The uid prefix of the records that stand for a claim's allocated devices in the cache.
CLAIM_UID_PREFIX = "dra-claim/"


class DraError(contract.ContractError):
    """A DRA object the extender cannot read; the message names the field."""


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """A published device as a kernel column: its device id (GPU or MIG UUID), resource and replicas."""

    device_id: str
    resource: str
    replicas: int = 1


@dataclasses.dataclass(frozen=True)
class NodeDevices:
    """A node's pool as the extender sees it: the inventory and, by device name, the columns."""

    node: str
    pool: str
    inventory: contract.Inventory
    devices: Mapping[str, DeviceInfo]


@dataclasses.dataclass(frozen=True)
class Allocated:
    """One allocated device of a claim: ``pool``/``device`` as the slices name it; ``share``:
    the shareID of a device allocated to several claims ("" otherwise); ``shares``: how many
    of its replicas it takes; ``memory_mib``: the memory it consumes (0: not said)."""

    request: str
    pool: str
    device: str
    share: str = ""
    shares: int = 1
    memory_mib: int = 0


@dataclasses.dataclass(frozen=True)
class ClaimAsk:
    """What one request of a claim asks: ``count`` units of ``resource``, ``memory_mib`` each (0: the default)."""

    request: str
    resource: str
    count: int
    memory_mib: int = 0


# --- small readers ---------------------------------------------------------------------------


def _dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else {}


def _list(obj: Any, where: str, most: int) -> list[Any]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise DraError(f"{where}: expected a list")
    if len(obj) > most:
        raise DraError(f"{where}: {len(obj)} entries, more than {most}")
    return obj


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise DraError(f"{where}.{key}: expected a non-empty string")
    return value


def _int(value: Any, where: str, low: int = 0, high: int = contract.INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DraError(f"{where}: expected a whole number in {low}..{high}, got {podspec._short(value)}")
    return value


def quantity_mib(value: Any, where: str) -> int:
    """A memory quantity (``40Gi``) in MiB, rounded up; at most :data:`podspec.MAX_GPU_MEMORY_MIB`."""
    q = podspec.quantity(value)
    if q is None or q < 0:
        raise DraError(f"{where}: {podspec._short(value)} is not a memory quantity like '10Gi'")
    mib = -int(-q // 2**20)
    if mib > podspec.MAX_GPU_MEMORY_MIB:
        raise DraError(f"{where}: {podspec._short(value)} is more than {podspec.MAX_GPU_MEMORY_MIB} MiB")
    return mib


def _count_of(value: Any, where: str) -> int:
    """A count quantity (``"4"``), 0..:data:`podspec.MAX_DEVICES`."""
    q = podspec.quantity(value)
    if q is None or q < 0 or q.denominator != 1 or q > podspec.MAX_DEVICES:
        raise DraError(f"{where}: {podspec._short(value)} is not a whole number up to {podspec.MAX_DEVICES}")
    return int(q)


def _attr(attrs: Mapping[str, Any], name: str, kind: str) -> Any:
    value = _dict(attrs.get(name)).get(kind)
    return value


# --- slices -> inventory ---------------------------------------------------------------------


def current_pools(slices: Iterable[Mapping[str, Any]]) -> tuple[dict[str, list[Mapping[str, Any]]], dict[str, str]]:
    """Our driver's slices by pool, newest generation only: ``(complete pools, incomplete
    pools with why)``. Slices of other drivers are skipped."""
    newest: dict[str, list[Mapping[str, Any]]] = {}
    gen_of: dict[str, int] = {}
    for s in slices:
        spec = _dict(s.get("spec"))
        if spec.get("driver") != DRIVER:
            continue
        pool = _dict(spec.get("pool"))
        name = pool.get("name")
        generation = pool.get("generation", 0)
        if not isinstance(name, str) or isinstance(generation, bool) or not isinstance(generation, int):
            continue
        if name not in gen_of or generation > gen_of[name]:
            gen_of[name], newest[name] = generation, []
        if generation == gen_of[name]:
            newest[name].append(s)
    complete: dict[str, list[Mapping[str, Any]]] = {}
    incomplete: dict[str, str] = {}
    for name, members in newest.items():
        want = _dict(_dict(members[0].get("spec")).get("pool")).get("resourceSliceCount")
        if isinstance(want, int) and not isinstance(want, bool) and len(members) == want:
            complete[name] = sorted(members, key=lambda s: str(_dict(s.get("metadata")).get("name", "")))
        else:
            incomplete[name] = f"ResourceSlices of pool {name} generation {gen_of[name]}: {len(members)} of {want}"
    return complete, incomplete


def _resource_of(attrs: Mapping[str, Any], vendor: str) -> str:
    """The extended resource name of the shipped DeviceClass that selects a ``type=gpu`` device."""
    if vendor == "amd":
        return contract.AMD_GPU
    if vendor == "intel":
        return contract.INTEL_XE if _attr(attrs, KERNEL_DRIVER, "string") == "xe" else contract.INTEL_I915
    if _attr(attrs, MIG_ENABLED, "bool"):
        return ""
    return contract.NVIDIA_GPU_SHARED if _attr(attrs, SHARED, "bool") else contract.NVIDIA_GPU


def _healthy(device: Mapping[str, Any], where: str) -> bool:
    for i, t in enumerate(_list(device.get("taints"), f"{where}.taints", 16)):
        if _dict(t).get("effect") in BLOCKING_EFFECTS:
            return False
    return True


def node_inventory(node: str, slices: Sequence[Mapping[str, Any]]) -> NodeDevices:
    """The inventory a pool's slices publish (one complete generation, as :func:`current_pools`
    gives it): the same :class:`~gpupack.contract.Inventory` the device plugin's annotation
    holds for the node. Raises :class:`DraError` naming the slice and field."""
    if len(slices) > MAX_SLICES_PER_POOL:
        raise DraError(f"node {node}: {len(slices)} ResourceSlices, more than {MAX_SLICES_PER_POOL}")
    gpus: dict[str, dict[str, Any]] = {}  # uuid -> Gpu fields
    migs: list[tuple[str, contract.MigDevice, str]] = []  # (parent uuid, mig, device name)
    groups: dict[str, int] = {}
    devices: dict[str, DeviceInfo] = {}
    pool = ""
    for s in slices:
        sname = str(_dict(s.get("metadata")).get("name", "?"))
        spec = _dict(s.get("spec"))
        pool = str(_dict(spec.get("pool")).get("name", ""))
        for j, d in enumerate(_list(spec.get("devices"), f"ResourceSlice {sname}: spec.devices", MAX_DEVICES_PER_SLICE)):
            where = f"ResourceSlice {sname}: spec.devices[{j}]"
            if not isinstance(d, dict):
                raise DraError(f"{where}: expected an object")
            name = _str(d, "name", where)
            attrs = _dict(d.get("attributes"))
            capacity = _dict(d.get("capacity"))
            uuid = _attr(attrs, UUID, "string")
            if not isinstance(uuid, str) or not uuid:
                raise DraError(f"{where}.attributes[{UUID!r}]: expected a string")
            memory = capacity.get(MEMORY)
            mib = quantity_mib(_dict(memory).get("value"), f"{where}.capacity[{MEMORY!r}].value") if memory else 0
            healthy = _healthy(d, where)
            kind = _attr(attrs, TYPE, "string")
            if kind == "mig":
                profile = _attr(attrs, MIG_PROFILE, "string")
                parent = _attr(attrs, PARENT_UUID, "string")
                if not isinstance(profile, str) or not isinstance(parent, str):
                    raise DraError(f"{where}.attributes: a MIG device needs {MIG_PROFILE} and {PARENT_UUID}")
                try:
                    resource = contract.mig_resource(profile)
                except contract.ContractError as err:
                    raise DraError(f"{where}.attributes[{MIG_PROFILE!r}]: {err}") from err
                slices_used = sorted(int(hit["n"]) for c in _list(d.get("consumesCounters"), f"{where}.consumesCounters", 8)
                                     for k in _dict(_dict(c).get("counters")) if (hit := _MEMORY_SLICE.match(k)))
                at = _MIG_NAME.match(name)
                start = slices_used[0] if slices_used else int(at["start"]) if at else 0
                migs.append((parent, contract.MigDevice(uuid, profile, start, len(slices_used), mib, healthy, resource), name))
                devices[name] = DeviceInfo(uuid, resource)
                continue
            if kind != "gpu":
                continue  # a type this extender does not know: not scored
            vendor = _attr(attrs, VENDOR, "string")
            if vendor not in contract.VENDORS:
                raise DraError(f"{where}.attributes[{VENDOR!r}]: {podspec._short(vendor)} is not one of "
                               f"{', '.join(contract.VENDORS)}")
            index = _int(_attr(attrs, INDEX, "int"), f"{where}.attributes[{INDEX!r}].int")
            numa = _attr(attrs, NUMA, "int")
            replicas = 1
            resource = _resource_of(attrs, vendor)
            if resource == contract.NVIDIA_GPU_SHARED:
                shares = _dict(capacity.get(SHARES)).get("value")
                replicas = _count_of(shares, f"{where}.capacity[{SHARES!r}].value") if shares is not None else 1
                replicas = max(replicas, 1)
            group = _attr(attrs, NVLINK_GROUP, "int")
            if isinstance(group, int) and not isinstance(group, bool):
                groups[uuid] = group
            gpus[uuid] = dict(
                id=uuid, index=index, vendor=vendor, model=str(_attr(attrs, PRODUCT, "string") or ""), memory_mib=mib,
                numa_node=numa if isinstance(numa, int) and not isinstance(numa, bool) else -1,
                pci_bus_id=str(_attr(attrs, PCI_BUS_ID, "string") or ""), healthy=healthy,
                mig_enabled=bool(_attr(attrs, MIG_ENABLED, "bool")), resource=resource, replicas=replicas,
            )
            if resource:
                devices[name] = DeviceInfo(uuid, resource, replicas)
    if len(gpus) > contract.MAX_INVENTORY_GPUS:
        raise DraError(f"node {node}: {len(gpus)} GPUs, more than {contract.MAX_INVENTORY_GPUS}")
    mig_of: dict[str, list[contract.MigDevice]] = {}
    for parent, m, name in migs:
        if parent not in gpus:
            raise DraError(f"node {node}: MIG device {name} names parent {parent}, which the slices do not publish")
        mig_of.setdefault(parent, []).append(m)
    index_of = {u: g["index"] for u, g in gpus.items()}
    members: dict[int, list[int]] = {}
    for u, group in groups.items():
        members.setdefault(group, []).append(index_of[u])
    out: list[contract.Gpu] = []
    for u, g in sorted(gpus.items(), key=lambda kv: kv[1]["index"]):
        # a group of two or more is NVLink-connected: one link to its lowest index stands for it
        group = groups.get(u)
        links: tuple[contract.Link, ...] = ()
        if group is not None and len(members[group]) > 1:
            peers = [group] if g["index"] != group else [i for i in members[group] if i != group]
            links = tuple(contract.Link(p, 1) for p in peers)
        out.append(contract.Gpu(**g, mig=tuple(sorted(mig_of.get(u, []), key=lambda m: (m.start, m.id))), links=links))
    return NodeDevices(node, pool, contract.Inventory(node, tuple(out)), devices)


def slice_node(obj: Mapping[str, Any]) -> str:
    """The node a slice's devices are on (``spec.nodeName``), "" when not node-local."""
    name = _dict(obj.get("spec")).get("nodeName")
    return name if isinstance(name, str) else ""


# --- claims -> usage ---------------------------------------------------------------------------


def allocations(claim: Mapping[str, Any]) -> list[Allocated]:
    """Our driver's devices in a claim's ``status.allocation`` (none when not allocated).
    Raises :class:`DraError` naming the field."""
    where = "ResourceClaim status.allocation.devices.results"
    results = _list(_dict(_dict(_dict(claim.get("status")).get("allocation")).get("devices")).get("results"),
                    where, MAX_RESULTS)
    out: list[Allocated] = []
    for i, r in enumerate(results):
        at = f"{where}[{i}]"
        if not isinstance(r, dict):
            raise DraError(f"{at}: expected an object")
        if r.get("driver") != DRIVER:
            continue
        consumed = _dict(r.get("consumedCapacity"))
        memory = quantity_mib(consumed[MEMORY], f"{at}.consumedCapacity[{MEMORY!r}]") if MEMORY in consumed else 0
        shares = _count_of(consumed[SHARES], f"{at}.consumedCapacity[{SHARES!r}]") if SHARES in consumed else 1
        share = r.get("shareID") or ""
        out.append(Allocated(_str(r, "request", at), _str(r, "pool", at), _str(r, "device", at),
                             share if isinstance(share, str) else "", max(shares, 1), memory))
    return out


def claim_demands(claim: Mapping[str, Any], nodes: Mapping[str, NodeDevices],
                  replica: Any = None) -> list[PodDemand]:
    """The devices a claim holds as records the cache counts like pods' annotated devices: one
    per allocated device, uid ``dra-claim/<claim uid>/<n>``, bound to the pool's node, its
    device (``<uuid>::<replica>`` for a share, the replica from ``replica(node, device name,
    key, shares)``, default 0..) and the memory it consumes. Devices of pools not known (yet)
    are left out; the caller counts them again when their slices come."""
    meta = _dict(claim.get("metadata"))
    uid, ns, name = str(meta.get("uid", "")), str(meta.get("namespace", "")), str(meta.get("name", ""))
    out: list[PodDemand] = []
    for n, a in enumerate(allocations(claim)):
        nd = nodes.get(a.pool)
        info = nd.devices.get(a.device) if nd is not None else None
        if nd is None or info is None:
            continue
        if info.replicas > 1:
            key = f"{uid}/{a.share or n}"
            first = replica(nd.node, a.device, key, a.shares) if replica is not None else 0
            ids = [contract.share_id(info.device_id, first + k) for k in range(min(a.shares, info.replicas))]
            memory = a.memory_mib // max(len(ids), 1)
        else:
            ids, memory = [info.device_id], 0
        asks = (ContainerAsk(f"claim {name}", info.resource, len(ids)),)
        out.append(PodDemand(f"{CLAIM_UID_PREFIX}{uid}/{n}", ns, name, nd.node, asks, memory,
                             contract.INT32_MAX,  # never a preemption victim: claims are not pods
                             False, {f"claim {name}": {info.resource: ids}}))
    return out


# --- a pod's claims -> demand ----------------------------------------------------------------


def class_resources(classes: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """DeviceClass name -> the kernel resource a request of it asks for: its
    ``extendedResourceName`` when that is a GPU resource, :data:`ANY_MIG` for a class of our
    driver that selects MIG devices without naming one; classes of other drivers are left out."""
    out: dict[str, str] = {}
    for c in classes:
        name = _dict(c.get("metadata")).get("name")
        spec = _dict(c.get("spec"))
        if not isinstance(name, str):
            continue
        extended = spec.get("extendedResourceName")
        if isinstance(extended, str) and contract.is_gpu_resource(extended):
            out[name] = extended
            continue
        cel = " ".join(str(_dict(_dict(s).get("cel")).get("expression", "")) for s in spec.get("selectors") or [])
        if f'"{DRIVER}"' in cel and '.type == "mig"' in cel:
            out[name] = ANY_MIG
    return out


def claim_asks(spec: Mapping[str, Any], classes: Mapping[str, str], where: str) -> list[ClaimAsk]:
    """What a ResourceClaim spec (or a template's ``spec.spec``) asks of gpupack devices.
    ``exactly``: ``count`` (default 1) of ``deviceClassName``; ``firstAvailable``: its first
    subrequest (kube-scheduler tries them in order; the first is what the pod prefers);
    ``allocationMode: All`` and classes of other drivers ask nothing the kernel counts. A
    share's memory is ``capacity.requests["gpu.gpupack.io/memory"]``. Raises :class:`DraError`."""
    requests = _list(_dict(spec.get("devices")).get("requests"), f"{where}.devices.requests", MAX_REQUESTS)
    out: list[ClaimAsk] = []
    for i, r in enumerate(requests):
        at = f"{where}.devices.requests[{i}]"
        if not isinstance(r, dict):
            raise DraError(f"{at}: expected an object")
        name = _str(r, "name", at)
        if r.get("exactly") is not None:
            body, at = _dict(r["exactly"]), f"{at}.exactly"
        elif r.get("firstAvailable") is not None:
            subs = _list(r["firstAvailable"], f"{at}.firstAvailable", MAX_SUBREQUESTS)
            if not subs or not isinstance(subs[0], dict):
                raise DraError(f"{at}.firstAvailable: expected at least one subrequest")
            body, at = subs[0], f"{at}.firstAvailable[0]"
        else:
            raise DraError(f"{at}: expected exactly or firstAvailable")
        resource = classes.get(_str(body, "deviceClassName", at))
        mode = body.get("allocationMode") or "ExactCount"
        if mode not in ("ExactCount", "All"):
            raise DraError(f"{at}.allocationMode: {podspec._short(mode)} is not ExactCount or All")
        if resource is None or mode == "All":
            continue
        count = _int(body.get("count", 1), f"{at}.count", 1, podspec.MAX_DEVICES)
        if resource == ANY_MIG:
            cel = " ".join(str(_dict(_dict(s).get("cel")).get("expression", "")) for s in body.get("selectors") or [])
            found = _PROFILE_IN_CEL.search(cel)
            if found is None:
                raise DraError(f"{at}.selectors: a request of class {body['deviceClassName']} needs "
                               f'migProfile == "<profile>" in its CEL to be scored')
            try:
                resource = contract.mig_resource(found[1])
            except contract.ContractError as err:
                raise DraError(f"{at}.selectors: {err}") from err
        wanted = _dict(_dict(body.get("capacity")).get("requests"))
        memory = quantity_mib(wanted[MEMORY], f"{at}.capacity.requests[{MEMORY!r}]") if MEMORY in wanted else 0
        out.append(ClaimAsk(name, resource, count, memory))
    return out


def pod_demand(demand: PodDemand, claims: Mapping[str, Mapping[str, Any]],
               templates: Mapping[str, Mapping[str, Any]], classes: Mapping[str, str]) -> PodDemand:
    """``demand`` with what its claims ask added to ``asks`` (``claims`` emptied): a template's
    ``spec.spec``, or a named claim's ``spec`` unless it is allocated already (its devices are
    counted as in use then, and it asks nothing new). ``claims`` and ``templates`` are by
    ``namespace/name``. A share's memory becomes the pod's per-unit memory (the largest when
    several differ). A claim or template not seen (yet), or one that cannot be read, is the
    demand's ``error``, naming it: the pod is not placed on a guess."""
    if not demand.claims:
        return demand
    asks = list(demand.asks)
    memory = demand.memory_mib
    errors: list[str] = [demand.error] if demand.error else []
    totals: dict[str, int] = dict(demand.totals())
    for i, ref in enumerate(demand.claims):
        where = f"spec.resourceClaims[{i}] ({ref.name})"
        claim_name = ref.claim or ref.generated
        spec: Mapping[str, Any] | None = None
        obj = claims.get(f"{demand.namespace}/{claim_name}") if claim_name else None
        if obj is not None:
            if _dict(_dict(obj.get("status")).get("allocation")):
                continue
            spec, src = _dict(obj.get("spec")), f"ResourceClaim {claim_name} spec"
        elif ref.template:
            tmpl = templates.get(f"{demand.namespace}/{ref.template}")
            if tmpl is None:
                errors.append(f"{where}: ResourceClaimTemplate {demand.namespace}/{ref.template} is not known (yet)")
                continue
            spec, src = _dict(_dict(tmpl.get("spec")).get("spec")), f"ResourceClaimTemplate {ref.template} spec.spec"
        else:
            errors.append(f"{where}: ResourceClaim {demand.namespace}/{claim_name} is not known (yet)")
            continue
        try:
            found = claim_asks(spec, classes, src)
        except DraError as err:
            errors.append(f"{where}: {err}")
            continue
        for a in found:
            asks.append(ContainerAsk(f"claim {ref.name}", a.resource, a.count))
            totals[a.resource] = totals.get(a.resource, 0) + a.count
            memory = max(memory, a.memory_mib)
    for resource, total in sorted(totals.items()):
        if total > podspec.MAX_DEVICES:
            errors.append(f"{resource}: {total} over the pod's containers and claims, more than {podspec.MAX_DEVICES} devices")
    if len(totals) > podspec.MAX_GPU_RESOURCES:
        errors.append(f"{len(totals)} GPU resources asked for, more than {podspec.MAX_GPU_RESOURCES}")
    return dataclasses.replace(demand, asks=tuple(asks), memory_mib=memory, claims=(),
                               error=errors[0] if errors else "")


__all__ = ["Allocated", "ClaimAsk", "ClaimRef", "DeviceInfo", "DraError", "NodeDevices", "allocations",
           "claim_asks", "claim_demands", "class_resources", "current_pools", "node_inventory", "pod_demand"]
