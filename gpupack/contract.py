"""The contract between the device plugin and the scheduler extender: one place for every name.

Both programs import this module and nothing else restates what it defines (see DESIGN.md):

- extended resource names, as users know them from NVIDIA's, AMD's and Intel's plugins;
- the device id formats handed to the kubelet (GPU UUID, MIG UUID, ``<uuid>::<replica>``);
- the node inventory annotation ``gpupack.io/inventory`` (versioned JSON) and node labels;
- the pod assignment annotation ``gpupack.io/devices`` and the memory hint ``gpupack.io/gpu-memory``.

Domain objects are frozen dataclasses; their JSON wire forms are TypedDicts. ``encode_*`` and
``decode_*`` convert between the two and ``decode_*`` refuses malformed input with
:class:`ContractError` naming the offending field.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypedDict, cast

# --- resource names -------------------------------------------------------------------------

NVIDIA_GPU = "nvidia.com/gpu"
#: Suffix of a renamed time-sliced resource (``renameByDefault``): ``nvidia.com/gpu.shared``.
SHARED_SUFFIX = ".shared"
NVIDIA_GPU_SHARED = NVIDIA_GPU + SHARED_SUFFIX
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
AMD_GPU = "amd.com/gpu"
INTEL_I915 = "gpu.intel.com/i915"
INTEL_XE = "gpu.intel.com/xe"

Vendor = Literal["nvidia", "amd", "intel"]
VENDORS: tuple[Vendor, ...] = ("nvidia", "amd", "intel")

_MIG_PROFILE = re.compile(r"^([1-9][0-9]*c\.)?[1-9][0-9]*g\.[0-9]+gb(\+[a-z0-9]+)*$")
_MIG_IN_RESOURCE = re.compile(r"^(?P<base>([1-9][0-9]*c\.)?[1-9][0-9]*g\.[0-9]+gb)(?P<attrs>(\.[a-z0-9]+)*)$")


def mig_resource(profile: str) -> str:
    """``1g.10gb`` -> ``nvidia.com/mig-1g.10gb`` (the mixed-strategy resource of a profile).

    ``+`` may not appear in a resource name, so attribute suffixes become dots:
    ``1g.10gb+me`` -> ``nvidia.com/mig-1g.10gb.me``, a resource of its own (NVIDIA's plugin
    folds such slices into ``1g.10gb``; users ask to tell them apart).
    """
    if not _MIG_PROFILE.match(profile):
        raise ContractError(f"not a MIG profile name: {profile!r} (expected e.g. '1g.10gb')")
    return MIG_RESOURCE_PREFIX + profile.replace("+", ".")


def mig_profile_of(resource: str) -> str | None:
    """The MIG profile a resource name stands for, or None when it is not a MIG resource."""
    if not resource.startswith(MIG_RESOURCE_PREFIX):
        return None
    match = _MIG_IN_RESOURCE.match(resource.removeprefix(MIG_RESOURCE_PREFIX).removesuffix(SHARED_SUFFIX))
    if not match:
        return None
    return match["base"] + match["attrs"].replace(".", "+")


def is_gpu_resource(resource: str) -> bool:
    """True for every resource name gpupack advertises or schedules."""
    base = resource.removesuffix(SHARED_SUFFIX)
    return (
        base in (NVIDIA_GPU, AMD_GPU, INTEL_I915, INTEL_XE) or mig_profile_of(resource) is not None
    )


# --- device ids -----------------------------------------------------------------------------

#: Separator between a physical device id and the replica number of a time-sliced share.
SHARE_SEPARATOR = "::"


def share_id(device_id: str, replica: int) -> str:
    """The kubelet device id of share ``replica`` of a GPU or MIG device: ``<uuid>::<replica>``."""
    if replica < 0:
        raise ContractError(f"replica must be >= 0, got {replica}")
    return f"{device_id}{SHARE_SEPARATOR}{replica}"


def physical_id(device_id: str) -> str:
    """The GPU or MIG UUID behind a kubelet device id (a share id loses its replica)."""
    return device_id.split(SHARE_SEPARATOR, 1)[0]


def replica_of(device_id: str) -> int | None:
    """The replica number of a share id, None for a whole device id."""
    if SHARE_SEPARATOR not in device_id:
        return None
    tail = device_id.split(SHARE_SEPARATOR, 1)[1]
    if not tail.isdigit():
        raise ContractError(f"malformed share id {device_id!r}: replica must be a number")
    return int(tail)


# --- annotations and labels -----------------------------------------------------------------

INVENTORY_ANNOTATION = "gpupack.io/inventory"
DEVICES_ANNOTATION = "gpupack.io/devices"
GPU_MEMORY_ANNOTATION = "gpupack.io/gpu-memory"
#: Placement ahead of kube-scheduler (``--placement gate``, scheduler_ext/placement.py): a pod
#: created with this scheduling gate is left alone by kube-scheduler until gpupack has chosen
#: its node and devices, pinned it there by node affinity and removed the gate.
PLACEMENT_GATE = "gpupack.io/placement"
#: The node gpupack pinned a gated pod to (with its devices annotation), before kube-scheduler
#: binds it there; counted on that node from then on.
PLACED_ANNOTATION = "gpupack.io/placed-on"

LABEL_PREFIX = "gpupack.io/"
LABEL_VENDOR = "gpupack.io/gpu.vendor"
LABEL_PRODUCT = "gpupack.io/gpu.product"
LABEL_COUNT = "gpupack.io/gpu.count"
LABEL_MEMORY = "gpupack.io/gpu.memory"  # MiB of one GPU
LABEL_MIG_CAPABLE = "gpupack.io/gpu.mig-capable"
LABEL_SHARING = "gpupack.io/gpu.sharing-strategy"  # none | time-slicing
LABEL_MIG_STRATEGY = "gpupack.io/mig.strategy"  # none | single | mixed

INVENTORY_VERSION = 1
DEVICES_VERSION = 1


class ContractError(ValueError):
    """Input that does not follow the contract; the message names the field."""


# --- the inventory --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Link:
    """A direct GPU-to-GPU connection seen from one GPU: the peer's index and the NVLink count."""

    peer: int
    nvlinks: int


