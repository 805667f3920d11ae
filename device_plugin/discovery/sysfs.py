"""What the AMD and Intel backends share: reading sysfs, device nodes, and health from presence.

:class:`SysfsBackend` is the one base of the sysfs vendors. A vendor says how it finds its
GPUs (:meth:`SysfsBackend._find`: one :class:`Found` per GPU, with its PCI device and DRM
minors) and what "present" means for one (:meth:`SysfsBackend._check_found`); the base does
the rest the same way for every vendor: a container gets the vendor's shared device nodes
(``/dev/kfd`` for AMD, none for Intel) and each GPU's ``/dev/dri/cardN`` and
``/dev/dri/renderDN``; a warning names the device nodes missing under the host's /dev; and
health is presence.

Neither amdgpu nor i915/xe offers an event a device plugin can wait on for "this GPU is gone",
so :class:`PresenceWatch` turns presence checks into the :class:`~device_plugin.discovery.backend.Backend`
health calls: :meth:`PresenceWatch.wait_event` re-checks every watched GPU at most once per
``min(timeout_s, 1.0)`` seconds and reports each GPU once when it stops answering;
:meth:`PresenceWatch.probe` is the same check, so the manager's health tracker decides when a
GPU that came back is Healthy again.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pathlib
import re
import threading
import time
from collections.abc import Callable, Iterable

from gpupack import contract

from device_plugin.discovery.backend import ContainerEdits, HealthEvent

log = logging.getLogger("gpupack.sysfs")

#: ``cardN`` and ``renderDN`` as the DRM core names its minors; connectors (``card0-DP-1``) are not GPUs.
CARD = re.compile(r"^card([0-9]+)$")
RENDER = re.compile(r"^renderD([0-9]+)$")

#: Longest pause between two presence checks; short enough that the kubelet hears of a lost
#: GPU within about a second, long enough that checking costs nothing measurable.
MAX_CHECK_PERIOD_S = 1.0


def read_text(path: pathlib.Path) -> str | None:
    """A sysfs attribute without its newline; None when it is missing or does not read (a
    device being removed answers ENODEV or EIO)."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_int(path: pathlib.Path) -> int | None:
    """A numeric attribute; sysfs writes ids in hex (``0x1002``) and sizes in decimal."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def read_properties(path: pathlib.Path) -> dict[str, int] | None:
    """A KFD ``properties`` file (one ``name value`` pair a line, decimal); None when unreadable."""
    text = read_text(path)
    if text is None:
        return None
    props = {}
    for line in text.splitlines():
        name, _, value = line.strip().partition(" ")
        try:
            props[name] = int(value.strip())
        except ValueError:
            continue
    return props


def minors(drm_dir: pathlib.Path) -> tuple[int | None, int | None]:
    """The card and render minors listed in a PCI device's ``drm/`` folder."""
    card = render = None
    try:
        names = sorted(os.listdir(drm_dir))
    except OSError:
        return None, None
    for name in names:
        if (m := CARD.match(name)) and card is None:
            card = int(m.group(1))
        elif (m := RENDER.match(name)) and render is None:
            render = int(m.group(1))
    return card, render


def numa_node(pci_dir: pathlib.Path) -> int:
    """The PCI device's NUMA node; -1 where the platform has none (sysfs then writes -1 too)."""
    value = read_int(pci_dir / "numa_node")
    return -1 if value is None or value < 0 else value


def driver_name(pci_dir: pathlib.Path) -> str:
    """The kernel driver bound to a PCI device (the ``driver`` link's target), "" when unbound."""
    try:
        return os.path.basename(os.readlink(pci_dir / "driver"))
    except OSError:
        return ""


class PresenceWatch:
    """Health from presence: ``check(gpu_id)`` returns None while the GPU answers, else why not."""

    def __init__(self, check: Callable[[str], str | None]) -> None:
        self._check = check
        self._ids: tuple[str, ...] = ()
        self._missing: set[str] = set()
        self._pending: collections.deque[HealthEvent] = collections.deque()
        self._last_check = float("-inf")
        self._closed = threading.Event()

    def watch(self, gpu_ids: Iterable[str]) -> None:
        """Watches these GPUs from now on; those already not answering are not reported again
        (discovery advertised them Unhealthy)."""
        self._ids = tuple(gpu_ids)
        self._missing = {g for g in self._ids if self._check(g) is not None}

    def _scan(self) -> None:
        for gpu_id in self._ids:
            problem = self._check(gpu_id)
            if problem is None:
                # Reported again if it vanishes again; Healthy again is the tracker's call.
                self._missing.discard(gpu_id)
            elif gpu_id not in self._missing:
                self._missing.add(gpu_id)
                log.warning("GPU %s stopped answering: %s", gpu_id, problem)
                self._pending.append(HealthEvent(gpu_id, problem))

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        now = time.monotonic()
        deadline = now + max(timeout_s, 0.0)
        period = min(max(timeout_s, 0.0), MAX_CHECK_PERIOD_S)
        while not self._closed.is_set():
            if self._pending:
                return self._pending.popleft()
            now = time.monotonic()
            due = self._last_check + period
            if now >= due:
                self._last_check = now
                self._scan()
                if self._pending or now < deadline:
                    continue
                return None
            if now >= deadline:
                return None
            self._closed.wait(min(due, deadline) - now)
        return None

    def probe(self, gpu_id: str) -> str | None:
        return self._check(gpu_id)

    def close(self) -> None:
        self._closed.set()


