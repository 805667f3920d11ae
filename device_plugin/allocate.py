"""Checks a container's device ids and turns them into what the container is given. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from device_plugin.discovery.backend import ContainerEdits
from device_plugin.resources import Device


class AllocationError(ValueError):
    """Refused ids; the message names them."""


def allocate(
    ids: Sequence[str],
    devices: Mapping[str, Device],
    edits: Callable[[list[str]], ContainerEdits],
) -> ContainerEdits:
    """Refuses unknown or Unhealthy ids; maps shares to distinct physical devices, in order."""
    unknown = [i for i in ids if i not in devices]
    if unknown:
        raise AllocationError(f"unknown device ids: {', '.join(unknown)}")
    unhealthy = [i for i in ids if not devices[i].healthy]
    if unhealthy:
        raise AllocationError(f"unhealthy device ids: {', '.join(unhealthy)}")
    return edits(list(dict.fromkeys(devices[i].visible_id for i in ids)))
