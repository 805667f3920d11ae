"""Checks a container's device ids and turns them into what the container is given. Pure.

:func:`allocate` refuses unknown and Unhealthy ids and asks for the edits of the distinct
physical devices. What ``Allocate`` then answers is one of two ways, by name
(``cdi.allocate`` in the config, refused at start-up when unknown):

- ``env``: the backend's edits as they are: environment (``NVIDIA_VISIBLE_DEVICES``) and,
  where the backend gives them, device nodes as device specs;
- ``cdi``: the CDI names of the kubelet's device ids (:func:`device_plugin.cdi.qualified_name`),
  which the runtime resolves to the device nodes in our specs, plus the environment, which
  the specs do not carry (a list over the container's devices; see :mod:`device_plugin.cdi`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from device_plugin import cdi
from device_plugin.discovery.backend import ContainerEdits
from device_plugin.resources import Device

Edits = Callable[[list[str]], ContainerEdits]


class AllocationError(ValueError):
    """Refused ids; the message names them."""


@dataclasses.dataclass(frozen=True)
class Grant:
    """What one container is given: the Allocate answer, before protobuf."""

    envs: dict[str, str]
    device_nodes: tuple[str, ...]  # host paths, mapped to the same path in the container
    cdi_devices: tuple[str, ...] = ()  # fully qualified CDI device names


def allocate(ids: Sequence[str], devices: Mapping[str, Device], edits: Edits) -> ContainerEdits:
    """Refuses unknown or Unhealthy ids; maps shares to distinct physical devices, in order."""
    unknown = [i for i in ids if i not in devices]
    if unknown:
        raise AllocationError(f"unknown device ids: {', '.join(unknown)}")
    unhealthy = [i for i in ids if not devices[i].healthy]
    if unhealthy:
        raise AllocationError(f"unhealthy device ids: {', '.join(unhealthy)}")
    return edits(list(dict.fromkeys(devices[i].visible_id for i in ids)))


def grant_env(ids: Sequence[str], devices: Mapping[str, Device], edits: Edits) -> Grant:
    given = allocate(ids, devices, edits)
    return Grant(given.envs, given.device_nodes)


def grant_cdi(ids: Sequence[str], devices: Mapping[str, Device], edits: Edits) -> Grant:
    # Device nodes come from the spec; one name per kubelet id (two shares of one GPU name
    # the same nodes, which the runtime merges).
    given = allocate(ids, devices, edits)
    return Grant(given.envs, (), tuple(cdi.qualified_name(i) for i in dict.fromkeys(ids)))


GRANTS: dict[str, Callable[[Sequence[str], Mapping[str, Device], Edits], Grant]] = {
    "env": grant_env,
    "cdi": grant_cdi,
}
