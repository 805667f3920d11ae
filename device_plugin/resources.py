"""Which devices the node advertises, under which resource names. Pure.

Two steps, each a pure function:

1. :func:`plan` decides, for every GPU and MIG device, the resource it is advertised under and
   how many time-sliced replicas it has, from the MIG strategy and the sharing settings. The
   result is the inventory the node publishes (``Gpu.resource``, ``Gpu.replicas``,
   ``MigDevice.resource``, ``MigDevice.replicas``).
2. :func:`advertise` expands a plan into the kubelet's device lists: one device per GPU or MIG
   device, or ``<uuid>::<n>`` per share; each remembers its physical GPU (for health and
   topology) and the id the container runtime is told.

MIG strategies, as users know them from NVIDIA's plugin:

- ``none``: whole GPUs only, as ``nvidia.com/gpu``;
- ``single``: every GPU carries MIG devices of one profile, advertised as ``nvidia.com/gpu``;
  a node that breaks the rule is refused with what is on it (no GPU with MIG on: whole GPUs);
- ``mixed``: each profile its own resource ``nvidia.com/mig-<profile>``; GPUs without MIG
  stay ``nvidia.com/gpu``.

AMD and Intel GPUs come with their resource already set by their backend and are never shared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from gpupack import contract

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
MIG_STRATEGIES = ("none", "single", "mixed")


class StrategyError(ValueError):
    """The node's GPUs do not fit the configured MIG strategy; the message says what is there."""


@dataclasses.dataclass(frozen=True)
class ShareRule:
    """Time-slice ``replicas`` shares of each device advertised as ``name``.

    ``devices`` limits the rule to GPUs (for MIG: parent GPUs) by index or UUID; empty = all.
    ``rename`` is the resource the shares are advertised under ("" = ``name``, or
    ``<name>.shared`` with rename-by-default).
    """

    name: str
    replicas: int
    devices: tuple[str, ...] = ()
    rename: str = ""


