"""The prepared claims, on disk: a driver restart loses none of them.

One JSON file (``<plugin data dir>/checkpoint.json``, on the host under
``/var/lib/kubelet/plugins/gpu.gpupack.io/``) holds every claim the driver has prepared and
not yet unprepared: its uid, namespace and name, and per allocated device the request names,
pool, device, share id and CDI device ids the kubelet was answered. It is written atomically
(:func:`device_plugin.cdi.write_atomically`: a temporary file, fsync, rename) after each
prepare and unprepare that changed it, and read once at start.

The file carries a SHA-256 of its ``claims`` (canonical JSON). A file that is not JSON, has
another version, fails its checksum or holds a malformed claim raises
:class:`CheckpointError` naming the file and what is wrong: the driver refuses to start
rather than forget claims whose containers still hold devices (an operator moves the file
away once the node's pods are drained, and the kubelet prepares the claims again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Mapping
from typing import Any, TypedDict

from device_plugin import cdi

VERSION = 1
FILE_NAME = "checkpoint.json"


class CheckpointError(RuntimeError):
    """The checkpoint cannot be trusted; the message names the file and the fault."""


@dataclasses.dataclass(frozen=True)
class PreparedDevice:
    """One device of a prepared claim, as the kubelet was answered."""

    requests: tuple[str, ...]
    pool: str
    device: str
    cdi_ids: tuple[str, ...]
    share_id: str | None = None


@dataclasses.dataclass(frozen=True)
class PreparedClaim:
    uid: str
    namespace: str
    name: str
    devices: tuple[PreparedDevice, ...]


class _DeviceJSON(TypedDict):
    requests: list[str]
    pool: str
    device: str
    cdiIDs: list[str]
    shareID: str | None


class _ClaimJSON(TypedDict):
    namespace: str
    name: str
    devices: list[_DeviceJSON]


def _claims_json(claims: Mapping[str, PreparedClaim]) -> dict[str, _ClaimJSON]:
    return {
        uid: {
            "namespace": c.namespace,
            "name": c.name,
            "devices": [
                {"requests": list(d.requests), "pool": d.pool, "device": d.device, "cdiIDs": list(d.cdi_ids),
                 "shareID": d.share_id}
                for d in c.devices
            ],
        }
        for uid, c in sorted(claims.items())
    }


def checksum(claims_json: Any) -> str:
    canonical = json.dumps(claims_json, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode(claims: Mapping[str, PreparedClaim]) -> bytes:
    body = _claims_json(claims)
    return (json.dumps({"version": VERSION, "checksum": checksum(body), "claims": body}, indent=1, sort_keys=True) + "\n").encode()


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a list of strings")
    return tuple(value)


def _string(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: expected a string, got {value!r}")
    return value


def decode(data: bytes, source: str = "checkpoint") -> dict[str, PreparedClaim]:
    """The claims in a checkpoint's bytes; CheckpointError for anything untrustworthy."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{source} is not JSON ({err}): it was damaged; see docs/device-plugin.md, DRA") from err
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        version = raw.get("version") if isinstance(raw, dict) else None
        raise CheckpointError(f"{source} has version {version!r}; this driver reads version {VERSION}")
    body = raw.get("claims")
    if not isinstance(body, dict):
        raise CheckpointError(f"{source}: 'claims' is missing or not an object")
    if raw.get("checksum") != checksum(body):
        raise CheckpointError(f"{source} fails its checksum: it was damaged or edited by hand")
    out: dict[str, PreparedClaim] = {}
    try:
        for uid, c in body.items():
            where = f"claims[{uid!r}]"
            if not isinstance(c, dict) or not isinstance(c.get("devices"), list):
                raise ValueError(f"{where}: expected an object with a list of devices")
            devices = []
            for i, d in enumerate(c["devices"]):
                dw = f"{where}.devices[{i}]"
                if not isinstance(d, dict):
                    raise ValueError(f"{dw}: expected an object")
                share = d.get("shareID")
                if share is not None and not isinstance(share, str):
                    raise ValueError(f"{dw}.shareID: expected a string or null")
                devices.append(PreparedDevice(_strings(d.get("requests"), f"{dw}.requests"), _string(d, "pool", dw),
                                              _string(d, "device", dw), _strings(d.get("cdiIDs"), f"{dw}.cdiIDs"), share))
            out[uid] = PreparedClaim(uid, _string(c, "namespace", where), _string(c, "name", where), tuple(devices))
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from err
    return out


class Checkpoint:
    """The prepared claims of this node, kept in ``folder/checkpoint.json``."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.path = folder / FILE_NAME

    def load(self) -> dict[str, PreparedClaim]:
        """The claims saved; none when there is no file yet. Raises CheckpointError."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise CheckpointError(f"cannot read {self.path}: {err}") from err
        return decode(data, str(self.path))

    def save(self, claims: Mapping[str, PreparedClaim]) -> None:
        """Writes all claims atomically; OSError when the folder cannot be written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cdi.write_atomically(self.path, encode(claims))
