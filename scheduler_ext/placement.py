"""Placement ahead of kube-scheduler (``--placement gate``): gpupack decides, kube-scheduler binds.

As an extender, gpupack is asked about every GPU pod over HTTP, and kube-scheduler turns its
own batching off for a profile with extenders: at 5,000 nodes a null extender alone halves its
pods per second (docs/extender.md). In gate mode kube-scheduler runs without an extender. A pod
is created with the scheduling gate :data:`~gpupack.contract.PLACEMENT_GATE` (the chart's
MutatingAdmissionPolicy gives it to every new pod of the gpupack scheduler, or its template
says so), and kube-scheduler leaves a gated pod alone. This controller sees those pods through the
extender's own watch (:class:`Tee`), and for each one, in queue order (priority, then age):

1. decides its node with the same kernel, policy and cache as filter and prioritize (the node
   they would rank first), and chooses its devices as bind would, reserving them in the cache;
2. claims the devices in the node's ledger (:mod:`scheduler_ext.ledger`), so two replicas
   never give one device twice; pods placed on one node together are claimed in one write;
3. patches the pod once (a JSON patch that first tests the gates are as read, so a pod is
   placed once whatever the number of replicas): the ``gpupack.io/devices`` annotation, ``gpupack.io/placed-on: <node>``, ``metadata.name In [node]`` added to every
   term of its required node affinity (the API allows narrowing a gated pod's affinity; its
   own terms stay), and the gate removed.

kube-scheduler then schedules the pod onto that node, its one feasible node, and binds it
itself; the node's device plugin gives the annotated devices. From the patch on, the cache
counts the pod on that node (:func:`scheduler_ext.podspec.placed_node`), whoever restarts.

Every pod of the gpupack scheduler is gated, those without GPUs too (scored as extender mode's
score-only entry scores them): pods that kube-scheduler placed meanwhile on their own could take
the CPU a pin counted on. A node is a candidate only where kube-scheduler's filters would let
the pod (taints, cordon, node selector and affinity: :mod:`scheduler_ext.nodefilter`) and its CPU
and memory fit. A pod with what gpupack does not evaluate (required inter-pod affinity, a hard
topology spread, a claimed volume, a host port, another extended resource) or with a request
it cannot read is ungated as it is at once, with the reason logged.

A pod that fits nowhere now stays gated and is tried again whenever the cache changes; after
``patience`` seconds it is handed to kube-scheduler as it is (the gate removed, nothing pinned),
so that preemption and the cluster autoscaler, which both ignore gated pods, see it. On a DRA node (GPUs in ResourceSlices) the pod is pinned and ungated, and
kube-scheduler's DRA plugin allocates its claims there.

The API is reached through :class:`PlacementApi` (one call) and the ledger's own interface, so
tests hand in fakes; the controller's clock and its waits are injectable.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from gpupack import contract, kernel
from scheduler_ext import nodefilter
from scheduler_ext.binder import Binder, Conflict
from scheduler_ext.cache import ClusterCache
from scheduler_ext.decide import Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.podspec import PodDemand, pod_demand
from scheduler_ext.wire import KubeObject

log = logging.getLogger("gpupack.placement")

#: Seconds a gated pod that fits nowhere waits for room before it is handed to kube-scheduler
#: as it is (preemption and the cluster autoscaler ignore gated pods).
PATIENCE_SECONDS = 30.0
#: Nodes tried, best first, before a pod counts as fitting nowhere for now (a node whose
#: devices were taken between the decision and the choice is passed over).
TRIES = 3
#: Gated pods kept at once as the watch delivered them (bounds the controller's memory whatever
#: is created); past it only their names are kept, and they are read again from the API as
#: room in the queue frees.
MAX_GATED = 20000
#: Names of gated pods kept past :data:`MAX_GATED`, at most (the oldest are forgotten: a later
#: event of theirs queues them again).
MAX_OVERFLOW = 200000
#: Pods placed between two ledger writes on one node, at most.
BATCH = 64
#: Seconds between two tries of a pod that fit nowhere (each after some change in the cache).
ROOM_RETRY_SECONDS = 1.0
#: Seconds an API failure for one pod waits before it is tried again (doubling, capped).
RETRY_SECONDS, RETRY_MAX_SECONDS = 0.5, 30.0


class PlacementApi(Protocol):
    def read_pod(self, namespace: str, name: str) -> KubeObject: ...

    def json_patch_pod(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        """A JSON patch (RFC 6902) of the pod; raises :class:`~scheduler_ext.binder.Conflict`
        when one of its ``test`` operations fails (the pod changed)."""


def gated(pod: KubeObject, gate: str = contract.PLACEMENT_GATE) -> bool:
    """Whether ``pod`` waits for gpupack: unbound, not being deleted, with ``gate`` among its
    scheduling gates."""
    meta, spec = pod.get("metadata"), pod.get("spec")
    if not isinstance(meta, dict) or not isinstance(spec, dict) or spec.get("nodeName") or meta.get("deletionTimestamp"):
        return False
    gates = spec.get("schedulingGates")
    return isinstance(gates, list) and any(isinstance(g, dict) and g.get("name") == gate for g in gates)


def _pointer(*keys: str) -> str:
    """A JSON pointer (RFC 6901) to ``keys``."""
    return "".join("/" + k.replace("~", "~0").replace("/", "~1") for k in keys)


def ungate_patch(pod: KubeObject, gate: str = contract.PLACEMENT_GATE) -> list[dict[str, Any]]:
    """The JSON patch (RFC 6902) that removes ``gate``, other gates kept, tested against the gates
    as read: it fails (HTTP 422) when they changed, so a pod is placed once, by one replica.
    Unlike a resourceVersion precondition it does not fail on kube-scheduler's own status
    updates of the gated pod."""
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    rest = [g for g in gates if not (isinstance(g, dict) and g.get("name") == gate)]
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/spec/schedulingGates", "value": gates}]
    ops.append({"op": "replace", "path": "/spec/schedulingGates", "value": rest} if rest
               else {"op": "remove", "path": "/spec/schedulingGates"})
    return ops


def pin_patch(pod: KubeObject, node: str, assignment: contract.Assignment | None,
              gate: str = contract.PLACEMENT_GATE) -> list[dict[str, Any]]:
    """:func:`ungate_patch` and, with it, the pin to ``node``: the devices (None: a DRA node,
    kube-scheduler allocates) and the placed-on annotation, and ``metadata.name In [node]``
    added to each term of its required node affinity (one term when it has none), tested
    against the affinity as read."""
    ops = ungate_patch(pod, gate)
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    annotations = {contract.PLACED_ANNOTATION: node}
    if assignment is not None:
        annotations[contract.DEVICES_ANNOTATION] = contract.encode_assignment(assignment)
    if isinstance(meta.get("annotations"), dict):
        ops += [{"op": "add", "path": _pointer("metadata", "annotations", k), "value": v} for k, v in annotations.items()]
    else:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": annotations})
    pin = {"key": "metadata.name", "operator": "In", "values": [node]}
    affinity = spec.get("affinity")
    node_affinity = affinity.get("nodeAffinity") if isinstance(affinity, dict) else None
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") if isinstance(node_affinity, dict) else None
    terms = [copy.deepcopy(t) for t in (required or {}).get("nodeSelectorTerms") or [] if isinstance(t, dict)]
    for term in terms:
        term["matchFields"] = [*(term.get("matchFields") or []), pin]
    wanted = {"nodeSelectorTerms": terms or [{"matchFields": [pin]}]}
    at = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution"
    if isinstance(required, dict):
        ops += [{"op": "test", "path": at, "value": required}, {"op": "replace", "path": at, "value": wanted}]
    elif isinstance(node_affinity, dict):
        ops.append({"op": "add", "path": at, "value": wanted})
    elif isinstance(affinity, dict):
        ops.append({"op": "add", "path": "/spec/affinity/nodeAffinity",
                    "value": {"requiredDuringSchedulingIgnoredDuringExecution": wanted}})
    else:
        ops.append({"op": "add", "path": "/spec/affinity",
                    "value": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": wanted}}})
    return ops


@dataclasses.dataclass
class _Waiting:
    """A gated pod as last seen, and when it may be tried next."""

    pod: KubeObject
    first_seen: float
    not_before: float = 0.0  # clock time; 0: at once
    tried_at_generation: int = -1  # the cache's generation when it last fitted nowhere
    failures: int = 0  # API failures in a row


@dataclasses.dataclass(frozen=True)
class _Placed:
    """One pod's decision, reserved in the cache, not yet claimed or written."""

    pod: KubeObject
    demand: PodDemand
    node: str
    assignment: contract.Assignment  # the devices reserved in the cache
    dra: bool = False  # a DRA node: kube-scheduler allocates the claims; nothing annotated or claimed here


