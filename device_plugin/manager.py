"""The device plugin's lifecycle: serve, register, follow health and layout, come back after restarts.

One :class:`Manager` per process. It discovers the GPUs, keeps their health in a
:class:`~device_plugin.health.HealthTracker`, plans the advertised resources (MIG strategy,
time-slicing), runs one :class:`~device_plugin.server.PluginServer` per resource, publishes the
inventory, and has three threads:

- health: waits on the backend's events (NVML XIDs, devices vanishing) and applies them;
- probe: every ``probe_interval_s`` probes Unhealthy GPUs so they can recover, rescans the
  layout (a changed MIG partitioning is advertised without a restart; NVML has no event for
  it) and retries a failed inventory publish;
- watch: watches the plugin folder; a new ``kubelet.sock`` (kubelet restart) or our socket
  vanishing makes the affected servers serve and register again.

:meth:`Manager.reconfigure` applies a new MIG strategy or sharing config in place: servers of
unchanged resources keep serving, so allocations already made are untouched.

CDI specs (:mod:`device_plugin.cdi`; a null writer when CDI is off) are written before the
first registration, rewritten on every re-plan (health, layout, reconfiguration) after the
new state is taken and before servers are brought in line, retried by the probe thread when
a write failed, and removed at :meth:`Manager.stop`.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from gpupack import contract

from gpupack import node_slots, topology

from device_plugin import allocate as allocate_mod
from device_plugin import cdi, resources
from device_plugin.claims import ClaimBook, PodClaim
from device_plugin.discovery.backend import Backend, HealthEvent, next_event
from device_plugin.fswatch import DirWatcher
from device_plugin.health import HealthSettings, HealthTracker
from device_plugin.metrics import PluginMetrics
from device_plugin.server import KUBELET_SOCKET, PluginServer

log = logging.getLogger("gpupack.manager")


class Publisher(Protocol):
    """Publishes the node's inventory (a null object when publishing is off)."""

    def publish(self, inventory: contract.Inventory) -> None: ...

    def flush(self) -> None:
        """Retries a publish that failed."""
        ...


class NoPublisher:
    def publish(self, inventory: contract.Inventory) -> None:
        return None

    def flush(self) -> None:
        return None


def no_claims() -> list[PodClaim]:
    return []


