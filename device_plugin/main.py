"""``gpupack-device-plugin``: wires settings, backend, Kubernetes edges and the manager.

Stops cleanly on SIGTERM (sockets removed). Re-reads ``--config`` when it changes (a ConfigMap
update swaps its files) and applies it in place; a bad new file is logged and ignored.
"""

from __future__ import annotations

import logging
import pathlib
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from device_plugin import cdi, config, discovery, kube, resources, usage
from device_plugin.fswatch import DirWatcher
from device_plugin.manager import Manager, NoPublisher, Publisher, no_claims
from device_plugin.metrics import PluginMetrics

log = logging.getLogger("gpupack.main")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def kube_api(settings: config.Settings) -> Any:
    """A CoreV1Api from --kubeconfig, or in-cluster; None (with the reason logged) otherwise."""
    from kubernetes import client
    from kubernetes import config as kconfig

    try:
        if settings.kubeconfig:
            kconfig.load_kube_config(config_file=settings.kubeconfig)  # type: ignore[no-untyped-call]
        else:
            kconfig.load_incluster_config()  # type: ignore[no-untyped-call]
    except Exception as err:
        log.warning("no Kubernetes API access (%s): the inventory is not published and extender choices are not honoured", err)
        return None
    return client.CoreV1Api()


def config_watcher(settings: config.Settings, argv: Sequence[str] | None, manager: Manager, stop: threading.Event) -> Callable[[], None]:
    """A loop that re-applies --config when it changes; set up (watch armed) before it runs,
    so no change after start-up is missed."""
    path = settings.config_file
    if path is None:
        return lambda: None
    watcher = DirWatcher(path.parent)
    last = path.read_bytes() if path.exists() else b""
    return lambda: _watch_config(path, watcher, last, argv, manager, stop, settings.cdi)


def _watch_config(
    path: pathlib.Path, watcher: DirWatcher, last: bytes, argv: Sequence[str] | None, manager: Manager,
    stop: threading.Event, cdi_in_use: cdi.CdiSettings,
) -> None:
    while not stop.is_set():
        if watcher.wait(1.0):
            last = apply_config_change(path, last, argv, manager, cdi_in_use)
    watcher.close()


def apply_config_change(
    path: pathlib.Path, last: bytes, argv: Sequence[str] | None, manager: Manager, cdi_in_use: cdi.CdiSettings | None = None,
) -> bytes:
    """One step of the config watch: re-applies ``path`` if its bytes changed since ``last``;
    returns the bytes seen. Never raises: whatever the file holds, a refused change is logged,
    counted (``gpupack_plugin_config_reloads_total{result="refused"}``) and the settings in
    use stay, so the next valid change still applies."""
    try:
        now = path.read_bytes()
    except OSError:
        return last  # between a ConfigMap's symlink swaps: the next event reads it
    if now == last:
        return last
    try:
        new = config.resolve(argv)
        if cdi_in_use is not None and new.cdi != cdi_in_use:
            log.warning("the cdi section changed; it takes effect when the plugin restarts (in use: %s)", cdi_in_use)
        applied = manager.reconfigure(new.layout, new.health, new.pass_device_specs)
    except config.ConfigError as err:
        log.error("the changed configuration is refused, the one in use stays: %s", err)
        applied = False
    except Exception as err:  # noqa: BLE001 - the watch must outlive any bytes in the file
        log.error("the changed configuration %s is refused, the one in use stays: %s: %s", path, type(err).__name__, err)
        applied = False
    manager.metrics.config_reloaded(applied)
    return now


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = config.resolve(argv)
    except config.ConfigError as err:
        print(f"gpupack-device-plugin: configuration error: {err}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        backend = discovery.open_backend(settings.backend, settings.fake_inventory, settings.sysfs_root, settings.dev_root)
    except discovery.InputError as err:
        print(f"gpupack-device-plugin: {err}", file=sys.stderr)
        return 2
    except discovery.DiscoveryError as err:
        log.error("cannot start: %s", err)
        return 1
    metrics = PluginMetrics()
    if settings.metrics_addr:
        metrics.serve(settings.metrics_addr)
        log.info("metrics on http://%s/metrics", settings.metrics_addr)
    publisher: Publisher = NoPublisher()
    claims = no_claims
    refresh: Callable[[], None] = lambda: None
    pods: kube.PodClaims | None = None
    corrector: kube.AnnotationCorrector | None = None
    if settings.publish and settings.node_name:
        api = kube_api(settings)
        if api is not None:
            publisher = kube.NodePublisher(api, settings.node_name)
            pods = kube.PodClaims(api, settings.node_name)
            claims = pods
            refresh = pods.refresh
            corrector = kube.AnnotationCorrector.from_socket(
                api, pods, settings.pod_resources_socket, metrics, settings.health.probe_interval_s)
            pods.on_running = corrector.poke
    elif settings.publish:
        log.warning("NODE_NAME is not set: the inventory is not published (set --node-name, or --no-publish)")
    try:
        manager = Manager(
            backend,
            settings.plugin_dir,
            health=settings.health,
            pass_device_specs=settings.pass_device_specs,
            metrics=metrics,
            publisher=publisher,
            node_name=settings.node_name,
            layout=settings.layout,
            claims=claims,
            refresh_claims=refresh,
            on_allocated=corrector.poke if corrector is not None else (lambda: None),
            cdi_specs=cdi.specs_for(settings.cdi),
            allocate_mode=settings.cdi.allocate,
        )
    except resources.StrategyError as err:
        log.error("cannot start: %s", err)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    read_usage = getattr(backend, "read_usage", None)
    if settings.metrics_addr and read_usage is not None:
        metrics.registry.register(
            usage.UsageCollector(backend, lambda: manager.inventory().gpus, settings.node_name, settings.pod_resources_socket)  # type: ignore[arg-type]
        )
    watch = config_watcher(settings, argv, manager, stop)
    manager.start()
    if pods is not None:
        threading.Thread(target=pods.run, name="gpupack-pods", daemon=True).start()
    if corrector is not None:
        threading.Thread(target=corrector.run, name="gpupack-truth", daemon=True).start()
    threading.Thread(target=watch, name="gpupack-config", daemon=True).start()
    stop.wait()
    log.info("received a stop signal; shutting down")
    if pods is not None:
        pods.stop()
    if corrector is not None:
        corrector.stop()
    manager.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
