"""One truth for device assignments across extender replicas: a compare-and-swap per node.

Each replica keeps its own cache, and a cache cannot see what another replica chose a moment
ago: two binds through two replicas could give one device to two pods. So every bind of a
GPU pod first *claims* its devices in the node's ledger, a ConfigMap
``gpupack-node-<node>`` in the extender's namespace (created on the node's first bind),
written with the ConfigMap's resourceVersion as precondition. Of two replicas that read the
same version, one write wins and the other gets a conflict, re-reads, and sees the winner's
claim: a device already claimed by another live pod is never claimed twice, whatever the
number of extender or kube-scheduler replicas.

A claim lives :data:`CLAIM_SECONDS`: long enough for the pod's own ``gpupack.io/devices``
annotation, which every replica's watch sees, to have become the truth; older claims are
dropped on the node's next write. A bind that fails removes its claim; a replica killed
mid-bind leaves one that blocks its devices for at most :data:`CLAIM_SECONDS` (the pod itself,
retried by kube-scheduler through another replica, may reuse its own claim at once).

A claim is *superseded* once the claiming replica's watch shows the pod bound with devices
other than the claimed ones: the kubelet gave it others, and the node's device plugin wrote
those into the annotation. The claim then protects devices the pod does not hold (and not
the ones it does), so it is dropped on that write instead of blocking them for the rest of
its life.

The Kubernetes API is reached through :class:`LedgerApi` (three calls), so tests hand in a
fake and :class:`KubeLedgerApi` is the only code that talks to the real client.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gpupack import contract

#: Seconds a claim counts after it was written (the pod's annotation is the truth by then).
CLAIM_SECONDS = 120.0
#: How often a claim is written again after a conflict (another replica wrote the node's
#: ledger between our read and our write) before the bind is reported failed.
WRITE_RETRIES = 8
#: Ledgers whose last write this replica remembers (:meth:`Ledger.claim` writes on it without a
#: read first); the oldest is forgotten past this many.
KNOWN_LEDGERS = 4096
#: The ledger ConfigMap of a node is this prefix and the node's name.
PREFIX = "gpupack-node-"
#: Kubernetes object names are DNS subdomains of at most 253 characters.
NAME_LIMIT = 253
_NAME_OK = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class Conflict(Exception):
    """The ledger changed since it was read (HTTP 409), or it was created meanwhile."""


class LedgerApi(Protocol):
    def read(self, name: str) -> tuple[dict[str, str], str] | None:
        """The ConfigMap's data and resourceVersion; None when it does not exist."""

    def create(self, name: str, data: dict[str, str]) -> str | None:
        """Creates it and returns its resourceVersion (None: not known); raises
        :class:`Conflict` when it exists already."""

    def replace(self, name: str, data: dict[str, str], resource_version: str) -> str | None:
        """Replaces its data with ``resource_version`` as precondition and returns the new
        resourceVersion (None: not known); raises :class:`Conflict`."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """What one pod's bind claimed on a node."""

    pod: str  # namespace/name, for operators reading the ConfigMap
    devices: contract.Assignment
    memory_mib: int  # the pod's per-unit memory hint, so other replicas count it alike
    at: float  # seconds since the epoch when it was written
    replica: str  # which extender replica wrote it

    def ids(self) -> set[str]:
        return {d for per in self.devices.values() for ids in per.values() for d in ids}

    def encode(self) -> str:
        return json.dumps({"pod": self.pod, "devices": self.devices, "memoryMiB": self.memory_mib,
                           "at": round(self.at, 3), "replica": self.replica}, sort_keys=True, separators=(",", ":"))

    @staticmethod
    def decode(text: str) -> Claim | None:
        """The claim, or None for a value this version cannot read (it then counts as gone
        only once its ConfigMap entry is rewritten by a newer replica)."""
        try:
            raw = json.loads(text)
            devices = raw["devices"]
            if not isinstance(devices, dict) or not all(
                isinstance(per, dict) and all(isinstance(ids, list) and all(isinstance(i, str) for i in ids)
                                              for ids in per.values()) for per in devices.values()):
                return None
            return Claim(str(raw["pod"]), devices, int(raw.get("memoryMiB", 0)), float(raw["at"]), str(raw.get("replica", "")))
        except (ValueError, KeyError, TypeError):
            return None


def ledger_name(node: str) -> str:
    """The ConfigMap name for ``node``: the prefix and the name, or a hash where that is too
    long or not a valid object name."""
    name = PREFIX + node
    if len(name) <= NAME_LIMIT and _NAME_OK.match(name):
        return name
    return PREFIX + hashlib.sha256(node.encode()).hexdigest()[:40]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The result of :meth:`Ledger.claim`: ``ok``, or the live claims of other pods that hold
    some of the devices asked for (``taken``), or an ``error`` (the API failed)."""

    ok: bool
    taken: Mapping[str, Claim] = dataclasses.field(default_factory=dict)
    error: str = ""


class Ledger:
    """Claims and releases devices in the per-node ledgers through a :class:`LedgerApi`."""

    def __init__(self, api: LedgerApi, replica: str, clock: Callable[[], float] = time.time,
                 claim_seconds: float = CLAIM_SECONDS) -> None:
        self.api = api
        self.replica = replica
        self.clock = clock  # wall clock: claims are compared across processes
        self.claim_seconds = claim_seconds
        # What this replica last wrote to each ledger, with its resourceVersion: the next claim
        # on that node (a burst goes to one node after another) writes on it without reading
        # first. It is only a guess: a write on a stale version gets 409 and reads again, and a
        # claim it shows in the way is read again before it counts (KNOWN_LEDGERS bounds it).
        self._known: dict[str, tuple[dict[str, str], str]] = {}

    def _live(self, data: Mapping[str, str], now: float) -> dict[str, Claim]:
        out: dict[str, Claim] = {}
        for uid, text in data.items():
            claim = Claim.decode(text)
            if claim is not None and now - claim.at < self.claim_seconds:
                out[uid] = claim
        return out

    def claim(self, node: str, uid: str, pod: str, devices: contract.Assignment, memory_mib: int,
              superseded: Callable[[str, Claim], bool] = lambda uid, claim: False) -> Outcome:
        """Claims ``devices`` for pod ``uid`` on ``node``: ok when none of them is claimed by
        another live pod and the write won; otherwise the claims that hold them. Claims for
        which ``superseded(uid, claim)`` is true (see the module's doc) neither hold devices nor
        are written back."""
        return self.claim_all(node, {uid: (pod, devices, memory_mib)}, superseded)

    def claim_all(self, node: str, wanted: Mapping[str, tuple[str, contract.Assignment, int]],
                  superseded: Callable[[str, Claim], bool] = lambda uid, claim: False,
                  any_replica: bool = True) -> Outcome:
        """:meth:`claim` for several pods on one node in one write (``wanted``: uid -> (pod,
        devices, memory hint)), all or none: ok, or the other claims that hold some of the
        devices (``taken``). The pods must not ask for one device twice among themselves (the
        caller chose them together, from one cache). A pod's own earlier claim is replaced
        when this replica wrote it, or with ``any_replica`` when any did (a bind kube-scheduler
        retries through another replica); without it another replica's claim for the same pod
        holds its devices like any other (gate mode, where replicas place the same pod at once
        and only one patch wins)."""
        name = ledger_name(node)
        at = self.clock()
        mine = {uid: Claim(pod, devices, memory, at, self.replica) for uid, (pod, devices, memory) in wanted.items()}
        ids = {d for c in mine.values() for d in c.ids()}
        guess = self._known.pop(name, None)
        for _ in range(WRITE_RETRIES + (guess is not None)):
            try:
                found, guessed = (guess, True) if guess is not None else (self.api.read(name), False)
                guess = None
                now = self.clock()
                live = self._live(found[0] if found else {}, now)
                for uid in mine:  # these pods' own earlier claims (a retried bind) are replaced
                    if uid in live and (any_replica or live[uid].replica == self.replica):
                        del live[uid]
                live = {u: c for u, c in live.items() if not superseded(u, c)}
                taken = {u: c for u, c in live.items() if c.ids() & ids}
                if taken:
                    if guessed:
                        continue  # the guess may be old: only what the API says now counts
                    return Outcome(False, taken)
                data = {u: c.encode() for u, c in live.items()}
                data.update({uid: dataclasses.replace(c, at=now).encode() for uid, c in mine.items()})
                version = self.api.create(name, data) if found is None else self.api.replace(name, data, found[1])
                if version is not None:
                    self._remember(name, data, version)
                return Outcome(True)
            except Conflict:
                continue  # someone wrote in between (or the guess was old): read again
            except Exception as err:  # the API's errors are many; the scheduler needs the text
                return Outcome(False, error=f"gpupack: claiming devices on {node} in ConfigMap {name}: {err}")
        return Outcome(False, error=f"gpupack: the device ledger of {node} kept changing; gave up after {WRITE_RETRIES} tries")

    def release(self, node: str, uid: str) -> None:
        """Removes pod ``uid``'s claim (a bind that failed after claiming). Best effort: a
        claim left behind expires after :attr:`claim_seconds`."""
        name = ledger_name(node)
        self._known.pop(name, None)
        for _ in range(WRITE_RETRIES):
            try:
                found = self.api.read(name)
                if found is None or uid not in found[0]:
                    return
                data = {u: c.encode() for u, c in self._live(found[0], self.clock()).items() if u != uid}
                version = self.api.replace(name, data, found[1])
                if version is not None:
                    self._remember(name, data, version)
                return
            except Conflict:
                continue
            except Exception:
                return


    def _remember(self, name: str, data: dict[str, str], version: str) -> None:
        self._known.pop(name, None)
        self._known[name] = (data, version)
        while len(self._known) > KNOWN_LEDGERS:
            self._known.pop(next(iter(self._known)))


class NoLedger:
    """A ledger for a single replica (``--ledger off``, or serving a snapshot): every claim
    succeeds, nothing is written."""

    def claim(self, node: str, uid: str, pod: str, devices: contract.Assignment, memory_mib: int,
              superseded: Callable[[str, Claim], bool] = lambda uid, claim: False) -> Outcome:
        return Outcome(True)

    def claim_all(self, node: str, wanted: Mapping[str, tuple[str, contract.Assignment, int]],
                  superseded: Callable[[str, Claim], bool] = lambda uid, claim: False,
                  any_replica: bool = True) -> Outcome:
        return Outcome(True)

    def release(self, node: str, uid: str) -> None:
        return None


class KubeLedgerApi:
    """:class:`LedgerApi` over the official kubernetes client's ``CoreV1Api``, in one namespace.
    Responses are read and released, so connections go back to the pool."""

    def __init__(self, core_v1: Any, namespace: str) -> None:
        self.core = core_v1
        self.namespace = namespace

    def read(self, name: str) -> tuple[dict[str, str], str] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.core.read_namespaced_config_map(name, self.namespace, _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        obj = json.loads(finish(resp))
        data = obj.get("data") or {}
        return {str(k): str(v) for k, v in data.items()}, str(obj["metadata"]["resourceVersion"])

    def create(self, name: str, data: dict[str, str]) -> str | None:
        from kubernetes.client.exceptions import ApiException

        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/part-of": "gpupack", "gpupack.io/ledger": "node"}},
                "data": data}
        try:
            return _version(finish(self.core.create_namespaced_config_map(self.namespace, body, _preload_content=False)))
        except ApiException as err:
            if err.status == 409:
                raise Conflict(str(err.reason)) from err
            raise

    def replace(self, name: str, data: dict[str, str], resource_version: str) -> str | None:
        from kubernetes.client.exceptions import ApiException

        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": self.namespace, "resourceVersion": resource_version,
                             "labels": {"app.kubernetes.io/part-of": "gpupack", "gpupack.io/ledger": "node"}},
                "data": data}
        try:
            return _version(finish(self.core.replace_namespaced_config_map(name, self.namespace, body,
                                                                        _preload_content=False)))
        except ApiException as err:
            if err.status == 409:
                raise Conflict(str(err.reason)) from err
            raise


def finish(resp: Any) -> bytes:
    """Reads an unparsed answer (``_preload_content=False``) to its end, which gives its
    connection back to the client's pool, and returns the body. Released unread, a connection
    goes back with the body still in it: the pool then drops it (a new TLS handshake for the
    next call) or, where the body was already buffered, reuses it out of step."""
    data: bytes = resp.data  # urllib3 reads to the end and releases the connection
    return data


def _version(body: bytes) -> str | None:
    """The resourceVersion of a written object, from the API server's answer."""
    try:
        version = (json.loads(body).get("metadata") or {}).get("resourceVersion")
    except (ValueError, AttributeError):
        return None
    return str(version) if version else None
