"""The Kubernetes API edge of the device plugin: publish the node's inventory, watch its pods.

- :class:`NodePublisher` writes the ``gpupack.io/inventory`` annotation and the GPU labels
  onto this node with one merge patch, only when they changed, and retries a failed patch.
- :class:`PodClaims` lists and watches the pods bound to this node and turns their
  ``gpupack.io/devices`` annotations into :class:`~device_plugin.claims.PodClaim` s.
- :class:`AnnotationCorrector` corrects those annotations where the kubelet's PodResources
  API says a container holds other devices (the rules: :mod:`device_plugin.truth`).

All need only what the DaemonSet's RBAC grants: patch its own node, list and watch pods
(filtered to this node by field selector), patch the pods it watches (the annotation only). The API object is passed in (a
``kubernetes.client.CoreV1Api`` in production, a fake in tests).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grpc

from gpupack import contract

from device_plugin import truth, usage
from device_plugin.claims import PodClaim
from device_plugin.metrics import PluginMetrics

log = logging.getLogger("gpupack.kube")


def node_patch(inventory: contract.Inventory) -> dict[str, Any]:
    """The merge patch that publishes an inventory: the annotation plus the affinity labels."""
    return {
        "metadata": {
            "annotations": {contract.INVENTORY_ANNOTATION: contract.encode_inventory(inventory)},
            "labels": contract.inventory_labels(inventory),
        }
    }


class NodePublisher:
    def __init__(self, api: Any, node_name: str) -> None:
        self.api = api
        self.node_name = node_name
        self._published: dict[str, Any] | None = None
        self._wanted: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def publish(self, inventory: contract.Inventory) -> None:
        with self._lock:
            self._wanted = node_patch(inventory)
        self.flush()

    def flush(self) -> None:
        with self._lock:
            wanted = self._wanted
            if wanted is None or wanted == self._published:
                return
            try:
                self.api.patch_node(self.node_name, wanted)
            except Exception as err:  # the API server may be away; retried on the next flush
                log.warning("could not publish the GPU inventory on node %s (%s); will retry", self.node_name, _reason(err))
                return
            self._published = wanted
        labels = wanted["metadata"]["labels"]
        log.info(
            "published the GPU inventory on node %s (%s x %s)",
            self.node_name, labels.get(contract.LABEL_COUNT, "0"), labels.get(contract.LABEL_PRODUCT, "no GPU"),
        )


def _reason(err: Exception) -> str:
    status = getattr(err, "status", None)
    return f"HTTP {status}: {getattr(err, 'reason', '')}" if status else str(err)


def claims_of(pod: Mapping[str, Any], arrival: int = 0) -> list[PodClaim]:
    """The claims in one pod's ``gpupack.io/devices`` annotation (none when absent or bad)."""
    meta = pod.get("metadata") or {}
    text = (meta.get("annotations") or {}).get(contract.DEVICES_ANNOTATION)
    phase = (pod.get("status") or {}).get("phase")
    if not text or phase in ("Succeeded", "Failed"):
        return []
    try:
        assignment = contract.decode_assignment(text)
    except contract.ContractError as err:
        log.warning("ignoring pod %s/%s: %s", meta.get("namespace"), meta.get("name"), err)
        return []
    created = str(meta.get("creationTimestamp") or "")
    name = f"{meta.get('namespace')}/{meta.get('name')}"
    return [
        PodClaim(str(meta.get("uid")), name, container, resource, tuple(ids), created, arrival)
        for container, res in assignment.items()
        for resource, ids in res.items()
    ]


def annotated_of(pod: Mapping[str, Any]) -> truth.AnnotatedPod | None:
    """A live pod with a readable ``gpupack.io/devices`` annotation, as the corrector sees it."""
    meta = pod.get("metadata") or {}
    text = (meta.get("annotations") or {}).get(contract.DEVICES_ANNOTATION)
    if not text or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    try:
        assignment = contract.decode_assignment(text)
    except contract.ContractError:
        return None  # claims_of has said why
    return truth.AnnotatedPod(
        str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid")),
        str(meta.get("resourceVersion") or ""), assignment,
    )


def _running(pod: Mapping[str, Any] | None) -> bool:
    return pod is not None and (pod.get("status") or {}).get("phase") == "Running"


