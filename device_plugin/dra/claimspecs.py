"""CDI specs for prepared claims: one file per claim, naming exactly its devices.

``k8s.gpupack.io-claim_<claim uid>.json`` in the CDI folder (``/var/run/cdi``), kind
``k8s.gpupack.io/claim``, one device per allocated device named ``<claim uid>-<device>``, so
unprepare removes exactly that claim's file and two claims sharing a GPU never name one CDI
device twice. The device plugin's own specs (:mod:`device_plugin.cdi`, class ``gpu``) and the
vendors' specs sit beside them untouched: only files of this pattern are ever written or
removed here.

Edits, from the backend's :meth:`~device_plugin.discovery.backend.Backend.container_edits`
(with device nodes): per device, its own device nodes and ``GPUPACK_DEVICE_<NAME>=<id>`` (CDI
refuses a device without edits, and an AMD or Intel device's nodes alone would not say which
it is); at spec level, the vendor's shared nodes (``/dev/nvidiactl``, ``/dev/kfd``) and the
environment for all of the claim's devices (``NVIDIA_VISIBLE_DEVICES``). CDI replaces a
variable by name, so a container with two NVIDIA claims sees the last claim's list: ask for
several GPUs in one claim. The writer (:func:`device_plugin.cdi.write_atomically`) and CDI
version and naming rules are the device plugin's, reused.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import TypedDict

from device_plugin import cdi
from device_plugin.discovery.backend import ContainerEdits
from gpupack import dra_names as names
from device_plugin.dra.slices import PublishedDevice

log = logging.getLogger("gpupack.dra.cdi")

_PREFIX = f"{names.CDI_VENDOR}-{names.CDI_CLASS}_"
_OWN_FILE = re.compile(re.escape(_PREFIX) + r"(?P<uid>[A-Za-z0-9-]+)\.json")

Edits = Callable[[list[str]], ContainerEdits]


class _EditsJSON(TypedDict, total=False):
    env: list[str]
    deviceNodes: list[cdi.DeviceNodeJSON]


class _DeviceJSON(TypedDict):
    name: str
    containerEdits: _EditsJSON


class ClaimSpecJSON(TypedDict):
    cdiVersion: str
    kind: str
    containerEdits: _EditsJSON
    devices: list[_DeviceJSON]


def file_name(claim_uid: str) -> str:
    return f"{_PREFIX}{claim_uid}.json"


def device_name(claim_uid: str, device: str) -> str:
    return cdi.device_name(f"{claim_uid}-{device}")


def qualified_name(claim_uid: str, device: str) -> str:
    """``k8s.gpupack.io/claim=<uid>-gpu-0``: what the kubelet hands the container runtime."""
    return f"{names.CDI_KIND}={device_name(claim_uid, device)}"


def _nodes(paths: Sequence[str]) -> list[cdi.DeviceNodeJSON]:
    return [{"path": p, "permissions": cdi.PERMISSIONS} for p in paths]


def _env_name(device: str) -> str:
    return "GPUPACK_DEVICE_" + re.sub(r"[^A-Z0-9]", "_", device.upper())


def build(claim_uid: str, devices: Sequence[PublishedDevice], edits: Edits) -> ClaimSpecJSON:
    """The spec of one claim's devices (distinct devices; a device listed twice is once)."""
    unique = list({d.name: d for d in devices}.values())
    shared = list(dict.fromkeys(edits([]).device_nodes))
    visible = list(dict.fromkeys(d.visible_id for d in unique))
    spec_edits: _EditsJSON = {}
    env = [f"{k}={v}" for k, v in sorted(edits(visible).envs.items())] if visible else []
    if env:
        spec_edits["env"] = env
    if shared:
        spec_edits["deviceNodes"] = _nodes(shared)
    listed: list[_DeviceJSON] = []
    for d in unique:
        own = [p for p in dict.fromkeys(edits([d.visible_id]).device_nodes) if p not in shared]
        dev_edits: _EditsJSON = {"env": [f"{_env_name(d.name)}={d.visible_id}"]}
        if own:
            dev_edits["deviceNodes"] = _nodes(own)
        listed.append({"name": device_name(claim_uid, d.name), "containerEdits": dev_edits})
    return {"cdiVersion": cdi.CDI_VERSION, "kind": names.CDI_KIND, "containerEdits": spec_edits, "devices": listed}


class ClaimSpecs:
    """Writes and removes claim spec files in ``spec_dir``; touches no other file there."""

    def __init__(self, spec_dir: pathlib.Path) -> None:
        self.spec_dir = spec_dir

    def path(self, claim_uid: str) -> pathlib.Path:
        return self.spec_dir / file_name(claim_uid)

    def exists(self, claim_uid: str) -> bool:
        return self.path(claim_uid).exists()

    def write(self, claim_uid: str, spec: ClaimSpecJSON) -> None:
        """Writes the file atomically (raises OSError); unchanged bytes are not rewritten."""
        self.spec_dir.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(spec, indent=2) + "\n").encode()  # as cdi.render writes them
        path = self.path(claim_uid)
        try:
            if path.read_bytes() == data:
                return
        except OSError:
            pass
        cdi.write_atomically(path, data)

    def remove(self, claim_uid: str) -> None:
        """Removes the claim's file; nothing when it is not there (raises other OSErrors)."""
        try:
            self.path(claim_uid).unlink()
        except FileNotFoundError:
            pass

    def claim_uids(self) -> list[str]:
        """The claims that have a spec file here."""
        try:
            found = [p.name for p in self.spec_dir.iterdir()]
        except OSError:
            return []
        return sorted(m["uid"] for m in map(_OWN_FILE.fullmatch, found) if m)
