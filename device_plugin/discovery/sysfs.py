"""What the AMD and Intel backends share: reading sysfs, and health from devices being present.

Neither amdgpu nor i915/xe offers an event a device plugin can wait on for "this GPU is gone",
so :class:`PresenceWatch` turns presence checks into the :class:`~device_plugin.discovery.Backend`
health calls: :meth:`PresenceWatch.wait_event` re-checks every watched GPU at most once per
``min(timeout_s, 1.0)`` seconds and reports each GPU once when it stops answering;
:meth:`PresenceWatch.probe` is the same check, so the manager's health tracker decides when a
GPU that came back is Healthy again.
"""

from __future__ import annotations

import collections
import logging
import os
import pathlib
import re
import threading
import time
from collections.abc import Callable, Iterable

from device_plugin.discovery import HealthEvent

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