class PodClaims:
    """Claims of the pods bound to this node, kept current by list and watch."""

    def __init__(self, api: Any, node_name: str) -> None:
        self.api = api
        self.node_name = node_name
        self._pods: dict[str, list[PodClaim]] = {}
        self._annotated: dict[str, truth.AnnotatedPod] = {}
        self._running: set[str] = set()  # uids seen Running
        self._arrival: dict[str, int] = {}  # uid -> order first seen on this node
        self._lock = threading.Lock()
        self._stop = threading.Event()
        #: called (outside the lock) when a pod is first seen Running: its containers exist,
        #: so the kubelet's PodResources now lists its devices
        self.on_running: Callable[[], None] = lambda: None

    def __call__(self) -> list[PodClaim]:
        with self._lock:
            return [c for claims in self._pods.values() for c in claims]

    def annotated(self) -> list[truth.AnnotatedPod]:
        """The node's live pods with a readable devices annotation."""
        with self._lock:
            return list(self._annotated.values())

    def _keep(self, uid: str, pod: Mapping[str, Any]) -> bool:
        """Stores one pod (lock held); True when it is newly Running."""
        self._pods[uid] = claims_of(pod, self._arrive(uid))
        view = annotated_of(pod)
        if view is None:
            self._annotated.pop(uid, None)
        else:
            self._annotated[uid] = view
        if _running(pod) and uid not in self._running:
            self._running.add(uid)
            return True
        return False

    def apply(self, kind: str, pod: Mapping[str, Any]) -> None:
        """Applies one watch event (ADDED, MODIFIED, DELETED) of a pod given as JSON."""
        uid = str((pod.get("metadata") or {}).get("uid"))
        started = False
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(uid, None)
                self._annotated.pop(uid, None)
                self._running.discard(uid)
                self._arrival.pop(uid, None)
            else:
                started = self._keep(uid, pod)
        if started:
            self.on_running()

    def _arrive(self, uid: str) -> int:
        if uid not in self._arrival:
            self._arrival[uid] = max(self._arrival.values(), default=0) + 1
        return self._arrival[uid]

    def replace(self, pods: list[Mapping[str, Any]]) -> None:
        """A full list: pods not seen before arrive in resourceVersion order (the order of
        their last change, for a just-bound pod its binding)."""

        def version(p: Mapping[str, Any]) -> int:
            rv = str((p.get("metadata") or {}).get("resourceVersion") or "0")
            return int(rv) if rv.isdigit() else 0

        started = False
        with self._lock:
            uids = {str((p.get("metadata") or {}).get("uid")) for p in pods}
            self._arrival = {u: n for u, n in self._arrival.items() if u in uids}
            self._running &= uids
            self._pods = {}
            self._annotated = {}
            for p in sorted(pods, key=version):
                uid = str((p.get("metadata") or {}).get("uid"))
                started = self._keep(uid, p) or started
        if started:
            self.on_running()

    def refresh(self) -> None:
        """Lists the node's pods now: a GetPreferredAllocation can arrive before the watch has
        delivered the pod being admitted. Errors leave the watched state as it was."""
        try:
            resp = self.api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node_name}", _preload_content=False)
            self.replace(json.loads(resp.data).get("items") or [])
        except Exception as err:
            log.warning("could not list the pods on %s (%s); using the watched state", self.node_name, _reason(err))

    def run(self) -> None:
        """List, then watch from the list's resourceVersion; relist on 410 Gone or errors."""
        from kubernetes import watch

        selector = f"spec.nodeName={self.node_name}"
        backoff = 1.0
        while not self._stop.is_set():
            try:
                resp = self.api.list_pod_for_all_namespaces(field_selector=selector, _preload_content=False)
                body = json.loads(resp.data)
                self.replace(body.get("items") or [])
                version = body["metadata"]["resourceVersion"]
                backoff = 1.0
                w = watch.Watch()  # type: ignore[no-untyped-call]
                events = w.stream(  # type: ignore[no-untyped-call]
                    self.api.list_pod_for_all_namespaces, field_selector=selector, resource_version=version, timeout_seconds=300
                )
                for event in events:
                    if self._stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
                        break
                    raw = event.get("raw_object") or {}
                    if event.get("type") == "ERROR":
                        break  # typically 410 Gone: relist
                    self.apply(str(event.get("type")), raw)
            except Exception as err:
                log.warning("watching pods on %s failed (%s); retrying in %.0fs", self.node_name, _reason(err), backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def stop(self) -> None:
        self._stop.set()


class AnnotatedPods(Protocol):
    """Where the corrector reads the node's annotated pods (a :class:`PodClaims`)."""

    def annotated(self) -> list[truth.AnnotatedPod]: ...

    def apply(self, kind: str, pod: Mapping[str, Any]) -> None: ...

    def refresh(self) -> None: ...


ListHeld = Callable[[], truth.Held]

#: Seconds to wait after a trigger before comparing: a burst of Allocates is one pass.
SETTLE_S = 0.3
#: Patches of one pod before giving up until the next pass (each after a 409 and a fresh list).
ATTEMPTS = 3


class AnnotationCorrector:
    """Corrects ``gpupack.io/devices`` where the kubelet gave other devices than annotated.

    A pass lists what the kubelet holds (PodResources List), asks :func:`truth.corrections`
    what differs from the watched annotations, and merge-patches each such pod's annotation
    with the resourceVersion it read. On 409 Conflict it lists the node's pods again and
    decides that pod afresh, up to :data:`ATTEMPTS` times; a pod gone (404) is skipped; other
    errors wait for the next pass. Passes run after a :meth:`poke` (an Allocate, a pod newly
    Running), :data:`SETTLE_S` later, and every ``interval_s`` regardless (a kubelet that was
    away, a patch that failed)."""

    def __init__(
        self, api: Any, pods: AnnotatedPods, list_held: ListHeld, metrics: PluginMetrics, interval_s: float
    ) -> None:
        self.api = api
        self.pods = pods
        self.list_held = list_held
        self.metrics = metrics
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._kubelet_away = False

    @classmethod
    def from_socket(
        cls, api: Any, pods: AnnotatedPods, socket: str, metrics: PluginMetrics, interval_s: float
    ) -> AnnotationCorrector:
        return cls(api, pods, lambda: usage.list_held(socket), metrics, interval_s)

    def poke(self) -> None:
        """Asks for a pass soon (cheap; callable from any thread, e.g. right after Allocate)."""
        self._wake.set()

    def pass_once(self) -> int:
        """One comparison; returns how many pods were corrected."""
        try:
            held = self.list_held()
        except grpc.RpcError as err:
            if not self._kubelet_away:
                log.warning("the kubelet's PodResources API did not answer (%s): device annotations are not checked until it does", err.code())
            self._kubelet_away = True
            return 0
        if self._kubelet_away:
            log.info("the kubelet's PodResources API answers again; checking device annotations")
        self._kubelet_away = False
        return sum(self._correct(c, held) for c in truth.corrections(held, self.pods.annotated()))

    def _correct(self, correction: truth.Correction, held: truth.Held) -> bool:
        from kubernetes.client.exceptions import ApiException

        for _ in range(ATTEMPTS):
            try:
                resp = self.api.patch_namespaced_pod(
                    correction.name, correction.namespace, correction.patch(),
                    _content_type="application/merge-patch+json", _preload_content=False,
                )
            except ApiException as err:
                if err.status == 404:
                    return False  # deleted meanwhile: nothing to correct
                if err.status != 409:
                    self._failed(correction, err)
                    return False
                # changed since we read it: read the node's pods again and decide once more
                self.pods.refresh()
                fresh = [p for p in self.pods.annotated() if p.uid == correction.uid]
                again = truth.corrections(held, fresh)
                if not again:
                    return False
                correction = again[0]
                continue
            except Exception as err:  # the API server may be away; the next pass retries
                self._failed(correction, err)
                return False
            for change in correction.changes:
                log.info("%s", truth.describe(correction, change))
                self.metrics.annotation_corrections.labels(change.resource, change.kind).inc()
            with contextlib.suppress(Exception):  # a body that is not a pod: the watch brings it
                self.pods.apply("MODIFIED", json.loads(resp.data))  # our view is current at once
            return True
        self._failed(correction, RuntimeError(f"still conflicting after {ATTEMPTS} attempts"))
        return False

    def _failed(self, correction: truth.Correction, err: Exception) -> None:
        self.metrics.annotation_correction_failures.inc()
        log.warning(
            "pod %s/%s: could not correct its device annotation (%s); will retry",
            correction.namespace, correction.name, _reason(err),
        )

    def run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            if self._stop.is_set():
                break
            if self._wake.is_set():
                self._wake.clear()
                self._stop.wait(SETTLE_S)
            try:
                self.pass_once()
            except Exception:
                log.exception("checking device annotations failed; will try again")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

