"""``gpupack-dra-driver``: the DRA mode of the node program. Wires settings, backend, API, servers.

Takes the device plugin's flags and config file (backend, node name, kubeconfig, sharing,
health; :mod:`device_plugin.config`) plus its own (:data:`FLAGS`). Exit codes: 2 for a bad
flag or config, 1 when it cannot start (no GPU backend, a corrupt checkpoint, a socket it
cannot serve), 0 after SIGTERM. On SIGTERM the sockets go; the ResourceSlices stay unless
``--remove-slices-on-exit`` (see :mod:`device_plugin.dra.publisher` for why).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from device_plugin import config, discovery, resources
from device_plugin.dra import checkpoint, claimspecs
from gpupack import dra_names as names
from device_plugin.dra.driver import Driver, NoSlices, Slices
from device_plugin.dra.prepare import Preparer
from device_plugin.dra.publisher import DynamicSliceApi, SlicePublisher
from device_plugin.dra.server import DraServer

log = logging.getLogger("gpupack.dra.main")

#: Flag -> (environment variable, default, help).
FLAGS: dict[str, tuple[str, str, str]] = {
    "plugin-data-dir": ("GPUPACK_DRA_PLUGIN_DIR", f"/var/lib/kubelet/plugins/{names.DRIVER}",
                        "where dra.sock and checkpoint.json live"),
    "registry-dir": ("GPUPACK_DRA_REGISTRY_DIR", "/var/lib/kubelet/plugins_registry",
                     "the kubelet's plugin registration folder"),
    "cdi-dir": ("GPUPACK_DRA_CDI_DIR", "/var/run/cdi", "where the container runtime reads CDI specs"),
    "remove-slices-on-exit": ("GPUPACK_DRA_REMOVE_SLICES_ON_EXIT", "false",
                              "delete this node's ResourceSlices on SIGTERM (true/false)"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpupack-dra-driver",
        description="Publish this node's GPUs as ResourceSlices and prepare DRA claims for the kubelet. "
                    "Also takes the flags of gpupack-device-plugin (--backend, --node-name, --config, ...).",
    )
    for flag, (env, default, text) in FLAGS.items():
        p.add_argument(f"--{flag}", default=None, help=f"{text} (default {default}) [{env}]")
    return p


def dra_flags(argv: Sequence[str] | None, environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """This program's flags (flag > environment > default) and the rest, for config.resolve."""
    args, rest = parser().parse_known_args(argv)
    values = {}
    for flag, (env, default, _) in FLAGS.items():
        given = getattr(args, flag.replace("-", "_"))
        values[flag] = given if given is not None else environ.get(env) or default
    if values["remove-slices-on-exit"].lower() not in ("true", "false"):
        raise config.ConfigError(f"--remove-slices-on-exit: expected true or false, got {values['remove-slices-on-exit']!r}")
    return values, rest


def api_client(kubeconfig: str) -> Any:
    """A ``kubernetes.client.ApiClient`` from the kubeconfig, or in-cluster; None (reason logged)."""
    from kubernetes import client
    from kubernetes import config as kconfig

    try:
        if kubeconfig:
            kconfig.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        else:
            kconfig.load_incluster_config()  # type: ignore[no-untyped-call]
    except Exception as err:  # noqa: BLE001 - reported, the driver then cannot prepare claims
        log.error("no Kubernetes API access (%s)", err)
        return None
    return client.ApiClient()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        flags, rest = dra_flags(argv, os.environ)
        settings = config.resolve(rest)
    except config.ConfigError as err:
        print(f"gpupack-dra-driver: configuration error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, settings.log_level.upper()),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    if not settings.node_name:
        log.error("cannot start: NODE_NAME is not set (--node-name): the node's pool and its claims need it")
        return 1
    api = api_client(settings.kubeconfig)
    if api is None:
        log.error("cannot start: a DRA driver reads every claim it prepares from the API server")
        return 1
    kube = DynamicSliceApi(api)
    try:
        backend = discovery.open_backend(settings.backend, settings.fake_inventory, settings.sysfs_root, settings.dev_root)
    except discovery.DiscoveryError as err:
        log.error("cannot start: %s", err)
        return 1
    publisher: Slices = NoSlices()
    if settings.publish:
        publisher = SlicePublisher(kube, settings.node_name, remove_on_stop=flags["remove-slices-on-exit"].lower() == "true")
    try:
        driver = Driver(backend, settings.health, settings.layout.sharing, publisher)
    except resources.StrategyError as err:
        log.error("cannot start: %s", err)
        return 1
    data_dir = pathlib.Path(flags["plugin-data-dir"])
    try:
        preparer = Preparer(settings.node_name, driver.published, lambda visible: backend.container_edits(visible, True),
                            kube.get_claim, checkpoint.Checkpoint(data_dir), claimspecs.ClaimSpecs(pathlib.Path(flags["cdi-dir"])))
    except checkpoint.CheckpointError as err:
        log.error("cannot start: %s. The claims it held are unknown: drain the node's GPU pods, move the file away "
                  "and start again (the kubelet prepares running pods' claims anew).", err)
        return 1
    server = DraServer(preparer, data_dir, pathlib.Path(flags["registry-dir"]))
    try:
        server.start()
    except OSError as err:
        log.error("cannot start: %s", err)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    driver.start(on_tick=server.ensure_serving)
    log.info("DRA driver %s on node %s: %d device(s) published, %d prepared claim(s)", names.DRIVER,
             settings.node_name, len(driver.published()), len(preparer.prepared()))
    stop.wait()
    log.info("received a stop signal; shutting down")
    server.stop()
    driver.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
