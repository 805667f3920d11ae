"""Intel GPUs from a fake sysfs tree: i915, xe and both on one node, presence health, and the plugin over gRPC."""

from __future__ import annotations

import json
import os
import pathlib

import pynvml
import pytest

from device_plugin import discovery
from device_plugin.discovery import DiscoveryError
from device_plugin.discovery import intel as sysfs_intel
from device_plugin.fakes import sysfs as fake_sysfs
from device_plugin.health import HealthSettings
from device_plugin.manager import Manager
from gpupack import contract
from gpupack_cli.kubelet_standin import STREAM_DEADLINE_S, KubeletStandIn
from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb


@pytest.mark.parametrize(
    "driver, device_id, resource, model, mib",
    [
        # i915 writes lmem_total_bytes on the card: 16 GiB = 16384 MiB
        ("i915", 0x56C0, contract.INTEL_I915, "Intel Data Center GPU Flex 170", 16384),
        # xe writes each tile's VRAM: Max 1550 has two tiles of 64 GiB = 131072 MiB in all
        ("xe", 0x0BD5, contract.INTEL_XE, "Intel Data Center GPU Max 1550", 131072),
    ],
)
def test_cards_on_each_driver(tmp_path: pathlib.Path, driver: str, device_id: int, resource: str, model: str, mib: int) -> None:
    node = fake_sysfs.intel_cards(tmp_path, driver=driver, count=4, device_id=device_id)
    backend = sysfs_intel.IntelBackend(node.sysfs, node.dev)
    gpus = backend.discover()
    # card0-DP-1 is a display connector of card0, not a fifth GPU
    assert [g.id for g in gpus] == ["0000:18:00.0", "0000:28:00.0", "0000:38:00.0", "0000:48:00.0"]
    assert [g.pci_bus_id for g in gpus] == [g.id for g in gpus]  # no UUID: the PCI address is the id
    assert [g.numa_node for g in gpus] == [0, 0, 1, 1]
    assert {(g.vendor, g.model, g.memory_mib, g.resource, g.healthy) for g in gpus} == {("intel", model, mib, resource, True)}
    edits = backend.container_edits([gpus[1].id, gpus[3].id], pass_device_specs=False)
    assert edits.envs == {}
    assert edits.device_nodes == ("/dev/dri/card1", "/dev/dri/renderD129", "/dev/dri/card3", "/dev/dri/renderD131")


def test_node_with_i915_and_xe_cards_advertises_both_resources(tmp_path: pathlib.Path) -> None:
    fake_sysfs.intel_cards(tmp_path, driver="i915", count=2)
    node = fake_sysfs.intel_cards(tmp_path, driver="xe", count=2, device_id=0xE20B)
    gpus = sysfs_intel.IntelBackend(node.sysfs, node.dev).discover()
    assert [(g.index, g.resource, g.model) for g in gpus] == [
        (0, contract.INTEL_I915, "Intel Data Center GPU Flex 170"),
        (1, contract.INTEL_I915, "Intel Data Center GPU Flex 170"),
        (2, contract.INTEL_XE, "Intel Arc B580"),
        (3, contract.INTEL_XE, "Intel Arc B580"),
    ]


def test_integrated_gpu_has_no_local_memory_and_unknown_ids_keep_their_number(tmp_path: pathlib.Path) -> None:
    node = fake_sysfs.FakeNode(tmp_path)
    fake_sysfs.add_intel_card(node, "0000:00:02.0", 0, device_id=0x46A6)  # Alder Lake UHD: not in the table
    (gpu,) = sysfs_intel.IntelBackend(node.sysfs, node.dev).discover()
    assert (gpu.model, gpu.memory_mib) == ("Intel GPU 0x46a6", 0)


def test_cards_of_other_vendors_and_drivers_are_not_intel_gpus(tmp_path: pathlib.Path) -> None:
    amd = fake_sysfs.mi300x_8x(tmp_path)  # BMC card0 (ast) and eight amdgpu cards
    with pytest.raises(DiscoveryError, match=r"none of the 9 DRM card\(s\) under .* has vendor 0x8086 and the i915 or xe driver"):
        sysfs_intel.IntelBackend(amd.sysfs, amd.dev).discover()
    fake_sysfs.add_intel_card(amd, "0000:f0:00.0", 9, driver="vfio-pci")  # passed through to a VM
    fake_sysfs.add_intel_card(amd, "0000:f1:00.0", 10, driver="xe")
    (gpu,) = sysfs_intel.IntelBackend(amd.sysfs, amd.dev).discover()
    assert gpu.id == "0000:f1:00.0"


def test_missing_drm_class_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DiscoveryError, match=r"no Intel GPU found: cannot read .*class/drm .*--sysfs-root"):
        discovery.open_backend("intel", sysfs_root=tmp_path, dev_root=tmp_path)


def test_card_that_disappears_is_unhealthy_until_it_is_back(tmp_path: pathlib.Path) -> None:
    node = fake_sysfs.intel_cards(tmp_path, driver="xe", count=2)
    backend = sysfs_intel.IntelBackend(node.sysfs, node.dev)
    gpus = backend.discover()
    assert backend.wait_event(0) is None
    fake_sysfs.remove_device(node.root, gpus[0].id)
    assert not (node.sysfs / "class/drm/card0").exists()
    event = backend.wait_event(0)
    assert event is not None and event.gpu_id == gpus[0].id and "is gone" in event.reason
    assert backend.wait_event(0) is None
    assert backend.probe(gpus[0].id) is not None and backend.probe(gpus[1].id) is None
    fake_sysfs.restore_device(node.root, gpus[0].id)
    assert backend.probe(gpus[0].id) is None
    backend.close()


def test_auto_finds_intel_gpus_after_nvml_and_amd(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    node = fake_sysfs.intel_cards(tmp_path, driver="i915", count=1)
    backend = discovery.open_backend("auto", sysfs_root=node.sysfs, dev_root=node.dev)
    assert backend.name == "intel"
    backend.close()


def write(path: pathlib.Path, gpus: list[dict[str, object]], tick: int) -> None:
    path.write_text(json.dumps({"gpus": gpus}))
    os.utime(path, ns=(tick * 10**9, tick * 10**9))  # a distinct mtime: no waiting for the clock


def test_fake_inventory_of_intel_gpus_runs_the_intel_backend(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "node.json"
    gpus: list[dict[str, object]] = [
        {"vendor": "intel", "driver": "i915", "model": "Intel Data Center GPU Flex 170", "pciBusId": "0000:4d:00.0", "numaNode": 0},
        {"vendor": "intel", "driver": "xe", "model": "Intel Data Center GPU Max 1550", "memoryMiB": 131072,
         "pciBusId": "0000:9a:00.0", "numaNode": 1},
    ]
    write(f, gpus, 1)
    backend = discovery.open_backend("fake", f)
    try:
        found = backend.discover()
        assert [(g.id, g.resource, g.memory_mib, g.numa_node) for g in found] == [
            ("0000:4d:00.0", contract.INTEL_I915, 16384, 0),
            ("0000:9a:00.0", contract.INTEL_XE, 131072, 1),
        ]
        gpus[0]["healthy"] = False
        write(f, gpus, 2)
        event = backend.wait_event(0)
        assert event is not None and event.gpu_id == "0000:4d:00.0"
        gpus[0]["healthy"] = True
        write(f, gpus, 3)
        assert backend.wait_event(0) is None and backend.probe("0000:4d:00.0") is None
    finally:
        backend.close()


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"vendor": "intel", "driver": "nouveau", "model": "Intel Arc A770"}, r"gpus\[0\]: driver: expected i915 or xe, got 'nouveau'"),
        ({"vendor": "intel", "model": "Intel Arc Z9000"}, r"gpus\[0\]: unknown Intel model 'Intel Arc Z9000'; known: "),
    ],
    ids=["bad-driver", "unknown-model"],
)
def test_bad_intel_fake_inventory_is_a_clear_error(tmp_path: pathlib.Path, entry: dict[str, object], message: str) -> None:
    f = tmp_path / "bad.json"
    write(f, [entry], 1)
    with pytest.raises(DiscoveryError, match=message):
        discovery.open_backend("fake", f)


def test_plugin_serves_i915_and_xe_each_with_their_device_nodes(tmp_path: pathlib.Path, kubelet: KubeletStandIn) -> None:
    fake_sysfs.intel_cards(tmp_path, driver="i915", count=2)
    node = fake_sysfs.intel_cards(tmp_path, driver="xe", count=2, device_id=0x0BD5)
    manager = Manager(
        sysfs_intel.IntelBackend(node.sysfs, node.dev), kubelet.folder,
        health=HealthSettings(probe_interval_s=0.05, recovery_probes=2),
    )
    manager.start()
    try:
        regs = {r.resource_name: r for r in (kubelet.next_registration(), kubelet.next_registration())}
        assert sorted(regs) == [contract.INTEL_I915, contract.INTEL_XE]
        channel, stub = kubelet.plugin(regs[contract.INTEL_XE].endpoint)
        stream = stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)
        first = next(stream)
        assert [d.ID for d in first.devices] == ["0000:38:00.0", "0000:48:00.0"]
        resp = stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=["0000:48:00.0"])]))
        assert [d.host_path for d in resp.container_responses[0].devices] == ["/dev/dri/card3", "/dev/dri/renderD131"]

        fake_sysfs.remove_device(node.root, "0000:48:00.0")
        update = next(stream)
        assert [d.ID for d in update.devices if d.health == "Unhealthy"] == ["0000:48:00.0"]
        fake_sysfs.restore_device(node.root, "0000:48:00.0")
        update = next(stream)
        assert {d.health for d in update.devices} == {"Healthy"}
        channel.close()
    finally:
        manager.stop()
