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
import difflib
import json
import logging
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, cast

import yaml

from gpupack import contract

from device_plugin.discovery import amd, intel
from device_plugin.discovery.backend import Backend, ContainerEdits, DiscoveryError, HealthEvent, InputError
from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.fakes import nvml as fake_nvml
from device_plugin.fakes import sysfs as fake_sysfs

log = logging.getLogger("gpupack.fakes")


#: A fake inventory is a few KB (8 GPUs: 2 KB); anything past this is refused unread.
MAX_INVENTORY_BYTES = 1 << 20
#: GPUs in one file: the largest nodes have 8, and the fakes' default PCI addresses (one bus
#: number per GPU, 8 or 16 apart) run out past 16.
MAX_GPUS = 16
#: Largest ``memoryMiB``: the extender's kernel keeps MiB in int32 columns.
MAX_MEMORY_MIB = 2**31 - 1

#: The keys of the file and their JSON types: the keys of the contract's inventory that
#: describe the machine (the fakes read each of them), plus ``nvswitch`` (NVLinks per GPU into
#: NVSwitches) and Intel's ``driver``. What the plugin decides and publishes (``resource``,
#: ``replicas``, a MIG device's id and placement) comes from its --config, not from here.
_TOP: dict[str, type] = {"version": int, "nvswitch": int, "gpus": list}
_GPU: dict[str, type] = {"id": str, "index": int, "vendor": str, "model": str, "memoryMiB": int, "numaNode": int,
                         "pciBusId": str, "healthy": bool, "migEnabled": bool, "mig": list, "links": list,
                         "driver": str}
_MIG: dict[str, type] = {"profile": str}
_LINK: dict[str, type] = {"peer": int, "nvlinks": int}
#: Keys of a published inventory that a fake one does not take, and why.
_PUBLISHED_ONLY = ("node", "migStrategy", "sharing", "resource", "replicas", "start", "size")
_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false", list: "a list"}
_PCI_BUS_ID = re.compile(r"^([0-9A-Fa-f]{4}|[0-9A-Fa-f]{8}):[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")


def load_inventory_file(path: pathlib.Path) -> dict[str, Any]:
    """Reads a fake inventory file (YAML, or JSON for ``.json``) into a dict whose every key and
    type is checked (:func:`check_inventory`); raises ValueError, one line naming the file
    and the field path: ``fake inventory node.yaml: gpus[0].index: 'zero' is not an integer``."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INVENTORY_BYTES + 1)
    except OSError as err:
        raise ValueError(f"fake inventory {path}: cannot read ({err.strerror or err})") from err
    if len(data) > MAX_INVENTORY_BYTES:
        raise ValueError(f"fake inventory {path}: more than {MAX_INVENTORY_BYTES} bytes, more than a GPU list needs")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"fake inventory {path}: not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x})") from err
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"fake inventory {path}: not valid YAML/JSON: line {err.lineno} column {err.colno}: {err.msg}") from err
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        raise ValueError(f"fake inventory {path}: not valid YAML/JSON: {where}{err.problem or err.context}") from err
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as err:  # a control character; `2024-13-45`
        why = "nested too deeply" if isinstance(err, RecursionError) else " ".join(str(err).split())
        raise ValueError(f"fake inventory {path}: not valid YAML/JSON: {why}") from err
    try:
        check_inventory(raw)
    except ValueError as err:
        raise ValueError(f"fake inventory {path}: {err}") from err
    return cast(dict[str, Any], raw)


def check_inventory(raw: Any) -> None:
    """Raises ValueError naming the field path where ``raw`` is not a fake inventory: a key
    unknown or missing, a value of the wrong type or out of range, an NVLink to no GPU of the
    file, a MIG profile its GPU does not have, two GPUs with one id, index or PCI address.
    Whether a vendor, Intel driver or model exists is the backends' to say."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected an object with a 'gpus' list, got {_kind(raw)}")
    _unknown(raw, _TOP, "")  # first: `gpu:` for `gpus:` is a typo, not a missing list
    if "gpus" not in raw:
        raise ValueError("gpus: missing (expected an object with a 'gpus' list)")
    if not isinstance(raw["gpus"], list):
        raise ValueError(f"gpus: {_show(raw['gpus'])} is not a list (expected an object with a 'gpus' list)")
    _keys(raw, _TOP, "")
    if raw.get("version", contract.INVENTORY_VERSION) != contract.INVENTORY_VERSION:
        raise ValueError(f"version: {_show(raw['version'])} is not supported (want {contract.INVENTORY_VERSION})")
    gpus = raw["gpus"]
    if len(gpus) > MAX_GPUS:
        raise ValueError(f"gpus: {len(gpus)} GPUs, more than {MAX_GPUS}")
    switch = _range(raw, "nvswitch", "", 0, fake_nvml.NVML_NVLINK_MAX_LINKS, 0)
    seen: dict[tuple[str, str], str] = {}
    for i, g in enumerate(gpus):
        where = f"gpus[{i}]"
        if not isinstance(g, dict):
            raise ValueError(f"{where}: {_show(g)} is not an object (a GPU: model, memoryMiB, ...)")
        _keys(g, _GPU, where)
        nvidia = g.get("vendor", "nvidia") == "nvidia"
        if nvidia:
            for key in ("model", "memoryMiB"):
                if key not in g:
                    raise ValueError(f"{where}.{key}: missing (an NVIDIA GPU needs model and memoryMiB)")
        memory = _range(g, "memoryMiB", where, 1, MAX_MEMORY_MIB, 0)
        index = _range(g, "index", where, 0, 2**31 - 1, i)
        _range(g, "numaNode", where, -1, 2**31 - 1, 0)
        for key, value in (("id", g.get("id") or ""), ("index", str(index)),
                           ("pciBusId", str(g.get("pciBusId", "")).lower())):
            if value and (key, value) in seen:  # one device twice: the kubelet would be told it twice
                raise ValueError(f"{where}.{key}: {_show(g.get(key, index))} is also {seen[key, value]}'s")
            seen[key, value] = where
        if contract.SHARE_SEPARATOR in str(g.get("id", "")) or "," in str(g.get("id", "")):
            raise ValueError(f"{where}.id: {_show(g['id'])} has '::' or ',' (they separate device ids)")
        if "pciBusId" in g and not _PCI_BUS_ID.match(g["pciBusId"]):
            raise ValueError(f"{where}.pciBusId: {_show(g['pciBusId'])} is not a PCI address like '00000000:07:00.0'")
        links = 0
        for j, link in enumerate(g.get("links", [])):
            lwhere = f"{where}.links[{j}]"
            if not isinstance(link, dict):
                raise ValueError(f"{lwhere}: {_show(link)} is not an object (peer, nvlinks)")
            _keys(link, _LINK, lwhere)
            for key in _LINK:
                if key not in link:
                    raise ValueError(f"{lwhere}.{key}: missing")
            peer = link["peer"]
            if not 0 <= peer < len(gpus) or peer == i:
                what = "this GPU itself" if peer == i else f"not a GPU of this file (0..{len(gpus) - 1}, by position)"
                raise ValueError(f"{lwhere}.peer: {peer} is {what}")
            links += _range(link, "nvlinks", lwhere, 1, fake_nvml.NVML_NVLINK_MAX_LINKS, 1)
        if switch + links > fake_nvml.NVML_NVLINK_MAX_LINKS:
            raise ValueError(f"{where}.links: {switch + links} NVLinks with nvswitch's, more than a GPU has "
                             f"({fake_nvml.NVML_NVLINK_MAX_LINKS})")
        migs = g.get("mig", [])
        if migs and not nvidia:
            raise ValueError(f"{where}.mig: only NVIDIA GPUs have MIG devices")
        table = fake_nvml.MIG_PROFILES[40 if memory < 60000 else 80]
        for j, m in enumerate(migs):
            mwhere = f"{where}.mig[{j}]"
            if not isinstance(m, dict):
                raise ValueError(f"{mwhere}: {_show(m)} is not an object (profile: 1g.10gb)")
            _keys(m, _MIG, mwhere)
            if "profile" not in m:
                raise ValueError(f"{mwhere}.profile: missing")
            if m["profile"] not in table:
                raise ValueError(f"{mwhere}.profile: {_show(m['profile'])} is not a MIG profile of a "
                                 f"{40 if memory < 60000 else 80} GB GPU; known: {', '.join(sorted(table))}")


