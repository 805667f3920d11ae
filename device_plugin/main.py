"""``gpupack-device-plugin``: wires settings, backend, metrics and the manager; stops on SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence

from device_plugin import config, discovery
from device_plugin.manager import Manager
from device_plugin.metrics import PluginMetrics

log = logging.getLogger("gpupack.main")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = config.resolve(argv)
    except config.ConfigError as err:
        print(f"gpupack-device-plugin: configuration error: {err}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        backend = discovery.open_backend(settings.backend, settings.fake_inventory, settings.sysfs_root)
    except discovery.DiscoveryError as err:
        log.error("cannot start: %s", err)
        return 1
    metrics = PluginMetrics()
    if settings.metrics_addr:
        metrics.serve(settings.metrics_addr)
        log.info("metrics on http://%s/metrics", settings.metrics_addr)
    manager = Manager(
        backend,
        settings.plugin_dir,
        health=settings.health,
        pass_device_specs=settings.pass_device_specs,
        metrics=metrics,
        node_name=settings.node_name,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    manager.start()
    stop.wait()
    log.info("received a stop signal; shutting down")
    manager.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