@dataclasses.dataclass
class Stats:
    """What the controller did, by outcome (for logs, metrics and tests)."""

    placed: int = 0  # pinned to a node and ungated
    handed_over: int = 0  # ungated as they were: no GPU, unreadable, or no room within the patience
    waiting: int = 0  # tries that found no room (the pod stays gated)
    conflicts: int = 0  # the pod changed under the patch: tried again from its next event
    errors: int = 0  # API failures: tried again after a backoff


class PlacementController:
    """Places gated pods (the module's doc). :meth:`observe` and :meth:`replace` take the watch's
    pods; :meth:`run` places them until ``stop``; :meth:`place_ready` is one pass (tests call it)."""

    def __init__(self, cache: ClusterCache, decider: Decider, binder: Binder, api: PlacementApi,
                 patience: float = PATIENCE_SECONDS, gate: str = contract.PLACEMENT_GATE,
                 clock: Callable[[], float] = time.monotonic, metrics: Metrics | None = None) -> None:
        self.cache = cache
        self.decider = decider
        self.binder = binder  # its device choice and ledger claims
        self.api = api
        self.patience = patience
        self.gate = gate
        self.clock = clock
        self.stats = Stats()
        self.metrics = metrics
        self._waiting: dict[str, _Waiting] = {}
        self._warmed: list[str] | None = None  # the node names :meth:`warm` last prepared
        self._cond = threading.Condition()
        # gated pods past MAX_GATED: uid -> (namespace, name), read again as the queue empties
        self._overflow: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        # pods this controller ungated, until the watch shows them so: an event of the gated
        # version that comes after the patch is stale and must not place the pod again
        self._ungated: collections.OrderedDict[str, None] = collections.OrderedDict()

    # --- the watch's side -------------------------------------------------------------------

    def observe(self, pod: KubeObject, deleted: bool = False) -> None:
        """One pod event: a gated pod is queued (or its newer version kept), any other forgotten."""
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        if not uid:
            return
        with self._cond:
            if deleted or not gated(pod, self.gate):
                self._waiting.pop(uid, None)
                self._ungated.pop(uid, None)
                self._overflow.pop(uid, None)
                return
            if uid in self._ungated:
                return  # the version before our own patch
            old = self._waiting.get(uid)
            if old is not None:  # a newer version: decided afresh (after any backoff it is in)
                old.pod, old.tried_at_generation = pod, -1
                if not old.failures:
                    old.not_before = 0.0
            elif len(self._waiting) >= MAX_GATED:
                meta = pod.get("metadata") or {}
                if not self._overflow:
                    log.warning("%d gated pods wait already (the most kept whole); more are read again from the "
                                "API as these are placed", MAX_GATED)
                self._overflow[uid] = (str(meta.get("namespace", "")), str(meta.get("name", "")))
                while len(self._overflow) > MAX_OVERFLOW:
                    self._overflow.popitem(last=False)
                return
            else:
                self._waiting[uid] = _Waiting(pod, self.clock())
            self._cond.notify()

    def replace(self, pods: Iterable[KubeObject]) -> None:
        """A full list of pods: the gated ones become exactly those listed."""
        listed = {str((p.get("metadata") or {}).get("uid", "")): p for p in pods if gated(p, self.gate)}
        with self._cond:
            for uid in list(self._waiting):
                if uid not in listed:
                    del self._waiting[uid]
        for pod in listed.values():
            self.observe(pod)

    def changed(self) -> None:
        """Something in the cache changed (room may have freed): wake the waiting pods."""
        with self._cond:
            self._cond.notify()

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    # --- placing ----------------------------------------------------------------------------

    def run(self, stop: threading.Event, idle: float = 1.0) -> None:
        """Places gated pods until ``stop``: a pass whenever one is due (new, changed, or
        waiting for room that may have freed), looking again at least every ``idle`` seconds
        (patience and backoffs run out by the clock)."""
        while not stop.is_set():
            try:
                if self.cache.synced:
                    self.warm()
                with self._cond:
                    if not self.cache.synced or not self._due():
                        self._cond.wait(idle)
                        continue
                self.place_ready()
            except Exception:  # one bad pass must not stop placement for good
                log.exception("placement pass failed; trying again")

    def warm(self) -> None:
        """Once per set of nodes, before the next pass: the kept copy of every node's row, its
        per-node sums and numbered row states (:meth:`ClusterCache.warm`), which the first
        decision would otherwise work out (at 5,000 nodes, most of its time)."""
        names = self.cache.node_names()
        if names and names is not self._warmed and self.cache.warm(names):
            self._warmed = names

    def _due_now(self) -> list[_Waiting]:
        """The gated pods to try now: past any backoff, and new, changed, or waiting for room
        while the cache changed (or out of patience). Under the condition's lock."""
        now, generation = self.clock(), self.cache.generation
        return [w for w in self._waiting.values() if w.not_before <= now and
                (w.tried_at_generation != generation or now - w.first_seen >= self.patience)]

    def _due(self) -> bool:
        return bool(self._due_now())

    def place_ready(self) -> Stats:
        """One pass: every gated pod that is due, in queue order (higher priority first, then
        older), decided one after another against the devices the earlier ones were given;
        then their claims (one ledger write per node) and patches."""
        self._refill()
        with self._cond:
            due = self._due_now()
        now, generation = self.clock(), self.cache.generation
        due.sort(key=_queue_order)
        placed: list[_Placed] = []
        names = self.cache.node_names()
        demands = [self.cache.resolve_claims(pod_demand(w.pod)) for w in due]
        for w, demand in zip(due, demands):  # the pass's shapes first: one mix scores the whole pass
            if not nodefilter.unsupported(w.pod.get("spec") or {}):
                self.decider.record_shape(demand)
        for w, demand in zip(due, demands):
            started, cpu = time.perf_counter(), time.thread_time()
            outcome = self._decide(w, demand, names, now, generation)
            if self.metrics is not None:
                self.metrics.placement_seconds.observe(time.perf_counter() - started)
                self.metrics.placement_cpu_seconds.observe(time.thread_time() - cpu)
            if isinstance(outcome, _Placed):
                placed.append(outcome)
                if len(placed) >= BATCH:
                    self._write(placed)
                    placed = []
        self._write(placed)
        return self.stats

    def _refill(self) -> None:
        """Reads gated pods kept by name only (past :data:`MAX_GATED`) into the queue as it has room."""
        with self._cond:
            room = MAX_GATED - len(self._waiting)
            take = [self._overflow.popitem(last=False) for _ in range(min(room, len(self._overflow)))]
        for _, (namespace, name) in take:
            try:
                self.observe(self.api.read_pod(namespace, name))
            except Exception as err:  # gone meanwhile, or the API failed: its next event queues it
                log.debug("gated pod %s/%s not read again: %s", namespace, name, err)

    def _decide(self, w: _Waiting, demand: PodDemand, names: list[str], now: float, generation: int) -> _Placed | None:
        """``demand``: the pod's, with its claims resolved."""
        pod = w.pod
        spec = pod.get("spec") or {}
        where = f"{demand.namespace}/{demand.name}"
        why = f"its request cannot be read ({demand.error})" if demand.error else ""
        if not why and nodefilter.unsupported(spec):
            why = f"it uses {nodefilter.unsupported(spec)}, which gate mode leaves to kube-scheduler"
        if why:
            self._hand_over(w, f"pod {where}: {why}; handed to kube-scheduler as it is")
            return None
        # raw scores only: the order of the levels is worked out from them (kernel.best_first)
        decision = self.decider.decide(demand, names, score=True, reasons=False, levels=False)
        # kube-scheduler will see one node only: it must pass its filters and hold the CPU and memory
        ok = decision.fits & self.cache.eligible(nodefilter.pod_constraints(spec), names, demand.cpu_milli,
                                                 demand.node_memory_mib)
        if ok.any():
            raw = decision.raw if decision.lead_raw is None else decision.lead_raw  # -inf on unknown nodes
            # the node the levels name first (alone at 10 for a packing policy), then raw score;
            # ``names`` are the cache's, in name order
            named = kernel.lead_node(raw, decision.fits, names, in_name_order=True, prefer=decision.keeps) \
                if self.decider.names_one(demand) else -1
            for i in kernel.best_first(raw, ok, named, TRIES):
                node = names[i]
                # reserved in the cache either way, so the pods after it see the devices taken
                if not demand.wants_gpu:
                    self.cache.reserve(demand, node, {})
                    return _Placed(pod, demand, node, {})
                assignment = self.cache.assign(demand, node, self.decider.policy)
                if assignment is not None:
                    return _Placed(pod, demand, node, assignment, dra=self.cache.is_dra_node(node))
        if now - w.first_seen >= self.patience:
            self._hand_over(w, f"pod {where}: no node has room for it after {self.patience:.0f}s; handed to "
                               "kube-scheduler as it is, so preemption and the cluster autoscaler see it")
            return None
        self._count("waiting")
        w.not_before = now + ROOM_RETRY_SECONDS
        if w.tried_at_generation < 0:
            log.info("pod %s waits gated: no node has room for it now (tried again as pods end, for up to %.0fs)",
                     where, self.patience)
        w.tried_at_generation = generation
        return None

    def _hand_over(self, w: _Waiting, message: str) -> None:
        meta = w.pod.get("metadata") or {}
        try:
            self.api.json_patch_pod(str(meta.get("namespace", "")), str(meta.get("name", "")), ungate_patch(w.pod, self.gate))
        except Conflict:
            self._count("conflicts")
            self._forget(w.pod)  # its next event queues it again
            return
        except Exception as err:
            self._failed(w.pod, f"removing the gate: {err}")
            return
        self._count("handed_over")
        log.info("%s", message)
        self._done(w.pod)

    def _write(self, placed: list[_Placed]) -> None:
        """Claims the batch's devices (one ledger write per node), then patches each pod."""
        by_node: dict[str, list[_Placed]] = collections.defaultdict(list)
        for p in placed:
            by_node[p.node].append(p)
        for node, group in by_node.items():
            claimable = [p for p in group if not p.dra and p.assignment]
            if claimable and not self._claim(node, claimable):
                continue
            for p in group:
                self._patch(p)

    def _claim(self, node: str, group: list[_Placed]) -> bool:
        wanted = {p.demand.uid: (f"{p.demand.namespace}/{p.demand.name}", p.assignment, p.demand.memory_mib)
                  for p in group}
        outcome = self.binder.ledger.claim_all(node, wanted,
                                               superseded=lambda uid, claim: self.binder.superseded(uid, node, claim),
                                               any_replica=False)
        if outcome.ok:
            return True
        for p in group:
            self.cache.release(p.demand.uid)
        if outcome.error:
            for p in group:
                self._failed(p.pod, outcome.error)
            return False
        for uid, claim in outcome.taken.items():  # another replica was first: count its claim, decide again
            log.info("devices on %s are claimed by %s (replica %s); placing %d pods again", node, claim.pod,
                     claim.replica or "?", len(group))
            self.binder.count_claim(uid, node, claim)
        return False

    def _patch(self, p: _Placed) -> None:
        where = f"{p.demand.namespace}/{p.demand.name}"
        try:
            self.api.json_patch_pod(p.demand.namespace, p.demand.name, pin_patch(p.pod, p.node, p.assignment if p.assignment and not p.dra else None, self.gate))
        except Conflict:
            self._unclaim(p)
            self._count("conflicts")
            self._forget(p.pod)  # changed meanwhile (or placed by another replica): its next event says
            return
        except Exception as err:
            self._unclaim(p)
            self._failed(p.pod, f"pinning it to {p.node}: {err}")
            return
        self._count("placed")
        devices = "; ".join(f"{c}: {', '.join(i for ids in per.values() for i in ids)}"
                            for c, per in sorted(p.assignment.items()))
        log.info("placed pod %s on %s (%s); kube-scheduler binds it there", where, p.node,
                 "claims allocated there by kube-scheduler's DRA plugin" if p.dra else devices or "no GPU")
        self._done(p.pod)

    def _unclaim(self, p: _Placed) -> None:
        if p.dra or not p.assignment:
            self.cache.release(p.demand.uid)
        else:
            self.binder.unclaim(p.demand.uid, p.node)

    def _count(self, outcome: str) -> None:
        setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        if self.metrics is not None:
            self.metrics.placements.labels(_OUTCOME_LABELS[outcome]).inc()

    def _done(self, pod: KubeObject) -> None:
        """The pod was ungated by this controller: forgotten, and its older versions ignored."""
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        with self._cond:
            self._waiting.pop(uid, None)
            self._ungated[uid] = None
            while len(self._ungated) > MAX_GATED:
                self._ungated.popitem(last=False)

    def _forget(self, pod: KubeObject) -> None:
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        with self._cond:
            w = self._waiting.get(uid)
            if w is not None and w.pod is pod:  # a newer version that arrived meanwhile stays queued
                del self._waiting[uid]

    def _failed(self, pod: KubeObject, error: str) -> None:
        meta = pod.get("metadata") or {}
        self._count("errors")
        with self._cond:
            w = self._waiting.get(str(meta.get("uid", "")))
            if w is None:
                return
            w.failures += 1
            wait = min(RETRY_SECONDS * 2 ** (w.failures - 1), RETRY_MAX_SECONDS)
            w.not_before = self.clock() + wait
        log.warning("pod %s/%s: %s; trying again in %.1fs", meta.get("namespace"), meta.get("name"), error, wait)


