"""The device plugin's lifecycle: serve, register, follow health, come back after restarts.

One :class:`Manager` per process. It discovers the GPUs once, keeps their health in a
:class:`~device_plugin.health.HealthTracker`, derives the advertised devices per resource,
runs one :class:`~device_plugin.server.PluginServer` per resource, and has three threads:

- health: waits on the backend's events (NVML XIDs) and applies them;
- probe: every ``probe_interval_s`` probes Unhealthy GPUs so they can recover;
- watch: watches the plugin folder; a new ``kubelet.sock`` (kubelet restart) or our socket
  vanishing makes the affected servers serve and register again.
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

from device_plugin import allocate as allocate_mod
from device_plugin import preferred as preferred_mod
from device_plugin import resources
from device_plugin.discovery import Backend, ContainerEdits, HealthEvent
from device_plugin.fswatch import DirWatcher
from device_plugin.health import HealthSettings, HealthTracker
from device_plugin.metrics import PluginMetrics
from device_plugin.server import KUBELET_SOCKET, PluginServer

log = logging.getLogger("gpupack.manager")


class Publisher(Protocol):
    """Publishes the node's inventory (a null object when publishing is off)."""

    def publish(self, inventory: contract.Inventory) -> None: ...


class NoPublisher:
    def publish(self, inventory: contract.Inventory) -> None:
        return None


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
    ) -> None:
        self.backend = backend
        self.plugin_dir = plugin_dir
        self.pass_device_specs = pass_device_specs
        self.metrics = metrics or PluginMetrics()
        self.publisher = publisher or NoPublisher()
        self.node_name = node_name
        self._cond = threading.Condition()
        self._version = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._servers: dict[str, PluginServer] = {}
        self._gpus = backend.discover()
        self.tracker = HealthTracker([g.id for g in self._gpus], health)
        for g in self._gpus:
            if not g.healthy:
                self.tracker.mark_unhealthy(g.id, "did not answer at discovery")
        self._devices: dict[str, tuple[resources.Device, ...]] = {}
        self._index: dict[str, resources.Device] = {}
        self._topology = self._build_topology()
        self._refresh()

    # --- state --------------------------------------------------------------------------

    def _build_topology(self) -> preferred_mod.Topology:
        pos = {g.index: p for p, g in enumerate(self._gpus)}  # GPU indices may have gaps
        return preferred_mod.Topology.build(
            [g.numa_node for g in self._gpus],
            [(p, pos[link.peer], link.nvlinks) for p, g in enumerate(self._gpus) for link in g.links if link.peer in pos],
            {g.id: p for p, g in enumerate(self._gpus)},
        )

    def _refresh(self) -> None:
        """Re-derives advertised devices from GPUs and health; wakes ListAndWatch streams."""
        with self._cond:
            self._gpus = tuple(dataclasses.replace(g, healthy=self.tracker.healthy(g.id)) for g in self._gpus)
            self._devices = resources.advertise(self._gpus)
            self._index = resources.index(self._devices)
            self._version += 1
            self._cond.notify_all()
        self.metrics.set_devices(self._devices)
        self.publisher.publish(self.inventory())

    def inventory(self) -> contract.Inventory:
        return contract.Inventory(node=self.node_name, gpus=resources.with_resources(self._gpus))

    def resource_names(self) -> list[str]:
        return sorted(self._devices)

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
            own = {d.id for d in self._devices.get(resource, ())}
            index = self._index
        foreign = [d for d in available if d not in own]
        if foreign:
            raise preferred_mod.PreferenceError(f"unknown device ids: {', '.join(foreign)}")
        gpu_of = {i: self._topology.gpu_of[index[i].gpu_id] for i in available}
        topo = dataclasses.replace(self._topology, gpu_of=gpu_of)
        return preferred_mod.choose(available, must_include, size, topo)

    def allocate(self, resource: str, ids: Sequence[str]) -> ContainerEdits:
        with self._cond:
            own = {d.id: d for d in self._devices.get(resource, ())}
        return allocate_mod.allocate(ids, own, lambda visible: self.backend.container_edits(visible, self.pass_device_specs))

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
            try:
                event = self.backend.wait_event(1.0)
            except Exception as err:  # a backend fault must not kill health checking
                event = HealthEvent(None, f"health check failed: {err}")
            if event is not None:
                self.apply_event(event)

    def _probe_loop(self) -> None:
        while not self._stop.wait(self.tracker.settings.probe_interval_s):
            try:
                self.probe_once()
            except Exception:
                log.exception("probing Unhealthy GPUs failed; will try again")

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
        pending = {r for r in self.resource_names() if not self._registered.get(r)}
        try:
            while not self._stop.is_set():
                events = watcher.wait(5.0 if pending else 1.0)
                if self._stop.is_set():
                    break
                again: set[str] = set()
                for kind, name in events:
                    if kind == "created" and name == KUBELET_SOCKET:
                        log.info("kubelet.sock was created: the kubelet restarted; registering again")
                        again.update(self.resource_names())
                    elif kind == "deleted":
                        again.update(r for r, s in self._servers.items() if s.path.name == name and not s.serving())
                if not events:
                    again.update(pending)  # slow retry of registrations that failed
                for resource in sorted(again):
                    if not self._servers[resource].serving():
                        log.info("socket for %s was removed; serving again", resource)
                    if self.serve_and_register(resource):
                        pending.discard(resource)
                    else:
                        pending.add(resource)
        finally:
            watcher.close()

    def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        healthy = sum(1 for g in self._gpus if g.healthy)
        log.info(
            "found %d GPU(s) through %s (%d Healthy): %s",
            len(self._gpus), self.backend.name, healthy,
            ", ".join(sorted({g.model for g in self._gpus})) or "none",
        )
        # Watch before the first registration, so a kubelet restart right after it is seen.
        watcher = DirWatcher(self.plugin_dir)
        self._registered = {r: self.serve_and_register(r) for r in self.resource_names()}
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
        self.backend.close()
        log.info("stopped; sockets removed")
