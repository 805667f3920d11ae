"""The device plugin's settings: defaults, then the config file, then environment, then flags.

Each source is validated where it is read and every error names the offending field
(``health.probeIntervalSeconds: expected a number > 0, got -1``), so a bad file or flag stops
start-up with a message instead of running half-configured.

Config file (``--config``, YAML, mountable from a ConfigMap; re-read when it changes)::

    version: v1
    flags:
      migStrategy: none             # none | single | mixed
      passDeviceSpecs: false        # give containers /dev/nvidia* device nodes
    sharing:
      timeSlicing:
        renameByDefault: false      # advertise shares as <name>.shared
        failRequestsGreaterThanOne: false
        distinctGpus: false         # several shares for one container on distinct GPUs
        resources:
        - name: nvidia.com/gpu      # or nvidia.com/mig-<profile>
          replicas: 4
          devices: [0, 1]           # GPU indices or UUIDs; omit (or "all") for every GPU
          rename: ""                # optional resource name for these shares
    health:
      disabled: false               # true: never mark GPUs Unhealthy from XIDs
      skipXids: [13, 31, 43, 45, 68, 109]   # replaces the default application-XID list
      extraSkipXids: []             # added to it
      probeIntervalSeconds: 10      # how often Unhealthy GPUs are probed
      recoveryProbes: 3             # good probes in a row before Healthy again; 0 = never
    cdi:
      enabled: false                # write CDI specs for the devices served (device_plugin/cdi.py)
      specDir: /var/run/cdi         # where the container runtime reads CDI specs
      allocate: env                 # env | cdi: Allocate answers with env/device specs, or CDI names

The ``cdi`` section is read at start-up only: a changed one in a re-read file is logged and
waits for a restart (the spec folder and Allocate's answers must not change under running
containers).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from device_plugin import allocate, xids
from device_plugin.cdi import CdiSettings
from device_plugin.health import HealthSettings
from device_plugin.resources import MIG_STRATEGIES, Layout, ShareRule, Sharing

from gpupack import contract

CONFIG_VERSION = "v1"
DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins/"
BACKENDS = ("auto", "nvml", "amd", "intel", "fake")


class ConfigError(ValueError):
    """A setting is wrong; the message starts with the field's path."""


@dataclasses.dataclass(frozen=True)
class Settings:
    backend: str = "auto"  # auto | nvml | amd | intel | fake
    fake_inventory: pathlib.Path | None = None  # the fake backend's GPU list
    plugin_dir: pathlib.Path = pathlib.Path(DEFAULT_PLUGIN_DIR)  # where kubelet.sock lives
    sysfs_root: pathlib.Path = pathlib.Path("/sys")  # AMD/Intel discovery; NUMA nodes NVML does not report
    dev_root: pathlib.Path = pathlib.Path("/dev")  # where the host's /dev is seen, to check device nodes
    node_name: str = ""  # this node, for the inventory annotation
    kubeconfig: str = ""  # "" = in-cluster
    pass_device_specs: bool = False  # add /dev/nvidia* device specs to Allocate
    metrics_addr: str = ""  # host:port for /metrics; "" = off
    log_level: str = "info"
    health: HealthSettings = HealthSettings()
    layout: Layout = Layout()  # MIG strategy and time-slicing
    cdi: CdiSettings = CdiSettings()  # CDI spec files and what Allocate answers
    publish: bool = True  # publish the inventory annotation and labels on this node
    proc_root: pathlib.Path = pathlib.Path("/proc")  # for MIG capability files
    pod_resources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"  # for usage per pod
    config_file: pathlib.Path | None = None


