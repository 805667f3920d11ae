"""The node's GPUs as ResourceSlices (``resource.k8s.io/v1``). Pure: inventory in, JSON out.

:func:`build` turns the planned inventory the device plugin discovers (``contract.Gpu`` after
:func:`device_plugin.resources.plan`, with health applied) and the faults of Unhealthy GPUs
into the ResourceSlice objects of one pool (the pool is the node: ``spec.pool.name`` = node
name). What each GPU becomes:

- a whole GPU: one device ``gpu-<index>`` with attributes (:mod:`~gpupack.dra_names`) and
  capacity ``memory``;
- a time-sliced GPU (``replicas`` > 1): the same device with ``allowMultipleAllocations`` and
  two consumable capacities. ``memory``: a claim asks for N GiB (``requestPolicy.validRange``
  1 GiB .. the GPU's whole GiB, step 1 GiB; default: the GPU's memory / replicas, rounded down
  to GiB); ``shares``: ``replicas``, 1 per allocation by default, so at most ``replicas``
  claims share the GPU whatever memory they ask;
- a GPU in MIG mode: one CounterSet ``gpu-<index>-counters`` (``memory``, ``compute-slices``
  = 7, ``memory-slice-0..7`` = 1 each), one device per MIG device
  (``gpu-<index>-mig-<start>-<profile>``) consuming its memory, its compute slices and the
  memory slices of its placement, and the GPU itself (``migEnabled: true``) consuming all of
  it: the GPU and its MIG devices exclude each other, as a partitionable device should. A MIG
  device that is a compute instance of a larger GPU instance (``1c.3g.20gb``) shares its
  placement with its siblings, so it consumes compute slices and memory only;
- AMD and Intel GPUs: whole devices, never shared.

Health: every device of an Unhealthy GPU carries the taint ``gpu.gpupack.io/unhealthy``
(:func:`fault_of` chooses NoExecute when the GPU is gone, NoSchedule otherwise); a recovered
GPU's devices carry none.

Limits of the API (``resource/v1/types.go``): at most 128 devices a slice, 64 when one of them
has taints or consumes counters; devices and shared counters in separate slices; at most 8
counter sets a slice. :func:`build` splits accordingly; every slice of the pool carries the
same ``generation`` and the ``resourceSliceCount``. Quantities are written in Kubernetes'
canonical form (``40Gi``, not ``40960Mi``) so that what the API server returns compares equal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict

from gpupack import contract, topology

from device_plugin.discovery.backend import HealthEvent
from gpupack import dra_names as names

API_VERSION = names.API_VERSION
MAX_DEVICES = 128  # ResourceSliceMaxDevices
MAX_DEVICES_ADVANCED = 64  # ResourceSliceMaxDevicesWithAdvancedFeatures: taints, counters
MAX_COUNTER_SETS = 8  # ResourceSliceMaxCounterSets
GIB_MIB = 1024

# --- wire JSON (the v1 field names) --------------------------------------------------------------


# Functional form: the v1 keys "int", "bool", "min", "max" would shadow builtins in a class body.
AttributeJSON = TypedDict("AttributeJSON", {"string": str, "int": int, "bool": bool, "version": str}, total=False)
RangeJSON = TypedDict("RangeJSON", {"min": str, "max": str, "step": str})


class RequestPolicyJSON(TypedDict):
    default: str
    validRange: RangeJSON


class CapacityJSON(TypedDict, total=False):
    value: str
    requestPolicy: RequestPolicyJSON


class CounterJSON(TypedDict):
    value: str


class CounterSetJSON(TypedDict):
    name: str
    counters: dict[str, CounterJSON]


class ConsumptionJSON(TypedDict):
    counterSet: str
    counters: dict[str, CounterJSON]


class TaintJSON(TypedDict):
    key: str
    value: str
    effect: str


class DeviceJSON(TypedDict, total=False):
    name: str
    attributes: dict[str, AttributeJSON]
    capacity: dict[str, CapacityJSON]
    consumesCounters: list[ConsumptionJSON]
    allowMultipleAllocations: bool
    taints: list[TaintJSON]


class PoolJSON(TypedDict):
    name: str
    generation: int
    resourceSliceCount: int


class SliceSpecJSON(TypedDict, total=False):
    driver: str
    pool: PoolJSON
    nodeName: str
    devices: list[DeviceJSON]
    sharedCounters: list[CounterSetJSON]


class SliceMetaJSON(TypedDict):
    name: str


class ResourceSliceJSON(TypedDict):
    apiVersion: str
    kind: str
    metadata: SliceMetaJSON
    spec: SliceSpecJSON


# --- domain ---------------------------------------------------------------------------------------

Effect = Literal["NoSchedule", "NoExecute"]


@dataclasses.dataclass(frozen=True)
class Fault:
    """Why a GPU is Unhealthy, as its devices' taint says it."""

    value: str  # the taint value, a label value: xid-79, gone, nvml-error, unhealthy
    effect: Effect


