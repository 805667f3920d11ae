"""MIG: discovery through NVML, the none/single/mixed strategies, caps nodes, layout changes."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import grpc
import pytest

from device_plugin import resources
from device_plugin.discovery.nvml import NvmlBackend, mig_profile_name
from device_plugin.fakes import nvml as fake_nvml
from device_plugin.manager import Manager
from gpupack_cli.kubelet_standin import STREAM_DEADLINE_S, KubeletStandIn
from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb

A100_40GB = 40960 * 2**20
H100_80GB = 81559 * 2**20


@pytest.mark.parametrize(
    "gi, ci, memory_mb, total, name",
    [
        (1, 1, 4864, A100_40GB, "1g.5gb"),  # 4864/40960 = 0.119 -> 1/8 of 40 GB = 5
        (3, 3, 19968, A100_40GB, "3g.20gb"),  # 0.4875 -> 4/8 of 40 = 20
        (7, 7, 40192, A100_40GB, "7g.40gb"),  # 0.981 -> 8/8 of 40 = 40
        (3, 1, 19968, A100_40GB, "1c.3g.20gb"),  # one compute slice of a 3g instance
        (1, 1, 9856, H100_80GB, "1g.10gb"),  # 9856/81559 = 0.121 -> 1/8 of 80 = 10
        (3, 3, 40192, H100_80GB, "3g.40gb"),
    ],
)
def test_profile_names_follow_nvidia(gi: int, ci: int, memory_mb: int, total: int, name: str) -> None:
    assert mig_profile_name(gi, ci, memory_mb, total) == name


def a100_mixed() -> fake_nvml.FakeNvml:
    nvml = fake_nvml.a100_sxm4_8x("mig-node")
    nvml.set_mig(0, ["3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb"])
    nvml.set_mig(1, ["7g.40gb"])
    return nvml


def h100_single() -> fake_nvml.FakeNvml:
    nvml = fake_nvml.h100_pcie_pairs("h100-mig")
    for i in range(8):
        nvml.set_mig(i, ["1g.10gb"] * 7)
    return nvml


def test_mig_devices_keep_profile_placement_memory_and_parent() -> None:
    gpu = NvmlBackend(a100_mixed()).discover()[0]
    assert gpu.mig_enabled
    assert [(m.profile, m.start, m.size, m.memory_mib) for m in gpu.mig] == [
        ("3g.20gb", 0, 4, 19968), ("2g.10gb", 4, 2, 9984), ("1g.5gb", 6, 1, 4864), ("1g.5gb", 7, 1, 4864)
    ]
    assert all(m.id.startswith("MIG-") for m in gpu.mig)


def test_mixed_strategy_gives_each_profile_its_resource() -> None:
    gpus = resources.plan(NvmlBackend(a100_mixed()).discover(), "mixed")
    counts = {r: len(d) for r, d in resources.advertise(gpus).items()}
    # GPU 0: 3g + 2g + 2x 1g; GPU 1: one 7g; GPUs 2-7 without MIG stay whole
    assert counts == {
        "nvidia.com/mig-3g.20gb": 1, "nvidia.com/mig-2g.10gb": 1, "nvidia.com/mig-1g.5gb": 2,
        "nvidia.com/mig-7g.40gb": 1, "nvidia.com/gpu": 6,
    }
    mig_dev = resources.advertise(gpus)["nvidia.com/mig-1g.5gb"][0]
    assert mig_dev.gpu_id == gpus[0].id and mig_dev.visible_id == gpus[0].mig[2].id


def test_none_strategy_ignores_mig() -> None:
    gpus = resources.plan(NvmlBackend(a100_mixed()).discover(), "none")
    assert {r: len(d) for r, d in resources.advertise(gpus).items()} == {"nvidia.com/gpu": 8}


def test_single_strategy_advertises_mig_devices_as_gpus() -> None:
    gpus = resources.plan(NvmlBackend(h100_single()).discover(), "single")
    devices = resources.advertise(gpus)
    assert list(devices) == ["nvidia.com/gpu"] and len(devices["nvidia.com/gpu"]) == 56
    assert all(d.id.startswith("MIG-") for d in devices["nvidia.com/gpu"])


def test_single_strategy_refuses_a_node_with_two_profiles() -> None:
    with pytest.raises(resources.StrategyError) as err:
        resources.plan(NvmlBackend(a100_mixed()).discover(), "single")
    message = str(err.value)
    assert "GPU 0: 1g.5gb, 1g.5gb, 2g.10gb, 3g.20gb" in message and "GPU 2: MIG off" in message
    assert "Use strategy 'mixed'" in message


def test_mig_allocate_gives_mig_uuids_and_caps_nodes(tmp_path: pathlib.Path, kubelet: KubeletStandIn, start_manager: Callable[..., Manager]) -> None:
    nvml = a100_mixed()
    # the driver's capability files for GPU 0 (minor 0), GPU instance 3, compute instance 0
    caps = tmp_path / "driver/nvidia/capabilities/gpu0/mig/gi3"
    (caps / "ci0").mkdir(parents=True)
    (caps / "access").write_text("DeviceFileMinor: 30\nDeviceFileMode: 292\n")
    (caps / "ci0" / "access").write_text("DeviceFileMinor: 31\nDeviceFileMode: 292\n")
    m = Manager(NvmlBackend(nvml, proc_root=tmp_path), kubelet.folder, pass_device_specs=True, layout=resources.Layout("mixed"))
    m.start()
    try:
        regs = {kubelet.next_registration().resource_name for _ in range(5)}
        assert "nvidia.com/mig-1g.5gb" in regs
        channel, stub = kubelet.plugin("gpupack-nvidia.com_mig-1g.5gb.sock")
        mig = nvml.gpus[0].migs[2]  # the first 1g.5gb, GPU instance 3
        resp = stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[mig.uuid])]))
        c = resp.container_responses[0]
        assert c.envs["NVIDIA_VISIBLE_DEVICES"] == mig.uuid
        paths = [d.host_path for d in c.devices]
        assert paths[:3] == ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap30", "/dev/nvidia-caps/nvidia-cap31"]
        assert "/dev/nvidiactl" in paths
        channel.close()
    finally:
        m.stop()


def test_changed_mig_layout_is_advertised_without_restart(kubelet: KubeletStandIn, start_manager: Callable[..., Manager]) -> None:
    nvml = a100_mixed()
    m = start_manager(nvml, kubelet.folder, layout=resources.Layout("mixed"))
    assert {r: len(m.devices(r)[1]) for r in m.resource_names()}["nvidia.com/mig-1g.5gb"] == 2
    channel, stub = kubelet.plugin("gpupack-nvidia.com_mig-1g.5gb.sock")
    stream = stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)
    assert len(next(stream).devices) == 2
    nvml.set_mig(1, ["1g.5gb"] * 7)  # the operator repartitions GPU 1
    m.rescan()
    assert len(next(stream).devices) == 9
    assert "nvidia.com/mig-7g.40gb" not in m.resource_names()
    assert not (kubelet.folder / "gpupack-nvidia.com_mig-7g.40gb.sock").exists()
    channel.close()


def test_health_event_on_a_gpu_marks_its_mig_devices(kubelet: KubeletStandIn, start_manager: Callable[..., Manager]) -> None:
    nvml = a100_mixed()
    m = start_manager(nvml, kubelet.folder, layout=resources.Layout("mixed"))
    channel, stub = kubelet.plugin("gpupack-nvidia.com_mig-1g.5gb.sock")
    stream = stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)
    next(stream)
    nvml.inject_xid(0, 48)
    assert {d.health for d in next(stream).devices} == {"Unhealthy"}
    with pytest.raises(grpc.RpcError):
        stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[nvml.gpus[0].migs[2].uuid])]))
    channel.close()
    assert m.inventory().gpus[0].mig[0].resource == "nvidia.com/mig-3g.20gb"


def test_reconfigure_to_a_strategy_the_node_breaks_keeps_the_old_one(kubelet: KubeletStandIn, start_manager: Callable[..., Manager]) -> None:
    from device_plugin.health import HealthSettings

    m = start_manager(a100_mixed(), kubelet.folder, layout=resources.Layout("mixed"))
    before = m.resource_names()
    assert not m.reconfigure(resources.Layout("single"), HealthSettings(), False)
    assert m.layout.mig_strategy == "mixed" and m.resource_names() == before