@dataclasses.dataclass(frozen=True)
class MigDevice:
    """One MIG instance of a GPU: its UUID, profile (``1g.10gb``), placement and memory."""

    id: str
    profile: str
    start: int  # first memory slice of its GPU instance placement
    size: int  # number of memory slices of the placement
    memory_mib: int
    healthy: bool = True
    resource: str = ""  # the resource it is advertised under ("" when not advertised)
    replicas: int = 1  # time-sliced shares of this slice (1 = not shared)


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One physical GPU as the node sees it, vendor-neutral."""

    id: str  # UUID (NVIDIA, AMD where known) or PCI bus id
    index: int
    vendor: Vendor
    model: str
    memory_mib: int
    numa_node: int = -1  # -1 when the platform reports none
    pci_bus_id: str = ""
    healthy: bool = True
    mig_enabled: bool = False
    mig: tuple[MigDevice, ...] = ()
    links: tuple[Link, ...] = ()
    resource: str = ""  # the resource the whole GPU is advertised under ("" when not: MIG)
    replicas: int = 1  # time-sliced shares of the whole GPU (1 = not shared)


@dataclasses.dataclass(frozen=True)
class Inventory:
    """Every GPU of one node."""

    node: str
    gpus: tuple[Gpu, ...]
    mig_strategy: str = "none"
    sharing: str = "none"


class LinkJSON(TypedDict):
    peer: int
    nvlinks: int


class MigDeviceJSON(TypedDict):
    id: str
    profile: str
    start: int
    size: int
    memoryMiB: int
    healthy: bool
    resource: str
    replicas: int


class GpuJSON(TypedDict):
    id: str
    index: int
    vendor: str
    model: str
    memoryMiB: int
    numaNode: int
    pciBusId: str
    healthy: bool
    migEnabled: bool
    mig: list[MigDeviceJSON]
    links: list[LinkJSON]
    resource: str
    replicas: int


class InventoryJSON(TypedDict):
    version: int
    node: str
    migStrategy: str
    sharing: str
    gpus: list[GpuJSON]


def inventory_to_json(inv: Inventory) -> InventoryJSON:
    """The annotation's JSON object for an inventory."""
    return {
        "version": INVENTORY_VERSION,
        "node": inv.node,
        "migStrategy": inv.mig_strategy,
        "sharing": inv.sharing,
        "gpus": [
            {
                "id": g.id,
                "index": g.index,
                "vendor": g.vendor,
                "model": g.model,
                "memoryMiB": g.memory_mib,
                "numaNode": g.numa_node,
                "pciBusId": g.pci_bus_id,
                "healthy": g.healthy,
                "migEnabled": g.mig_enabled,
                "mig": [
                    {
                        "id": m.id,
                        "profile": m.profile,
                        "start": m.start,
                        "size": m.size,
                        "memoryMiB": m.memory_mib,
                        "healthy": m.healthy,
                        "resource": m.resource,
                        "replicas": m.replicas,
                    }
                    for m in g.mig
                ],
                "links": [{"peer": link.peer, "nvlinks": link.nvlinks} for link in g.links],
                "resource": g.resource,
                "replicas": g.replicas,
            }
            for g in inv.gpus
        ],
    }


