"""The NVML backend over modelled machines: what it finds, and how it fails."""

from __future__ import annotations

import json
import pathlib

import pytest

from device_plugin import discovery
from device_plugin.discovery.backend import HealthEvent
from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.fakes import inventory
from device_plugin.fakes import nvml as fake_nvml


def test_dgx_a100_is_found_with_nvswitch_links_and_numa_nodes() -> None:
    gpus = NvmlBackend(fake_nvml.a100_sxm4_8x()).discover()
    assert len(gpus) == 8
    assert {g.model for g in gpus} == {"NVIDIA A100-SXM4-40GB"}
    assert {g.memory_mib for g in gpus} == {40960}
    assert [g.numa_node for g in gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    # through NVSwitch every GPU reaches every other with all 12 of its links
    assert all(sorted(link.peer for link in g.links) == [i for i in range(8) if i != g.index] for g in gpus)
    assert {link.nvlinks for g in gpus for link in g.links} == {12}
    assert gpus[0].pci_bus_id == "00000000:07:00.0" and not gpus[0].mig_enabled


def test_h100_pairs_are_linked_only_to_their_partner() -> None:
    gpus = NvmlBackend(fake_nvml.h100_pcie_pairs()).discover()
    assert [[(link.peer, link.nvlinks) for link in g.links] for g in gpus] == [
        [(1, 4)], [(0, 4)], [(3, 4)], [(2, 4)], [(5, 4)], [(4, 4)], [(7, 4)], [(6, 4)]
    ]


def test_gpu_lost_at_start_is_left_out_and_the_rest_served(caplog: pytest.LogCaptureFixture) -> None:
    nvml = fake_nvml.a100_sxm4_8x()
    nvml.gpus[2].lost = True
    gpus = NvmlBackend(nvml).discover()
    assert [g.id for g in gpus] == [g.uuid for g in nvml.gpus if g.index != 2]
    assert "GPU 2 does not answer NVML" in caplog.text and "NOT advertised" in caplog.text


def test_broken_nvml_is_a_clear_start_up_error() -> None:
    nvml = fake_nvml.a100_sxm4_8x()
    nvml.broken = True
    with pytest.raises(discovery.DiscoveryError, match="NVML did not initialise"):
        NvmlBackend(nvml)


def test_event_wait_failure_is_a_health_event_for_every_gpu() -> None:
    nvml = fake_nvml.a100_sxm4_8x()
    backend = NvmlBackend(nvml)
    backend.discover()
    nvml.broken = True
    event = backend.wait_event(0.01)
    assert event is not None and event.gpu_id is None and "NVML" in event.reason


def test_xid_event_names_the_gpu() -> None:
    nvml = fake_nvml.h100_pcie_pairs()
    backend = NvmlBackend(nvml)
    backend.discover()
    nvml.inject_xid(3, 48)
    event = backend.wait_event(1.0)
    assert event == HealthEvent(nvml.gpus[3].uuid, "XID 48", 48)


def test_fake_file_backend_reads_gpus_and_follows_file_changes(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "node.json"
    node = {"version": 1, "gpus": [
        {"id": "GPU-aaaa", "model": "NVIDIA H100 80GB HBM3", "memoryMiB": 81559, "numaNode": 0, "links": [{"peer": 1, "nvlinks": 18}]},
        {"id": "GPU-bbbb", "model": "NVIDIA H100 80GB HBM3", "memoryMiB": 81559, "numaNode": 1, "links": [{"peer": 0, "nvlinks": 18}]},
    ]}
    f.write_text(json.dumps(node))
    backend = inventory.FakeFileBackend(f)
    gpus = backend.discover()
    assert [g.id for g in gpus] == ["GPU-aaaa", "GPU-bbbb"]
    assert gpus[0].links[0].peer == 1 and gpus[0].links[0].nvlinks == 18
    node["gpus"][1]["healthy"] = False  # type: ignore[index]
    f.write_text(json.dumps(node))
    import os
    os.utime(f, ns=(1, 10**18))  # a certainly different modification time
    event = backend.wait_event(1.0)
    assert event is not None and event.gpu_id == "GPU-bbbb" and event.xid == 79
    assert backend.probe("GPU-bbbb") is not None and backend.probe("GPU-aaaa") is None


@pytest.mark.parametrize(
    "content, message",
    [("{", "not valid YAML/JSON"), ('{"gpus": 3}', "expected an object with a 'gpus' list"), ('{"gpus": [{"model": "x"}]}', "memoryMiB")],
)
def test_bad_fake_inventory_is_a_clear_error(tmp_path: pathlib.Path, content: str, message: str) -> None:
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(discovery.DiscoveryError, match=message):
        discovery.open_backend("fake", f)


def test_auto_without_libnvidia_ml_says_what_to_do() -> None:
    with pytest.raises(discovery.DiscoveryError, match="--backend fake"):
        discovery.open_backend("auto")
