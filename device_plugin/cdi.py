"""CDI (Container Device Interface) specs for the devices this plugin serves.

With ``cdi.enabled`` the plugin writes one CDI spec file per GPU vendor of the node into
``cdi.specDir`` (``/var/run/cdi``, where containerd and CRI-O look by default), and with
``cdi.allocate: cdi`` its ``Allocate`` answers with the CDI names of the devices
(``ContainerAllocateResponse.cdi_devices``) instead of device specs: the container runtime
then injects the device nodes from the spec. The env path (``cdi.allocate: env``) stays the
default.

Names. Every device gets the kind ``k8s.gpupack.io/gpu`` and its kubelet device id as name
(``k8s.gpupack.io/gpu=GPU-8f0c...``, ``...=MIG-...``, ``...=GPU-...::2`` for a share,
``...=0000:03:00.0`` for an Intel card), with any character CDI does not allow in a name
replaced by ``_`` (:func:`device_name`). Our own vendor domain, not ``nvidia.com/gpu``: NVIDIA's
container toolkit writes specs of that kind into the same folder (``nvidia-ctk cdi
generate``), and two specs naming the same device are a conflict the runtime refuses, so
gpupack's specs can sit beside the vendors' (docs/device-plugin.md, "CDI").

Files. ``k8s.gpupack.io-gpu_<vendor>.json`` (CDI's ``<vendor>-<class>_<id>`` naming), one per
GPU vendor present, so that a vendor's shared device nodes (NVIDIA's ``/dev/nvidiactl`` and
the UVM nodes; AMD's ``/dev/kfd``) sit in the spec-level edits of its own devices only. Files
are written atomically (a temporary file in the same folder, fsync, rename), rewritten only
when their bytes change, and only files of that name pattern are ever removed: the folder is
shared with other vendors' specs.

Edits. Each device carries the device nodes the env path gives a container for it with
``passDeviceSpecs`` (the backend's :meth:`~device_plugin.discovery.backend.Backend.container_edits`
for that one device), less the vendor's shared nodes, which are the spec-level edits (the
backend's answer for no device). Environment variables are not in the specs: the one the env
path sets, ``NVIDIA_VISIBLE_DEVICES``, lists all of a container's devices, and CDI replaces a
variable by name, so per-device values would leave only the last device's; ``Allocate`` keeps
giving that variable in CDI mode (:mod:`device_plugin.allocate`).

Health and layout. The specs follow the advertised devices: every device present stays in
the spec whatever its health (``Allocate`` refuses Unhealthy ones; a container that already
has one must still resolve its name when it restarts, as NVIDIA's specs keep every device
too); devices that go away (a MIG repartitioning, a changed time-slicing config) leave the
spec at the next refresh; the files are removed on shutdown.

Without ``cdi.enabled`` the manager is given :class:`NoCdiSpecs`, which writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypedDict

from gpupack import contract

from device_plugin.discovery.backend import ContainerEdits
from device_plugin.resources import Device

log = logging.getLogger("gpupack.cdi")

#: The CDI spec version written: the oldest that has what the specs use (device names that
#: start with a digit, as PCI addresses do, came with 0.5.0), so older runtimes read them too.
CDI_VERSION = "0.5.0"
VENDOR = "k8s.gpupack.io"
CLASS = "gpu"
KIND = f"{VENDOR}/{CLASS}"
DEFAULT_SPEC_DIR = pathlib.Path("/var/run/cdi")
#: Device nodes are given read-write, without mknod, as the env path's device specs are.
PERMISSIONS = "rw"

_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.:-]")
_OWN_FILE = re.compile(re.escape(f"{VENDOR}-{CLASS}_") + r"[a-z0-9]+\.json")
_OWN_TEMP = re.compile(r"\." + _OWN_FILE.pattern + r"\.[^/]*\.tmp")  # left by a crash mid-write


@dataclasses.dataclass(frozen=True)
class CdiSettings:
    enabled: bool = False  # write CDI specs for the devices served
    spec_dir: pathlib.Path = DEFAULT_SPEC_DIR  # the folder the container runtime reads specs from
    allocate: str = "env"  # env | cdi: what Allocate answers (device_plugin.allocate.GRANTS; cdi needs enabled)


# --- the wire format (CDI spec JSON) ------------------------------------------------------------


class DeviceNodeJSON(TypedDict):
    path: str
    permissions: str


class ContainerEditsJSON(TypedDict, total=False):
    deviceNodes: list[DeviceNodeJSON]


class DeviceJSON(TypedDict):
    name: str
    containerEdits: ContainerEditsJSON


class SpecJSON(TypedDict):
    cdiVersion: str
    kind: str
    containerEdits: ContainerEditsJSON
    devices: list[DeviceJSON]


# --- names and specs (pure) ---------------------------------------------------------------------


def device_name(device_id: str) -> str:
    """The CDI device name of a kubelet device id: letters, digits, ``_ . : -``, starting and
    ending with a letter or digit (CDI's rule); other characters become ``_``."""
    name = _NOT_IN_NAME.sub("_", device_id).strip("_.:-")
    if not name:
        raise ValueError(f"device id {device_id!r} has no character a CDI device name may hold")
    return name


def qualified_name(device_id: str) -> str:
    """``k8s.gpupack.io/gpu=<name>``: what ``Allocate`` returns and the runtime resolves."""
    return f"{KIND}={device_name(device_id)}"


def spec_file_name(vendor: str) -> str:
    """``k8s.gpupack.io-gpu_nvidia.json``."""
    return f"{VENDOR}-{CLASS}_{vendor}.json"


def is_own_file(name: str) -> bool:
    return _OWN_FILE.fullmatch(name) is not None


def _nodes(paths: Iterable[str]) -> list[DeviceNodeJSON]:
    return [{"path": p, "permissions": PERMISSIONS} for p in paths]


def build_specs(
    gpus: Sequence[contract.Gpu],
    devices: Mapping[str, tuple[Device, ...]],
    edits: Callable[[list[str]], ContainerEdits],
) -> dict[str, SpecJSON]:
    """The spec of each GPU vendor present, by file name, for the advertised ``devices``.

    ``edits`` is what a container needs for some physical devices, with device nodes (the
    backend's ``container_edits`` with ``passDeviceSpecs``): called once with no device for
    the vendor's shared nodes (the spec-level edits) and once per physical device (GPU or MIG
    UUID) for its own. A device whose edits name no node of its own is left out with a
    warning, as CDI refuses a device without edits. Raises ValueError when two device ids
    would get one name.
    """
    vendor_of = {g.id: g.vendor for g in gpus}
    shared = list(dict.fromkeys(edits([]).device_nodes))
    own: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    by_vendor: dict[str, list[DeviceJSON]] = {}
    for resource in sorted(devices):
        for d in devices[resource]:
            name = device_name(d.id)
            if names.setdefault(name, d.id) != d.id:
                raise ValueError(f"device ids {names[name]!r} and {d.id!r} both become CDI name {name!r}")
            if d.visible_id not in own:
                own[d.visible_id] = [p for p in dict.fromkeys(edits([d.visible_id]).device_nodes) if p not in shared]
            if not own[d.visible_id]:
                log.warning("no device node is known for %s; it is left out of the CDI spec", d.id)
                continue
            by_vendor.setdefault(vendor_of.get(d.gpu_id, "unknown"), []).append(
                {"name": name, "containerEdits": {"deviceNodes": _nodes(own[d.visible_id])}}
            )
    return {
        spec_file_name(vendor): {
            "cdiVersion": CDI_VERSION,
            "kind": KIND,
            "containerEdits": {"deviceNodes": _nodes(shared)} if shared else {},
            "devices": listed,
        }
        for vendor, listed in sorted(by_vendor.items())
    }


def render(spec: SpecJSON) -> bytes:
    return (json.dumps(spec, indent=2) + "\n").encode()


# --- the writer and its null object -------------------------------------------------------------


class Specs(Protocol):
    """Keeps CDI specs in step with the advertised devices (a null object when CDI is off)."""

    def write(
        self,
        gpus: Sequence[contract.Gpu],
        devices: Mapping[str, tuple[Device, ...]],
        edits: Callable[[list[str]], ContainerEdits],
    ) -> None:
        """Brings the spec files in line with ``devices``; never raises for the folder's faults."""
        ...

    def flush(self) -> None:
        """Retries a write that failed."""
        ...

    def remove(self) -> None:
        """Removes every spec file of ours (at shutdown)."""
        ...


class NoCdiSpecs:
    def write(
        self,
        gpus: Sequence[contract.Gpu],
        devices: Mapping[str, tuple[Device, ...]],
        edits: Callable[[list[str]], ContainerEdits],
    ) -> None:
        return None

    def flush(self) -> None:
        return None

    def remove(self) -> None:
        return None


class CdiSpecs:
    """Writes our spec files into ``spec_dir``; touches no other file there."""

    def __init__(self, spec_dir: pathlib.Path) -> None:
        self.spec_dir = spec_dir
        self._lock = threading.Lock()
        self._pending: dict[str, bytes] | None = None  # the last wanted files, while not all written

    def write(
        self,
        gpus: Sequence[contract.Gpu],
        devices: Mapping[str, tuple[Device, ...]],
        edits: Callable[[list[str]], ContainerEdits],
    ) -> None:
        try:
            wanted = {name: render(spec) for name, spec in build_specs(gpus, devices, edits).items()}
        except ValueError as err:
            log.error("CDI specs not written: %s", err)
            return
        with self._lock:
            self._pending = wanted
            self._sync()

    def flush(self) -> None:
        with self._lock:
            if self._pending is not None:
                self._sync()

    def remove(self) -> None:
        with self._lock:
            self._pending = None
            for name in self._own_files():
                _unlink(self.spec_dir / name)
            log.info("CDI specs removed from %s", self.spec_dir)

    def _own_files(self) -> list[str]:
        try:
            names = [p.name for p in self.spec_dir.iterdir()]
        except OSError:
            return []
        return sorted(n for n in names if is_own_file(n) or _OWN_TEMP.fullmatch(n))

    def _sync(self) -> None:
        wanted = self._pending or {}
        try:
            self.spec_dir.mkdir(parents=True, exist_ok=True)
            for name, data in wanted.items():
                path = self.spec_dir / name
                if _read(path) != data:
                    write_atomically(path, data)
                    log.info("wrote CDI spec %s", path)
            for name in self._own_files():
                if name not in wanted:
                    _unlink(self.spec_dir / name)
                    log.info("removed %s (no device of that vendor any more, or left by a crash)", self.spec_dir / name)
        except OSError as err:
            log.error("cannot write CDI specs into %s (%s); will try again", self.spec_dir, err)
            return
        self._pending = None


def write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a part: a temporary file in the same
    folder (a name the runtime does not read: not ``*.json``), fsync, rename, fsync the folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        _unlink(pathlib.Path(tmp))
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: pathlib.Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _unlink(path: pathlib.Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning("cannot remove %s: %s", path, err)


def specs_for(settings: CdiSettings) -> Specs:
    """The writer ``settings`` ask for: :class:`CdiSpecs`, or :class:`NoCdiSpecs` when CDI is off."""
    return CdiSpecs(settings.spec_dir) if settings.enabled else NoCdiSpecs()