def encode_inventory(inv: Inventory) -> str:
    """The value of the ``gpupack.io/inventory`` annotation: compact, key-sorted JSON."""
    return json.dumps(inventory_to_json(inv), separators=(",", ":"), sort_keys=True)


#: Bounds of every integer in the inventory and assignment annotations (the kernel's int32).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Most GPUs one node's inventory may list (physical devices; MIG devices are inside them).
MAX_INVENTORY_GPUS = 256


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    if key not in obj:
        raise ContractError(f"{path}.{key}: missing")
    value = obj[key]
    # bool is a subclass of int: an int field must not accept true/false.
    if kind is int and isinstance(value, bool):
        raise ContractError(f"{path}.{key}: expected int, got {value!r}")
    if not isinstance(value, kind):
        raise ContractError(f"{path}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    # The kernel keeps counts, indexes and MiB in 32-bit arrays: a larger number is no real
    # device, and would overflow them where the extender reads the annotation.
    if kind is int and isinstance(value, int) and not INT32_MIN <= value <= INT32_MAX:
        raise ContractError(f"{path}.{key}: {value} is out of range ({INT32_MIN}..{INT32_MAX})")
    return value


def _opt(obj: Mapping[str, Any], key: str, kind: type, path: str, default: Any) -> Any:
    return _field(obj, key, kind, path) if key in obj else default


def decode_inventory(text: str | bytes) -> Inventory:
    """Parses a ``gpupack.io/inventory`` value; refuses other versions and malformed fields."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ContractError(f"inventory: not JSON ({err})") from err
    return inventory_from_json(raw)


def inventory_from_json(raw: Any) -> Inventory:
    if not isinstance(raw, dict):
        raise ContractError("inventory: expected a JSON object")
    version = _field(raw, "version", int, "inventory")
    if version != INVENTORY_VERSION:
        raise ContractError(f"inventory.version: {version} is not supported (want {INVENTORY_VERSION})")
    listed = _field(raw, "gpus", list, "inventory")
    if len(listed) > MAX_INVENTORY_GPUS:
        raise ContractError(f"inventory.gpus: {len(listed)} GPUs, more than {MAX_INVENTORY_GPUS} on one node")
    gpus = []
    for i, g in enumerate(listed):
        path = f"inventory.gpus[{i}]"
        if not isinstance(g, dict):
            raise ContractError(f"{path}: expected an object")
        vendor = _field(g, "vendor", str, path)
        if vendor not in VENDORS:
            raise ContractError(f"{path}.vendor: {vendor!r} is not one of {', '.join(VENDORS)}")
        migs = []
        for j, m in enumerate(_opt(g, "mig", list, path, [])):
            mpath = f"{path}.mig[{j}]"
            if not isinstance(m, dict):
                raise ContractError(f"{mpath}: expected an object")
            migs.append(
                MigDevice(
                    id=_field(m, "id", str, mpath),
                    profile=_field(m, "profile", str, mpath),
                    start=_field(m, "start", int, mpath),
                    size=_field(m, "size", int, mpath),
                    memory_mib=_field(m, "memoryMiB", int, mpath),
                    healthy=_opt(m, "healthy", bool, mpath, True),
                    resource=_opt(m, "resource", str, mpath, ""),
                    replicas=_opt(m, "replicas", int, mpath, 1),
                )
            )
        links = []
        for j, link in enumerate(_opt(g, "links", list, path, [])):
            lpath = f"{path}.links[{j}]"
            if not isinstance(link, dict):
                raise ContractError(f"{lpath}: expected an object")
            links.append(Link(_field(link, "peer", int, lpath), _field(link, "nvlinks", int, lpath)))
        replicas = _opt(g, "replicas", int, path, 1)
        if replicas < 1:
            raise ContractError(f"{path}.replicas: must be >= 1, got {replicas}")
        gpus.append(
            Gpu(
                id=_field(g, "id", str, path),
                index=_field(g, "index", int, path),
                vendor=cast(Vendor, vendor),
                model=_field(g, "model", str, path),
                memory_mib=_field(g, "memoryMiB", int, path),
                numa_node=_opt(g, "numaNode", int, path, -1),
                pci_bus_id=_opt(g, "pciBusId", str, path, ""),
                healthy=_opt(g, "healthy", bool, path, True),
                mig_enabled=_opt(g, "migEnabled", bool, path, False),
                mig=tuple(migs),
                links=tuple(links),
                resource=_opt(g, "resource", str, path, ""),
                replicas=replicas,
            )
        )
    return Inventory(
        node=_opt(raw, "node", str, "inventory", ""),
        gpus=tuple(gpus),
        mig_strategy=_opt(raw, "migStrategy", str, "inventory", "none"),
        sharing=_opt(raw, "sharing", str, "inventory", "none"),
    )


def inventory_labels(inv: Inventory) -> dict[str, str]:
    """Node labels for affinity, derived from the inventory (values are label-safe strings)."""
    if not inv.gpus:
        return {}
    first = inv.gpus[0]
    return {
        LABEL_VENDOR: first.vendor,
        LABEL_PRODUCT: label_value(first.model),
        LABEL_COUNT: str(len(inv.gpus)),
        LABEL_MEMORY: str(min(g.memory_mib for g in inv.gpus)),
        LABEL_MIG_CAPABLE: str(any(g.mig_enabled for g in inv.gpus)).lower(),
        LABEL_SHARING: inv.sharing,
        LABEL_MIG_STRATEGY: inv.mig_strategy,
    }


def label_value(text: str) -> str:
    """A Kubernetes label value from free text: ``NVIDIA A100-SXM4-40GB`` -> ``NVIDIA-A100-SXM4-40GB``."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return value[:63].rstrip("-._")


# --- the pod assignment ---------------------------------------------------------------------

#: container name -> resource name -> kubelet device ids
Assignment = dict[str, dict[str, list[str]]]


class DevicesJSON(TypedDict):
    version: int
    containers: Assignment


def encode_assignment(assignment: Mapping[str, Mapping[str, Iterable[str]]]) -> str:
    """The value of the ``gpupack.io/devices`` pod annotation."""
    body: DevicesJSON = {
        "version": DEVICES_VERSION,
        "containers": {c: {r: list(ids) for r, ids in res.items()} for c, res in assignment.items()},
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def decode_assignment(text: str | bytes) -> Assignment:
    """Parses a ``gpupack.io/devices`` value into container -> resource -> device ids."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ContractError(f"devices: not JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ContractError("devices: expected a JSON object")
    version = _field(raw, "version", int, "devices")
    if version != DEVICES_VERSION:
        raise ContractError(f"devices.version: {version} is not supported (want {DEVICES_VERSION})")
    out: Assignment = {}
    for container, resources in _field(raw, "containers", dict, "devices").items():
        if not isinstance(resources, dict):
            raise ContractError(f"devices.containers.{container}: expected an object")
        out[container] = {}
        for resource, ids in resources.items():
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ContractError(f"devices.containers.{container}.{resource}: expected a list of ids")
            out[container][resource] = list(ids)
    return out


# --- quantities -----------------------------------------------------------------------------

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")


def memory_mib(quantity: str) -> int:
    """A Kubernetes memory quantity (``10Gi``, ``512Mi``, ``16G``) in MiB, rounded up."""
    match = _QUANTITY.match(quantity.strip())
    if not match:
        raise ContractError(f"{GPU_MEMORY_ANNOTATION}: {quantity!r} is not a memory quantity like '10Gi'")
    number, unit = match.groups()
    scale = _BINARY.get(unit or "", 0) or _DECIMAL.get(unit or "", 1)
    size = float(number) * scale
    return int(-(-size // 2**20))