_OUTCOME_LABELS = {"placed": "placed", "handed_over": "handed-over", "waiting": "waiting", "conflicts": "conflict",
                   "errors": "error"}


def _queue_order(w: _Waiting) -> tuple[int, str, str]:
    """kube-scheduler's queue order: higher priority first, then the older pod, then by name."""
    meta, spec = w.pod.get("metadata") or {}, w.pod.get("spec") or {}
    priority = spec.get("priority")
    return (-(priority if isinstance(priority, int) else 0), str(meta.get("creationTimestamp", "")),
            f"{meta.get('namespace', '')}/{meta.get('name', '')}")


class Tee:
    """The watch's sink in gate mode: everything goes to the cache, pods also to the controller,
    which is woken by every change (room may have freed). Same methods as the cache's."""

    def __init__(self, cache: ClusterCache, controller: PlacementController) -> None:
        self.cache = cache
        self.controller = controller

    def apply_event(self, event: Mapping[str, Any], kind: str = "") -> None:
        self.cache.apply_event(event, kind)
        obj = event.get("object")
        if isinstance(obj, dict) and (kind or obj.get("kind")) == "Pod":
            self.controller.observe(obj, deleted=event.get("type") == "DELETED")
        else:
            self.controller.changed()

    def replace_nodes(self, nodes: Iterable[KubeObject]) -> None:
        self.cache.replace_nodes(nodes)
        self.controller.changed()

    def replace_pods(self, pods: Iterable[KubeObject]) -> None:
        """The cache reads the list once (it may come page by page); the gated pods in it are
        kept aside for the controller meanwhile, the others are not held."""
        held: list[KubeObject] = []

        def passing() -> Iterator[KubeObject]:
            for pod in pods:
                if gated(pod, self.controller.gate):
                    held.append(pod)
                yield pod

        self.cache.replace_pods(passing())
        self.controller.replace(held)

    def replace_kind(self, kind: str, items: Iterable[KubeObject]) -> None:
        self.cache.replace_kind(kind, items)
        self.controller.changed()
