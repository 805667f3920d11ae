"""The plugin over real gRPC Unix sockets, driven by a kubelet stand-in as the kubelet drives it."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import grpc
import pytest

from device_plugin.fakes import nvml as fake_nvml
from device_plugin.manager import Manager
from gpupack_cli.kubelet_standin import STREAM_DEADLINE_S, KubeletStandIn
from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb


def connect(kubelet: KubeletStandIn) -> tuple[pb.RegisterRequest, grpc.Channel, object]:
    reg = kubelet.next_registration()
    channel, stub = kubelet.plugin(reg.endpoint)
    return reg, channel, stub


def test_registers_with_version_endpoint_and_preferred_allocation(plugin: Manager, kubelet: KubeletStandIn) -> None:
    reg = kubelet.next_registration()
    assert reg.version == "v1beta1"
    assert reg.resource_name == "nvidia.com/gpu"
    assert reg.endpoint == "gpupack-nvidia.com_gpu.sock"
    assert reg.options.get_preferred_allocation_available is True
    assert (kubelet.folder / reg.endpoint).exists()


def test_initial_list_has_every_gpu_healthy_with_its_numa_node(plugin: Manager, kubelet: KubeletStandIn, a100: fake_nvml.FakeNvml) -> None:
    _, channel, stub = connect(kubelet)
    first = next(stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S))  # type: ignore[attr-defined]
    assert [d.ID for d in first.devices] == [g.uuid for g in a100.gpus]
    assert {d.health for d in first.devices} == {"Healthy"}
    # DGX A100: GPUs 0-3 on NUMA node 0, 4-7 on node 1
    assert [d.topology.nodes[0].ID for d in first.devices] == [0, 0, 0, 0, 1, 1, 1, 1]
    options = stub.GetDevicePluginOptions(pb.Empty())  # type: ignore[attr-defined]
    assert options.get_preferred_allocation_available
    channel.close()


def test_xid_79_turns_gpu_unhealthy_and_recovery_turns_it_back(plugin: Manager, kubelet: KubeletStandIn, a100: fake_nvml.FakeNvml) -> None:
    _, channel, stub = connect(kubelet)
    stream = stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)  # type: ignore[attr-defined]
    next(stream)
    a100.lose(3)  # XID 79: fallen off the bus; NVML queries on it fail
    update = next(stream)
    health = {d.ID: d.health for d in update.devices}
    assert health[a100.gpus[3].uuid] == "Unhealthy"
    assert sum(h == "Unhealthy" for h in health.values()) == 1
    a100.recover(3)  # answers again: two good probes later it is Healthy
    update = next(stream)
    assert {d.health for d in update.devices} == {"Healthy"}
    channel.close()


def test_application_xid_13_is_ignored(plugin: Manager, kubelet: KubeletStandIn, a100: fake_nvml.FakeNvml) -> None:
    _, channel, stub = connect(kubelet)
    stream = stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)  # type: ignore[attr-defined]
    next(stream)
    a100.inject_xid(2, 13)  # application error: no new list
    a100.inject_xid(5, 48)  # double-bit ECC: a new list, with only GPU 5 Unhealthy
    update = next(stream)
    unhealthy = [d.ID for d in update.devices if d.health == "Unhealthy"]
    assert unhealthy == [a100.gpus[5].uuid]
    channel.close()


def test_nvml_failure_marks_every_gpu_unhealthy_without_crashing(plugin: Manager, kubelet: KubeletStandIn, a100: fake_nvml.FakeNvml) -> None:
    _, channel, stub = connect(kubelet)
    stream = stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)  # type: ignore[attr-defined]
    next(stream)
    a100.broken = True  # every NVML call now fails
    update = next(stream)
    assert {d.health for d in update.devices} == {"Unhealthy"}
    a100.broken = False
    update = next(stream)
    assert {d.health for d in update.devices} == {"Healthy"}
    channel.close()


def test_allocate_returns_visible_devices_and_refuses_unknown_ids(plugin: Manager, kubelet: KubeletStandIn, a100: fake_nvml.FakeNvml) -> None:
    _, channel, stub = connect(kubelet)
    ids = [a100.gpus[0].uuid, a100.gpus[1].uuid]
    resp = stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)]))  # type: ignore[attr-defined]
    c = resp.container_responses[0]
    assert c.envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(ids)
    assert len(c.devices) == 0  # no device specs unless --pass-device-specs
    with pytest.raises(grpc.RpcError) as err:
        stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=["GPU-nope", ids[0]])]))  # type: ignore[attr-defined]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GPU-nope" in err.value.details()
    channel.close()


def test_allocate_refuses_unhealthy_ids(plugin: Manager, kubelet: KubeletStandIn, a100: fake_nvml.FakeNvml) -> None:
    _, channel, stub = connect(kubelet)
    stream = stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)  # type: ignore[attr-defined]
    next(stream)
    a100.lose(4)
    next(stream)
    with pytest.raises(grpc.RpcError) as err:
        stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[a100.gpus[4].uuid])]))  # type: ignore[attr-defined]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unhealthy" in err.value.details() and a100.gpus[4].uuid in err.value.details()
    channel.close()


def test_pass_device_specs_gives_device_nodes(a100: fake_nvml.FakeNvml, kubelet: KubeletStandIn, start_manager: Callable[..., Manager]) -> None:
    start_manager(a100, kubelet.folder, pass_device_specs=True)
    _, channel, stub = connect(kubelet)
    resp = stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[a100.gpus[6].uuid])]))  # type: ignore[attr-defined]
    paths = [d.host_path for d in resp.container_responses[0].devices]
    assert paths == ["/dev/nvidia6", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"]
    assert {d.permissions for d in resp.container_responses[0].devices} == {"rw"}
    channel.close()


@pytest.mark.parametrize(
    "machine, available, must, size, expected",
    [
        # DGX A100, all free: 4 GPUs on one NUMA node (all pairs are 12 NVLinks via NVSwitch)
        ("a100", range(8), [], 4, [0, 1, 2, 3]),
        # NUMA 0 has 3 free (1 used), NUMA 1 has 4: one GPU goes to the broken NUMA node 0
        ("a100", [1, 2, 3, 4, 5, 6, 7], [], 1, [1]),
        # must-include GPU 6 on NUMA 1: the other three come from NUMA 1 too
        ("a100", range(8), [6], 4, [4, 5, 6, 7]),
        # H100 PCIe pairs: 2 GPUs = one bridged pair (4 links) rather than two halves
        ("h100", [0, 2, 3, 5], [], 2, [2, 3]),
        # one GPU: take 0 or 5 whose partner is busy, keep pair (2,3) whole; NUMA 1 then packs
        ("h100", [0, 2, 3, 5, 6, 7], [], 1, [0]),
        # 4 GPUs: two whole pairs on one NUMA node (links 4+4) beats any split
        ("h100", range(8), [], 4, [0, 1, 2, 3]),
    ],
)
def test_preferred_allocation_is_nvlink_and_numa_local(
    machine: str, available: list[int], must: list[int], size: int, expected: list[int],
    kubelet: KubeletStandIn, start_manager: Callable[..., Manager],
) -> None:
    nvml = fake_nvml.a100_sxm4_8x() if machine == "a100" else fake_nvml.h100_pcie_pairs()
    start_manager(nvml, kubelet.folder)
    _, channel, stub = connect(kubelet)
    uuid = [g.uuid for g in nvml.gpus]
    resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[  # type: ignore[attr-defined]
        pb.ContainerPreferredAllocationRequest(
            available_deviceIDs=[uuid[i] for i in available],
            must_include_deviceIDs=[uuid[i] for i in must],
            allocation_size=size,
        )
    ]))
    assert sorted(uuid.index(d) for d in resp.container_responses[0].deviceIDs) == expected
    channel.close()


def test_preferred_allocation_refuses_unknown_ids(plugin: Manager, kubelet: KubeletStandIn) -> None:
    _, channel, stub = connect(kubelet)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[  # type: ignore[attr-defined]
            pb.ContainerPreferredAllocationRequest(available_deviceIDs=["GPU-x"], allocation_size=1)
        ]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "GPU-x" in err.value.details()
    channel.close()


def test_kubelet_restart_leads_to_reregistration(plugin: Manager, kubelet: KubeletStandIn) -> None:
    first = kubelet.next_registration()
    kubelet.restart()  # removes our socket and recreates kubelet.sock
    again = kubelet.next_registration()
    assert again.resource_name == first.resource_name
    assert (kubelet.folder / again.endpoint).exists()
    channel, stub = kubelet.plugin(again.endpoint)
    assert len(next(stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)).devices) == 8
    channel.close()


def test_removed_socket_is_served_and_registered_again(plugin: Manager, kubelet: KubeletStandIn) -> None:
    reg = kubelet.next_registration()
    # start() returns after the first registration, so the counter already holds it
    assert plugin.metrics.registrations.labels("nvidia.com/gpu")._value.get() == 1
    (kubelet.folder / reg.endpoint).unlink()
    again = kubelet.next_registration()
    assert again.endpoint == reg.endpoint and (kubelet.folder / reg.endpoint).exists()


def test_registration_waits_for_a_kubelet_that_starts_later(short_dir: pathlib.Path, a100: fake_nvml.FakeNvml, start_manager: Callable[..., Manager]) -> None:
    start_manager(a100, short_dir)  # no kubelet.sock yet: registration fails and is retried
    kubelet = KubeletStandIn(short_dir)
    kubelet.start()
    try:
        assert kubelet.next_registration().resource_name == "nvidia.com/gpu"
    finally:
        kubelet.stop()
