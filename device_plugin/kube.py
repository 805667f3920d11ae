"""The Kubernetes API edge of the device plugin: publish the node's inventory, watch its pods.

- :class:`NodePublisher` writes the ``gpupack.io/inventory`` annotation and the GPU labels
  onto this node with one merge patch, only when they changed, and retries a failed patch.
- :class:`PodClaims` lists and watches the pods bound to this node and turns their
  ``gpupack.io/devices`` annotations into :class:`~device_plugin.claims.PodClaim` s.

Both need only what the DaemonSet's RBAC grants: patch its own node, list and watch pods
(filtered to this node by field selector). The API object is passed in (a
``kubernetes.client.CoreV1Api`` in production, a fake in tests).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

from gpupack import contract

from device_plugin.claims import PodClaim

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


class PodClaims:
    """Claims of the pods bound to this node, kept current by list and watch."""

    def __init__(self, api: Any, node_name: str) -> None:
        self.api = api
        self.node_name = node_name
        self._pods: dict[str, list[PodClaim]] = {}
        self._arrival: dict[str, int] = {}  # uid -> order first seen on this node
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def __call__(self) -> list[PodClaim]:
        with self._lock:
            return [c for claims in self._pods.values() for c in claims]

    def apply(self, kind: str, pod: Mapping[str, Any]) -> None:
        """Applies one watch event (ADDED, MODIFIED, DELETED) of a pod given as JSON."""
        uid = str((pod.get("metadata") or {}).get("uid"))
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(uid, None)
                self._arrival.pop(uid, None)
            else:
                self._pods[uid] = claims_of(pod, self._arrive(uid))

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

        with self._lock:
            uids = {str((p.get("metadata") or {}).get("uid")) for p in pods}
            self._arrival = {u: n for u, n in self._arrival.items() if u in uids}
            self._pods = {}
            for p in sorted(pods, key=version):
                uid = str((p.get("metadata") or {}).get("uid"))
                self._pods[uid] = claims_of(p, self._arrive(uid))

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
