"""Fixtures: a modelled machine, a running plugin manager, and a kubelet stand-in on real sockets."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import subprocess
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


@pytest.fixture(scope="session")
def cdicheck(request: pytest.FixtureRequest) -> pathlib.Path:
    """The CDI project's own Go package as a program (tests/device_plugin/go/cdicheck), built
    once by tools/cdicheck_build.sh into ~/.cache/gpupack/bin/cdicheck-<key>. The build's
    progress goes to the terminal (about half a minute the first time). Without Go the tests
    that need it fail, saying so: CI has Go, and a CDI check that skips is no check."""
    script = pathlib.Path(__file__).resolve().parents[2] / "tools" / "cdicheck_build.sh"
    if shutil.which("go") is None:
        pytest.fail("Go is not installed (no `go` on PATH): the CDI spec tests build tests/device_plugin/go/cdicheck "
                    "with it; install Go >= 1.26 (https://go.dev/dl/)", pytrace=False)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        proc = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{script} failed (exit {proc.returncode}); its messages are above", pytrace=False)
    return pathlib.Path(proc.stdout.strip().splitlines()[-1])
