"""NVIDIA GPUs through NVML: whole GPUs, MIG devices, NVLink peers, XID events and usage.

:class:`NvmlBackend` is given the NVML module it speaks through (``pynvml`` on a real node,
:class:`~device_plugin.fakes.nvml.FakeNvml` in tests and for ``--backend fake``) and never
imports one itself. GPU ids are NVML's UUIDs; MIG devices get NVIDIA's profile names
(:func:`mig_profile_name`); a container is given ``NVIDIA_VISIBLE_DEVICES`` for the NVIDIA
container toolkit and, with ``--pass-device-specs``, the ``/dev/nvidia*`` nodes as well.
"""

from __future__ import annotations

import ctypes
import logging
import math
import pathlib
from typing import Any

from gpupack import contract

from device_plugin.discovery.backend import ContainerEdits, DiscoveryError, HealthEvent, Reading

log = logging.getLogger("gpupack.discovery")

#: Device nodes every NVIDIA container needs besides its GPUs' own /dev/nvidiaN.
NVIDIA_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
NVIDIA_CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


def mig_profile_name(gi_slices: int, ci_slices: int, memory_mb: int, gpu_total_bytes: int) -> str:
    """NVIDIA's MIG profile name (``1g.10gb``, ``1c.3g.20gb``) from a MIG device's attributes.

    The memory part is the MIG device's share of the GPU's memory rounded up to eighths, times
    the GPU's memory in whole GB: A100 40GB, 4864 MB -> 1/8 x 40 = 5 -> ``1g.5gb``.
    """
    gb = 2**30
    fraction = math.ceil(memory_mb * 2**20 / gpu_total_bytes * 8) / 8
    memory_gb = round(fraction * ((gpu_total_bytes + gb - 1) // gb))
    compute = f"{ci_slices}c." if ci_slices < gi_slices else ""
    return f"{compute}{gi_slices}g.{memory_gb}gb"


def _bus_key(bus_id: str) -> str:
    """NVML writes bus ids with an 8-digit domain, sysfs with 4: compare on the last 12 chars."""
    return bus_id.lower()[-12:]


def _handle_key(handle: Any) -> Any:
    if isinstance(handle, ctypes._Pointer):
        return ctypes.cast(handle, ctypes.c_void_p).value
    return handle


class NvmlBackend:
    """NVIDIA GPUs through NVML. ``nvml`` is the ``pynvml`` module or a fake of it."""

    name = "nvml"

    def __init__(
        self, nvml: Any, sysfs_root: pathlib.Path = pathlib.Path("/sys"), proc_root: pathlib.Path = pathlib.Path("/proc")
    ) -> None:
        self.nvml = nvml
        self.sysfs_root = sysfs_root
        self.proc_root = proc_root
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            raise DiscoveryError(f"NVML did not initialise: {err}") from err
        self._uuid_by_handle: dict[Any, str] = {}
        self._minor: dict[str, int] = {}
        self._mig_caps: dict[str, tuple[str, int, int]] = {}  # MIG uuid -> (parent, GI id, CI id)
        self._events: Any = None

    # --- discovery ----------------------------------------------------------------------

    def discover(self) -> tuple[contract.Gpu, ...]:
        nvml = self.nvml
        try:
            count = nvml.nvmlDeviceGetCount()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nvml.NVMLError as err:
            raise DiscoveryError(f"NVML could not list GPUs: {err}") from err
        gpus = []
        buses: list[str] = []
        answering = []
        for i, h in enumerate(handles):
            try:
                uuid = nvml.nvmlDeviceGetUUID(h)
                buses.append(nvml.nvmlDeviceGetPciInfo(h).busId)
            except nvml.NVMLError as err:
                # Without a UUID the kubelet cannot be given a stable id: leave it out, loudly.
                log.error("GPU %d does not answer NVML (%s): it is NOT advertised; check `nvidia-smi` and dmesg", i, err)
                continue
            self._uuid_by_handle[_handle_key(h)] = uuid
            answering.append((i, h))
        for pos, (i, h) in enumerate(answering):
            uuid = self._uuid_by_handle[_handle_key(h)]
            healthy = True
            migs: tuple[contract.MigDevice, ...] = ()
            try:
                name = nvml.nvmlDeviceGetName(h)
                total = nvml.nvmlDeviceGetMemoryInfo(h).total
                memory = total // 2**20
                self._minor[uuid] = nvml.nvmlDeviceGetMinorNumber(h)
                mig = self._mig_enabled(h)
                if mig:
                    migs = self._mig_devices(h, uuid, total)
            except nvml.NVMLError as err:
                log.warning("GPU %d (%s) does not answer NVML (%s); advertising it as Unhealthy", i, uuid, err)
                name, memory, mig, healthy = "unknown", 0, False, False
                self._minor.setdefault(uuid, i)
            gpus.append(
                contract.Gpu(
                    id=uuid,
                    index=i,
                    vendor="nvidia",
                    model=name,
                    memory_mib=int(memory),
                    numa_node=self._numa_node(h, buses[pos]),
                    pci_bus_id=buses[pos],
                    healthy=healthy,
                    mig_enabled=mig,
                    mig=migs,
                    links=self._links(answering, buses, pos) if healthy else (),
                )
            )
        self._register_events([h for _, h in answering])
        return tuple(gpus)

    def _mig_enabled(self, handle: Any) -> bool:
        try:
            current, _pending = self.nvml.nvmlDeviceGetMigMode(handle)
        except self.nvml.NVMLError:
            return False  # GPUs without MIG answer NOT_SUPPORTED
        return bool(current == self.nvml.NVML_FEATURE_ENABLED)

    def _mig_devices(self, handle: Any, parent: str, total_bytes: int) -> tuple[contract.MigDevice, ...]:
        """The MIG devices of a GPU in MIG mode: UUID, profile name, placement and memory."""
        nvml = self.nvml
        out = []
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError:
                continue  # an empty slot answers NOT_FOUND
            uuid = nvml.nvmlDeviceGetUUID(mig)
            attrs = nvml.nvmlDeviceGetAttributes(mig)
            gi_id = nvml.nvmlDeviceGetGpuInstanceId(mig)
            ci_id = nvml.nvmlDeviceGetComputeInstanceId(mig)
            placement = nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceGetGpuInstanceById(handle, gi_id)).placement
            profile = mig_profile_name(
                attrs.gpuInstanceSliceCount, attrs.computeInstanceSliceCount, attrs.memorySizeMB, total_bytes
            )
            self._mig_caps[uuid] = (parent, gi_id, ci_id)
            out.append(
                contract.MigDevice(
                    id=uuid,
                    profile=profile,
                    start=int(placement.start),
                    size=int(placement.size),
                    memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(mig).total // 2**20),
                )
            )
        return tuple(out)

    def _numa_node(self, handle: Any, bus_id: str) -> int:
        try:
            return int(self.nvml.nvmlDeviceGetNumaNodeId(handle))
        except (self.nvml.NVMLError, AttributeError):
            pass
        path = self.sysfs_root / "bus/pci/devices" / bus_id.lower()[-12:] / "numa_node"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return -1

    def _active_link_remotes(self, handle: Any) -> list[str]:
        nvml = self.nvml
        remotes = []
        for link in range(nvml.NVML_NVLINK_MAX_LINKS):
            try:
                if nvml.nvmlDeviceGetNvLinkState(handle, link) != nvml.NVML_FEATURE_ENABLED:
                    continue
                remotes.append(_bus_key(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId))
            except nvml.NVMLError:
                continue
        return remotes

    def _links(self, gpus: list[tuple[int, Any]], buses: list[str], pos: int) -> tuple[contract.Link, ...]:
        """NVLink peers (by GPU index) of the GPU at ``pos``: direct bridges count their links;
        through NVSwitch, all of its links."""
        nvml = self.nvml
        gpu_buses = {_bus_key(b) for b in buses}
        handle = gpus[pos][1]
        remotes = self._active_link_remotes(handle)
        to_switch = sum(1 for r in remotes if r not in gpu_buses)
        links = []
        for q, (j, other) in enumerate(gpus):
            if q == pos:
                continue
            try:
                status = nvml.nvmlDeviceGetP2PStatus(handle, other, nvml.NVML_P2P_CAPS_INDEX_NVLINK)
            except nvml.NVMLError:
                continue
            if status != nvml.NVML_P2P_STATUS_OK:
                continue
            direct = sum(1 for r in remotes if r == _bus_key(buses[q]))
            count = direct or to_switch
            if count:
                links.append(contract.Link(peer=j, nvlinks=count))
        return tuple(links)

    # --- allocation ---------------------------------------------------------------------

    def container_edits(self, visible_ids: list[str], pass_device_specs: bool) -> ContainerEdits:
        envs = {NVIDIA_VISIBLE_DEVICES: ",".join(visible_ids)}
        if not pass_device_specs:
            return ContainerEdits(envs, ())
        nodes = []
        for v in visible_ids:
            if v in self._mig_caps:
                parent, gi, ci = self._mig_caps[v]
                nodes.append(f"/dev/nvidia{self._minor[parent]}")
                nodes += self._cap_nodes(self._minor[parent], gi, ci)
            elif v in self._minor:
                nodes.append(f"/dev/nvidia{self._minor[v]}")
        return ContainerEdits(envs, tuple(dict.fromkeys(nodes + list(NVIDIA_CONTROL_NODES))))

    def _cap_nodes(self, minor: int, gi: int, ci: int) -> list[str]:
        """The /dev/nvidia-caps nodes granting access to a MIG GPU and compute instance, from
        the driver's capability files (``DeviceFileMinor: N``)."""
        base = self.proc_root / f"driver/nvidia/capabilities/gpu{minor}/mig/gi{gi}"
        out = []
        for path in (base / "access", base / f"ci{ci}" / "access"):
            try:
                for line in path.read_text().splitlines():
                    if line.startswith("DeviceFileMinor:"):
                        out.append(f"/dev/nvidia-caps/nvidia-cap{int(line.split(':')[1])}")
            except (OSError, ValueError):
                log.warning("cannot read MIG capability %s; the container may lack MIG access", path)
        return out

    # --- health -------------------------------------------------------------------------

    def _register_events(self, handles: list[Any]) -> None:
        nvml = self.nvml
        if self._events is not None:
            return
        try:
            self._events = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as err:
            log.warning("NVML event set not available (%s): XID health checks are off", err)
            return
        for h in handles:
            uuid = self._uuid_by_handle[_handle_key(h)]
            try:
                nvml.nvmlDeviceRegisterEvents(h, nvml.nvmlEventTypeXidCriticalError, self._events)
            except nvml.NVMLError as err:
                log.warning("GPU %s cannot report XID events (%s): its health is probed only", uuid, err)

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        nvml = self.nvml
        if self._events is None:
            return None
        try:
            data = nvml.nvmlEventSetWait_v2(self._events, int(timeout_s * 1000))
        except nvml.NVMLError as err:
            if getattr(err, "value", None) == nvml.NVML_ERROR_TIMEOUT:
                return None
            return HealthEvent(None, f"NVML event wait failed: {err}")
        if data.eventType != nvml.nvmlEventTypeXidCriticalError:
            return None
        uuid = self._uuid_by_handle.get(_handle_key(data.device))
        return HealthEvent(uuid, f"XID {data.eventData}", xid=int(data.eventData))

    def probe(self, gpu_id: str) -> str | None:
        nvml = self.nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(gpu_id)
            nvml.nvmlDeviceGetMemoryInfo(handle)
        except nvml.NVMLError as err:
            return f"NVML: {err}"
        return None

    def read_usage(self, visible_id: str) -> Reading:
        """Utilisation and memory of a GPU or MIG device, None where NVML has no answer."""
        nvml = self.nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(visible_id)
        except nvml.NVMLError:
            return Reading(None, None, None)
        try:
            ratio: float | None = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        except nvml.NVMLError:
            ratio = None  # MIG mode and some GPUs give no utilisation
        try:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            return Reading(ratio, int(memory.used), int(memory.total))
        except nvml.NVMLError:
            return Reading(ratio, None, None)

    def close(self) -> None:
        try:
            if self._events is not None:
                self.nvml.nvmlEventSetFree(self._events)
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass
