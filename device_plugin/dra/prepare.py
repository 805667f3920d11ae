"""Preparing and unpreparing claims: the driver's decisions, behind the gRPC servicer.

The kubelet names a claim by namespace, name and uid only; :class:`Preparer` reads its
allocation from the ResourceClaim (a getter it is given: the Kubernetes API in production, a
dict in tests), takes the results of this driver, checks each names a device this node
publishes, writes one CDI spec for exactly those devices (:mod:`~device_plugin.dra.claimspecs`)
and records the claim in the checkpoint before answering. Rules, as the kubelet expects them:

- idempotent: a claim prepared before is answered from the checkpoint (its spec written again
  if it went missing) without reading the API; unpreparing an unknown claim succeeds;
- errors per claim: a claim that cannot be read, is not allocated, was replaced (another uid),
  or names a device of another node or one not published here gets an error in its own
  entry; the other claims of the call are prepared;
- one call at a time (the API reads happen before the lock);
- durable: the checkpoint is saved before the answer; if it cannot be saved the claims of
  that call fail and their new specs are removed, so nothing is half-prepared.

At start the checkpoint is loaded (a corrupt one raises
:class:`~device_plugin.dra.checkpoint.CheckpointError`) and claim spec files no checkpointed
claim owns (a crash between the spec and the checkpoint) are removed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from device_plugin.dra import claimspecs
from gpupack import dra_names as names
from device_plugin.dra.checkpoint import Checkpoint, PreparedClaim, PreparedDevice
from device_plugin.dra.slices import PublishedDevice

log = logging.getLogger("gpupack.dra.prepare")

#: (namespace, name) -> the ResourceClaim as JSON (``resource.k8s.io/v1``); raises when it cannot.
ClaimGetter = Callable[[str, str], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class ClaimRef:
    namespace: str
    uid: str
    name: str


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one claim's prepare came to: its devices, or why not."""

    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


class ClaimError(Exception):
    """This claim cannot be prepared; the message says why in an operator's words."""


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def allocated_devices(claim: Mapping[str, Any], ref: ClaimRef, pool: str,
                      published: Mapping[str, PublishedDevice]) -> list[tuple[Mapping[str, Any], PublishedDevice]]:
    """This driver's allocation results of a claim, each with the device it names; ClaimError
    when the claim is not the one asked for, not allocated, or names a device not on this node."""
    what = f"claim {ref.namespace}/{ref.name}"
    uid = _get(claim, "metadata", "uid")
    if uid != ref.uid:
        raise ClaimError(f"{what} got replaced: the API has uid {uid}, the kubelet asked for {ref.uid}")
    allocation = _get(claim, "status", "allocation")
    if not isinstance(allocation, Mapping):
        raise ClaimError(f"{what} is not allocated")
    results = _get(allocation, "devices", "results") or []
    if not isinstance(results, list):
        raise ClaimError(f"{what}: status.allocation.devices.results is not a list")
    out = []
    for r in results:
        if not isinstance(r, Mapping) or r.get("driver") != names.DRIVER:
            continue
        where = f"{r.get('pool')}/{r.get('device')}"
        if r.get("pool") != pool:
            raise ClaimError(f"{what} was allocated device {where}, which is not on this node (pool {pool})")
        device = published.get(str(r.get("device")))
        if device is None:
            raise ClaimError(f"{what} was allocated device {where}, which this node does not publish (any more)")
        out.append((r, device))
    return out


def _request_name(result: Mapping[str, Any]) -> str:
    # "<request>/<subrequest>" for a firstAvailable choice: the kubelet knows the request.
    return str(result.get("request", "")).split("/", 1)[0]


class Preparer:
    def __init__(
        self,
        pool: str,
        published: Callable[[], Mapping[str, PublishedDevice]],
        edits: claimspecs.Edits,
        get_claim: ClaimGetter,
        checkpoint: Checkpoint,
        specs: claimspecs.ClaimSpecs,
    ) -> None:
        self.pool = pool
        self.published = published
        self.edits = edits
        self.get_claim = get_claim
        self.checkpoint = checkpoint
        self.specs = specs
        self._lock = threading.Lock()
        self._claims: dict[str, PreparedClaim] = checkpoint.load()
        for uid in self.specs.claim_uids():
            if uid not in self._claims:
                log.info("removing the CDI spec of claim %s: no prepared claim owns it (left by a crash)", uid)
                self._remove_spec(uid)
        if self._claims:
            log.info("%d prepared claim(s) restored from %s", len(self._claims), checkpoint.path)

    def prepared(self) -> dict[str, PreparedClaim]:
        with self._lock:
            return dict(self._claims)

    # --- prepare ------------------------------------------------------------------------------

    def prepare(self, refs: Sequence[ClaimRef]) -> dict[str, Outcome]:
        fetched: dict[str, Mapping[str, Any] | Exception] = {}
        with self._lock:
            known = set(self._claims)
        for ref in refs:
            if ref.uid in known or ref.uid in fetched:
                continue
            try:
                fetched[ref.uid] = self.get_claim(ref.namespace, ref.name)
            except Exception as err:  # noqa: BLE001 - any failure is this claim's error
                fetched[ref.uid] = err
        out: dict[str, Outcome] = {}
        new: list[str] = []
        with self._lock:
            published = self.published()
            for ref in refs:
                if ref.uid in out:
                    continue
                try:
                    if ref.uid in self._claims:
                        out[ref.uid] = self._again(self._claims[ref.uid], published)
                        continue
                    got = fetched[ref.uid]
                    if isinstance(got, Exception):
                        raise ClaimError(f"cannot read claim {ref.namespace}/{ref.name}: {got}")
                    self._claims[ref.uid] = self._prepare_one(ref, got, published)
                    new.append(ref.uid)
                    out[ref.uid] = Outcome(self._claims[ref.uid].devices)
                except (ClaimError, OSError, ValueError) as err:
                    log.warning("prepare of claim %s/%s (%s) failed: %s", ref.namespace, ref.name, ref.uid, err)
                    out[ref.uid] = Outcome(error=str(err))
            if new:
                try:
                    self.checkpoint.save(self._claims)
                except OSError as err:
                    for uid in new:
                        del self._claims[uid]
                        self._remove_spec(uid)
                        out[uid] = Outcome(error=f"cannot save the checkpoint {self.checkpoint.path}: {err}")
        for uid in new:
            if not out[uid].error:
                log.info("prepared claim %s: %s", uid, ", ".join(d.device for d in out[uid].devices) or "no device of ours")
        return out

    def _prepare_one(self, ref: ClaimRef, claim: Mapping[str, Any], published: Mapping[str, PublishedDevice]) -> PreparedClaim:
        results = allocated_devices(claim, ref, self.pool, published)
        devices = []
        for result, device in results:
            share = result.get("shareID")
            devices.append(PreparedDevice(
                requests=(_request_name(result),),
                pool=self.pool,
                device=device.name,
                cdi_ids=(claimspecs.qualified_name(ref.uid, device.name),),
                share_id=str(share) if share else None,
            ))
        if results:
            self.specs.write(ref.uid, claimspecs.build(ref.uid, [d for _, d in results], self.edits))
        return PreparedClaim(ref.uid, ref.namespace, ref.name, tuple(devices))

    def _again(self, claim: PreparedClaim, published: Mapping[str, PublishedDevice]) -> Outcome:
        """A claim prepared before: the same answer; its spec written again if it went missing."""
        if claim.devices and not self.specs.exists(claim.uid):
            missing = [d.device for d in claim.devices if d.device not in published]
            if missing:
                raise ClaimError(
                    f"claim {claim.namespace}/{claim.name} was prepared, its CDI spec is gone and its devices "
                    f"{', '.join(missing)} are no longer published"
                )
            log.warning("the CDI spec of prepared claim %s went missing; writing it again", claim.uid)
            self.specs.write(claim.uid, claimspecs.build(claim.uid, [published[d.device] for d in claim.devices], self.edits))
        return Outcome(claim.devices)

    # --- unprepare ----------------------------------------------------------------------------

    def unprepare(self, refs: Sequence[ClaimRef]) -> dict[str, str]:
        """Claim uid -> error ("" when done; an unknown claim is done)."""
        out: dict[str, str] = {}
        with self._lock:
            removed: dict[str, PreparedClaim] = {}
            for ref in refs:
                try:
                    self.specs.remove(ref.uid)
                except OSError as err:
                    out[ref.uid] = f"cannot remove the CDI spec {self.specs.path(ref.uid)}: {err}"
                    continue
                out[ref.uid] = ""
                if ref.uid in self._claims:
                    removed[ref.uid] = self._claims.pop(ref.uid)
            if removed:
                try:
                    self.checkpoint.save(self._claims)
                except OSError as err:
                    self._claims.update(removed)  # asked again, the spec is already gone: idempotent
                    for uid in removed:
                        out[uid] = f"cannot save the checkpoint {self.checkpoint.path}: {err}"
                    return out
        for uid in removed:
            log.info("unprepared claim %s", uid)
        return out

    def _remove_spec(self, uid: str) -> None:
        try:
            self.specs.remove(uid)
        except OSError as err:
            log.warning("cannot remove %s: %s", self.specs.path(uid), err)