# Flag name -> (environment variable, help). Every flag can come from its variable.
FLAGS: dict[str, tuple[str, str]] = {
    "backend": ("GPUPACK_BACKEND", "GPU discovery: auto (NVML where it loads, else AMD, else Intel sysfs), nvml, amd, intel, or fake"),
    "fake-inventory": ("GPUPACK_FAKE_INVENTORY", "YAML/JSON GPU list for --backend fake"),
    "plugin-dir": ("GPUPACK_PLUGIN_DIR", "kubelet device plugin folder holding kubelet.sock"),
    "sysfs-root": ("GPUPACK_SYSFS_ROOT", "where the host's /sys is mounted"),
    "dev-root": ("GPUPACK_DEV_ROOT", "where the host's /dev is mounted (containers still get host paths)"),
    "node-name": ("NODE_NAME", "this node's name (downward API spec.nodeName)"),
    "kubeconfig": ("KUBECONFIG", "kubeconfig file; empty means in-cluster"),
    "pass-device-specs": ("GPUPACK_PASS_DEVICE_SPECS", "give containers the /dev/nvidia* device nodes (true/false)"),
    "metrics-addr": ("GPUPACK_METRICS_ADDR", "serve Prometheus /metrics on host:port; empty = off"),
    "pod-resources-socket": ("GPUPACK_POD_RESOURCES_SOCKET", "kubelet PodResources socket, to attribute GPU use to pods"),
    "mig-strategy": ("MIG_STRATEGY", "none, single or mixed (overrides flags.migStrategy)"),
    "no-publish": ("GPUPACK_NO_PUBLISH", "do not publish the inventory annotation and labels (true/false)"),
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
        field = Settings.__dataclass_fields__.get(flag.replace("-", "_"))
        default = field.default if field is not None else None
        shown = "" if default in (None, "") else f" (default {default})"
        if flag == "mig-strategy":
            p.add_argument(f"--{flag}", default=None, help=f"{text} [{env}]")
        elif flag in ("pass-device-specs", "no-publish"):
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


def _mig_strategy(field: str, value: Any) -> str:
    if value not in MIG_STRATEGIES:
        raise ConfigError(f"{field}: expected none, single or mixed, got {value!r}")
    return str(value)


def _sharing(raw: Any) -> Sharing:
    if raw is None:
        return Sharing()
    if not isinstance(raw, dict):
        raise ConfigError("sharing: expected a mapping")
    _check_keys("sharing.", raw, ("timeSlicing",))
    ts = raw.get("timeSlicing") or {}
    if not isinstance(ts, dict):
        raise ConfigError("sharing.timeSlicing: expected a mapping")
    allowed = ("renameByDefault", "failRequestsGreaterThanOne", "distinctGpus", "resources")
    _check_keys("sharing.timeSlicing.", ts, allowed)
    entries = ts.get("resources") or []
    if not isinstance(entries, list):
        raise ConfigError("sharing.timeSlicing.resources: expected a list")
    rules = []
    for i, entry in enumerate(entries):
        path = f"sharing.timeSlicing.resources[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: expected a mapping with name and replicas")
        _check_keys(f"{path}.", entry, ("name", "replicas", "devices", "rename"))
        name = entry.get("name")
        if name != contract.NVIDIA_GPU and (not isinstance(name, str) or contract.mig_profile_of(name) is None):
            raise ConfigError(
                f"{path}.name: expected nvidia.com/gpu or nvidia.com/mig-<profile>, got {name!r} "
                "(AMD and Intel GPUs are whole-device only)"
            )
        replicas = entry.get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 2 <= replicas <= 256:
            raise ConfigError(f"{path}.replicas: expected an integer from 2 to 256, got {replicas!r}")
        devices = entry.get("devices", "all")
        if devices == "all":
            devices = []
        if not isinstance(devices, list) or not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in devices):
            raise ConfigError(f"{path}.devices: expected \"all\" or a list of GPU indices or UUIDs, got {devices!r}")
        rename = entry.get("rename", "")
        if not isinstance(rename, str) or (rename and "/" not in rename):
            raise ConfigError(f"{path}.rename: expected a resource name like nvidia.com/gpu.small, got {rename!r}")
        rules.append(ShareRule(name, replicas, tuple(str(d) for d in devices), rename))
    names = [(r.name, d) for r in rules for d in (r.devices or ("all",))]
    if len(names) != len(set(names)):
        raise ConfigError("sharing.timeSlicing.resources: a GPU is named by two rules of the same resource")
    return Sharing(
        rules=tuple(rules),
        rename_by_default=_bool("sharing.timeSlicing.renameByDefault", ts.get("renameByDefault", False)),
        fail_requests_greater_than_one=_bool(
            "sharing.timeSlicing.failRequestsGreaterThanOne", ts.get("failRequestsGreaterThanOne", False)
        ),
        distinct_gpus=_bool("sharing.timeSlicing.distinctGpus", ts.get("distinctGpus", False)),
    )


#: Longer than any real folder path (Linux's PATH_MAX is 4096 bytes with its NUL).
MAX_SPEC_DIR_BYTES = 4095


