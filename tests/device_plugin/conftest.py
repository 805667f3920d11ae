"""Fixtures: a modelled machine, a running plugin manager, and a kubelet stand-in on real sockets."""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.fakes import nvml as fake_nvml
from device_plugin.health import HealthSettings
from device_plugin.manager import Manager
from gpupack_cli.kubelet_standin import KubeletStandIn


@pytest.fixture
def short_dir() -> Iterator[pathlib.Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="gp-", dir="/tmp") as d:
        yield pathlib.Path(d)


@pytest.fixture
def a100() -> fake_nvml.FakeNvml:
    return fake_nvml.a100_sxm4_8x("test-a100")


@pytest.fixture
def kubelet(short_dir: pathlib.Path) -> Iterator[KubeletStandIn]:
    k = KubeletStandIn(short_dir)
    k.start()
    yield k
    k.stop()


@pytest.fixture
def start_manager() -> Iterator[Callable[..., Manager]]:
    """Starts managers over a fake NVML in a folder; stops them all at the end of the test."""
    started: list[Manager] = []

    def start(nvml: fake_nvml.FakeNvml, folder: pathlib.Path, **kw: Any) -> Manager:
        kw.setdefault("health", HealthSettings(probe_interval_s=0.05, recovery_probes=2))
        m = Manager(NvmlBackend(nvml), folder, **kw)
        m.start()
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


@pytest.fixture
def plugin(a100: fake_nvml.FakeNvml, kubelet: KubeletStandIn, start_manager: Callable[..., Manager]) -> Manager:
    return start_manager(a100, kubelet.folder)
