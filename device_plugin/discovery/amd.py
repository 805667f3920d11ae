"""AMD GPUs from sysfs: the discovery backend for ``amd.com/gpu`` (whole devices only).

Found the way the amdgpu kernel driver and AMD's own device plugin describe them:

- the KFD topology ``<sysfs>/class/kfd/kfd/topology/nodes/<n>/properties`` lists every compute
  agent; GPU nodes have ``simd_count > 0`` (CPU nodes have 0). Each gives ``location_id`` and
  ``domain`` (the PCI address), ``drm_render_minor``, ``vendor_id``/``device_id`` (decimal) and,
  on GPUs that have one, ``unique_id``; ``mem_banks/<m>/properties`` give the VRAM size;
- the PCI device ``<sysfs>/bus/pci/devices/<address>/`` (bound to ``amdgpu``) gives the NUMA
  node, the ``drm/cardN`` and ``drm/renderDN`` minors, ``mem_info_vram_total`` and, on
  Instinct parts, ``product_name``.

The device id is ``GPU-<unique_id in hex>`` (the UUID ROCm tools print) where the GPU has a
unique id, else its PCI address. A container is given ``/dev/kfd`` (the compute interface,
shared by all GPUs) and the GPU's own ``/dev/dri/cardN`` and ``/dev/dri/renderDN``. Health is
presence: the GPU answers while its PCI device, its render minor and its attributes are there.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re

from gpupack import contract

from device_plugin.discovery import sysfs
from device_plugin.discovery.backend import DiscoveryError

log = logging.getLogger("gpupack.amd")

AMD_VENDOR_ID = 0x1002
KFD_NODES = "class/kfd/kfd/topology/nodes"
KFD_DEVICE = "/dev/kfd"

#: Product names by PCI device id, for GPUs whose driver has no ``product_name`` file.
MODELS: dict[int, str] = {
    0x74A1: "AMD Instinct MI300X",
    0x74A5: "AMD Instinct MI325X",
    0x74A0: "AMD Instinct MI300A",
    0x740C: "AMD Instinct MI250X / MI250",
    0x740F: "AMD Instinct MI210",
    0x738C: "AMD Instinct MI100",
    0x66A1: "AMD Instinct MI50 / MI60",
    0x7448: "AMD Radeon PRO W7900",
    0x744C: "AMD Radeon RX 7900 XTX",
}

#: KFD memory heap types that are the GPU's own memory (FB_PUBLIC, FB_PRIVATE); system memory
#: (0) and the on-chip heaps (GDS, LDS, scratch) are not.
VRAM_HEAPS = (1, 2)

_UUID = re.compile(r"^GPU-([0-9a-f]{16})$", re.IGNORECASE)


def uuid_of(unique_id: int) -> str:
    """The device id of a GPU with a KFD ``unique_id``: ``GPU-`` and 16 hex digits."""
    return f"GPU-{unique_id:016x}"


def unique_id_of(uuid: str) -> int | None:
    """The KFD ``unique_id`` behind a device id from :func:`uuid_of`; None for other ids."""
    m = _UUID.match(uuid)
    return int(m.group(1), 16) if m else None


def bus_id(domain: int, location_id: int) -> str:
    """KFD writes a PCI address as ``location_id`` = bus << 8 | device << 3 | function."""
    return f"{domain:04x}:{location_id >> 8 & 0xFF:02x}:{location_id >> 3 & 0x1F:02x}.{location_id & 0x7:x}"


def model_name(device_id: int) -> str:
    return MODELS.get(device_id, f"AMD GPU 0x{device_id:04x}")


class AmdBackend(sysfs.SysfsBackend):
    """AMD GPUs of the node on amdgpu, read from ``sysfs_root`` (the host's /sys); every
    container given one also gets ``/dev/kfd``."""

    name = "amd"
    vendor = "AMD"
    shared_device_nodes = (KFD_DEVICE,)
    logger = log

    def _find(self) -> dict[str, sysfs.Found]:
        nodes_dir = self.sysfs_root / KFD_NODES
        try:
            nodes = sorted((n for n in os.listdir(nodes_dir) if n.isdigit()), key=int)
        except OSError as err:
            raise DiscoveryError(
                f"no AMD GPU found: cannot read the KFD topology {nodes_dir} ({err.strerror}); is the amdgpu "
                "driver loaded, and is the host's /sys mounted (--sysfs-root)?"
            ) from err
        found: dict[str, sysfs.Found] = {}
        for node in nodes:
            entry = self._gpu_of_node(nodes_dir / node, len(found))
            if entry is None:
                continue
            if entry.gpu.pci_bus_id in {f.gpu.pci_bus_id for f in found.values()}:
                # A partitioned GPU (MI300 in CPX mode) has a KFD node per partition; we
                # advertise whole devices, so the PCI device counts once.
                log.warning("KFD node %s is a partition of GPU %s: advertised as part of the whole GPU", node, entry.gpu.pci_bus_id)
                continue
            found[entry.gpu.id] = entry
        if not found:
            raise DiscoveryError(
                f"no AMD GPU found: none of the {len(nodes)} KFD topology node(s) under {nodes_dir} is a GPU "
                "bound to amdgpu (GPU nodes have simd_count > 0)"
            )
        return found

    def _gpu_of_node(self, node_dir: pathlib.Path, index: int) -> sysfs.Found | None:
        props = sysfs.read_properties(node_dir / "properties")
        if props is None:
            log.warning("KFD node %s has no readable properties; skipped", node_dir.name)
            return None
        if props.get("simd_count", 0) <= 0:
            return None  # a CPU agent
        vendor = props.get("vendor_id", 0)
        if vendor != AMD_VENDOR_ID:
            log.warning("KFD node %s has vendor 0x%04x, not AMD; skipped", node_dir.name, vendor)
            return None
        if "location_id" not in props:
            log.warning("KFD node %s has no location_id (no PCI address); skipped", node_dir.name)
            return None
        address = bus_id(props.get("domain", 0), props["location_id"])
        pci_dir = self.sysfs_root / "bus/pci/devices" / address
        driver = sysfs.driver_name(pci_dir)
        if driver != "amdgpu":
            log.warning("GPU %s (KFD node %s) is bound to %r, not amdgpu; skipped", address, node_dir.name, driver or "no driver")
            return None
        card, render = sysfs.minors(pci_dir / "drm")
        render = props.get("drm_render_minor") or render
        if card is None or render is None:
            log.warning("GPU %s has no DRM card or render minor under %s; skipped", address, pci_dir / "drm")
            return None
        unique = props.get("unique_id", 0)
        device_id = props.get("device_id", 0)
        gpu = contract.Gpu(
            id=uuid_of(unique) if unique else address,
            index=index,
            vendor="amd",
            model=sysfs.read_text(pci_dir / "product_name") or model_name(device_id),
            memory_mib=self._vram_bytes(node_dir, pci_dir) // 2**20,
            numa_node=sysfs.numa_node(pci_dir),
            pci_bus_id=address,
            resource=contract.AMD_GPU,
        )
        return self._as_found(sysfs.Found(gpu, pci_dir, card, render))

    @staticmethod
    def _vram_bytes(node_dir: pathlib.Path, pci_dir: pathlib.Path) -> int:
        total = 0
        try:
            banks = sorted(os.listdir(node_dir / "mem_banks"))
        except OSError:
            banks = []
        for bank in banks:
            props = sysfs.read_properties(node_dir / "mem_banks" / bank / "properties") or {}
            if props.get("heap_type", 1) in VRAM_HEAPS:
                total += props.get("size_in_bytes", 0)
        return total or sysfs.read_int(pci_dir / "mem_info_vram_total") or 0

    # --- health -------------------------------------------------------------------------

    def _check_found(self, entry: sysfs.Found) -> str | None:
        if not entry.pci_dir.is_dir():
            return f"PCI device {entry.gpu.pci_bus_id} is gone from {entry.pci_dir.parent}"
        if not (entry.pci_dir / "drm" / f"renderD{entry.render}").exists():
            return f"render node renderD{entry.render} is gone"
        if sysfs.read_int(entry.pci_dir / "vendor") != AMD_VENDOR_ID:
            return f"PCI device {entry.gpu.pci_bus_id} does not answer (vendor unreadable)"
        return None