#: XIDs after which the GPU is gone or its memory cannot be trusted: running pods are evicted.
NO_EXECUTE_XIDS = frozenset({79, 95})
UNHEALTHY = Fault("unhealthy", "NoSchedule")


def fault_of(event: HealthEvent) -> Fault:
    """The taint an event that made a GPU Unhealthy puts on its devices.

    NoExecute when the GPU is gone (XID 79 "fallen off the bus", XID 95 uncontained ECC, an
    AMD or Intel device vanished from sysfs): pods on it cannot run on. NoSchedule otherwise
    (other critical XIDs, NVML itself failing for every GPU): running pods are left alone,
    new claims go elsewhere.
    """
    if event.xid is not None:
        return Fault(f"xid-{event.xid}", "NoExecute" if event.xid in NO_EXECUTE_XIDS else "NoSchedule")
    if event.gpu_id is None:
        return Fault("nvml-error", "NoSchedule")
    if "gone" in event.reason or "lost" in event.reason or "vanish" in event.reason:
        return Fault("gone", "NoExecute")
    return UNHEALTHY


@dataclasses.dataclass(frozen=True)
class PublishedDevice:
    """One published device as the driver prepares it: what the container is given."""

    name: str  # the device name in the pool
    gpu_id: str  # the physical GPU
    visible_id: str  # what the container runtime is told: GPU or MIG UUID (or PCI address)
    vendor: contract.Vendor
    kind: Literal["gpu", "mig"]
    shared: bool


# --- quantities, names ---------------------------------------------------------------------------


def quantity_mib(mib: int) -> str:
    """``mib`` MiB in Kubernetes' canonical binary form: 40960 -> ``40Gi``, 81559 -> ``81559Mi``."""
    if mib == 0:
        return "0"
    value, suffixes = mib, ["Mi", "Gi", "Ti", "Pi", "Ei"]
    while value % 1024 == 0 and len(suffixes) > 1:
        value //= 1024
        suffixes.pop(0)
    return f"{value}{suffixes[0]}"


