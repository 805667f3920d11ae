"""``allocate`` as a table: which ids are refused (and how the refusal names them), and how
shares map to distinct physical devices, in the order the kubelet gave them."""

from __future__ import annotations

import pytest

from device_plugin.allocate import AllocationError, allocate
from device_plugin.discovery.backend import ContainerEdits
from device_plugin.resources import Device


def _dev(id_: str, visible: str, healthy: bool = True, replicas: int = 1) -> Device:
    return Device(id=id_, gpu_id=visible, visible_id=visible, numa_node=0, healthy=healthy, replicas=replicas)


DEVICES = {d.id: d for d in [
    *(_dev(f"GPU-0::{n}", "GPU-0", replicas=4) for n in range(4)),
    *(_dev(f"GPU-1::{n}", "GPU-1", replicas=4) for n in range(4)),
    _dev("GPU-2", "GPU-2"),
    _dev("MIG-a", "MIG-a"),
    _dev("MIG-b", "MIG-b"),
    _dev("GPU-3", "GPU-3", healthy=False),
    _dev("GPU-4::0", "GPU-4", healthy=False, replicas=2),
    _dev("GPU-4::1", "GPU-4", healthy=False, replicas=2),
]}


def _edits(visible: list[str]) -> ContainerEdits:
    return ContainerEdits(envs={"NVIDIA_VISIBLE_DEVICES": ",".join(visible)}, device_nodes=tuple(visible))


@pytest.mark.parametrize(
    "ids, visible",
    [
        ([], []),
        (["GPU-0::0"], ["GPU-0"]),
        (["GPU-0::0", "GPU-0::1"], ["GPU-0"]),
        (["GPU-0::3", "GPU-0::2", "GPU-0::1", "GPU-0::0"], ["GPU-0"]),
        (["GPU-0::0", "GPU-1::0"], ["GPU-0", "GPU-1"]),
        (["GPU-1::2", "GPU-0::0"], ["GPU-1", "GPU-0"]),  # the kubelet's order, not sorted
        (["GPU-0::0", "GPU-1::1", "GPU-0::2", "GPU-1::3"], ["GPU-0", "GPU-1"]),  # first appearance
        (["GPU-2", "GPU-0::1"], ["GPU-2", "GPU-0"]),
        (["MIG-b", "MIG-a"], ["MIG-b", "MIG-a"]),
        (["GPU-0::0", "GPU-0::0"], ["GPU-0"]),
    ],
)
def test_shares_map_to_distinct_devices_in_order(ids: list[str], visible: list[str]) -> None:
    seen: list[list[str]] = []

    def edits(v: list[str]) -> ContainerEdits:
        seen.append(v)
        return _edits(v)

    out = allocate(ids, DEVICES, edits)
    assert seen == [visible]
    assert out == _edits(visible)


@pytest.mark.parametrize(
    "ids, message",
    [
        (["nope"], "unknown device ids: nope"),
        (["GPU-0::0", "x", "GPU-9::1"], "unknown device ids: x, GPU-9::1"),
        (["GPU-3"], "unhealthy device ids: GPU-3"),
        (["GPU-0::0", "GPU-4::1", "GPU-3", "GPU-4::0"], "unhealthy device ids: GPU-4::1, GPU-3, GPU-4::0"),
        (["GPU-3", "nope"], "unknown device ids: nope"),  # unknown ids are named first
    ],
)
def test_refusals_name_every_refused_id(ids: list[str], message: str) -> None:
    called: list[list[str]] = []
    with pytest.raises(AllocationError) as err:
        allocate(ids, DEVICES, lambda v: called.append(v) or _edits(v))  # type: ignore[func-returns-value]
    assert str(err.value) == message
    assert called == []
    assert isinstance(err.value, ValueError)
