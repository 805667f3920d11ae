"""Bind: choose the devices, claim them, write the pod's ``gpupack.io/devices`` annotation,
create the Binding. On a DRA node (its GPUs published as ResourceSlices) the Binding alone:
kube-scheduler's DRA plugin has allocated the pod's claims by then (:meth:`Binder._bind_dra`).

The Kubernetes API is reached through :class:`PodApi`, a three-method interface, so tests
hand in a fake and :class:`KubePodApi` is the only code that talks to the real client. The
devices are reserved in the cache before any API call, under the cache's lock, so two racing
binds through one replica never get the same device; they are then claimed in the node's
ledger (:mod:`scheduler_ext.ledger`), so two binds through two replicas never do either: a
device another replica claimed is counted in this replica's cache and the choice is made
again. The annotation patch carries the pod's resourceVersion as a precondition and a
conflict is retried with a fresh read, never overwritten blindly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gpupack import contract
from gpupack.kernel import Policy
from scheduler_ext import ledger as ledger_mod
from scheduler_ext.cache import ClusterCache
from scheduler_ext.podspec import ContainerAsk, PodDemand, pod_demand
from scheduler_ext.wire import ExtenderBindingArgs, KubeObject

log = logging.getLogger("gpupack.binder")


class Conflict(Exception):
    """The object changed since it was read (HTTP 409)."""


class PodApi(Protocol):
    def read_pod(self, namespace: str, name: str) -> KubeObject: ...

    def patch_pod_annotations(
        self, namespace: str, name: str, resource_version: str, annotations: dict[str, str]
    ) -> None:
        """Merge-patches annotations with ``resource_version`` as precondition; raises
        :class:`Conflict` when the pod changed."""

    def create_binding(self, namespace: str, name: str, uid: str, node: str) -> None: ...


#: How often an annotation patch is retried after a conflict before the bind is reported failed.
PATCH_RETRIES = 3
#: How often the devices are chosen again after another replica claimed some of them first.
CLAIM_ROUNDS = 4


class DeviceLedger(Protocol):
    def claim(self, node: str, uid: str, pod: str, devices: contract.Assignment, memory_mib: int,
              superseded: Callable[[str, ledger_mod.Claim], bool] = ...) -> ledger_mod.Outcome: ...

    def claim_all(self, node: str, wanted: Mapping[str, tuple[str, contract.Assignment, int]],
                  superseded: Callable[[str, ledger_mod.Claim], bool] = ...,
                  any_replica: bool = ...) -> ledger_mod.Outcome: ...

    def release(self, node: str, uid: str) -> None: ...


class Binder:
    def __init__(self, api: PodApi, cache: ClusterCache, policy: Policy,
                 ledger: DeviceLedger | None = None) -> None:
        self.api = api
        self.cache = cache
        self.policy = policy
        self.ledger: DeviceLedger = ledger if ledger is not None else ledger_mod.NoLedger()

    def bind(self, args: ExtenderBindingArgs, seen: KubeObject | None = None) -> str:
        """Binds and returns "" or the error for ``ExtenderBindingResult.Error``. ``seen``: the
        Pod as kube-scheduler sent it to filter or prioritize; when it is this pod (name,
        namespace and uid), unbound, with a resourceVersion, it is not read again: the
        annotation's patch is conditional on that resourceVersion, and a pod changed since gets
        a conflict, is read and patched again (:meth:`_annotate`)."""
        ns, name, uid, node = args["PodNamespace"], args["PodName"], args["PodUID"], args["Node"]
        pod = seen if _is_unbound(seen, ns, name, uid) else None
        if pod is None:
            try:
                pod = self.api.read_pod(ns, name)
            except Exception as err:  # the API's errors are many; the scheduler needs the text
                return f"gpupack: reading pod {ns}/{name}: {err}"
        demand = pod_demand(pod)
        if uid and demand.uid and demand.uid != uid:
            return f"gpupack: pod {ns}/{name} has uid {demand.uid}, not {uid} (recreated?)"
        if self.cache.is_dra_node(node):
            return self._bind_dra(ns, name, demand.uid or uid, node)
        if demand.error:
            return f"gpupack: pod {ns}/{name}: {demand.error}"
        if demand.wants_gpu:
            assignment, error = self._claim(demand, node)
            if assignment is None:
                return error
            error = self._annotate(ns, name, pod, assignment)
            if error:
                self.unclaim(demand.uid, node)
                return error
        try:
            self.api.create_binding(ns, name, demand.uid or uid, node)
        except Exception as err:
            if demand.wants_gpu:
                self.unclaim(demand.uid, node)
            else:
                self.cache.release(demand.uid)
            return f"gpupack: binding {ns}/{name} to {node}: {err}"
        return ""

    def _bind_dra(self, ns: str, name: str, uid: str, node: str) -> str:
        """A pod bound to a DRA node: kube-scheduler's DRA plugin allocated its claims in its
        PreBind, before this Bind, and the claims' allocations are what the devices are (the
        cache counts them from the claims' watch). So no device is chosen, no annotation
        written, nothing claimed in the ledger: the Binding alone, and the pod's provisional
        hold, if any, dropped."""
        self.cache.release(uid)
        try:
            self.api.create_binding(ns, name, uid, node)
        except Exception as err:
            return f"gpupack: binding {ns}/{name} to {node}: {err}"
        return ""

    def _claim(self, demand: PodDemand, node: str) -> tuple[contract.Assignment | None, str]:
        """Chooses the devices and claims them in the node's ledger; after another replica's
        claim wins, counts its devices and chooses again."""
        pod = f"{demand.namespace}/{demand.name}"
        for _ in range(CLAIM_ROUNDS):
            self.cache.release(demand.uid)
            assignment = self.cache.assign(demand, node, self.policy)
            if assignment is None:
                return None, f"gpupack: no room left on {node} for {pod} (taken by a concurrent bind?)"
            outcome = self.ledger.claim(node, demand.uid, pod, assignment, demand.memory_mib,
                                        superseded=lambda uid, claim: self.superseded(uid, node, claim))
            if outcome.ok:
                return assignment, ""
            self.cache.release(demand.uid)
            if outcome.error:
                return None, outcome.error
            for uid, claim in outcome.taken.items():
                log.debug("%s: devices %s on %s are claimed by %s (replica %s); choosing again",
                          pod, sorted(claim.ids()), node, claim.pod, claim.replica or "?")
                self.count_claim(uid, node, claim)
        return None, f"gpupack: the devices on {node} kept being claimed by other replicas; {pod} is retried"

    def superseded(self, uid: str, node: str, claim: ledger_mod.Claim) -> bool:
        """Whether the watch shows pod ``uid`` bound to ``node`` with other devices than it claimed
        (the kubelet gave it others and the plugin corrected its annotation)."""
        known = self.cache.pod(uid)
        if known is None or known.reserved or known.demand.node != node:
            return False
        return _device_sets(known.demand.assignment) != _device_sets(claim.devices)

    def count_claim(self, uid: str, node: str, claim: ledger_mod.Claim) -> None:
        """Counts another replica's claim in this cache until the pod's own events arrive."""
        known = self.cache.pod(uid)
        if known is not None and not known.reserved:
            return  # the watch already shows that pod bound: its annotation is the truth
        namespace, _, name = claim.pod.partition("/")
        asks = tuple(ContainerAsk(c, r, len(ids)) for c, per in sorted(claim.devices.items())
                     for r, ids in sorted(per.items()))
        other = PodDemand(uid, namespace, name, "", asks, claim.memory_mib, 0, False, None)
        self.cache.reserve(other, node, claim.devices, provisional=True)

    def unclaim(self, uid: str, node: str) -> None:
        self.cache.release(uid)
        self.ledger.release(node, uid)

    def _annotate(self, ns: str, name: str, pod: KubeObject, assignment: contract.Assignment) -> str:
        value = contract.encode_assignment(assignment)
        for _ in range(PATCH_RETRIES):
            rv = str((pod.get("metadata") or {}).get("resourceVersion", ""))
            try:
                self.api.patch_pod_annotations(ns, name, rv, {contract.DEVICES_ANNOTATION: value})
                return ""
            except Conflict:
                try:
                    pod = self.api.read_pod(ns, name)
                except Exception as err:
                    return f"gpupack: re-reading pod {ns}/{name} after a conflict: {err}"
                if (pod.get("spec") or {}).get("nodeName"):
                    return f"gpupack: pod {ns}/{name} was bound by someone else meanwhile"
            except Exception as err:
                return f"gpupack: annotating pod {ns}/{name}: {err}"
        return f"gpupack: pod {ns}/{name} kept changing; gave up after {PATCH_RETRIES} conflicts"


def status_message(err: Any) -> str:
    """The API server's own message in an ``ApiException`` (its Status body), else its reason:
    one line for a log, not the client's dump of every header."""
    body = getattr(err, "body", None)
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    return str(message or getattr(err, "reason", "") or err)


def _is_unbound(pod: KubeObject | None, namespace: str, name: str, uid: str) -> bool:
    """Whether ``pod`` is the named pod with ``uid``, not bound to a node, with a resourceVersion."""
    if not isinstance(pod, dict) or not uid:
        return False
    meta, spec = pod.get("metadata"), pod.get("spec")
    return (isinstance(meta, dict) and isinstance(spec, dict) and meta.get("namespace") == namespace
            and meta.get("name") == name and meta.get("uid") == uid and bool(meta.get("resourceVersion"))
            and not spec.get("nodeName"))


def _device_sets(assignment: contract.Assignment | None) -> dict[tuple[str, str], frozenset[str]]:
    return {(c, r): frozenset(ids) for c, per in (assignment or {}).items() for r, ids in per.items() if ids}


class KubePodApi:
    """:class:`PodApi` over the official kubernetes client's ``CoreV1Api``."""

    def __init__(self, core_v1: Any) -> None:
        self.core = core_v1

    def read_pod(self, namespace: str, name: str) -> KubeObject:
        resp = self.core.read_namespaced_pod(name, namespace, _preload_content=False)
        pod: KubeObject = json.loads(resp.data)
        return pod

    def patch_pod_annotations(
        self, namespace: str, name: str, resource_version: str, annotations: dict[str, str]
    ) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {"metadata": {"resourceVersion": resource_version, "annotations": annotations}}
        try:
            ledger_mod.finish(self.core.patch_namespaced_pod(name, namespace, body, _preload_content=False))
        except ApiException as err:
            if err.status == 409:
                raise Conflict(str(err.reason)) from err
            raise

    def json_patch_pod(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        """A JSON patch of the pod (:class:`scheduler_ext.placement.PlacementApi`); a failed
        ``test`` (HTTP 422 naming it) or a conflict raises :class:`Conflict`."""
        from kubernetes.client.exceptions import ApiException

        try:
            ledger_mod.finish(self.core.patch_namespaced_pod(name, namespace, ops, _preload_content=False,
                                                             _content_type="application/json-patch+json"))
        except ApiException as err:
            message = status_message(err)
            if err.status == 409 or (err.status == 422 and "test" in message):
                raise Conflict(message) from err
            raise RuntimeError(f"HTTP {err.status}: {message}") from err

    def create_binding(self, namespace: str, name: str, uid: str, node: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        ledger_mod.finish(self.core.create_namespaced_binding(namespace, body, _preload_content=False))