def _label(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _profile_label(profile: str) -> str:
    """``1g.10gb`` -> ``1g10gb``; ``1g.10gb+me`` -> ``1g10gb-me`` (device names are DNS labels)."""
    return _label(profile.replace(".", "").replace("+", "-"))


def gpu_device_name(gpu: contract.Gpu) -> str:
    return f"gpu-{gpu.index}"


def counter_set_name(gpu: contract.Gpu) -> str:
    return f"gpu-{gpu.index}-counters"


def slice_name(node: str, index: int) -> str:
    """``<node>-gpu.gpupack.io-<n>``; a node name too long for that is shortened with a hash."""
    name = f"{node}-{names.DRIVER}-{index}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(node.encode()).hexdigest()[:10]
    return f"{node[:253 - len(names.DRIVER) - 24]}-{digest}-{names.DRIVER}-{index}"


def _mig_names(gpu: contract.Gpu) -> dict[str, str]:
    """MIG UUID -> device name: ``gpu-<index>-mig-<start>-<profile>``, ``-<n>`` for siblings of
    one placement (compute instances of one GPU instance), numbered in UUID order."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for m in sorted(gpu.mig, key=lambda m: (m.start, m.profile, m.id)):
        base = f"gpu-{gpu.index}-mig-{m.start}-{_profile_label(m.profile)}"
        name, n = base, 1
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name)
        out[m.id] = name
    return out


def _uses_mig(gpu: contract.Gpu) -> bool:
    return gpu.vendor == "nvidia" and gpu.mig_enabled and bool(gpu.mig)


def _is_shared(gpu: contract.Gpu) -> bool:
    return gpu.vendor == "nvidia" and not _uses_mig(gpu) and gpu.replicas > 1


def published_devices(gpus: Sequence[contract.Gpu]) -> dict[str, PublishedDevice]:
    """Every device :func:`build` publishes, by name: what prepare hands a container."""
    out: dict[str, PublishedDevice] = {}
    for g in gpus:
        name = gpu_device_name(g)
        out[name] = PublishedDevice(name, g.id, g.id, g.vendor, "gpu", _is_shared(g))
        if _uses_mig(g):
            for m_id, m_name in _mig_names(g).items():
                out[m_name] = PublishedDevice(m_name, g.id, m_id, g.vendor, "mig", False)
    return out


# --- attributes -------------------------------------------------------------------------------------

#: CUDA compute capability by product name token; NVML's answer would be better, but the
#: discovered inventory does not carry it. Unknown products get no such attribute.
_COMPUTE_CAPABILITY = {
    "B200": "10.0.0", "B100": "10.0.0", "GB200": "10.0.0", "H200": "9.0.0", "H100": "9.0.0", "GH200": "9.0.0",
    "H800": "9.0.0", "L40S": "8.9.0", "L40": "8.9.0", "L4": "8.9.0", "A100": "8.0.0", "A800": "8.0.0",
    "A30": "8.0.0", "A10G": "8.6.0", "A10": "8.6.0", "A40": "8.6.0", "A16": "8.6.0", "A2": "8.6.0",
    "T4": "7.5.0", "V100": "7.0.0",
}


def compute_capability(model: str) -> str | None:
    """``NVIDIA A100-SXM4-40GB`` -> ``8.0.0`` (a semver, as DRA version attributes are)."""
    tokens = set(re.split(r"[^A-Za-z0-9]+", model.upper()))
    for product, version in _COMPUTE_CAPABILITY.items():
        if product in tokens:
            return version
    return None


def pci_address(bus_id: str) -> str:
    """NVML's ``00000000:07:00.0`` -> ``0000:07:00.0`` (extended BDF, lower case)."""
    bus_id = bus_id.lower()
    domain, sep, rest = bus_id.partition(":")
    if sep and len(domain) == 8 and domain.startswith("0000"):
        return f"{domain[4:]}:{rest}"
    return bus_id


def nvlink_groups(gpus: Sequence[contract.Gpu]) -> dict[int, int]:
    """GPU index -> the lowest index of its NVLink-connected set (a GPU without links: its own)."""
    indexes = sorted(g.index for g in gpus)
    pos = {i: p for p, i in enumerate(indexes)}
    links = [(pos[g.index], pos[link.peer], link.nvlinks) for g in gpus for link in g.links if link.peer in pos]
    topo = topology.Topology.build([0] * len(indexes), links, {})
    lowest: dict[int, int] = {}
    for p, root in enumerate(topo.group):
        lowest.setdefault(root, indexes[p])
    return {indexes[p]: lowest[root] for p, root in enumerate(topo.group)}


def _kernel_driver(gpu: contract.Gpu) -> str:
    if gpu.vendor == "nvidia":
        return "nvidia"
    if gpu.vendor == "amd":
        return "amdgpu"
    return "xe" if gpu.resource == contract.INTEL_XE else "i915"


def _attributes(gpu: contract.Gpu, group: int | None) -> dict[str, AttributeJSON]:
    attrs: dict[str, AttributeJSON] = {
        names.TYPE: {"string": "gpu"},
        names.VENDOR: {"string": gpu.vendor},
        names.PRODUCT: {"string": gpu.model[:64]},
        names.UUID: {"string": gpu.id[:64]},
        names.INDEX: {"int": gpu.index},
        names.KERNEL_DRIVER: {"string": _kernel_driver(gpu)},
        names.MIG_ENABLED: {"bool": _uses_mig(gpu)},
        names.SHARED: {"bool": _is_shared(gpu)},
    }
    if gpu.pci_bus_id:
        attrs[names.PCI_BUS_ID] = attrs[names.STANDARD_PCI_BUS_ID] = {"string": pci_address(gpu.pci_bus_id)}
    if gpu.numa_node >= 0:
        attrs[names.NUMA] = attrs[names.STANDARD_NUMA_NODE] = {"int": gpu.numa_node}
    if gpu.vendor == "nvidia":
        if group is not None:
            attrs[names.NVLINK_GROUP] = {"int": group}
        cc = compute_capability(gpu.model)
        if cc:
            attrs[names.COMPUTE_CAPABILITY] = {"version": cc}
    return attrs


def _mig_attributes(gpu: contract.Gpu, mig: contract.MigDevice, group: int | None) -> dict[str, AttributeJSON]:
    attrs = _attributes(gpu, group)
    attrs[names.TYPE] = {"string": "mig"}
    attrs[names.UUID] = {"string": mig.id[:64]}
    attrs[names.MIG_PROFILE] = {"string": mig.profile}
    attrs[names.PARENT_UUID] = {"string": gpu.id[:64]}
    attrs[names.MIG_ENABLED] = {"bool": False}
    return attrs


# --- MIG counters ----------------------------------------------------------------------------------

_PROFILE = re.compile(r"^(?:(?P<ci>[0-9]+)c\.)?(?P<gi>[0-9]+)g\.")


def _counters(memory_mib: int, compute: int, memory_slices: range) -> dict[str, CounterJSON]:
    counters: dict[str, CounterJSON] = {
        names.COUNTER_MEMORY: {"value": quantity_mib(memory_mib)},
        names.COUNTER_COMPUTE: {"value": str(compute)},
    }
    for s in memory_slices:
        counters[names.COUNTER_MEMORY_SLICE.format(s)] = {"value": "1"}
    return counters


def _mig_consumption(gpu: contract.Gpu, mig: contract.MigDevice) -> ConsumptionJSON:
    match = _PROFILE.match(mig.profile)
    gi = int(match["gi"]) if match else max(mig.size, 1)
    ci = int(match["ci"]) if match and match["ci"] else gi
    # A compute instance smaller than its GPU instance shares the placement with its siblings.
    placement = range(mig.start, mig.start + mig.size) if ci == gi else range(0)
    counters = _counters(min(mig.memory_mib, gpu.memory_mib), min(ci, names.COMPUTE_SLICES),
                         range(max(placement.start, 0), min(placement.stop, names.MEMORY_SLICES)))
    if ci != gi:
        del counters[names.COUNTER_MEMORY]  # the GPU instance's memory is its siblings' too
    return {"counterSet": counter_set_name(gpu), "counters": counters}


def _whole_counters(gpu: contract.Gpu) -> dict[str, CounterJSON]:
    return _counters(gpu.memory_mib, names.COMPUTE_SLICES, range(names.MEMORY_SLICES))


# --- devices --------------------------------------------------------------------------------------


def _taints(healthy: bool, fault: Fault | None) -> list[TaintJSON]:
    if healthy and fault is None:
        return []
    f = fault or UNHEALTHY
    return [{"key": names.UNHEALTHY_TAINT, "value": f.value, "effect": f.effect}]


def _share_capacity(gpu: contract.Gpu) -> dict[str, CapacityJSON]:
    whole_gib = max(gpu.memory_mib // GIB_MIB, 1)
    default_gib = min(max(gpu.memory_mib // gpu.replicas // GIB_MIB, 1), whole_gib)
    gib = quantity_mib(GIB_MIB)
    return {
        names.MEMORY: {
            "value": quantity_mib(max(gpu.memory_mib, GIB_MIB)),
            "requestPolicy": {
                "default": quantity_mib(default_gib * GIB_MIB),
                "validRange": {"min": gib, "max": quantity_mib(whole_gib * GIB_MIB), "step": gib},
            },
        },
        names.SHARES: {
            "value": str(gpu.replicas),
            "requestPolicy": {"default": "1", "validRange": {"min": "1", "max": str(gpu.replicas), "step": "1"}},
        },
    }


def gpu_devices(
    gpu: contract.Gpu, fault: Fault | None = None, group: int | None = None
) -> tuple[list[DeviceJSON], list[CounterSetJSON]]:
    """The devices and counter sets one GPU is published as."""
    whole: DeviceJSON = {"name": gpu_device_name(gpu), "attributes": _attributes(gpu, group)}
    if _is_shared(gpu):
        whole["capacity"] = _share_capacity(gpu)
        whole["allowMultipleAllocations"] = True
    elif gpu.memory_mib > 0:
        whole["capacity"] = {names.MEMORY: {"value": quantity_mib(gpu.memory_mib)}}
    taints = _taints(gpu.healthy, fault)
    if not _uses_mig(gpu):
        if taints:
            whole["taints"] = taints
        return [whole], []
    whole["consumesCounters"] = [{"counterSet": counter_set_name(gpu), "counters": _whole_counters(gpu)}]
    if taints:
        whole["taints"] = taints
    devices = [whole]
    mig_names = _mig_names(gpu)
    for m in sorted(gpu.mig, key=lambda m: mig_names[m.id]):
        dev: DeviceJSON = {
            "name": mig_names[m.id],
            "attributes": _mig_attributes(gpu, m, group),
            "capacity": {names.MEMORY: {"value": quantity_mib(m.memory_mib)}},
            "consumesCounters": [_mig_consumption(gpu, m)],
        }
        mig_taints = _taints(gpu.healthy and m.healthy, fault)
        if mig_taints:
            dev["taints"] = mig_taints
        devices.append(dev)
    return devices, [{"name": counter_set_name(gpu), "counters": _whole_counters(gpu)}]


def _advanced(device: DeviceJSON) -> bool:
    return bool(device.get("taints") or device.get("consumesCounters"))


def _chunks(devices: Sequence[DeviceJSON]) -> list[list[DeviceJSON]]:
    """Greedy, in order: a slice takes devices while it stays within its limit (64 once one of
    its devices has taints or counters, else 128)."""
    out: list[list[DeviceJSON]] = []
    current: list[DeviceJSON] = []
    advanced = False
    for d in devices:
        now_advanced = advanced or _advanced(d)
        if current and len(current) + 1 > (MAX_DEVICES_ADVANCED if now_advanced else MAX_DEVICES):
            out.append(current)
            current, now_advanced = [], _advanced(d)
        current.append(d)
        advanced = now_advanced
    if current:
        out.append(current)
    return out


def build(
    node: str,
    gpus: Sequence[contract.Gpu],
    faults: Mapping[str, Fault] | None = None,
    generation: int = 1,
) -> list[ResourceSliceJSON]:
    """The pool's ResourceSlices: counter slices first, then device slices, all of one
    generation. ``faults``: GPU id -> why it is Unhealthy (a GPU marked Unhealthy without a
    fault gets a NoSchedule ``unhealthy`` taint). No GPUs: no slices."""
    faults = faults or {}
    groups = nvlink_groups([g for g in gpus if g.vendor == "nvidia"])
    devices: list[DeviceJSON] = []
    counter_sets: list[CounterSetJSON] = []
    for g in sorted(gpus, key=lambda g: g.index):
        ds, cs = gpu_devices(g, faults.get(g.id), groups.get(g.index))
        devices += ds
        counter_sets += cs
    specs: list[SliceSpecJSON] = []
    for i in range(0, len(counter_sets), MAX_COUNTER_SETS):
        specs.append({"sharedCounters": counter_sets[i:i + MAX_COUNTER_SETS]})
    specs += [{"devices": chunk} for chunk in _chunks(devices)]
    out: list[ResourceSliceJSON] = []
    for i, part in enumerate(specs):
        spec: SliceSpecJSON = {
            "driver": names.DRIVER,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": len(specs)},
            "nodeName": node,
        }
        spec.update(part)
        out.append({"apiVersion": API_VERSION, "kind": "ResourceSlice", "metadata": {"name": slice_name(node, i)}, "spec": spec})
    return out


def content(slices: Sequence[Mapping[str, Any]]) -> list[Any]:
    """What a pool says apart from its generation: equal content needs no new generation."""
    out = []
    for s in slices:
        spec = dict(s["spec"])
        spec["pool"] = {k: v for k, v in spec["pool"].items() if k != "generation"}
        out.append({"name": s["metadata"]["name"], "spec": spec})
    return sorted(out, key=lambda x: str(x["name"]))
