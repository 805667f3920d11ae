"""Which devices the node advertises, under which resource names, from its GPUs and their health.

Pure. The result maps each extended resource name to the devices the kubelet will see under
it; each device remembers the physical GPU behind it, so health and topology follow it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from gpupack import contract

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


@dataclasses.dataclass(frozen=True)
class Device:
    """One device as advertised to the kubelet."""

    id: str  # the kubelet's device id (GPU UUID, MIG UUID, or <uuid>::<n>)
    gpu_id: str  # the physical GPU behind it
    visible_id: str  # what the container runtime is told (GPU or MIG UUID)
    numa_node: int
    healthy: bool

    @property
    def health(self) -> str:
        return HEALTHY if self.healthy else UNHEALTHY


def advertise(gpus: tuple[contract.Gpu, ...]) -> dict[str, tuple[Device, ...]]:
    """Whole NVIDIA GPUs as ``nvidia.com/gpu``; each GPU's ``healthy`` decides its health."""
    out: dict[str, list[Device]] = {}
    for g in gpus:
        resource = g.resource or contract.NVIDIA_GPU
        out.setdefault(resource, []).append(
            Device(id=g.id, gpu_id=g.id, visible_id=g.id, numa_node=g.numa_node, healthy=g.healthy)
        )
    return {r: tuple(d) for r, d in out.items()}


def with_resources(gpus: tuple[contract.Gpu, ...]) -> tuple[contract.Gpu, ...]:
    """The GPUs with the resource each is advertised under filled in (for the inventory)."""
    return tuple(dataclasses.replace(g, resource=g.resource or contract.NVIDIA_GPU) for g in gpus)


def index(devices: Mapping[str, tuple[Device, ...]]) -> dict[str, Device]:
    return {d.id: d for ds in devices.values() for d in ds}