class Manager:
    def __init__(
        self,
        backend: Backend,
        plugin_dir: pathlib.Path,
        health: HealthSettings = HealthSettings(),
        pass_device_specs: bool = False,
        metrics: PluginMetrics | None = None,
        publisher: Publisher | None = None,
        node_name: str = "",
        layout: resources.Layout = resources.Layout(),
        claims: Callable[[], list[PodClaim]] = no_claims,
        refresh_claims: Callable[[], None] = lambda: None,
        on_allocated: Callable[[], None] = lambda: None,
        cdi_specs: cdi.Specs | None = None,
        allocate_mode: str = "env",
    ) -> None:
        if allocate_mode not in allocate_mod.GRANTS:
            raise ValueError(f"unknown allocate mode {allocate_mode!r}: choose {' or '.join(allocate_mod.GRANTS)}")
        self.backend = backend
        self.plugin_dir = plugin_dir
        self.pass_device_specs = pass_device_specs
        self.metrics = metrics or PluginMetrics()
        self.publisher = publisher or NoPublisher()
        self.node_name = node_name
        self.layout = layout
        self.claims = claims
        self.refresh_claims = refresh_claims
        self.on_allocated = on_allocated  # e.g. AnnotationCorrector.poke: compare with the kubelet soon
        self.cdi_specs = cdi_specs or cdi.NoCdiSpecs()
        self._grant = allocate_mod.GRANTS[allocate_mode]
        self._specs_lock = threading.Lock()  # one spec write at a time, always of the newest state
        self._book = ClaimBook()
        self._cond = threading.Condition()
        self._version = 0
        self._stop = threading.Event()
        self._started = False
        self._threads: list[threading.Thread] = []
        self._servers: dict[str, PluginServer] = {}
        self._registered: dict[str, bool] = {}
        self._found = backend.discover()
        self.tracker = HealthTracker([g.id for g in self._found], health)
        for g in self._found:
            if not g.healthy:
                self.tracker.mark_unhealthy(g.id, "did not answer at discovery")
        self._gpus: tuple[contract.Gpu, ...] = ()
        self._devices: dict[str, tuple[resources.Device, ...]] = {}
        self._index: dict[str, resources.Device] = {}
        self._refresh()  # raises StrategyError on a node that breaks the MIG strategy

    # --- state --------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-plans advertised devices from GPUs, health and layout; wakes ListAndWatch streams
        and brings servers in line with the resources."""
        found = tuple(dataclasses.replace(g, healthy=self.tracker.healthy(g.id)) for g in self._found)
        planned = resources.plan(found, self.layout.mig_strategy, self.layout.sharing)
        devices = resources.advertise(planned)
        node_row = node_slots.NodeRow(contract.Inventory(self.node_name, planned))
        with self._cond:
            self._gpus = planned
            self._node_row = node_row
            self._devices = devices
            self._index = resources.index(devices)
            self._version += 1
            self._cond.notify_all()
        self.metrics.set_devices(devices)
        self.publisher.publish(self.inventory())
        if self._started:
            self._write_specs()
            self._sync_servers()

    def _write_specs(self) -> None:
        with self._specs_lock:
            if self._stop.is_set():
                return  # stopping: the specs are (being) removed
            with self._cond:
                gpus, devices = self._gpus, self._devices
            self.cdi_specs.write(gpus, devices, lambda visible: self.backend.container_edits(visible, True))

    def _sync_servers(self) -> None:
        for resource in sorted(set(self._servers) - set(self._devices)):
            log.info("%s is no longer advertised; stopping its server", resource)
            self._servers.pop(resource).stop()
            self._registered.pop(resource, None)
        for resource in self.resource_names():
            if resource not in self._servers:
                self._registered[resource] = self.serve_and_register(resource)

    def inventory(self) -> contract.Inventory:
        with self._cond:
            gpus = self._gpus
        return contract.Inventory(
            node=self.node_name,
            gpus=gpus,
            mig_strategy=self.layout.mig_strategy,
            sharing="time-slicing" if self.layout.sharing.rules else "none",
        )

    def resource_names(self) -> list[str]:
        with self._cond:
            return sorted(self._devices)

    def reconfigure(self, layout: resources.Layout, health: HealthSettings, pass_device_specs: bool) -> bool:
        """Applies new settings in place; refuses (and keeps the old ones) when the node does
        not fit them. Returns whether they were applied."""
        try:
            resources.plan(self._found, layout.mig_strategy, layout.sharing)
        except resources.StrategyError as err:
            log.error("new configuration refused, keeping the old one: %s", err)
            return False
        self.layout, self.pass_device_specs = layout, pass_device_specs
        self.tracker.settings = health
        log.info("configuration applied: MIG strategy %s, %d time-slicing rule(s)", layout.mig_strategy, len(layout.sharing.rules))
        self._refresh()
        return True

    def rescan(self) -> None:
        """Re-reads the GPUs; advertises a changed MIG layout without a restart."""
        try:
            found = self.backend.discover()
        except Exception as err:
            log.warning("rescanning GPUs failed (%s); keeping the last layout", err)
            return
        def shape(gs: tuple[contract.Gpu, ...]) -> list[tuple[str, bool, tuple[tuple[str, str], ...]]]:
            return [(g.id, g.mig_enabled, tuple((m.id, m.profile) for m in g.mig)) for g in gs]
        if shape(found) == shape(self._found):
            return
        old = self._found
        try:
            resources.plan(found, self.layout.mig_strategy, self.layout.sharing)
        except resources.StrategyError as err:
            log.error("the GPUs were repartitioned but the new layout is refused: %s", err)
            return
        known = {g.id for g in old}
        self._found = tuple(g for g in found if g.id in known)  # new GPUs need a restart
        log.info("MIG layout changed; advertising the new layout")
        self._refresh()

    # --- Source for the servers -----------------------------------------------------------

    def devices(self, resource: str) -> tuple[int, tuple[resources.Device, ...]]:
        with self._cond:
            return self._version, self._devices.get(resource, ())

    def wait_change(self, version: int, timeout_s: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._version != version or self._stop.is_set(), timeout_s)
            return self._version

    def preferred(self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int) -> list[str]:
        with self._cond:
            own = {d.id: d for d in self._devices.get(resource, ())}
        foreign = [d for d in available if d not in own]
        if foreign:
            raise topology.PreferenceError(f"unknown device ids: {', '.join(foreign)}")
        claim = self._book.take(self.claims(), resource, available, must_include, size)
        if claim is None and self.claims is not no_claims:
            self.refresh_claims()  # the watch may not have delivered the pod being admitted yet
            claim = self._book.take(self.claims(), resource, available, must_include, size)
        if claim is not None:
            log.info("preferring the extender's choice for %s container %s: %s", claim.pod, claim.container, ", ".join(claim.ids))
            return list(claim.ids)
        # No annotation: the extender's own rule (gpupack.node_slots), so its guess for pods it
        # did not place matches what this node really gives them.
        with self._cond:
            node_row = self._node_row
        choice = node_row.choose(resource, available, must_include, size,
                                 distinct_shares=self.layout.sharing.distinct_gpus)
        if choice.rule == "topology":
            log.info("the packing rule found no %d of the offered %s devices; using the topology rule", size, resource)
        return choice.ids

    def allocate(self, resource: str, ids: Sequence[str]) -> allocate_mod.Grant:
        with self._cond:
            own = {d.id: d for d in self._devices.get(resource, ())}
        sharing = self.layout.sharing
        if sharing.fail_requests_greater_than_one and len(ids) > 1 and sharing.is_shared(resource):
            raise allocate_mod.AllocationError(
                f"a container asked for {len(ids)} shares of {resource}; this node is configured with "
                "failRequestsGreaterThanOne, so ask for 1 (a share is not a bigger slice of the GPU)"
            )
        grant = self._grant(ids, own, lambda visible: self.backend.container_edits(visible, self.pass_device_specs))
        self.on_allocated()
        return grant

    # --- health -------------------------------------------------------------------------

    def apply_event(self, event: HealthEvent) -> None:
        verdict = self.tracker.on_event(event)
        self.metrics.health_events.labels(str(event.xid) if event.xid is not None else "none", verdict.action).inc()
        if verdict.changed:
            self._refresh()

    def probe_once(self) -> None:
        verdict = self.tracker.probe_round(self.backend.probe)
        if verdict.changed:
            self.metrics.recoveries.inc(len(verdict.changed))
            self._refresh()

    def _health_loop(self) -> None:
        while not self._stop.is_set():
            event = next_event(self.backend, 1.0)
            if event is not None:
                self.apply_event(event)

    def _probe_loop(self) -> None:
        while not self._stop.wait(self.tracker.settings.probe_interval_s):
            try:
                self.probe_once()
                if any(g.mig_enabled for g in self._found) or self.layout.mig_strategy != "none":
                    self.rescan()
                self.publisher.flush()
                self.cdi_specs.flush()
            except Exception:
                log.exception("periodic health/layout check failed; will try again")

    # --- serving and registration ---------------------------------------------------------

    def serve_and_register(self, resource: str) -> bool:
        server = self._servers.get(resource)
        if server is None:
            server = self._servers[resource] = PluginServer(resource, self.plugin_dir, self, self.metrics)
        if not server.serving():
            server.start()
        try:
            server.register(self.plugin_dir / KUBELET_SOCKET)
            return True
        except (grpc.RpcError, OSError) as err:
            detail = err.details() if isinstance(err, grpc.RpcError) else str(err)
            log.warning("could not register %s with the kubelet (%s); will retry when kubelet.sock appears", resource, detail)
            return False

    def _watch_loop(self, watcher: DirWatcher) -> None:
        try:
            while not self._stop.is_set():
                pending = {r for r, ok in self._registered.items() if not ok}
                events = watcher.wait(5.0 if pending else 1.0)
                if self._stop.is_set():
                    break
                again: set[str] = set()
                for kind, name in events:
                    if kind == "created" and name == KUBELET_SOCKET:
                        log.info("kubelet.sock was created: the kubelet restarted; registering again")
                        again.update(self.resource_names())
                    elif kind == "deleted":
                        again.update(r for r, s in list(self._servers.items()) if s.path.name == name and not s.serving())
                if not events:
                    again.update(pending)  # slow retry of registrations that failed
                for resource in sorted(again):
                    server = self._servers.get(resource)
                    if server is None:
                        continue
                    if not server.serving():
                        log.info("socket for %s was removed; serving again", resource)
                    self._registered[resource] = self.serve_and_register(resource)
        finally:
            watcher.close()

    def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        healthy = sum(1 for g in self._found if g.healthy)
        log.info(
            "found %d GPU(s) through %s (%d Healthy): %s; advertising %s",
            len(self._found), self.backend.name, healthy,
            ", ".join(sorted({g.model for g in self._found})) or "none",
            ", ".join(f"{len(ds)} x {r}" for r, ds in sorted(self._devices.items())) or "nothing",
        )
        # Watch before the first registration, so a kubelet restart right after it is seen.
        watcher = DirWatcher(self.plugin_dir)
        self._started = True
        self._write_specs()  # before the kubelet can call Allocate with names that need them
        self._sync_servers()
        loops: list[tuple[str, Callable[[], None]]] = [
            ("health", self._health_loop),
            ("probe", self._probe_loop),
            ("watch", lambda: self._watch_loop(watcher)),
        ]
        for name, target in loops:
            t = threading.Thread(target=target, name=f"gpupack-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for server in self._servers.values():
            server.stop()
        for t in self._threads:
            t.join(timeout=5)
        with self._specs_lock:
            self.cdi_specs.remove()
        self.backend.close()
        log.info("stopped; sockets removed")
