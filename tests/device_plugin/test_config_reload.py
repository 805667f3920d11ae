"""The plugin's config reload survives any bytes in the file: a refused change is logged and
counted, the settings in use stay, and the next valid change still applies (issue 15, item 7:
a binary config once killed the reload thread for good)."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_plugin import config
from device_plugin.main import apply_config_change
from device_plugin.metrics import PluginMetrics

from tests.profiles import invariant

VALID = b"version: v1\nflags:\n  passDeviceSpecs: true\n"


@dataclasses.dataclass
class FakeManager:
    """What the watch needs of a Manager: reconfigure and the metrics."""

    metrics: PluginMetrics = dataclasses.field(default_factory=PluginMetrics)
    applied: list[bool] = dataclasses.field(default_factory=list)

    def reconfigure(self, layout: Any, health: Any, pass_device_specs: bool) -> bool:
        self.applied.append(pass_device_specs)
        return True


def reloads(m: FakeManager, result: str) -> float:
    value = m.metrics.registry.get_sample_value("gpupack_plugin_config_reloads_total", {"result": result})
    return value or 0.0


def last_ok(m: FakeManager) -> float | None:
    return m.metrics.registry.get_sample_value("gpupack_plugin_config_last_reload_ok")


@pytest.mark.parametrize("data, says", [
    (bytes(range(256)), "not UTF-8 text (byte 128 is 0x80)"),
    (b"\xff\xfe\x00binary", "not UTF-8 text (byte 0 is 0xff)"),
    (b"version: v1\nhealth: [unclosed\n", "not valid YAML"),
    (b"version: v2\n", "version: expected 'v1'"),
    (b"[" * 100_000, "not"),
    (b"x" * (config.MAX_CONFIG_BYTES + 1), "more than a configuration file needs"),
], ids=["all-bytes", "utf16-bom", "bad-yaml", "bad-version", "deep-nesting", "too-large"])
def test_a_bad_change_is_refused_and_the_next_good_one_applies(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, data: bytes, says: str
) -> None:
    path = tmp_path / "config.yaml"
    argv = ["--config", str(path)]
    m = FakeManager()
    path.write_bytes(data)
    with caplog.at_level(logging.ERROR):
        last = apply_config_change(path, b"", argv, m)
    assert last == data and m.applied == []
    assert (reloads(m, "refused"), last_ok(m)) == (1.0, 0.0)
    assert says in caplog.text and str(path) in caplog.text and "the one in use stays" in caplog.text
    path.write_bytes(VALID)
    apply_config_change(path, last, argv, m)
    assert m.applied == [True]
    assert (reloads(m, "applied"), last_ok(m)) == (1.0, 1.0)


def test_an_unchanged_file_is_not_applied_again(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(VALID)
    m = FakeManager()
    assert apply_config_change(path, VALID, ["--config", str(path)], m) == VALID
    assert m.applied == [] and reloads(m, "applied") == reloads(m, "refused") == 0.0


@invariant(150)
@given(st.binary(max_size=2048) | st.text(max_size=512).map(str.encode))
def test_no_bytes_break_the_watch(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "config.yaml"
        path.write_bytes(data)
        m = FakeManager()
        assert apply_config_change(path, b"\x00never", ["--config", str(path)], m) == data
        assert reloads(m, "applied") + reloads(m, "refused") == 1.0
