"""The ``fake`` backend: a fake inventory file as a node, for demos, e2e tests and laptops.

``--backend fake --fake-inventory FILE`` names a YAML or JSON list of GPUs in the keys of the
contract's inventory (see ``examples/fake-node-a100.yaml``). :func:`fake_backend` reads it and
runs a real backend over a model of that node: the NVML backend over a
:class:`~device_plugin.fakes.nvml.FakeNvml` for NVIDIA GPUs (:class:`FakeFileBackend`), the AMD
or Intel backend over a fake sysfs tree for ``vendor: amd`` or ``vendor: intel``
(:class:`FakeSysfsFileBackend`). Rewriting the file (``healthy: false``) injects a fault into
the running plugin. Only :func:`device_plugin.discovery.open_backend` imports this module, and
only for ``--backend fake``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Any

import yaml

from gpupack import contract

from device_plugin.discovery import amd, intel
from device_plugin.discovery.backend import Backend, ContainerEdits, DiscoveryError, HealthEvent
from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.fakes import nvml as fake_nvml
from device_plugin.fakes import sysfs as fake_sysfs

log = logging.getLogger("gpupack.fakes")


def load_inventory_file(path: pathlib.Path) -> dict[str, Any]:
    """Reads a fake inventory file (YAML or JSON) into a dict; raises ValueError with the path."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"fake inventory {path}: cannot read ({err.strerror})") from err
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"fake inventory {path}: not valid YAML/JSON ({err})") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("gpus"), list):
        raise ValueError(f"fake inventory {path}: expected an object with a 'gpus' list")
    return raw


class FakeFileBackend(NvmlBackend):
    """The NVML backend over a fake machine described by an inventory file (demos, e2e tests).

    The file is re-read when its modification time changes, checked on each event wait: a GPU
    marked ``healthy: false`` falls off the bus (XID 79), and ``healthy: true`` brings it back.
    """

    name = "fake"

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        try:
            raw = load_inventory_file(path)
            fake = fake_nvml.from_inventory(raw, seed=str(path))
        except (ValueError, KeyError, TypeError) as err:
            raise DiscoveryError(str(err)) from err
        self.fake = fake
        self._mtime = self._stat()
        super().__init__(fake)

    def _stat(self) -> float:
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return 0

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        mtime = self._stat()
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                fake_nvml.update_from_inventory(self.fake, load_inventory_file(self.path))
            except ValueError as err:
                log.warning("ignoring unreadable fake inventory change: %s", err)
        # Wake at least every 0.2 s to notice file changes.
        return super().wait_event(min(timeout_s, 0.2))


class FakeSysfsFileBackend:
    """The real AMD or Intel backend over a fake tree built from a fake inventory file.

    The tree lives in a temporary folder removed on :meth:`close`. The file is re-read when it
    changes (checked on each event wait): ``healthy: false`` removes that GPU from the tree, as
    if it fell off the bus, and ``healthy: true`` puts it back.
    """

    def __init__(self, path: pathlib.Path, raw: dict[str, Any]) -> None:
        entries = raw["gpus"]
        vendor = entries[0].get("vendor") if entries else None
        self.name = f"fake-{vendor}"
        self.path = path
        self.folder = pathlib.Path(tempfile.mkdtemp(prefix="gpupack-fake-sysfs-"))
        try:
            self.node, self.addresses = fake_sysfs.from_inventory(self.folder, entries, seed=str(path))
        except (ValueError, KeyError, TypeError) as err:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise DiscoveryError(f"fake inventory {path}: {err}") from err
        except DiscoveryError:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        kind = amd.AmdBackend if vendor == "amd" else intel.IntelBackend
        self.inner: Backend = kind(self.node.sysfs, self.node.dev)
        self._mtime = self._stat()

    def _stat(self) -> int:
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return 0

    def _apply(self, entries: list[dict[str, Any]]) -> None:
        for address, g in zip(self.addresses, entries):
            if g.get("healthy", True):
                fake_sysfs.restore_device(self.folder, address)
            else:
                fake_sysfs.remove_device(self.folder, address)

    def discover(self) -> tuple[contract.Gpu, ...]:
        # Every GPU is found first and those marked unhealthy vanish after, so they are
        # advertised Unhealthy (as a GPU that fell off the bus is by NVML) rather than unknown.
        entries = self._entries()
        for address in self.addresses:
            fake_sysfs.restore_device(self.folder, address)
        gpus = self.inner.discover()
        self._apply(entries)
        down = {a for a, g in zip(self.addresses, entries) if not g.get("healthy", True)}
        return tuple(dataclasses.replace(g, healthy=False) if g.pci_bus_id in down else g for g in gpus)

    def _entries(self) -> list[dict[str, Any]]:
        try:
            entries: list[dict[str, Any]] = load_inventory_file(self.path)["gpus"]
            return entries
        except (ValueError, KeyError) as err:
            log.warning("ignoring unreadable fake inventory: %s", err)
            return []

    def container_edits(self, visible_ids: list[str], pass_device_specs: bool) -> ContainerEdits:
        return self.inner.container_edits(visible_ids, pass_device_specs)

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        mtime = self._stat()
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self._apply(self._entries())
            except (ValueError, KeyError, TypeError, OSError) as err:
                log.warning("ignoring unusable fake inventory change: %s", err)
        # Wake at least every 0.2 s to notice file changes.
        return self.inner.wait_event(min(timeout_s, 0.2))

    def probe(self, gpu_id: str) -> str | None:
        return self.inner.probe(gpu_id)

    def close(self) -> None:
        self.inner.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def fake_backend(path: pathlib.Path) -> Backend:
    """The fake backend for an inventory file: the NVML backend over a fake NVML for NVIDIA GPUs
    (no ``vendor``, or ``nvidia``); the real AMD or Intel backend over a fake sysfs tree for
    ``vendor: amd`` or ``vendor: intel``. One vendor per file, as one node has."""
    try:
        raw = load_inventory_file(path)
    except ValueError as err:
        raise DiscoveryError(str(err)) from err
    vendors = sorted({str(g.get("vendor", "nvidia")) if isinstance(g, dict) else "?" for g in raw["gpus"]})
    if vendors in ([], ["nvidia"]):
        return FakeFileBackend(path)
    if vendors in (["amd"], ["intel"]):
        return FakeSysfsFileBackend(path, raw)
    raise DiscoveryError(
        f"fake inventory {path}: GPUs of vendor(s) {', '.join(vendors)}; expected one of nvidia, amd or intel per file"
    )
