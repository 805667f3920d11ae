"""Fake sysfs and /dev trees of AMD and Intel GPU nodes, for tests, demos and the ``fake`` backend.

The AMD and Intel backends read a sysfs root they are given; these builders write folder trees
laid out as the kernel lays out the real ones, so the real backends run over them unchanged:

- ``<root>/sys/devices/pci0000:XX/<address>/`` per GPU (``vendor``, ``device``, ``numa_node``,
  a ``driver`` link into ``bus/pci/drivers/<driver>``, ``drm/cardN`` and ``drm/renderDN``, and
  the driver's memory attributes), with the ``bus/pci/devices/<address>`` and
  ``class/drm/cardN`` links pointing at it;
- for AMD, the KFD topology ``class/kfd/kfd/topology/nodes/<n>/`` with CPU nodes first;
- ``<root>/dev/kfd`` and ``<root>/dev/dri/{cardN,renderDN}`` as empty files.

:func:`mi300x_8x` and :func:`intel_cards` build machines modelled on real ones;
:func:`remove_device` makes a GPU vanish as on a hot-unplug or a fall off the bus (its PCI
device, links and KFD node go) and :func:`restore_device` brings it back.
:func:`from_inventory` builds the tree a fake inventory file describes, which
:class:`~device_plugin.fakes.inventory.FakeSysfsFileBackend` runs the real backend over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any

from device_plugin.discovery import amd, intel, sysfs
from device_plugin.discovery.backend import DiscoveryError

MANIFEST = ".fake-sysfs.json"  # per GPU: the folders it owns and the links to them
REMOVED = ".removed"  # where a removed GPU's folders wait to be restored
DRM_MAJOR = 226

#: MI300X: 192 GB HBM3 as KFD and amdgpu report it.
MI300X_VRAM_BYTES = 206_141_652_992
#: PCI addresses of the eight OAM GPUs of an MI300X platform, four per socket.
MI300X_BUSES = ("0000:05:00.0", "0000:26:00.0", "0000:46:00.0", "0000:65:00.0",
                "0000:85:00.0", "0000:a6:00.0", "0000:c6:00.0", "0000:e5:00.0")

#: Local memory of the Intel models (0 = integrated, shares host memory) and their tile count.
INTEL_MEMORY: dict[int, tuple[int, int]] = {
    0x0BD5: (128 * 2**30, 2), 0x0BDA: (48 * 2**30, 1), 0x56C0: (16 * 2**30, 1), 0x56C1: (12 * 2**30, 1),
    0x56A0: (16 * 2**30, 1), 0x56A1: (8 * 2**30, 1), 0x56A5: (6 * 2**30, 1), 0xE20B: (12 * 2**30, 1),
}


@dataclasses.dataclass(frozen=True)
class FakeNode:
    """A built node: pass ``sysfs`` and ``dev`` to a backend."""

    root: pathlib.Path

    @property
    def sysfs(self) -> pathlib.Path:
        return self.root / "sys"

    @property
    def dev(self) -> pathlib.Path:
        return self.root / "dev"


# --- building ---------------------------------------------------------------------------------


def _write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _link(link: pathlib.Path, target: pathlib.Path) -> str:
    """A relative symlink, as sysfs has them; returns the relative target."""
    link.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(target, link.parent)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(rel)
    return rel


def _manifest(root: pathlib.Path) -> dict[str, Any]:
    path = root / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def _record(root: pathlib.Path, address: str, dirs: list[pathlib.Path], links: list[pathlib.Path]) -> None:
    manifest = _manifest(root)
    entry = manifest.setdefault(address, {"dirs": [], "links": {}})
    entry["dirs"] += [str(d.relative_to(root)) for d in dirs]
    for link in links:
        entry["links"][str(link.relative_to(root))] = os.readlink(link)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _pci_device(node: FakeNode, address: str, vendor: int, device: int, driver: str, numa: int) -> pathlib.Path:
    sys = node.sysfs
    pci = sys / "devices" / f"pci{address[:4]}:{address[5:7]}" / address
    _write(pci / "vendor", f"0x{vendor:04x}")
    _write(pci / "device", f"0x{device:04x}")
    _write(pci / "class", "0x038000" if vendor != 0x1A03 else "0x030000")
    _write(pci / "numa_node", str(numa))
    (sys / "bus/pci/drivers" / driver).mkdir(parents=True, exist_ok=True)
    _link(pci / "driver", sys / "bus/pci/drivers" / driver)
    _link(sys / "bus/pci/devices" / address, pci)
    return pci


def _drm_minor(node: FakeNode, pci: pathlib.Path, name: str, minor: int) -> pathlib.Path:
    """``<pci>/drm/<name>`` with its ``dev`` and ``device`` entries, ``class/drm/<name>`` and /dev/dri/<name>."""
    d = pci / "drm" / name
    _write(d / "dev", f"{DRM_MAJOR}:{minor}")
    _link(d / "device", pci)
    _link(node.sysfs / "class/drm" / name, d)
    _write(node.dev / "dri" / name, "")
    return node.sysfs / "class/drm" / name


def _bmc_vga(node: FakeNode, address: str = "0000:02:00.0") -> None:
    """The ASPEED BMC display every server has: card0 and a connector, no GPU for anyone."""
    pci = _pci_device(node, address, 0x1A03, 0x2000, "ast", 0)
    _drm_minor(node, pci, "card0", 0)
    (pci / "drm/card0/card0-VGA-1").mkdir(parents=True, exist_ok=True)
    _link(node.sysfs / "class/drm/card0-VGA-1", pci / "drm/card0/card0-VGA-1")


def _kfd_node(node: FakeNode, number: int, props: dict[str, int], banks: list[dict[str, int]]) -> pathlib.Path:
    d = node.sysfs / amd.KFD_NODES / str(number)
    _write(d / "properties", "\n".join(f"{k} {v}" for k, v in props.items()))
    _write(d / "gpu_id", str(props.get("gpu_id", 0)))
    for i, bank in enumerate(banks):
        _write(d / "mem_banks" / str(i) / "properties", "\n".join(f"{k} {v}" for k, v in bank.items()))
    return d


def add_kfd_cpu_node(node: FakeNode, number: int) -> None:
    """A CPU agent in the KFD topology (simd_count 0), as each socket of a GPU node has."""
    _kfd_node(node, number, {"cpu_cores_count": 96, "simd_count": 0, "mem_banks_count": 1, "vendor_id": 0,
                             "device_id": 0, "location_id": 0, "domain": 0, "drm_render_minor": 0},
              [{"heap_type": 0, "size_in_bytes": 768 * 2**30, "flags": 0}])


def unique_id(seed: str) -> int:
    """A stable 64-bit KFD unique_id from a seed."""
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") or 1


def add_amd_gpu(
    node: FakeNode, kfd_node: int, address: str, card: int, render: int, *, device_id: int = 0x74A1,
    vram_bytes: int = MI300X_VRAM_BYTES, numa: int = 0, unique: int = 0, product_name: str = "", simd_count: int = 1216,
) -> None:
    """One amdgpu PCI device with its DRM minors, KFD topology node and /dev nodes."""
    pci = _pci_device(node, address, amd.AMD_VENDOR_ID, device_id, "amdgpu", numa)
    _write(pci / "mem_info_vram_total", str(vram_bytes))
    if product_name:
        _write(pci / "product_name", product_name)
    links = [node.sysfs / "bus/pci/devices" / address, _drm_minor(node, pci, f"card{card}", card),
             _drm_minor(node, pci, f"renderD{render}", render)]
    domain, rest = int(address[:4], 16), address[5:]
    bus, dev, fn = int(rest[:2], 16), int(rest[3:5], 16), int(rest[6:], 16)
    props = {"cpu_cores_count": 0, "simd_count": simd_count, "mem_banks_count": 1, "gpu_id": 1000 + kfd_node,
             "vendor_id": amd.AMD_VENDOR_ID, "device_id": device_id, "location_id": bus << 8 | dev << 3 | fn,
             "domain": domain, "drm_render_minor": render, "hive_id": 0}
    if unique:
        props["unique_id"] = unique
    kfd = _kfd_node(node, kfd_node, props, [{"heap_type": 1, "size_in_bytes": vram_bytes, "flags": 0, "width": 8192}])
    _write(node.dev / "kfd", "")
    _record(node.root, address, [pci, kfd], links)


def mi300x_8x(root: pathlib.Path, seed: str = "mi300x") -> FakeNode:
    """An 8x MI300X node: two sockets (KFD CPU nodes 0 and 1, NUMA nodes 0 and 1), GPUs 0-3 on
    NUMA node 0 and 4-7 on node 1 (KFD nodes 2-9, card1-8, renderD128-135), a BMC as card0."""
    node = FakeNode(root)
    _bmc_vga(node)
    for cpu in (0, 1):
        add_kfd_cpu_node(node, cpu)
    for i, address in enumerate(MI300X_BUSES):
        add_amd_gpu(node, 2 + i, address, card=1 + i, render=128 + i, numa=i // 4, unique=unique_id(f"{seed}/{i}"))
    return node


def add_intel_card(
    node: FakeNode, address: str, card: int, *, driver: str = "i915", device_id: int = 0x56C0,
    memory_bytes: int | None = None, numa: int = 0,
) -> None:
    """One Intel GPU on ``driver`` (i915 or xe) with its card, render minor and memory attributes."""
    memory, tiles = INTEL_MEMORY.get(device_id, (0, 1))
    memory = memory if memory_bytes is None else memory_bytes
    pci = _pci_device(node, address, intel.INTEL_VENDOR_ID, device_id, driver, numa)
    card_link = _drm_minor(node, pci, f"card{card}", card)
    links = [node.sysfs / "bus/pci/devices" / address, card_link, _drm_minor(node, pci, f"renderD{128 + card}", 128 + card)]
    if memory and driver == "i915":
        _write(pci / "drm" / f"card{card}" / "lmem_total_bytes", str(memory))
    elif memory:
        for t in range(tiles):
            _write(pci / f"tile{t}" / "physical_vram_size_bytes", str(memory // tiles))
    _record(node.root, address, [pci], links)


def intel_cards(root: pathlib.Path, driver: str = "i915", count: int = 4, device_id: int = 0x56C0) -> FakeNode:
    """``count`` Intel GPUs (Flex 170 unless told) on ``driver``, half per NUMA node, numbered
    after the cards already in ``root`` so calling it twice builds a mixed i915 + xe node; the
    first card has a display connector (``cardN-DP-1``), which is not a GPU."""
    if driver not in intel.RESOURCES:
        raise ValueError(f"driver must be i915 or xe, got {driver!r}")
    node = FakeNode(root)
    drm = node.sysfs / "class/drm"
    taken = [n for n in (os.listdir(drm) if drm.is_dir() else []) if sysfs.CARD.match(n)]
    first = len(taken)
    for i in range(count):
        card = first + i
        address = f"0000:{0x18 + 0x10 * card:02x}:00.0"
        add_intel_card(node, address, card, driver=driver, device_id=device_id, numa=(i * 2) // max(count, 1))
    connector = node.sysfs / "devices" / f"pci0000:{0x18 + 0x10 * first:02x}" / f"0000:{0x18 + 0x10 * first:02x}:00.0"
    (connector / "drm" / f"card{first}" / f"card{first}-DP-1").mkdir(parents=True, exist_ok=True)
    _link(drm / f"card{first}-DP-1", connector / "drm" / f"card{first}" / f"card{first}-DP-1")
    return node


# --- faults -----------------------------------------------------------------------------------


def remove_device(root: pathlib.Path, address: str) -> None:
    """The GPU at PCI ``address`` vanishes: its PCI device, KFD node and links go."""
    entry = _manifest(root).get(address)
    if entry is None:
        raise KeyError(f"no fake GPU at {address} in {root}")
    stash = root / REMOVED / address
    if stash.exists():
        return  # already removed
    stash.mkdir(parents=True)
    for link in entry["links"]:
        (root / link).unlink(missing_ok=True)
    for i, d in enumerate(entry["dirs"]):
        os.rename(root / d, stash / str(i))


def restore_device(root: pathlib.Path, address: str) -> None:
    """The GPU at PCI ``address`` is back where it was."""
    entry = _manifest(root).get(address)
    if entry is None:
        raise KeyError(f"no fake GPU at {address} in {root}")
    stash = root / REMOVED / address
    if not stash.exists():
        return  # present
    for i, d in enumerate(entry["dirs"]):
        os.rename(stash / str(i), root / d)
    for link, target in entry["links"].items():
        (root / link).symlink_to(target)
    stash.rmdir()


# --- from a fake inventory file ---------------------------------------------------------------


def _inventory_error(i: int, message: str) -> DiscoveryError:
    return DiscoveryError(f"fake inventory gpus[{i}]: {message}")


def from_inventory(root: pathlib.Path, entries: list[dict[str, Any]], seed: str = "fake") -> tuple[FakeNode, list[str]]:
    """Builds the node a fake inventory describes (all AMD, or all Intel); returns it and each
    entry's PCI address. Keys as the contract's inventory: id, index, vendor, model, memoryMiB,
    numaNode, pciBusId, healthy; Intel entries also take ``driver`` (i915 or xe). AMD GPUs
    without an ``id`` get one from ``seed``, the same on every build."""
    node = FakeNode(root)
    addresses = []
    amd_models = {v: k for k, v in amd.MODELS.items()}
    intel_models = {v: k for k, v in intel.MODELS.items()}
    for i, g in enumerate(entries):
        vendor = g.get("vendor")
        address = str(g.get("pciBusId") or f"0000:{0x18 + 0x10 * i:02x}:00.0").lower()[-12:]
        memory = int(g.get("memoryMiB", 0)) * 2**20
        numa = int(g.get("numaNode", 0))
        if vendor == "amd":
            gpu_id = str(g.get("id") or "")
            unique = amd.unique_id_of(gpu_id) if gpu_id else unique_id(f"{seed}/{i}")
            if unique is None:
                raise _inventory_error(i, f"AMD GPU ids are GPU-<16 hex digits> (the KFD unique_id), got {gpu_id!r}")
            model = str(g.get("model", amd.MODELS[0x74A1]))
            add_amd_gpu(node, 1 + i, address, card=1 + i, render=128 + i, device_id=amd_models.get(model, 0x74A1),
                        vram_bytes=memory or MI300X_VRAM_BYTES, numa=numa, unique=unique, product_name=model)
        elif vendor == "intel":
            driver = str(g.get("driver", "i915"))
            if driver not in intel.RESOURCES:
                raise _inventory_error(i, f"driver: expected i915 or xe, got {driver!r}")
            model = str(g.get("model", intel.MODELS[0x56C0]))
            if model not in intel_models:
                raise _inventory_error(i, f"unknown Intel model {model!r}; known: {', '.join(sorted(set(intel_models)))}")
            add_intel_card(node, address, i, driver=driver, device_id=intel_models[model],
                           memory_bytes=memory if "memoryMiB" in g else None, numa=numa)
        else:
            raise _inventory_error(i, f"vendor: expected amd or intel, got {vendor!r}")
        addresses.append(address)
    if any(g.get("vendor") == "amd" for g in entries):
        add_kfd_cpu_node(node, 0)
    return node, addresses
