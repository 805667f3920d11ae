"""What the sysfs vendors share (discovery/sysfs.py), run over both AMD and Intel fake nodes."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Callable

import pytest

from device_plugin.discovery import amd, intel, sysfs
from device_plugin.fakes import sysfs as fake_sysfs


@dataclasses.dataclass(frozen=True)
class Vendor:
    build: Callable[[pathlib.Path], fake_sysfs.FakeNode]
    backend: Callable[[pathlib.Path, pathlib.Path], sysfs.SysfsBackend]
    vendor: str
    shared: tuple[str, ...]  # device nodes every container gets
    first: tuple[str, ...]  # the first GPU's own device nodes


VENDORS = [
    # MI300X node: card0 is the BMC, so GPU 0 is card1 and renderD128
    Vendor(fake_sysfs.mi300x_8x, amd.AmdBackend, "AMD", ("/dev/kfd",), ("/dev/dri/card1", "/dev/dri/renderD128")),
    Vendor(lambda root: fake_sysfs.intel_cards(root, count=2), intel.IntelBackend, "Intel", (),
           ("/dev/dri/card0", "/dev/dri/renderD128")),
]
IDS = ["amd", "intel"]


@pytest.mark.parametrize("v", VENDORS, ids=IDS)
def test_unknown_ids_get_no_device_nodes_and_do_not_answer(v: Vendor, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    node = v.build(tmp_path)
    backend = v.backend(node.sysfs, node.dev)
    gpus = backend.discover()
    edits = backend.container_edits(["no-such-gpu", gpus[0].id, gpus[0].id], pass_device_specs=False)
    assert edits.envs == {}
    assert edits.device_nodes == v.shared + v.first  # each once, the unknown id left out
    assert f"asked for device nodes of unknown {v.vendor} GPU no-such-gpu" in caplog.text
    assert backend.probe("no-such-gpu") == f"not an {v.vendor} GPU of this node"
    backend.close()


@pytest.mark.parametrize("v", VENDORS, ids=IDS)
def test_missing_dev_nodes_are_named_at_discovery(v: Vendor, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    node = v.build(tmp_path)
    missing = v.shared + v.first[1:]  # the shared nodes and the first GPU's render node
    for path in missing:
        (node.dev / path.removeprefix("/dev/")).unlink()
    backend = v.backend(node.sysfs, node.dev)
    with caplog.at_level(logging.WARNING):
        assert all(g.healthy for g in backend.discover())  # a node problem, not a GPU's
    assert f"device nodes missing under {node.dev}: {', '.join(missing)};" in caplog.text
    backend.close()


def test_gpu_that_does_not_answer_at_discovery_is_advertised_unhealthy(tmp_path: pathlib.Path) -> None:
    node = fake_sysfs.mi300x_8x(tmp_path)
    # A GPU that fell off the bus reads all ones from its PCI config space.
    (node.sysfs / "bus/pci/devices" / fake_sysfs.MI300X_BUSES[3] / "vendor").write_text("0xffff\n")
    backend = amd.AmdBackend(node.sysfs, node.dev)
    gpus = backend.discover()
    assert [g.healthy for g in gpus] == [True, True, True, False, True, True, True, True]
    assert backend.probe(gpus[3].id) == f"PCI device {fake_sysfs.MI300X_BUSES[3]} does not answer (vendor unreadable)"
    assert backend.wait_event(0) is None  # advertised Unhealthy already: not reported again
    backend.close()
