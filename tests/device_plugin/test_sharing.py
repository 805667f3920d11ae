"""Time-sliced shares: naming, per-GPU replicas, packing, fan-out of health, refusals."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from device_plugin import resources
from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.fakes import nvml as fake_nvml
from device_plugin.manager import Manager
from device_plugin.resources import Layout, ShareRule, Sharing
from gpupack import contract, topology
from gpupack_cli.kubelet_standin import STREAM_DEADLINE_S, KubeletStandIn
from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb


def h100() -> tuple[fake_nvml.FakeNvml, tuple[contract.Gpu, ...]]:
    nvml = fake_nvml.h100_pcie_pairs("share-node")
    return nvml, NvmlBackend(nvml).discover()


def test_shares_have_replica_ids_under_the_same_name() -> None:
    _, gpus = h100()
    devices = resources.advertise(resources.plan(gpus, sharing=Sharing((ShareRule("nvidia.com/gpu", 4),))))
    ids = [d.id for d in devices["nvidia.com/gpu"]]
    assert len(ids) == 32 and ids[:4] == [f"{gpus[0].id}::{n}" for n in range(4)]
    assert {d.visible_id for d in devices["nvidia.com/gpu"][:4]} == {gpus[0].id}


def test_rename_by_default_and_per_gpu_replicas_let_dedicated_and_shared_gpus_live_together() -> None:
    _, gpus = h100()
    sharing = Sharing(
        (ShareRule("nvidia.com/gpu", 4, devices=("0", "1")), ShareRule("nvidia.com/gpu", 2, devices=(gpus[2].id,))),
        rename_by_default=True,
    )
    planned = resources.plan(gpus, sharing=sharing)
    devices = resources.advertise(planned)
    # GPUs 0 and 1: 4 shares each; GPU 2 (by UUID): 2 shares; GPUs 3-7 stay whole
    assert {r: len(d) for r, d in devices.items()} == {"nvidia.com/gpu.shared": 10, "nvidia.com/gpu": 5}
    assert [g.replicas for g in planned] == [4, 4, 2, 1, 1, 1, 1, 1]


def test_shares_of_mig_slices() -> None:
    nvml = fake_nvml.h100_pcie_pairs("mig-share")
    nvml.set_mig(0, ["1g.10gb"] * 7)
    gpus = NvmlBackend(nvml).discover()
    planned = resources.plan(gpus, "mixed", Sharing((ShareRule("nvidia.com/mig-1g.10gb", 2),)))
    devices = resources.advertise(planned)
    assert len(devices["nvidia.com/mig-1g.10gb"]) == 14
    assert devices["nvidia.com/mig-1g.10gb"][1].id == f"{gpus[0].mig[0].id}::1"


def test_amd_or_intel_with_sharing_is_refused() -> None:
    amd = contract.Gpu(id="0000:0c:00.0", index=0, vendor="amd", model="AMD Instinct MI300X", memory_mib=196592, resource=contract.AMD_GPU)
    with pytest.raises(resources.StrategyError, match="AMD GPUs are advertised as whole devices only"):
        resources.plan((amd,), sharing=Sharing((ShareRule("nvidia.com/gpu", 2),)))
    with pytest.raises(resources.StrategyError, match="whole devices only"):
        resources.plan((amd,), "mixed")


# Three GPUs a, b, c with 4 shares each; "a" has 3 in use (1 left), "b" 1 in use, "c" none.
SHARES = {"a::3": "a", "b::1": "b", "b::2": "b", "b::3": "b", "c::0": "c", "c::1": "c", "c::2": "c", "c::3": "c"}
REPLICAS = {"a": 4, "b": 4, "c": 4}


@pytest.mark.parametrize(
    "size, must, distinct, expected",
    [
        (1, [], False, ["a::3"]),  # the busiest GPU's last share: b and c keep more room
        (2, [], False, ["a::3", "b::1"]),  # then the next busiest
        (3, [], False, ["a::3", "b::1", "b::2"]),  # a is full after one, then b fills up
        (2, [], True, ["a::3", "b::1"]),  # distinct GPUs, busiest first
        (3, [], True, ["a::3", "b::1", "c::0"]),
        (2, ["c::2"], False, ["c::2", "a::3"]),  # must-include kept, then packing
    ],
)
def test_share_packing(size: int, must: list[str], distinct: bool, expected: list[str]) -> None:
    assert topology.choose_shares(list(SHARES), must, size, SHARES, REPLICAS, distinct) == expected


def shared_manager(kubelet: KubeletStandIn, start: Callable[..., Manager], **sharing: object) -> tuple[fake_nvml.FakeNvml, Manager]:
    nvml = fake_nvml.h100_pcie_pairs("grpc-share")
    m = start(nvml, kubelet.folder, layout=Layout(sharing=Sharing((ShareRule("nvidia.com/gpu", 4),), **sharing)))  # type: ignore[arg-type]
    return nvml, m


def test_allocate_maps_shares_to_distinct_physical_uuids(kubelet: KubeletStandIn, start_manager: Callable[..., Manager]) -> None:
    nvml, _ = shared_manager(kubelet, start_manager)
    channel, stub = kubelet.plugin(kubelet.next_registration().endpoint)
    u0, u1 = nvml.gpus[0].uuid, nvml.gpus[1].uuid
    resp = stub.Allocate(pb.AllocateRequest(container_requests=[
        pb.ContainerAllocateRequest(devices_ids=[f"{u0}::0", f"{u0}::1", f"{u1}::3"])
    ]))
    assert resp.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == f"{u0},{u1}"
    channel.close()


def test_fail_requests_greater_than_one(kubelet: KubeletStandIn, start_manager: Callable[..., Manager]) -> None:
    nvml, _ = shared_manager(kubelet, start_manager, fail_requests_greater_than_one=True)
    channel, stub = kubelet.plugin(kubelet.next_registration().endpoint)
    u0 = nvml.gpus[0].uuid
    with pytest.raises(grpc.RpcError) as err:
        stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[f"{u0}::0", f"{u0}::1"])]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "failRequestsGreaterThanOne" in err.value.details()
    one = stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[f"{u0}::0"])]))
    assert one.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == u0
    channel.close()


def test_health_event_fans_out_to_every_share(kubelet: KubeletStandIn, start_manager: Callable[..., Manager]) -> None:
    nvml, _ = shared_manager(kubelet, start_manager)
    channel, stub = kubelet.plugin(kubelet.next_registration().endpoint)
    stream = stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)
    next(stream)
    nvml.inject_xid(2, 94)
    update = next(stream)
    bad = sorted(d.ID for d in update.devices if d.health == "Unhealthy")
    assert bad == [f"{nvml.gpus[2].uuid}::{n}" for n in range(4)]
    channel.close()


def test_preferred_allocation_packs_shares_over_grpc(kubelet: KubeletStandIn, start_manager: Callable[..., Manager]) -> None:
    nvml, _ = shared_manager(kubelet, start_manager)
    channel, stub = kubelet.plugin(kubelet.next_registration().endpoint)
    u = [g.uuid for g in nvml.gpus]
    # GPU 5 has two shares in use, the rest none: a 1-share request goes to GPU 5
    available = [f"{g}::{n}" for g in u for n in range(4) if not (g == u[5] and n < 2)]
    resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
        pb.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=1)
    ]))
    assert list(resp.container_responses[0].deviceIDs) == [f"{u[5]}::2"]
    channel.close()
