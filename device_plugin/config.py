"""The device plugin's settings: defaults, then the config file, then environment, then flags.

Each source is validated where it is read and every error names the offending field
(``health.probeIntervalSeconds: expected a number > 0, got -1``), so a bad file or flag stops
start-up with a message instead of running half-configured.

Config file (``--config``, YAML, mountable from a ConfigMap)::

    version: v1
    flags:
      passDeviceSpecs: false        # give containers /dev/nvidia* device nodes
    health:
      disabled: false               # true: never mark GPUs Unhealthy from XIDs
      skipXids: [13, 31, 43, 45, 68, 109]   # replaces the default application-XID list
      extraSkipXids: []             # added to it
      probeIntervalSeconds: 10      # how often Unhealthy GPUs are probed
      recoveryProbes: 3             # good probes in a row before Healthy again; 0 = never
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from device_plugin import xids
from device_plugin.health import HealthSettings

CONFIG_VERSION = "v1"
DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins/"


class ConfigError(ValueError):
    """A setting is wrong; the message starts with the field's path."""


@dataclasses.dataclass(frozen=True)
class Settings:
    backend: str = "auto"  # auto | nvml | fake
    fake_inventory: pathlib.Path | None = None  # the fake backend's GPU list
    plugin_dir: pathlib.Path = pathlib.Path(DEFAULT_PLUGIN_DIR)  # where kubelet.sock lives
    sysfs_root: pathlib.Path = pathlib.Path("/sys")  # for NUMA nodes NVML does not report
    node_name: str = ""  # this node, for the inventory annotation
    kubeconfig: str = ""  # "" = in-cluster
    pass_device_specs: bool = False  # add /dev/nvidia* device specs to Allocate
    metrics_addr: str = ""  # host:port for /metrics; "" = off
    log_level: str = "info"
    health: HealthSettings = HealthSettings()
    config_file: pathlib.Path | None = None