def _cdi(raw: Any, base: CdiSettings) -> CdiSettings:
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise ConfigError("cdi: expected a mapping")
    _check_keys("cdi.", raw, ("enabled", "specDir", "allocate"))
    enabled = _bool("cdi.enabled", raw["enabled"]) if "enabled" in raw else base.enabled
    spec_dir = base.spec_dir
    if "specDir" in raw:
        value = raw["specDir"]
        if (
            not isinstance(value, str) or not value.startswith("/") or "\0" in value
            or len(value.encode("utf-8", "surrogateescape")) > MAX_SPEC_DIR_BYTES
        ):
            shown = value if not isinstance(value, str) or len(value) <= 80 else value[:80] + "..."
            raise ConfigError(f"cdi.specDir: expected an absolute folder path such as /var/run/cdi, got {shown!r}")
        spec_dir = pathlib.Path(os.path.normpath(value))
    mode = raw.get("allocate", base.allocate)
    if mode not in allocate.GRANTS:
        raise ConfigError(f"cdi.allocate: expected {' or '.join(allocate.GRANTS)}, got {mode!r}")
    if mode == "cdi" and not enabled:
        raise ConfigError(
            "cdi.allocate: cdi needs cdi.enabled: true (the names Allocate returns resolve only "
            "through the specs the plugin writes)"
        )
    return CdiSettings(enabled, spec_dir, str(mode))


#: A configuration file is a few hundred bytes; anything past this is refused unread.
MAX_CONFIG_BYTES = 1 << 20


def load_file(path: pathlib.Path, base: Settings) -> Settings:
    """Applies a config file to ``base``; raises ConfigError naming the file and field."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(data)} bytes, more than a configuration file needs ({MAX_CONFIG_BYTES})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x})") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from err
    except (ValueError, RecursionError) as err:  # e.g. nesting too deep for the parser
        raise ConfigError(f"{path}: not readable YAML ({type(err).__name__}: {err})") from err
    try:
        return apply_config(raw, base)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def apply_config(raw: Any, base: Settings) -> Settings:
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping at the top level")
    _check_keys("", raw, ("version", "flags", "health", "sharing", "cdi"))
    if raw.get("version") != CONFIG_VERSION:
        raise ConfigError(f"version: expected {CONFIG_VERSION!r}, got {raw.get('version')!r}")
    settings = base
    flags = raw.get("flags") or {}
    if not isinstance(flags, dict):
        raise ConfigError("flags: expected a mapping")
    _check_keys("flags.", flags, ("passDeviceSpecs", "migStrategy"))
    if "passDeviceSpecs" in flags:
        settings = dataclasses.replace(settings, pass_device_specs=_bool("flags.passDeviceSpecs", flags["passDeviceSpecs"]))
    mig = settings.layout.mig_strategy
    if "migStrategy" in flags:
        mig = _mig_strategy("flags.migStrategy", flags["migStrategy"])
    sharing = _sharing(raw.get("sharing"))
    settings = dataclasses.replace(settings, layout=Layout(mig, sharing), cdi=_cdi(raw.get("cdi"), settings.cdi))
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
        if values["backend"] not in BACKENDS:
            raise ConfigError(f"--backend: expected auto, nvml, amd, intel or fake, got {values['backend']!r}")
        settings = dataclasses.replace(settings, backend=values["backend"])
    if "fake-inventory" in values:
        settings = dataclasses.replace(settings, fake_inventory=pathlib.Path(values["fake-inventory"]))
    if "plugin-dir" in values:
        settings = dataclasses.replace(settings, plugin_dir=pathlib.Path(values["plugin-dir"]))
    if "sysfs-root" in values:
        settings = dataclasses.replace(settings, sysfs_root=pathlib.Path(values["sysfs-root"]))
    if "dev-root" in values:
        settings = dataclasses.replace(settings, dev_root=pathlib.Path(values["dev-root"]))
    settings = dataclasses.replace(
        settings,
        node_name=values.get("node-name", settings.node_name),
        kubeconfig=values.get("kubeconfig", settings.kubeconfig),
        metrics_addr=values.get("metrics-addr", settings.metrics_addr),
    )
    if "pass-device-specs" in values:
        settings = dataclasses.replace(settings, pass_device_specs=_bool("--pass-device-specs", values["pass-device-specs"]))
    if "pod-resources-socket" in values:
        settings = dataclasses.replace(settings, pod_resources_socket=values["pod-resources-socket"])
    if "mig-strategy" in values:
        mig = _mig_strategy("--mig-strategy", values["mig-strategy"])
        settings = dataclasses.replace(settings, layout=dataclasses.replace(settings.layout, mig_strategy=mig))
    if "no-publish" in values:
        settings = dataclasses.replace(settings, publish=not _bool("--no-publish", values["no-publish"]))
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


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML parse error: where, and what (PyYAML's own text spans several)."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    what = getattr(err, "problem", None) or getattr(err, "context", None) or str(err).splitlines()[0]
    return f"{where}{what}"
