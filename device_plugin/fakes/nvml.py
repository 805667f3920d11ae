"""A fake of the ``pynvml`` module that models real NVIDIA machines, for tests, demos and e2e.

The NVML discovery backend receives the NVML module as a constructor argument; handing it a
:class:`FakeNvml` instead of ``pynvml`` lets the backend run unchanged without a GPU. The fake
answers the calls the backend makes with the same shapes as the real library (handles,
``memory.total`` in bytes, ``busId`` strings, NVLink remote PCI info, P2P status, XID events
from ``nvmlEventSetWait_v2``) and raises the real ``pynvml.NVMLError`` subclasses, so error
paths are exercised too. Tests can inject XIDs, make a GPU fall off the bus and come back, and
make every NVML call fail.

Two machines are modelled after real ones: :func:`a100_sxm4_8x` (DGX A100 40GB: 8 GPUs, each
with 12 NVLinks into six NVSwitches, GPUs 0-3 on NUMA node 0 and 4-7 on node 1) and
:func:`h100_pcie_pairs` (8 H100 PCIe 80GB joined in pairs by NVLink bridges of 4 links).
:func:`from_inventory` builds one from the fake inventory of the ``fake`` backend
(:mod:`device_plugin.fakes.inventory`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import queue
import threading
from typing import Any

import pynvml

# Re-exported so the fake can stand in for the module: the backend reads these off `nvml`.
NVMLError = pynvml.NVMLError
NVML_ERROR_TIMEOUT = pynvml.NVML_ERROR_TIMEOUT
NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
NVML_ERROR_UNKNOWN = pynvml.NVML_ERROR_UNKNOWN
NVML_ERROR_UNINITIALIZED = pynvml.NVML_ERROR_UNINITIALIZED
NVML_ERROR_INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT
NVML_ERROR_NOT_FOUND = pynvml.NVML_ERROR_NOT_FOUND
NVML_P2P_CAPS_INDEX_NVLINK = pynvml.NVML_P2P_CAPS_INDEX_NVLINK
NVML_P2P_STATUS_OK = pynvml.NVML_P2P_STATUS_OK
NVML_P2P_STATUS_NOT_SUPPORTED = pynvml.NVML_P2P_STATUS_NOT_SUPPORTED
NVML_NVLINK_MAX_LINKS = pynvml.NVML_NVLINK_MAX_LINKS
NVML_FEATURE_ENABLED = pynvml.NVML_FEATURE_ENABLED
NVML_FEATURE_DISABLED = pynvml.NVML_FEATURE_DISABLED
nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError
nvmlEventTypeNone = pynvml.nvmlEventTypeNone

_NVSWITCH_BUS = "00000000:{:02X}:00.0"


#: MIG profiles by GPU memory class: name -> (GPU instance slices, compute slices, memory MB as
#: NVML reports it for the MIG device, placement size in memory slices of 8). From NVIDIA's
#: MIG user guide tables for A100 40GB and H100 80GB.
MIG_PROFILES: dict[int, dict[str, tuple[int, int, int, int]]] = {
    40: {"1g.5gb": (1, 1, 4864, 1), "2g.10gb": (2, 2, 9984, 2), "3g.20gb": (3, 3, 19968, 4),
         "4g.20gb": (4, 4, 19968, 4), "7g.40gb": (7, 7, 40192, 8), "1c.3g.20gb": (3, 1, 19968, 4)},
    80: {"1g.10gb": (1, 1, 9856, 1), "1g.20gb": (1, 1, 19968, 2), "2g.20gb": (2, 2, 19968, 2),
         "3g.40gb": (3, 3, 40192, 4), "4g.40gb": (4, 4, 40192, 4), "7g.80gb": (7, 7, 80384, 8)},
}


@dataclasses.dataclass
class FakeMig:
    """One MIG device (a compute instance inside a GPU instance) of a fake GPU."""

    uuid: str
    profile: str
    gi_slices: int
    ci_slices: int
    memory_mb: int
    start: int
    size: int
    gi_id: int
    ci_id: int = 0


@dataclasses.dataclass
class FakeGpu:
    """One modelled GPU; mutable so tests can change it while the backend runs."""

    index: int
    name: str
    memory_mib: int
    numa_node: int
    bus_id: str
    uuid: str
    minor: int
    nvlink_remotes: list[str]  # remote PCI bus id of each active NVLink (a GPU or an NVSwitch)
    mig_enabled: bool = False
    lost: bool = False  # fell off the bus: every query raises GpuIsLost
    migs: list[FakeMig] = dataclasses.field(default_factory=list)
    utilization: int = 0  # percent of time a kernel ran over the last sample period
    memory_used_mib: int = 0


@dataclasses.dataclass(frozen=True)
class _Handle:
    index: int


@dataclasses.dataclass(frozen=True)
class _MigHandle:
    parent: int
    slot: int


@dataclasses.dataclass(frozen=True)
class _GpuInstance:
    parent: int
    gi_id: int


@dataclasses.dataclass
class _Attributes:
    gpuInstanceSliceCount: int
    computeInstanceSliceCount: int
    memorySizeMB: int
    multiprocessorCount: int


@dataclasses.dataclass
class _Placement:
    start: int
    size: int


@dataclasses.dataclass
class _GpuInstanceInfo:
    id: int
    placement: _Placement


@dataclasses.dataclass
class _EventData:
    device: _Handle
    eventType: int
    eventData: int
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


@dataclasses.dataclass(eq=False)
class _EventSet:
    events: queue.Queue[_EventData]
    registered: set[int]


@dataclasses.dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclasses.dataclass
class _Utilization:
    gpu: int
    memory: int


@dataclasses.dataclass
class _Pci:
    busId: str
    busIdLegacy: str


def fake_uuid(seed: str) -> str:
    """A stable, well-formed GPU UUID derived from a seed string."""
    h = hashlib.sha256(seed.encode()).hexdigest()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


class FakeNvml:
    """Module-like object with the pynvml functions the NVML backend uses."""

    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: list[FakeGpu], driver: str = "570.124.06") -> None:
        self.gpus = gpus
        self.driver = driver
        self.broken = False  # every call raises NVML_ERROR_UNKNOWN
        self.initialised = 0
        self._sets: list[_EventSet] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        # Constants the backend reads off the module (NVML_*, nvmlEventType*).
        if name.startswith(("NVML_", "nvmlEventType")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    # --- fault injection ----------------------------------------------------------------

    def inject_xid(self, index: int, xid: int) -> None:
        """Delivers an XID critical error event for GPU ``index`` to every registered set."""
        with self._lock:
            for s in self._sets:
                if index in s.registered:
                    s.events.put(_EventData(_Handle(index), nvmlEventTypeXidCriticalError, xid))

    def lose(self, index: int) -> None:
        """GPU ``index`` falls off the bus (XID 79): queries on it fail until :meth:`recover`."""
        self.gpus[index].lost = True
        self.inject_xid(index, 79)

    def recover(self, index: int) -> None:
        self.gpus[index].lost = False

    def set_mig(self, index: int, profiles: list[str]) -> None:
        """Repartitions GPU ``index`` into MIG devices of these profiles (MIG mode on), placed
        first-fit on aligned memory slices as the driver does; [] turns MIG mode off."""
        gpu = self.gpus[index]
        gpu.mig_enabled = bool(profiles)
        table = MIG_PROFILES[40 if gpu.memory_mib < 60000 else 80]
        used = [False] * 8
        gpu.migs = []
        for n, name in enumerate(profiles):
            gi_slices, ci_slices, memory, size = table[name]
            start = next(
                (s for s in range(0, 8, size) if s + size <= 8 and not any(used[s : s + size])), None
            )
            if start is None:
                raise ValueError(f"GPU {index}: no room for MIG profile {name}")
            for k in range(start, start + size):
                used[k] = True
            gpu.migs.append(FakeMig(
                uuid="MIG-" + fake_uuid(f"{gpu.uuid}/{n}/{name}")[4:], profile=name, gi_slices=gi_slices,
                ci_slices=ci_slices, memory_mb=memory, start=start, size=size, gi_id=n + 1,
            ))

    # --- the pynvml surface -------------------------------------------------------------

    def _check(self) -> None:
        if self.broken:
            raise pynvml.NVMLError(NVML_ERROR_UNKNOWN)
        if self.initialised <= 0:
            raise pynvml.NVMLError(NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: _Handle) -> FakeGpu:
        self._check()
        if not isinstance(handle, _Handle) or not 0 <= handle.index < len(self.gpus):
            raise pynvml.NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise pynvml.NVMLError(NVML_ERROR_GPU_IS_LOST)
        return gpu

    def nvmlInit(self) -> None:
        if self.broken:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised = max(0, self.initialised - 1)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> _Handle | _MigHandle:
        self._check()
        for gpu in self.gpus:
            slots = [n for n, m in enumerate(gpu.migs) if m.uuid == uuid and gpu.mig_enabled]
            if gpu.uuid == uuid or slots:
                if gpu.lost:
                    raise pynvml.NVMLError(NVML_ERROR_GPU_IS_LOST)
                return _MigHandle(gpu.index, slots[0]) if slots else _Handle(gpu.index)
        raise pynvml.NVMLError(NVML_ERROR_NOT_FOUND)

    def _mig(self, handle: _MigHandle) -> FakeMig:
        gpu = self._gpu(_Handle(handle.parent))
        if not gpu.mig_enabled or not 0 <= handle.slot < len(gpu.migs):
            raise pynvml.NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return gpu.migs[handle.slot]

    def nvmlDeviceGetUUID(self, handle: _Handle | _MigHandle) -> str:
        if isinstance(handle, _MigHandle):
            return self._mig(handle).uuid
        return self._gpu(handle).uuid

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:
        return 7 if self._gpu(handle).mig_enabled else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, slot: int) -> _MigHandle:
        gpu = self._gpu(handle)
        if not gpu.mig_enabled or not 0 <= slot < len(gpu.migs):
            raise pynvml.NVMLError(NVML_ERROR_NOT_FOUND)
        return _MigHandle(handle.index, slot)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: _MigHandle) -> _Handle:
        self._mig(handle)
        return _Handle(handle.parent)

    def nvmlDeviceGetAttributes(self, handle: _MigHandle) -> _Attributes:
        m = self._mig(handle)
        return _Attributes(m.gi_slices, m.ci_slices, m.memory_mb, 14 * m.ci_slices)

    def nvmlDeviceGetGpuInstanceId(self, handle: _MigHandle) -> int:
        return self._mig(handle).gi_id

    def nvmlDeviceGetComputeInstanceId(self, handle: _MigHandle) -> int:
        return self._mig(handle).ci_id

    def nvmlDeviceGetGpuInstanceById(self, handle: _Handle, gi_id: int) -> _GpuInstance:
        gpu = self._gpu(handle)
        if not any(m.gi_id == gi_id for m in gpu.migs):
            raise pynvml.NVMLError(NVML_ERROR_NOT_FOUND)
        return _GpuInstance(handle.index, gi_id)

    def nvmlGpuInstanceGetInfo(self, gi: _GpuInstance) -> _GpuInstanceInfo:
        gpu = self._gpu(_Handle(gi.parent))
        m = next(m for m in gpu.migs if m.gi_id == gi.gi_id)
        return _GpuInstanceInfo(gi.gi_id, _Placement(m.start, m.size))

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        return self._gpu(handle).index

    def nvmlDeviceGetMinorNumber(self, handle: _Handle) -> int:
        return self._gpu(handle).minor

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle | _MigHandle) -> _Memory:
        if isinstance(handle, _MigHandle):
            total = self._mig(handle).memory_mb * 2**20
            return _Memory(total=total, free=total, used=0)
        gpu = self._gpu(handle)
        total, used = gpu.memory_mib * 2**20, gpu.memory_used_mib * 2**20
        return _Memory(total=total, free=total - used, used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> _Utilization:
        gpu = self._gpu(handle)
        if gpu.mig_enabled:
            raise pynvml.NVMLError(NVML_ERROR_NOT_SUPPORTED)  # as on real GPUs in MIG mode
        return _Utilization(gpu=gpu.utilization, memory=0)

    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> _Pci:
        bus = self._gpu(handle).bus_id
        return _Pci(busId=bus, busIdLegacy=bus[4:])

    def nvmlDeviceGetNumaNodeId(self, handle: _Handle) -> int:
        return self._gpu(handle).numa_node

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:
        mode = NVML_FEATURE_ENABLED if self._gpu(handle).mig_enabled else NVML_FEATURE_DISABLED
        return [mode, mode]

    def nvmlDeviceGetNvLinkState(self, handle: _Handle, link: int) -> int:
        gpu = self._gpu(handle)
        if not 0 <= link < NVML_NVLINK_MAX_LINKS:
            raise pynvml.NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if link >= len(gpu.nvlink_remotes):
            raise pynvml.NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return int(NVML_FEATURE_ENABLED)

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: _Handle, link: int) -> _Pci:
        gpu = self._gpu(handle)
        if not 0 <= link < len(gpu.nvlink_remotes):
            raise pynvml.NVMLError(NVML_ERROR_NOT_SUPPORTED)
        bus = gpu.nvlink_remotes[link]
        return _Pci(busId=bus, busIdLegacy=bus[4:])

    def nvmlDeviceGetP2PStatus(self, a: _Handle, b: _Handle, caps: int) -> int:
        ga, gb = self._gpu(a), self._gpu(b)
        if caps != NVML_P2P_CAPS_INDEX_NVLINK:
            return int(NVML_P2P_STATUS_OK)
        direct = gb.bus_id in ga.nvlink_remotes
        gpu_buses = {g.bus_id for g in self.gpus}
        via_switch = any(r not in gpu_buses for r in ga.nvlink_remotes) and any(
            r not in gpu_buses for r in gb.nvlink_remotes
        )
        return int(NVML_P2P_STATUS_OK if direct or via_switch else NVML_P2P_STATUS_NOT_SUPPORTED)

    def nvmlEventSetCreate(self) -> _EventSet:
        self._check()
        s = _EventSet(queue.Queue(), set())
        with self._lock:
            self._sets.append(s)
        return s

    def nvmlEventSetFree(self, event_set: _EventSet) -> None:
        with self._lock:
            if event_set in self._sets:
                self._sets.remove(event_set)

    def nvmlDeviceGetSupportedEventTypes(self, handle: _Handle) -> int:
        self._gpu(handle)
        return int(nvmlEventTypeXidCriticalError)

    def nvmlDeviceRegisterEvents(self, handle: _Handle, types: int, event_set: _EventSet) -> None:
        self._gpu(handle)
        event_set.registered.add(handle.index)

    def nvmlEventSetWait_v2(self, event_set: _EventSet, timeout_ms: int) -> _EventData:
        self._check()
        try:
            return event_set.events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise pynvml.NVMLError(NVML_ERROR_TIMEOUT) from None

    nvmlEventSetWait = nvmlEventSetWait_v2


# --- modelled machines ----------------------------------------------------------------------


def a100_sxm4_8x(seed: str = "a100-node") -> FakeNvml:
    """DGX A100 40GB: 8 GPUs behind six NVSwitches (12 links each), NUMA 0 for 0-3, 1 for 4-7."""
    bus = [0x07, 0x0F, 0x47, 0x4E, 0x87, 0x90, 0xB7, 0xBD]
    switches = [_NVSWITCH_BUS.format(0xC4 + s) for s in range(6)]
    gpus = [
        FakeGpu(
            index=i,
            name="NVIDIA A100-SXM4-40GB",
            memory_mib=40960,
            numa_node=0 if i < 4 else 1,
            bus_id=f"00000000:{bus[i]:02X}:00.0",
            uuid=fake_uuid(f"{seed}/{i}"),
            minor=i,
            nvlink_remotes=[switches[link % 6] for link in range(12)],
        )
        for i in range(8)
    ]
    return FakeNvml(gpus)


def h100_pcie_pairs(seed: str = "h100-node") -> FakeNvml:
    """8x H100 PCIe 80GB; NVLink bridges join (0,1), (2,3), (4,5), (6,7) with 4 links; NUMA 0/1."""
    buses = [f"00000000:{b:02X}:00.0" for b in (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)]
    gpus = [
        FakeGpu(
            index=i,
            name="NVIDIA H100 PCIe",
            memory_mib=81559,
            numa_node=0 if i < 4 else 1,
            bus_id=buses[i],
            uuid=fake_uuid(f"{seed}/{i}"),
            minor=i,
            nvlink_remotes=[buses[i ^ 1]] * 4,
        )
        for i in range(8)
    ]
    return FakeNvml(gpus)


def from_inventory(raw: dict[str, Any], seed: str = "fake") -> FakeNvml:
    """Builds a machine from the fake inventory format (the contract's inventory keys).

    Each GPU takes ``id`` (UUID), ``index``, ``model``, ``memoryMiB``, ``numaNode``, ``pciBusId``,
    ``links`` (``[{peer, nvlinks}]``, direct bridges), ``migEnabled`` and ``mig`` (``[{profile}]``,
    placed as the driver would); all but ``model`` and ``memoryMiB`` have defaults. A top-level ``nvswitch: <links per GPU>`` puts every GPU behind
    NVSwitches instead. ``healthy: false`` makes a GPU answer like one that fell off the bus.
    """
    entries = raw["gpus"]
    buses = [str(g.get("pciBusId") or f"00000000:{0x10 + 8 * i:02X}:00.0") for i, g in enumerate(entries)]
    switch_links = int(raw.get("nvswitch", 0))
    gpus = []
    for i, g in enumerate(entries):
        remotes: list[str] = []
        if switch_links:
            remotes = [_NVSWITCH_BUS.format(0xC4 + link % 6) for link in range(switch_links)]
        for link in g.get("links", []):
            remotes += [buses[int(link["peer"])]] * int(link["nvlinks"])
        gpus.append(
            FakeGpu(
                index=int(g.get("index", i)),
                name=str(g["model"]),
                memory_mib=int(g["memoryMiB"]),
                numa_node=int(g.get("numaNode", 0)),
                bus_id=buses[i],
                uuid=str(g.get("id") or fake_uuid(f"{seed}/{i}")),
                minor=int(g.get("index", i)),
                nvlink_remotes=remotes,
                lost=not bool(g.get("healthy", True)),
            )
        )
    fake = FakeNvml(gpus)
    for i, g in enumerate(entries):
        profiles = [str(m["profile"]) for m in g.get("mig", [])]
        if profiles or g.get("migEnabled"):
            fake.set_mig(i, profiles)
    return fake


def update_from_inventory(fake: FakeNvml, raw: dict[str, Any]) -> list[int]:
    """Applies a re-read inventory file's health to a running fake; returns GPUs newly lost."""
    newly_lost = []
    for i, g in enumerate(raw.get("gpus", [])):
        if i >= len(fake.gpus):
            break
        lost = not bool(g.get("healthy", True))
        if lost and not fake.gpus[i].lost:
            newly_lost.append(i)
            fake.lose(i)
        elif not lost:
            fake.recover(i)
        profiles = [str(m["profile"]) for m in g.get("mig", [])]
        if profiles != [m.profile for m in fake.gpus[i].migs] or bool(g.get("migEnabled", bool(profiles))) != fake.gpus[i].mig_enabled:
            fake.set_mig(i, profiles)
            fake.gpus[i].mig_enabled = bool(g.get("migEnabled", bool(profiles)))
    return newly_lost
