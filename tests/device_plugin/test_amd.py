"""AMD GPUs from a fake sysfs tree: discovery, device nodes, presence health, and the whole plugin over gRPC."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator

import pynvml
import pytest

from device_plugin import config, discovery
from device_plugin.discovery import DiscoveryError
from device_plugin.discovery import amd as sysfs_amd
from device_plugin.fakes import sysfs as fake_sysfs
from device_plugin.health import HealthSettings
from device_plugin.manager import Manager
from gpupack import contract
from gpupack_cli.kubelet_standin import STREAM_DEADLINE_S, KubeletStandIn
from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb


@pytest.fixture
def node(tmp_path: pathlib.Path) -> fake_sysfs.FakeNode:
    return fake_sysfs.mi300x_8x(tmp_path)


@pytest.fixture
def amd(node: fake_sysfs.FakeNode) -> Iterator[sysfs_amd.AmdBackend]:
    backend = sysfs_amd.AmdBackend(node.sysfs, node.dev)
    yield backend
    backend.close()


# --- discovery --------------------------------------------------------------------------------


def test_mi300x_node_has_eight_gpus_with_uuids_numa_nodes_and_memory(amd: sysfs_amd.AmdBackend) -> None:
    gpus = amd.discover()
    # KFD nodes 0 and 1 are the CPU sockets (simd_count 0) and card0 is the BMC: neither is a GPU.
    assert [g.index for g in gpus] == list(range(8))
    assert [g.id for g in gpus] == [sysfs_amd.uuid_of(fake_sysfs.unique_id(f"mi300x/{i}")) for i in range(8)]
    assert all(g.id.startswith("GPU-") and len(g.id) == 4 + 16 for g in gpus)
    assert [g.pci_bus_id for g in gpus] == list(fake_sysfs.MI300X_BUSES)
    assert [g.numa_node for g in gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert {g.model for g in gpus} == {"AMD Instinct MI300X"}  # device id 0x74a1
    assert {g.memory_mib for g in gpus} == {196592}  # 206141652992 B / 2**20
    assert {(g.vendor, g.resource, g.healthy) for g in gpus} == {("amd", contract.AMD_GPU, True)}


def test_container_gets_kfd_once_and_each_gpus_card_and_render_node(amd: sysfs_amd.AmdBackend) -> None:
    gpus = amd.discover()
    edits = amd.container_edits([gpus[2].id, gpus[5].id], pass_device_specs=False)
    assert edits.envs == {}
    # GPU i is card(1+i) and renderD(128+i): card0 is the BMC's display
    assert edits.device_nodes == ("/dev/kfd", "/dev/dri/card3", "/dev/dri/renderD130", "/dev/dri/card6", "/dev/dri/renderD133")
    assert amd.container_edits([gpus[2].id], pass_device_specs=True).device_nodes == (
        "/dev/kfd", "/dev/dri/card3", "/dev/dri/renderD130",
    )


@pytest.mark.parametrize(
    "domain, location_id, expected",
    [
        (0, 0x0500, "0000:05:00.0"),  # bus 5, device 0, function 0: 5 << 8
        (0, 0xE5 << 8 | 2 << 3 | 1, "0000:e5:02.1"),  # bus 0xe5, device 2, function 1
        (1, 0x2600, "0001:26:00.0"),  # a second PCI domain
    ],
)
def test_pci_address_from_kfd_location_id(domain: int, location_id: int, expected: str) -> None:
    assert sysfs_amd.bus_id(domain, location_id) == expected


@pytest.mark.parametrize(
    "unique, device_id, product_name, banks, expected_id, expected_model, expected_mib",
    [
        # no unique_id (older GPUs): the PCI address is the id
        (0, 0x740F, "", True, "0000:41:00.0", "AMD Instinct MI210", 65536),
        # product_name (FRU) wins over the device-id table
        (0xABC, 0x740C, "Instinct MI250X", True, "GPU-0000000000000abc", "Instinct MI250X", 65536),
        # an id not in the table; memory from mem_info_vram_total without KFD memory banks
        (0, 0x1234, "", False, "0000:41:00.0", "AMD GPU 0x1234", 65536),
    ],
    ids=["no-unique-id", "product-name", "unknown-id-vram-total"],
)
def test_ids_models_and_memory_fall_back(
    tmp_path: pathlib.Path, unique: int, device_id: int, product_name: str, banks: bool,
    expected_id: str, expected_model: str, expected_mib: int,
) -> None:
    node = fake_sysfs.FakeNode(tmp_path)
    fake_sysfs.add_amd_gpu(node, 1, "0000:41:00.0", card=0, render=128, device_id=device_id,
                           vram_bytes=64 * 2**30, unique=unique, product_name=product_name)
    if not banks:
        (node.sysfs / sysfs_amd.KFD_NODES / "1/mem_banks/0/properties").unlink()
    (gpu,) = sysfs_amd.AmdBackend(node.sysfs, node.dev).discover()
    assert (gpu.id, gpu.model, gpu.memory_mib) == (expected_id, expected_model, expected_mib)


def test_gpu_bound_to_another_driver_is_not_advertised(node: fake_sysfs.FakeNode) -> None:
    pci = node.sysfs / "bus/pci/devices" / fake_sysfs.MI300X_BUSES[7]
    (pci / "driver").unlink()
    (node.sysfs / "bus/pci/drivers/vfio-pci").mkdir()
    (pci / "driver").symlink_to(os.path.relpath(node.sysfs / "bus/pci/drivers/vfio-pci", pci))  # passed to a VM
    gpus = sysfs_amd.AmdBackend(node.sysfs, node.dev).discover()
    assert [g.pci_bus_id for g in gpus] == list(fake_sysfs.MI300X_BUSES[:7])


# --- bad or missing sysfs ---------------------------------------------------------------------


def test_missing_kfd_topology_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DiscoveryError, match=r"no AMD GPU found: cannot read the KFD topology .*class/kfd/kfd/topology/nodes.*--sysfs-root"):
        sysfs_amd.AmdBackend(tmp_path, tmp_path).discover()


def test_topology_with_only_cpu_nodes_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    node = fake_sysfs.FakeNode(tmp_path)
    fake_sysfs.add_kfd_cpu_node(node, 0)
    fake_sysfs.add_kfd_cpu_node(node, 1)
    with pytest.raises(DiscoveryError, match=r"none of the 2 KFD topology node\(s\) .* is a GPU"):
        discovery.open_backend("amd", sysfs_root=node.sysfs, dev_root=node.dev)


def test_unreadable_node_properties_are_skipped(node: fake_sysfs.FakeNode) -> None:
    (node.sysfs / sysfs_amd.KFD_NODES / "9/properties").unlink()  # the last GPU's KFD node
    (node.sysfs / sysfs_amd.KFD_NODES / "3/properties").write_text("garbage without numbers\n")
    gpus = sysfs_amd.AmdBackend(node.sysfs, node.dev).discover()
    assert [g.pci_bus_id for g in gpus] == [fake_sysfs.MI300X_BUSES[i] for i in (0, 2, 3, 4, 5, 6)]


# --- health -----------------------------------------------------------------------------------


def test_gpu_that_disappears_is_reported_once_and_probes_good_when_back(node: fake_sysfs.FakeNode, amd: sysfs_amd.AmdBackend) -> None:
    gpus = amd.discover()
    assert amd.wait_event(0) is None  # everything present
    fake_sysfs.remove_device(node.root, gpus[4].pci_bus_id)
    assert not (node.sysfs / "bus/pci/devices" / gpus[4].pci_bus_id).exists()
    event = amd.wait_event(0)
    assert event is not None and event.gpu_id == gpus[4].id and event.xid is None
    assert "0000:85:00.0 is gone" in event.reason
    assert amd.wait_event(0) is None  # reported once; recovery is the health tracker's business
    assert amd.probe(gpus[4].id) is not None and amd.probe(gpus[3].id) is None
    fake_sysfs.restore_device(node.root, gpus[4].pci_bus_id)
    assert amd.probe(gpus[4].id) is None
    assert amd.wait_event(0) is None
    fake_sysfs.remove_device(node.root, gpus[4].pci_bus_id)  # gone again: reported again
    again = amd.wait_event(0)
    assert again is not None and again.gpu_id == gpus[4].id


def test_gpu_whose_render_node_vanishes_does_not_answer(node: fake_sysfs.FakeNode, amd: sysfs_amd.AmdBackend) -> None:
    gpus = amd.discover()
    render = node.sysfs / "bus/pci/devices" / gpus[1].pci_bus_id / "drm/renderD129"
    (render / "dev").unlink()
    (render / "device").unlink()
    render.rmdir()
    assert amd.probe(gpus[1].id) == "render node renderD129 is gone"


def test_wait_event_returns_at_once_after_close(amd: sysfs_amd.AmdBackend) -> None:
    amd.discover()
    amd.close()
    assert amd.wait_event(3600) is None


# --- choosing the backend ---------------------------------------------------------------------


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """libnvidia-ml does not load, as on any node without the NVIDIA driver."""
    def fail() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    monkeypatch.setattr(pynvml, "nvmlInit", fail)


@pytest.mark.usefixtures("no_nvml")
def test_auto_finds_amd_gpus_when_nvml_does_not_load(node: fake_sysfs.FakeNode) -> None:
    backend = discovery.open_backend("auto", sysfs_root=node.sysfs, dev_root=node.dev)
    assert backend.name == "amd" and len(backend.discover()) == 8
    backend.close()


@pytest.mark.usefixtures("no_nvml")
def test_auto_on_a_node_without_gpus_says_what_it_looked_for(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DiscoveryError) as err:
        discovery.open_backend("auto", sysfs_root=tmp_path, dev_root=tmp_path)
    text = str(err.value)
    assert "libnvidia-ml.so.1 did not load" in text
    assert f"{tmp_path}/class/kfd/kfd/topology/nodes" in text
    assert f"{tmp_path}/class/drm" in text
    assert "--backend fake" in text


@pytest.mark.parametrize(
    "argv, environ, backend, dev_root",
    [
        (["--backend", "amd", "--sysfs-root", "/host/sys", "--dev-root", "/host/dev"], {}, "amd", "/host/dev"),
        ([], {"GPUPACK_BACKEND": "intel", "GPUPACK_DEV_ROOT": "/host/dev"}, "intel", "/host/dev"),
        ([], {}, "auto", "/dev"),  # the defaults
    ],
    ids=["flags", "environment", "defaults"],
)
def test_backend_and_dev_root_settings(argv: list[str], environ: dict[str, str], backend: str, dev_root: str) -> None:
    s = config.resolve(argv, environ=environ)
    assert (s.backend, s.dev_root) == (backend, pathlib.Path(dev_root))


# --- the fake inventory file ------------------------------------------------------------------


def write(path: pathlib.Path, gpus: list[dict[str, object]], tick: int) -> None:
    path.write_text(json.dumps({"gpus": gpus}))
    os.utime(path, ns=(tick * 10**9, tick * 10**9))  # a distinct mtime: no waiting for the clock


def test_fake_inventory_of_amd_gpus_runs_the_amd_backend(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "node.json"
    gpus: list[dict[str, object]] = [
        {"id": "GPU-00000000000000a0", "vendor": "amd", "model": "AMD Instinct MI300X", "memoryMiB": 196592, "numaNode": 0},
        {"id": "GPU-00000000000000a1", "vendor": "amd", "model": "AMD Instinct MI300X", "memoryMiB": 196592, "numaNode": 1,
         "pciBusId": "0000:85:00.0"},
    ]
    write(f, gpus, 1)
    backend = discovery.open_backend("fake", f)
    try:
        found = backend.discover()
        assert [(g.id, g.model, g.memory_mib, g.numa_node, g.resource) for g in found] == [
            ("GPU-00000000000000a0", "AMD Instinct MI300X", 196592, 0, contract.AMD_GPU),
            ("GPU-00000000000000a1", "AMD Instinct MI300X", 196592, 1, contract.AMD_GPU),
        ]
        assert found[1].pci_bus_id == "0000:85:00.0"
        assert backend.container_edits(["GPU-00000000000000a1"], False).device_nodes == (
            "/dev/kfd", "/dev/dri/card2", "/dev/dri/renderD129",
        )
        gpus[1]["healthy"] = False
        write(f, gpus, 2)
        event = backend.wait_event(0)
        assert event is not None and event.gpu_id == "GPU-00000000000000a1"
        gpus[1]["healthy"] = True
        write(f, gpus, 3)
        assert backend.wait_event(0) is None and backend.probe("GPU-00000000000000a1") is None
    finally:
        backend.close()


def test_fake_inventory_gpu_marked_unhealthy_at_start_is_advertised_unhealthy(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "node.json"
    write(f, [{"vendor": "amd", "model": "AMD Instinct MI210", "memoryMiB": 65536},
              {"vendor": "amd", "model": "AMD Instinct MI210", "memoryMiB": 65536, "healthy": False}], 1)
    backend = discovery.open_backend("fake", f)
    try:
        assert [g.healthy for g in backend.discover()] == [True, False]
    finally:
        backend.close()


@pytest.mark.parametrize(
    "gpus, message",
    [
        ([{"vendor": "amd", "model": "x", "memoryMiB": 1, "id": "not-a-uuid"}], r"gpus\[0\]: AMD GPU ids are GPU-<16 hex digits>"),
        ([{"vendor": "amd", "model": "x", "memoryMiB": 1}, {"vendor": "intel", "model": "x", "memoryMiB": 1}],
         "vendor\\(s\\) amd, intel; expected one of nvidia, amd or intel per file"),
        ([{"vendor": "acme", "model": "x", "memoryMiB": 1}], "vendor\\(s\\) acme"),
    ],
    ids=["bad-amd-id", "mixed-vendors", "unknown-vendor"],
)
def test_bad_fake_inventory_for_sysfs_vendors_is_a_clear_error(tmp_path: pathlib.Path, gpus: list[dict[str, object]], message: str) -> None:
    f = tmp_path / "bad.json"
    write(f, gpus, 1)
    with pytest.raises(DiscoveryError, match=message):
        discovery.open_backend("fake", f)


# --- the whole plugin over gRPC ---------------------------------------------------------------


def test_plugin_registers_amd_gpu_lists_numa_allocates_device_nodes_and_follows_health(
    node: fake_sysfs.FakeNode, kubelet: KubeletStandIn,
) -> None:
    backend = sysfs_amd.AmdBackend(node.sysfs, node.dev)
    manager = Manager(backend, kubelet.folder, health=HealthSettings(probe_interval_s=0.05, recovery_probes=2))
    manager.start()
    try:
        reg = kubelet.next_registration()
        assert reg.resource_name == "amd.com/gpu" and reg.endpoint == "gpupack-amd.com_gpu.sock"
        channel, stub = kubelet.plugin(reg.endpoint)
        stream = stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)
        first = next(stream)
        gpus = manager.inventory().gpus
        assert [d.ID for d in first.devices] == [g.id for g in gpus]
        assert [d.topology.nodes[0].ID for d in first.devices] == [0, 0, 0, 0, 1, 1, 1, 1]
        assert {d.health for d in first.devices} == {"Healthy"}

        resp = stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[gpus[6].id])]))
        c = resp.container_responses[0]
        assert [(d.host_path, d.container_path, d.permissions) for d in c.devices] == [
            ("/dev/kfd", "/dev/kfd", "rw"), ("/dev/dri/card7", "/dev/dri/card7", "rw"),
            ("/dev/dri/renderD134", "/dev/dri/renderD134", "rw"),
        ]
        assert dict(c.envs) == {}

        fake_sysfs.remove_device(node.root, gpus[6].pci_bus_id)
        update = next(stream)
        assert [d.ID for d in update.devices if d.health == "Unhealthy"] == [gpus[6].id]
        fake_sysfs.restore_device(node.root, gpus[6].pci_bus_id)
        update = next(stream)  # two good probes later
        assert {d.health for d in update.devices} == {"Healthy"}
        channel.close()
    finally:
        manager.stop()
