"""Intel GPUs from sysfs: the discovery backend for ``gpu.intel.com/i915`` and ``gpu.intel.com/xe``.

Found as Intel's own device plugin finds them: every DRM card ``<sysfs>/class/drm/cardN``
(connectors such as ``card0-DP-1`` are not cards) whose PCI device (``cardN/device``) has vendor
0x8086 and is bound to the ``i915`` or ``xe`` kernel driver. The driver decides the resource,
so a node with cards on both drivers advertises both. The PCI device gives the NUMA node and
the render minor (``device/drm/renderDN``); local memory comes from ``lmem_total_bytes`` (i915)
or the tiles' ``physical_vram_size_bytes`` (xe), and is 0 for integrated GPUs that share the
host's memory. Intel GPUs have no UUID: the device id is the PCI address.

A container is given the card's ``/dev/dri/cardN`` and ``/dev/dri/renderDN``. Health is
presence: the card answers while its PCI device, render minor and attributes are there.
"""

from __future__ import annotations

import logging
import os
import pathlib

from gpupack import contract

from device_plugin.discovery import sysfs
from device_plugin.discovery.backend import DiscoveryError

log = logging.getLogger("gpupack.intel")

INTEL_VENDOR_ID = 0x8086
DRM_CLASS = "class/drm"

#: The resource each supported kernel driver's cards are advertised under.
RESOURCES: dict[str, str] = {"i915": contract.INTEL_I915, "xe": contract.INTEL_XE}

#: Product names by PCI device id.
MODELS: dict[int, str] = {
    0x0BD5: "Intel Data Center GPU Max 1550",
    0x0BD6: "Intel Data Center GPU Max 1550",
    0x0BDA: "Intel Data Center GPU Max 1100",
    0x56C0: "Intel Data Center GPU Flex 170",
    0x56C1: "Intel Data Center GPU Flex 140",
    0x56A0: "Intel Arc A770",
    0x56A1: "Intel Arc A750",
    0x56A5: "Intel Arc A380",
    0xE20B: "Intel Arc B580",
    0xE20C: "Intel Arc B570",
}


def model_name(device_id: int) -> str:
    return MODELS.get(device_id, f"Intel GPU 0x{device_id:04x}")


class IntelBackend(sysfs.SysfsBackend):
    """Intel GPUs of the node on i915 or xe, read from ``sysfs_root`` (the host's /sys)."""

    name = "intel"
    vendor = "Intel"
    logger = log

    def _find(self) -> dict[str, sysfs.Found]:
        drm = self.sysfs_root / DRM_CLASS
        try:
            names = os.listdir(drm)
        except OSError as err:
            raise DiscoveryError(
                f"no Intel GPU found: cannot read {drm} ({err.strerror}); is the host's /sys mounted (--sysfs-root)?"
            ) from err
        cards = sorted((int(m.group(1)), name) for name in names if (m := sysfs.CARD.match(name)))
        found: dict[str, sysfs.Found] = {}
        for minor, name in cards:
            entry = self._card(drm / name, minor, len(found))
            if entry is not None:
                found[entry.gpu.id] = entry
        if not found:
            raise DiscoveryError(
                f"no Intel GPU found: none of the {len(cards)} DRM card(s) under {drm} has vendor 0x8086 "
                "and the i915 or xe driver"
            )
        return found

    def _card(self, card_dir: pathlib.Path, minor: int, index: int) -> sysfs.Found | None:
        device = card_dir / "device"
        if sysfs.read_int(device / "vendor") != INTEL_VENDOR_ID:
            return None
        driver = sysfs.driver_name(device)
        if driver not in RESOURCES:
            log.info("Intel card %s is bound to %r, not i915 or xe; skipped", card_dir.name, driver or "no driver")
            return None
        pci_dir = pathlib.Path(os.path.realpath(device))
        _, render = sysfs.minors(pci_dir / "drm")
        if render is None:
            log.warning("Intel card %s has no render node under %s; skipped", card_dir.name, pci_dir / "drm")
            return None
        address = pci_dir.name
        gpu = contract.Gpu(
            id=address,
            index=index,
            vendor="intel",
            model=model_name(sysfs.read_int(device / "device") or 0),
            memory_mib=self._local_memory_bytes(card_dir, device) // 2**20,
            numa_node=sysfs.numa_node(device),
            pci_bus_id=address,
            resource=RESOURCES[driver],
        )
        return self._as_found(sysfs.Found(gpu, pci_dir, minor, render))

    @staticmethod
    def _local_memory_bytes(card_dir: pathlib.Path, device: pathlib.Path) -> int:
        # i915 (Intel's backport driver) writes lmem_total_bytes on the card, some builds on the
        # PCI device; xe writes each tile's VRAM; integrated GPUs have neither.
        for path in (card_dir / "lmem_total_bytes", device / "lmem_total_bytes"):
            value = sysfs.read_int(path)
            if value:
                return value
        total = 0
        try:
            tiles = sorted(t for t in os.listdir(device) if t.startswith("tile"))
        except OSError:
            tiles = []
        for tile in tiles:
            total += sysfs.read_int(device / tile / "physical_vram_size_bytes") or 0
        return total

    # --- health -------------------------------------------------------------------------

    def _check_found(self, entry: sysfs.Found) -> str | None:
        if not entry.pci_dir.is_dir():
            return f"PCI device {entry.gpu.pci_bus_id} is gone"
        if not (entry.pci_dir / "drm" / f"card{entry.card}").exists():
            return f"DRM card card{entry.card} is gone"
        if not (entry.pci_dir / "drm" / f"renderD{entry.render}").exists():
            return f"render node renderD{entry.render} is gone"
        if sysfs.read_int(entry.pci_dir / "vendor") != INTEL_VENDOR_ID:
            return f"PCI device {entry.gpu.pci_bus_id} does not answer (vendor unreadable)"
        return None
