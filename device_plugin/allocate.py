"""What a container is given for its devices: the NVIDIA container toolkit's environment and,
optionally, device nodes. Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from device_plugin.resources import Device

VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"


class AllocationError(ValueError):
    """Refused ids; the message names them."""


@dataclasses.dataclass(frozen=True)
class ContainerAllocation:
    envs: dict[str, str]
    device_nodes: tuple[str, ...]  # host paths, mapped to the same path in the container


def allocate(
    ids: Sequence[str],
    devices: Mapping[str, Device],
    device_nodes: Callable[[list[str]], list[str]] | None,
) -> ContainerAllocation:
    """Checks every id is known and Healthy; lists the distinct physical devices it maps to."""
    unknown = [i for i in ids if i not in devices]
    if unknown:
        raise AllocationError(f"unknown device ids: {', '.join(unknown)}")
    unhealthy = [i for i in ids if not devices[i].healthy]
    if unhealthy:
        raise AllocationError(f"unhealthy device ids: {', '.join(unhealthy)}")
    visible = list(dict.fromkeys(devices[i].visible_id for i in ids))
    nodes: tuple[str, ...] = ()
    if device_nodes is not None:
        gpus = list(dict.fromkeys(devices[i].gpu_id for i in ids))
        nodes = tuple(dict.fromkeys(device_nodes(gpus)))
    return ContainerAllocation({VISIBLE_DEVICES: ",".join(visible)}, nodes)