@dataclasses.dataclass(frozen=True)
class Found:
    """A GPU found in sysfs: what is advertised, its PCI device (resolved: it outlives the DRM
    class links) and its DRM card and render minors."""

    gpu: contract.Gpu
    pci_dir: pathlib.Path
    card: int
    render: int


class SysfsBackend:
    """GPUs of one vendor read from ``sysfs_root`` (the host's /sys); ``dev_root`` is where the
    host's /dev is seen, to warn when the device nodes a container needs are missing."""

    name: str
    #: The vendor in an operator's words, for log lines and health reasons ("AMD", "Intel").
    vendor: str
    #: Device nodes every container given any of these GPUs needs besides each GPU's own.
    shared_device_nodes: tuple[str, ...] = ()
    #: The vendor's logger (``gpupack.amd``, ``gpupack.intel``).
    logger: logging.Logger

    def __init__(self, sysfs_root: pathlib.Path = pathlib.Path("/sys"), dev_root: pathlib.Path = pathlib.Path("/dev")) -> None:
        self.sysfs_root = sysfs_root
        self.dev_root = dev_root
        self._found: dict[str, Found] = {}
        self._health = PresenceWatch(self._check)

    # --- what a vendor says -------------------------------------------------------------

    def _find(self) -> dict[str, Found]:
        """Every GPU of the vendor by device id, in index order; a DiscoveryError saying where
        it looked when there is none."""
        raise NotImplementedError

    def _check_found(self, found: Found) -> str | None:
        """None while the GPU answers (its PCI device, minors and attributes are there), else why not."""
        raise NotImplementedError

    # --- discovery ----------------------------------------------------------------------

    def discover(self) -> tuple[contract.Gpu, ...]:
        found = self._find()
        self._found = found
        self._warn_missing_device_nodes()
        self._health.watch(found)
        return tuple(f.gpu for f in found.values())

    def _as_found(self, found: Found) -> Found:
        """``found``, advertised Unhealthy when it does not answer already at discovery."""
        problem = self._check_found(found)
        if problem is None:
            return found
        self.logger.warning("%s GPU %s does not answer (%s); advertising it as Unhealthy", self.vendor, found.gpu.id, problem)
        return dataclasses.replace(found, gpu=dataclasses.replace(found.gpu, healthy=False))

    def _warn_missing_device_nodes(self) -> None:
        if not self.dev_root.is_dir():
            return
        wanted = list(self.shared_device_nodes) + [p for f in self._found.values() for p in _nodes_of(f)]
        missing = [p for p in wanted if not (self.dev_root / p.removeprefix("/dev/")).exists()]
        if missing:
            self.logger.warning(
                "device nodes missing under %s: %s; containers given these GPUs will not start "
                "(is /dev mounted, or --dev-root set to where it is?)", self.dev_root, ", ".join(missing),
            )

    # --- allocation ---------------------------------------------------------------------

    def container_edits(self, visible_ids: list[str], pass_device_specs: bool) -> ContainerEdits:
        # AMD and Intel have no container toolkit that turns an env var into devices: always give nodes.
        nodes = list(self.shared_device_nodes)
        for gpu_id in visible_ids:
            found = self._found.get(gpu_id)
            if found is None:
                self.logger.error("asked for device nodes of unknown %s GPU %s", self.vendor, gpu_id)
                continue
            nodes += _nodes_of(found)
        return ContainerEdits({}, tuple(dict.fromkeys(nodes)))

    # --- health -------------------------------------------------------------------------

    def _check(self, gpu_id: str) -> str | None:
        found = self._found.get(gpu_id)
        return f"not an {self.vendor} GPU of this node" if found is None else self._check_found(found)

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        return self._health.wait_event(timeout_s)

    def probe(self, gpu_id: str) -> str | None:
        return self._health.probe(gpu_id)

    def close(self) -> None:
        self._health.close()


def _nodes_of(found: Found) -> list[str]:
    """A GPU's own device nodes: its DRM card and render node."""
    return [f"/dev/dri/card{found.card}", f"/dev/dri/renderD{found.render}"]
