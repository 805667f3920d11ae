"""The hardware seam: what GPUs this node has, how they are reached, and what goes wrong.

One backend per file behind one protocol; the rest of the plugin sees only
:mod:`~device_plugin.discovery.backend` and never touches a hardware library itself:

- :mod:`~device_plugin.discovery.backend`: the :class:`Backend` protocol and the types it
  answers in (:class:`~device_plugin.discovery.backend.ContainerEdits`,
  :class:`~device_plugin.discovery.backend.HealthEvent`, :class:`DiscoveryError`);
- :mod:`~device_plugin.discovery.nvml`: NVIDIA GPUs through the NVML module it is given;
- :mod:`~device_plugin.discovery.sysfs`: what the sysfs vendors share (device nodes, health
  from presence), under :mod:`~device_plugin.discovery.amd` and
  :mod:`~device_plugin.discovery.intel`.

:func:`open_backend` chooses one by the name ``--backend`` gives: ``nvml``, ``amd``,
``intel``, ``auto`` (NVML where libnvidia-ml loads, else AMD, else Intel GPUs in sysfs) or
``fake``, a fake inventory file (:mod:`device_plugin.fakes`, loaded only then). Discovery
speaks no protocol: no gRPC, HTTP, Kubernetes client or Prometheus here.
"""

from __future__ import annotations

import pathlib

import pynvml

from device_plugin.discovery import amd, intel, nvml
from device_plugin.discovery.backend import Backend, DiscoveryError, InputError

__all__ = ["Backend", "DiscoveryError", "InputError", "open_backend"]


def _auto(sysfs_root: pathlib.Path, dev_root: pathlib.Path) -> Backend:
    """NVML where libnvidia-ml loads, else AMD GPUs in sysfs, else Intel GPUs in sysfs."""
    tried = []
    try:
        return open_backend("nvml", sysfs_root=sysfs_root)
    except DiscoveryError as err:
        tried.append(f"NVIDIA: libnvidia-ml.so.1 did not load ({err})")
    for backend in (amd.AmdBackend(sysfs_root, dev_root), intel.IntelBackend(sysfs_root, dev_root)):
        try:
            backend.discover()
        except DiscoveryError as err:
            tried.append(str(err))
            continue
        return backend
    raise DiscoveryError(
        "no GPU backend found. " + "; ".join(tried) + ". On an NVIDIA node, run with the NVIDIA container "
        "runtime or mount the driver libraries; on an AMD or Intel node, mount the host's /sys (--sysfs-root); "
        "elsewhere use --backend fake --fake-inventory FILE."
    )


def open_backend(
    kind: str,
    fake_inventory: pathlib.Path | None = None,
    sysfs_root: pathlib.Path = pathlib.Path("/sys"),
    dev_root: pathlib.Path = pathlib.Path("/dev"),
) -> Backend:
    """The backend named by ``--backend``; a DiscoveryError says what to do when it cannot start."""
    if kind == "fake":
        if fake_inventory is None:
            raise InputError("--backend fake needs --fake-inventory FILE (a YAML or JSON GPU list)")
        # The one lazy import: a production node never loads the fakes.
        from device_plugin.fakes import inventory

        return inventory.fake_backend(fake_inventory)
    if kind == "auto":
        return _auto(sysfs_root, dev_root)
    if kind == "nvml":
        return nvml.NvmlBackend(pynvml, sysfs_root)
    if kind in ("amd", "intel"):
        backend: Backend = (amd.AmdBackend if kind == "amd" else intel.IntelBackend)(sysfs_root, dev_root)
        backend.discover()  # refuses a node without such GPUs now, with the reason
        return backend
    raise InputError(f"unknown backend {kind!r}: choose auto, nvml, amd, intel or fake")
