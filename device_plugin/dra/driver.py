"""The DRA driver's lifecycle: discover, follow health and layout, publish, serve.

The DRA counterpart of :class:`device_plugin.manager.Manager`, on the same parts: the
discovery backend, :func:`device_plugin.resources.plan` (time-slicing rules; MIG devices are
published as they are, no strategy needed: DeviceClasses select them by attribute) and the
:class:`~device_plugin.health.HealthTracker`. On top, the faults of Unhealthy GPUs
(:func:`~device_plugin.dra.slices.fault_of`) that become device taints. Two threads:

- health: the backend's events (XIDs, a device vanishing); a critical one taints the GPU's
  devices (a worse one later turns NoSchedule into NoExecute);
- probe: every ``probe_interval_s`` probes Unhealthy GPUs (a recovered GPU's taints go),
  rescans the layout (a MIG repartitioning is published without a restart) and serves again
  on a socket file that was removed.

Every change is handed to the publisher (:class:`~device_plugin.dra.publisher.SlicePublisher`,
or :class:`NoSlices` without API access), which writes only what changed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from gpupack import contract

from device_plugin import resources
from device_plugin.discovery.backend import Backend, HealthEvent, next_event
from device_plugin.dra import slices
from device_plugin.health import HealthSettings, HealthTracker

log = logging.getLogger("gpupack.dra.driver")


class Slices(Protocol):
    """Where the node's ResourceSlices go (a null object when publishing is off)."""

    def publish(self, gpus: Sequence[contract.Gpu], faults: Mapping[str, slices.Fault]) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class NoSlices:
    def publish(self, gpus: Sequence[contract.Gpu], faults: Mapping[str, slices.Fault]) -> None:
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


_SEVERITY = {"NoSchedule": 0, "NoExecute": 1}


class Driver:
    def __init__(
        self,
        backend: Backend,
        health: HealthSettings = HealthSettings(),
        sharing: resources.Sharing = resources.Sharing(),
        publisher: Slices | None = None,
    ) -> None:
        self.backend = backend
        self.sharing = sharing
        self.publisher = publisher or NoSlices()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._on_tick: Callable[[], None] = lambda: None
        self._found = backend.discover()
        self.tracker = HealthTracker([g.id for g in self._found], health)
        self.faults: dict[str, slices.Fault] = {}
        for g in self._found:
            if not g.healthy:
                self.tracker.mark_unhealthy(g.id, "did not answer at discovery")
                self.faults[g.id] = slices.Fault("not-answering", "NoSchedule")
        self._gpus: tuple[contract.Gpu, ...] = ()
        self._published: dict[str, slices.PublishedDevice] = {}
        self._refresh()  # raises resources.StrategyError for sharing on an AMD or Intel node

    # --- state ----------------------------------------------------------------------------------

    def _refresh(self) -> None:
        found = tuple(dataclasses.replace(g, healthy=self.tracker.healthy(g.id)) for g in self._found)
        planned = resources.plan(found, "none", self.sharing)
        with self._lock:
            self._gpus = planned
            self._published = slices.published_devices(planned)
            faults = dict(self.faults)
        self.publisher.publish(planned, faults)

    def gpus(self) -> tuple[contract.Gpu, ...]:
        with self._lock:
            return self._gpus

    def published(self) -> dict[str, slices.PublishedDevice]:
        with self._lock:
            return dict(self._published)

    # --- health and layout ------------------------------------------------------------------------

    def apply_event(self, event: HealthEvent) -> None:
        verdict = self.tracker.on_event(event)
        if verdict.action != "unhealthy":
            return
        known = {g.id for g in self._found}
        targets = known if event.gpu_id is None else {event.gpu_id} & known
        fault = slices.fault_of(event)
        changed = False
        with self._lock:
            for gpu_id in targets:
                old = self.faults.get(gpu_id)
                if old is None or _SEVERITY[fault.effect] > _SEVERITY[old.effect]:
                    self.faults[gpu_id] = fault
                    changed = True
        if changed or verdict.changed:
            self._refresh()

    def probe_once(self) -> None:
        verdict = self.tracker.probe_round(self.backend.probe)
        if verdict.changed:
            with self._lock:
                for gpu_id in verdict.changed:
                    self.faults.pop(gpu_id, None)
            self._refresh()

    def rescan(self) -> None:
        """Re-reads the GPUs; publishes a changed MIG layout without a restart."""
        try:
            found = self.backend.discover()
        except Exception as err:  # noqa: BLE001 - keep the last layout
            log.warning("rescanning GPUs failed (%s); keeping the last layout", err)
            return

        def shape(gs: Sequence[contract.Gpu]) -> list[tuple[str, bool, tuple[tuple[str, str], ...]]]:
            return [(g.id, g.mig_enabled, tuple((m.id, m.profile) for m in g.mig)) for g in gs]

        if shape(found) == shape(self._found):
            return
        known = {g.id for g in self._found}
        self._found = tuple(g for g in found if g.id in known)  # a new GPU needs a restart
        log.info("the GPU layout changed; publishing the new layout")
        self._refresh()

    # --- loops ------------------------------------------------------------------------------------

    def _health_loop(self) -> None:
        while not self._stop.is_set():
            event = next_event(self.backend, 1.0)
            if event is not None:
                self.apply_event(event)

    def _probe_loop(self) -> None:
        while not self._stop.wait(self.tracker.settings.probe_interval_s):
            try:
                self.probe_once()
                if any(g.mig_enabled for g in self._found):
                    self.rescan()
                self._on_tick()
            except Exception:
                log.exception("periodic health/layout check failed; will try again")

    def start(self, on_tick: Callable[[], None] = lambda: None) -> None:
        """Starts publishing and the loops; ``on_tick`` runs on each probe round (the server's
        socket check)."""
        self._on_tick = on_tick
        self.publisher.start()
        for name, target in (("health", self._health_loop), ("probe", self._probe_loop)):
            t = threading.Thread(target=target, name=f"gpupack-dra-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.publisher.stop()
        self.backend.close()
