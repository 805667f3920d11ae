"""The NVML backend against the real NVIDIA library, where this machine has a GPU.

Skipped, with the reason, wherever NVML cannot be initialised (no driver, no GPU: CI and
most laptops); ``tools/gpu-check.sh`` runs it on a GPU machine with
``GPUPACK_REQUIRE_GPU=1``, which turns the skip into a failure. Read only: nothing here
changes the GPU's settings (MIG mode, clocks); it only discovers and reads health.
"""

from __future__ import annotations

from typing import Any

from gpupack import contract

from device_plugin.discovery.nvml import NvmlBackend

from tests.gpu import unavailable


def _nvml() -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise RuntimeError("NVML reports no GPU")
        return pynvml
    except Exception as err:  # the library, the driver or the GPU is missing
        unavailable(f"real NVML is not usable here ({type(err).__name__}: {err})")


def test_the_real_gpus_are_discovered_as_the_library_reports_them() -> None:
    nvml = _nvml()
    gpus = NvmlBackend(nvml).discover()
    assert len(gpus) == nvml.nvmlDeviceGetCount()
    for g in gpus:
        handle = nvml.nvmlDeviceGetHandleByIndex(g.index)
        uuid = nvml.nvmlDeviceGetUUID(handle)
        assert g.id == (uuid.decode() if isinstance(uuid, bytes) else uuid)
        assert g.vendor == "nvidia" and g.memory_mib > 0 and g.model
        assert g.memory_mib == nvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20
        for m in g.mig:
            assert m.id.startswith("MIG-") and m.memory_mib > 0 and m.profile
    inv = contract.Inventory("gpu-check", gpus)
    assert contract.decode_inventory(contract.encode_inventory(inv)) == inv


def test_the_real_gpus_answer_a_health_probe() -> None:
    nvml = _nvml()
    backend = NvmlBackend(nvml)
    for g in backend.discover():
        assert g.healthy, f"{g.id} did not answer at discovery"