# Flag name -> (environment variable, help). Every flag can come from its variable.
FLAGS: dict[str, tuple[str, str]] = {
    "backend": ("GPUPACK_BACKEND", "GPU discovery: auto (NVML where it loads), nvml, or fake"),
    "fake-inventory": ("GPUPACK_FAKE_INVENTORY", "YAML/JSON GPU list for --backend fake"),
    "plugin-dir": ("GPUPACK_PLUGIN_DIR", "kubelet device plugin folder holding kubelet.sock"),
    "sysfs-root": ("GPUPACK_SYSFS_ROOT", "where the host's /sys is mounted"),
    "node-name": ("NODE_NAME", "this node's name (downward API spec.nodeName)"),
    "kubeconfig": ("KUBECONFIG", "kubeconfig file; empty means in-cluster"),
    "pass-device-specs": ("GPUPACK_PASS_DEVICE_SPECS", "give containers the /dev/nvidia* device nodes (true/false)"),
    "metrics-addr": ("GPUPACK_METRICS_ADDR", "serve Prometheus /metrics on host:port; empty = off"),
    "log-level": ("GPUPACK_LOG_LEVEL", "debug, info, warning or error"),
    "config": ("GPUPACK_CONFIG", "YAML config file (health, flags); see docs/device-plugin.md"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpupack-device-plugin",
        description="Advertise this node's GPUs to the kubelet (device plugin API v1beta1).",
        epilog="Every flag can also be set through the environment variable shown in brackets.",
    )
    for flag, (env, text) in FLAGS.items():
        default = Settings.__dataclass_fields__[flag.replace("-", "_")].default if flag != "config" else None
        shown = "" if default in (None, "") else f" (default {default})"
        if flag == "pass-device-specs":
            p.add_argument(f"--{flag}", nargs="?", const="true", default=None, help=f"{text} [{env}]")
        else:
            p.add_argument(f"--{flag}", default=None, help=f"{text}{shown} [{env}]")
    return p


def _bool(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"{field}: expected true or false, got {value!r}")


def _number(field: str, value: Any, minimum: float, integer: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value < minimum or (integer and int(value) != value):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{field}: expected {kind} >= {minimum:g}, got {value!r}")
    return float(value)


def _check_keys(path: str, obj: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for key in obj:
        if key not in allowed:
            raise ConfigError(f"{path}{key}: unknown key (allowed: {', '.join(allowed)})")


def _xid_list(field: str, value: Any) -> frozenset[int]:
    if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value):
        raise ConfigError(f"{field}: expected a list of positive XID numbers, got {value!r}")
    return frozenset(value)


def load_file(path: pathlib.Path, base: Settings) -> Settings:
    """Applies a config file to ``base``; raises ConfigError naming the file and field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    try:
        return apply_config(raw, base)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def apply_config(raw: Any, base: Settings) -> Settings:
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping at the top level")
    _check_keys("", raw, ("version", "flags", "health"))
    if raw.get("version") != CONFIG_VERSION:
        raise ConfigError(f"version: expected {CONFIG_VERSION!r}, got {raw.get('version')!r}")
    settings = base
    flags = raw.get("flags") or {}
    if not isinstance(flags, dict):
        raise ConfigError("flags: expected a mapping")
    _check_keys("flags.", flags, ("passDeviceSpecs",))
    if "passDeviceSpecs" in flags:
        settings = dataclasses.replace(settings, pass_device_specs=_bool("flags.passDeviceSpecs", flags["passDeviceSpecs"]))
    health = raw.get("health") or {}
    if not isinstance(health, dict):
        raise ConfigError("health: expected a mapping")
    _check_keys("health.", health, ("disabled", "skipXids", "extraSkipXids", "probeIntervalSeconds", "recoveryProbes"))
    h = settings.health
    skipped = h.skipped_xids
    if "skipXids" in health:
        skipped = _xid_list("health.skipXids", health["skipXids"])
    if "extraSkipXids" in health:
        skipped = skipped | _xid_list("health.extraSkipXids", health["extraSkipXids"])
    if health.get("disabled") is not None and _bool("health.disabled", health["disabled"]):
        skipped = frozenset(range(1, 1024))  # every XID ignored
    interval = h.probe_interval_s
    if "probeIntervalSeconds" in health:
        interval = _number("health.probeIntervalSeconds", health["probeIntervalSeconds"], 0.01)
    probes = h.recovery_probes
    if "recoveryProbes" in health:
        probes = int(_number("health.recoveryProbes", health["recoveryProbes"], 0, integer=True))
    return dataclasses.replace(settings, health=HealthSettings(skipped, interval, probes))


def resolve(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from defaults, config file, environment and flags (later wins)."""
    env = os.environ if environ is None else environ
    args = vars(parser().parse_args(argv))
    values: dict[str, str] = {}
    for flag, (var, _) in FLAGS.items():
        key = flag.replace("-", "_")
        if args.get(key) is not None:
            values[flag] = args[key]
        elif env.get(var):
            values[flag] = env[var]
    settings = Settings()
    if "config" in values:
        path = pathlib.Path(values["config"])
        settings = dataclasses.replace(load_file(path, settings), config_file=path)
    if "backend" in values:
        if values["backend"] not in ("auto", "nvml", "fake"):
            raise ConfigError(f"--backend: expected auto, nvml or fake, got {values['backend']!r}")
        settings = dataclasses.replace(settings, backend=values["backend"])
    if "fake-inventory" in values:
        settings = dataclasses.replace(settings, fake_inventory=pathlib.Path(values["fake-inventory"]))
    if "plugin-dir" in values:
        settings = dataclasses.replace(settings, plugin_dir=pathlib.Path(values["plugin-dir"]))
    if "sysfs-root" in values:
        settings = dataclasses.replace(settings, sysfs_root=pathlib.Path(values["sysfs-root"]))
    settings = dataclasses.replace(
        settings,
        node_name=values.get("node-name", settings.node_name),
        kubeconfig=values.get("kubeconfig", settings.kubeconfig),
        metrics_addr=values.get("metrics-addr", settings.metrics_addr),
    )
    if "pass-device-specs" in values:
        settings = dataclasses.replace(settings, pass_device_specs=_bool("--pass-device-specs", values["pass-device-specs"]))
    if "log-level" in values:
        level = values["log-level"].lower()
        if level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"--log-level: expected debug, info, warning or error, got {values['log-level']!r}")
        settings = dataclasses.replace(settings, log_level=level)
    if settings.metrics_addr:
        host, _, port = settings.metrics_addr.rpartition(":")
        if not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"--metrics-addr: expected host:port, got {settings.metrics_addr!r}")
    if settings.backend == "fake" and settings.fake_inventory is None:
        raise ConfigError("--fake-inventory: required with --backend fake")
    return settings


__all__ = ["ConfigError", "Settings", "resolve", "parser", "load_file", "apply_config", "xids"]
