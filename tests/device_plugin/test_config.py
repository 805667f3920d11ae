"""Settings from flags, environment and the config file; every bad value is named."""

from __future__ import annotations

import pathlib

import pytest

from device_plugin import config


def test_defaults() -> None:
    s = config.resolve([], environ={})
    assert s.backend == "auto"
    assert s.plugin_dir == pathlib.Path("/var/lib/kubelet/device-plugins/")
    assert s.health.skipped_xids == frozenset({13, 31, 43, 45, 68, 109})


def test_flags_override_environment() -> None:
    env = {"GPUPACK_PLUGIN_DIR": "/env/dir", "GPUPACK_PASS_DEVICE_SPECS": "true", "NODE_NAME": "n1"}
    s = config.resolve(["--plugin-dir", "/flag/dir"], environ=env)
    assert s.plugin_dir == pathlib.Path("/flag/dir")
    assert s.pass_device_specs is True and s.node_name == "n1"


def test_config_file_sets_health(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("version: v1\nhealth:\n  extraSkipXids: [79]\n  probeIntervalSeconds: 2\n  recoveryProbes: 5\nflags:\n  passDeviceSpecs: true\n")
    s = config.resolve(["--config", str(f)], environ={})
    assert 79 in s.health.skipped_xids and 13 in s.health.skipped_xids
    assert (s.health.probe_interval_s, s.health.recovery_probes, s.pass_device_specs) == (2.0, 5, True)


@pytest.mark.parametrize(
    "text, message",
    [
        ("version: v2\n", "version: expected 'v1', got 'v2'"),
        ("version: v1\nhelth: {}\n", "helth: unknown key"),
        ("version: v1\nhealth:\n  skipXid: [1]\n", "health.skipXid: unknown key"),
        ("version: v1\nhealth:\n  probeIntervalSeconds: -1\n", "health.probeIntervalSeconds: expected a number >= 0.01, got -1"),
        ("version: v1\nhealth:\n  recoveryProbes: 1.5\n", "health.recoveryProbes: expected an integer >= 0"),
        ("version: v1\nhealth:\n  skipXids: [13, x]\n", "health.skipXids: expected a list of positive XID numbers"),
        ("version: v1\nflags:\n  passDeviceSpecs: maybe\n", "flags.passDeviceSpecs: expected true or false"),
        ("- a\n", "expected a mapping at the top level"),
        ("version: [\n", "not valid YAML: line 2 column 1: expected the node content"),
        ("version: v1\n\thealth: {}\n", "not valid YAML: line 2 column 1: found character '\\t'"),
    ],
)
def test_bad_config_file_names_the_field(tmp_path: pathlib.Path, text: str, message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.resolve(["--config", str(f)], environ={})
    assert message in str(err.value) and str(f) in str(err.value)
    assert "\n" not in str(err.value)  # one line for the operator


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backend", "cuda"], "--backend: expected auto, nvml, amd, intel or fake, got 'cuda'"),
        (["--backend", "fake"], "--fake-inventory: required with --backend fake"),
        (["--metrics-addr", "localhost"], "--metrics-addr: expected host:port"),
        (["--pass-device-specs", "perhaps"], "--pass-device-specs: expected true or false"),
        (["--log-level", "loud"], "--log-level: expected debug, info, warning or error"),
        (["--config", "/does/not/exist.yaml"], "cannot read"),
    ],
)
def test_bad_flags_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(")):
        config.resolve(argv, environ={})


def test_every_flag_names_its_environment_variable_in_help() -> None:
    text = config.parser().format_help()
    for env, _ in config.FLAGS.values():
        assert f"[{env}]" in text


def test_sharing_and_mig_strategy_from_the_file(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "version: v1\nflags:\n  migStrategy: mixed\nsharing:\n  timeSlicing:\n    renameByDefault: true\n"
        "    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n      devices: [0, GPU-abc]\n"
        "    - name: nvidia.com/mig-1g.10gb\n      replicas: 2\n"
    )
    s = config.resolve(["--config", str(f)], environ={})
    assert s.layout.mig_strategy == "mixed"
    assert s.layout.sharing.rename_by_default
    assert [(r.name, r.replicas, r.devices) for r in s.layout.sharing.rules] == [
        ("nvidia.com/gpu", 4, ("0", "GPU-abc")), ("nvidia.com/mig-1g.10gb", 2, ())
    ]
    assert config.resolve(["--config", str(f), "--mig-strategy", "single"], environ={}).layout.mig_strategy == "single"


@pytest.mark.parametrize(
    "sharing, message",
    [
        ("resources:\n    - name: amd.com/gpu\n      replicas: 2", "resources[0].name: expected nvidia.com/gpu or nvidia.com/mig-<profile>, got 'amd.com/gpu' (AMD and Intel GPUs are whole-device only)"),
        ("resources:\n    - name: nvidia.com/gpu\n      replicas: 1", "resources[0].replicas: expected an integer from 2 to 256, got 1"),
        ("resources:\n    - name: nvidia.com/gpu\n      replica: 2", "resources[0].replica: unknown key"),
        ("resources:\n    - name: nvidia.com/gpu\n      replicas: 2\n      devices: yes", "resources[0].devices: expected \"all\""),
        ("renameByDefault: sometimes", "sharing.timeSlicing.renameByDefault: expected true or false"),
        ("resources:\n    - name: nvidia.com/gpu\n      replicas: 2\n    - name: nvidia.com/gpu\n      replicas: 3", "a GPU is named by two rules"),
    ],
)
def test_bad_sharing_config_names_the_field(tmp_path: pathlib.Path, sharing: str, message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(f"version: v1\nsharing:\n  timeSlicing:\n    {sharing}\n")
    with pytest.raises(config.ConfigError) as err:
        config.resolve(["--config", str(f)], environ={})
    assert message in str(err.value)


def test_unknown_mig_strategy_is_refused() -> None:
    with pytest.raises(config.ConfigError, match="--mig-strategy: expected none, single or mixed, got 'dual'"):
        config.resolve(["--mig-strategy", "dual"], environ={})