def _unknown(obj: dict[Any, Any], schema: dict[str, type], where: str) -> None:
    """Unknown keys refused, with the nearest known one (a typo) or the known ones."""
    for key in obj:
        if not isinstance(key, str) or key not in schema:
            near = difflib.get_close_matches(str(key), schema, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(sorted(schema))}"
            if key in _PUBLISHED_ONLY:  # a published inventory pasted in: the plugin's config decides these
                hint = f"the plugin publishes it, from its --config; a fake inventory takes {', '.join(sorted(schema))}"
            raise ValueError(f"{where or 'top level'}: unknown key {_show(key)}; {hint}")


def _keys(obj: dict[Any, Any], schema: dict[str, type], where: str) -> None:
    """Unknown keys refused (:func:`_unknown`), known ones type-checked."""
    _unknown(obj, schema, where)
    for key, value in obj.items():
        kind = schema[key]
        at = f"{where}.{key}" if where else key
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            quote = ("; quote it: YAML reads an unquoted bus id of digits, like 00000000:07:00.0, as a number"
                     if key == "pciBusId" and isinstance(value, (int, float)) else "")
            raise ValueError(f"{at}: {_show(value)} is not {_TYPE_NAMES[kind]}{quote}")


def _range(obj: dict[str, Any], key: str, where: str, low: int, high: int, default: int) -> int:
    """The integer at ``key`` (already type-checked), refused outside low..high; ``default``
    where the key is absent."""
    if key not in obj:
        return default
    value: int = obj[key]
    if not low <= value <= high:
        raise ValueError(f"{where + '.' if where else ''}{key}: {_show(value)} is outside {low}..{high}")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false", int: "a number",
            float: "a number", type(None): "nothing (an empty file?)"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    """A value as the file wrote it: YAML's true, false and null, strings quoted, cut at 40."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
        except ValueError as err:
            raise InputError(str(err)) from err
        try:
            fake = fake_nvml.from_inventory(raw, seed=str(path))
        except (ValueError, KeyError, TypeError) as err:  # e.g. MIG profiles that overflow their GPU
            raise InputError(f"fake inventory {path}: {err}") from err
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
            raise InputError(f"fake inventory {path}: {err}") from err
        except DiscoveryError as err:  # "fake inventory gpus[0]: ..." from the tree's builder: name the file
            shutil.rmtree(self.folder, ignore_errors=True)
            raise InputError(f"fake inventory {path}: {str(err).removeprefix('fake inventory ')}") from err
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
        raise InputError(str(err)) from err
    vendors = sorted({str(g.get("vendor", "nvidia")) if isinstance(g, dict) else "?" for g in raw["gpus"]})
    if vendors in ([], ["nvidia"]):
        return FakeFileBackend(path)
    if vendors in (["amd"], ["intel"]):
        return FakeSysfsFileBackend(path, raw)
    raise InputError(
        f"fake inventory {path}: GPUs of vendor(s) {', '.join(vendors)}; expected one of nvidia, amd or intel per file"
    )