@dataclasses.dataclass(frozen=True)
class Sharing:
    rules: tuple[ShareRule, ...] = ()
    rename_by_default: bool = False  # shared resources become <name>.shared
    fail_requests_greater_than_one: bool = False  # refuse a container asking for 2+ shares
    distinct_gpus: bool = False  # several shares for one container come from distinct GPUs

    def rule_for(self, resource: str, gpu: contract.Gpu) -> ShareRule | None:
        for rule in self.rules:
            if rule.name == resource and (not rule.devices or str(gpu.index) in rule.devices or gpu.id in rule.devices):
                return rule
        return None

    def shared_name(self, rule: ShareRule) -> str:
        if rule.rename:
            return rule.rename
        return rule.name + contract.SHARED_SUFFIX if self.rename_by_default else rule.name

    def is_shared(self, resource: str) -> bool:
        return any(self.shared_name(r) == resource for r in self.rules)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How GPUs become resources: the MIG strategy and the time-slicing settings."""

    mig_strategy: str = "none"
    sharing: Sharing = Sharing()


@dataclasses.dataclass(frozen=True)
class Device:
    """One device as advertised to the kubelet."""

    id: str  # the kubelet's device id (GPU UUID, MIG UUID, or <uuid>::<n>)
    gpu_id: str  # the physical GPU behind it
    visible_id: str  # what the container runtime is told (GPU or MIG UUID)
    numa_node: int
    healthy: bool
    replicas: int = 1  # shares of its physical device (1 = not shared)

    @property
    def health(self) -> str:
        return HEALTHY if self.healthy else UNHEALTHY


def _mig_layout(gpus: tuple[contract.Gpu, ...]) -> str:
    parts = []
    for g in gpus:
        if not g.mig_enabled:
            parts.append(f"GPU {g.index}: MIG off")
        elif not g.mig:
            parts.append(f"GPU {g.index}: MIG on, no MIG devices")
        else:
            parts.append(f"GPU {g.index}: " + ", ".join(sorted(m.profile for m in g.mig)))
    return "; ".join(parts)


def _check_single(nvidia: tuple[contract.Gpu, ...]) -> None:
    enabled = [g for g in nvidia if g.mig_enabled]
    if not enabled:
        return
    profiles = {m.profile for g in enabled for m in g.mig}
    if len(enabled) != len(nvidia) or len(profiles) != 1 or any(not g.mig for g in enabled):
        raise StrategyError(
            "MIG strategy 'single' needs every GPU in MIG mode with MIG devices of one profile, "
            f"but this node has: {_mig_layout(nvidia)}. Use strategy 'mixed', or repartition the GPUs."
        )


def plan(gpus: tuple[contract.Gpu, ...], mig_strategy: str = "none", sharing: Sharing = Sharing()) -> tuple[contract.Gpu, ...]:
    """Every GPU and MIG device with its advertised resource and replicas filled in."""
    if mig_strategy not in MIG_STRATEGIES:
        raise StrategyError(f"unknown MIG strategy {mig_strategy!r}: choose none, single or mixed")
    nvidia = tuple(g for g in gpus if g.vendor == "nvidia")
    others = sorted({g.vendor for g in gpus if g.vendor != "nvidia"})
    if others and (sharing.rules or mig_strategy != "none"):
        raise StrategyError(
            f"{' and '.join(o.upper() if o == 'amd' else o.capitalize() for o in others)} GPUs are advertised as whole "
            "devices only: remove sharing.timeSlicing and set flags.migStrategy to none for this node"
        )
    if mig_strategy == "single":
        _check_single(nvidia)
    out = []
    for g in gpus:
        if g.vendor != "nvidia":
            out.append(dataclasses.replace(g, replicas=1))
            continue
        uses_mig = g.mig_enabled and mig_strategy != "none"
        if not uses_mig:
            rule = sharing.rule_for(contract.NVIDIA_GPU, g)
            resource = sharing.shared_name(rule) if rule else contract.NVIDIA_GPU
            mig = tuple(dataclasses.replace(m, resource="", replicas=1) for m in g.mig)
            out.append(dataclasses.replace(g, resource=resource, replicas=rule.replicas if rule else 1, mig=mig))
            continue
        migs = []
        for m in g.mig:
            base = contract.NVIDIA_GPU if mig_strategy == "single" else contract.mig_resource(m.profile)
            rule = sharing.rule_for(base, g)
            resource = sharing.shared_name(rule) if rule else base
            migs.append(dataclasses.replace(m, resource=resource, replicas=rule.replicas if rule else 1))
        out.append(dataclasses.replace(g, resource="", replicas=1, mig=tuple(migs)))
    return tuple(out)


def advertise(gpus: tuple[contract.Gpu, ...]) -> dict[str, tuple[Device, ...]]:
    """The kubelet's device list per resource, from planned GPUs; a GPU's health covers its
    MIG devices and shares (a MIG device can also be Unhealthy on its own)."""
    out: dict[str, list[Device]] = {}

    def add(resource: str, visible: str, replicas: int, g: contract.Gpu, healthy: bool) -> None:
        devices = out.setdefault(resource, [])
        if replicas <= 1:
            devices.append(Device(visible, g.id, visible, g.numa_node, healthy))
            return
        for n in range(replicas):
            devices.append(Device(contract.share_id(visible, n), g.id, visible, g.numa_node, healthy, replicas))

    for g in gpus:
        if g.resource:
            add(g.resource, g.id, g.replicas, g, g.healthy)
        for m in g.mig:
            if m.resource:
                add(m.resource, m.id, m.replicas, g, g.healthy and m.healthy)
    return {r: tuple(d) for r, d in out.items()}


def index(devices: Mapping[str, tuple[Device, ...]]) -> dict[str, Device]:
    return {d.id: d for ds in devices.values() for d in ds}
