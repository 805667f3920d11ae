"""The Kubernetes API edge of the DRA driver: this node's ResourceSlices, kept as they should be.

:class:`SlicePublisher` holds what the node should publish (the planned GPUs and their faults,
turned into slices by :func:`device_plugin.dra.slices.build`) and reconciles the API server's
ResourceSlices of this node and driver with it:

- only on change: a pass compares the slices' content (generation aside, taints' ``timeAdded``
  aside) and writes nothing when it is equal; when it differs every slice of the pool is
  written with the next generation (consumers use only the newest), extra slices are deleted;
  a taint that stays keeps its ``timeAdded``, so a NoExecute eviction timer is not reset;
- events, not polling: a pass runs when the inventory or health changes (:meth:`publish`) and
  when a watch on the node's slices sees a change the driver did not make (someone deleted
  them; the kubelet wipes a driver's slices when it restarts or the driver was away 30 s);
  a slow resync (``resync_s``) is the safety net for a watch that missed something;
- owned by the Node (``ownerReferences``), so deleting the node deletes its slices;
- a pass that fails (API server away, a conflict) is retried with exponential backoff
  (``backoff_s`` doubling to ``max_backoff_s``).

On :meth:`stop` the slices stay by default, as NVIDIA's driver keeps them: a restarting driver
(a DaemonSet rollout) comes back within seconds, and removing them would make the scheduler
see the node without GPUs meanwhile; if the driver does not come back the kubelet wipes them
itself 30 s after losing it. ``remove_on_stop`` deletes them at once (switching a node pool
back to device-plugin mode).

The API is behind :class:`SliceApi`; :class:`DynamicSliceApi` implements it with the
Kubernetes dynamic client (the Python client has no ``resource.k8s.io/v1`` types).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from gpupack import contract

from device_plugin.dra import slices
from gpupack import dra_names as names

log = logging.getLogger("gpupack.dra.publisher")


class SliceApi(Protocol):
    def node_uid(self, node: str) -> str: ...

    def list(self, node: str, driver: str) -> tuple[list[dict[str, Any]], str]:
        """This node's slices of this driver, and the list's resourceVersion."""
        ...

    def create(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def delete(self, name: str) -> None: ...

    def watch(self, node: str, driver: str, resource_version: str, timeout_s: float) -> Iterator[dict[str, Any]]:
        """Events ``{"type": ..., "object": <slice JSON>}`` until ``timeout_s``."""
        ...


def _rv(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("resourceVersion", ""))


def _without_time_added(spec: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = copy.deepcopy(dict(spec))
    for d in out.get("devices") or []:
        for t in d.get("taints") or []:
            t.pop("timeAdded", None)
    return out


def _carry_time_added(spec: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    """Keeps ``timeAdded`` of taints that stay on the same device (same key, value, effect)."""
    if old is None:
        return
    before = {
        (d.get("name"), t.get("key"), t.get("value"), t.get("effect")): t["timeAdded"]
        for d in old.get("spec", {}).get("devices") or [] for t in d.get("taints") or [] if t.get("timeAdded")
    }
    for d in spec.get("devices") or []:
        for t in d.get("taints") or []:
            added = before.get((d.get("name"), t.get("key"), t.get("value"), t.get("effect")))
            if added:
                t["timeAdded"] = added


class SlicePublisher:
    def __init__(
        self,
        api: SliceApi,
        node: str,
        remove_on_stop: bool = False,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        resync_s: float = 600.0,
        watch_timeout_s: float = 300.0,
    ) -> None:
        self.api = api
        self.node = node
        self.remove_on_stop = remove_on_stop
        self.backoff_s = backoff_s  # first wait after a failed pass; doubles each failure
        self.max_backoff_s = max_backoff_s  # the longest wait between tries
        self.resync_s = resync_s  # a pass at least this often, should a watch event be missed
        self.watch_timeout_s = watch_timeout_s  # a watch call's length before it is made anew
        self._lock = threading.Lock()
        self._wanted: tuple[tuple[contract.Gpu, ...], dict[str, slices.Fault]] | None = None
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._owner: dict[str, Any] | None = None
        self._generation = 0
        self._written: dict[str, str] = {}  # slice name -> resourceVersion of our last write
        self._written_content: list[Any] | None = None
        self._list_rv = ""
        self._threads: list[threading.Thread] = []
        self.passes = 0  # reconcile passes that wrote something (for tests and logs)

    # --- what should be there ----------------------------------------------------------------

    def publish(self, gpus: Sequence[contract.Gpu], faults: Mapping[str, slices.Fault]) -> None:
        with self._lock:
            self._wanted = (tuple(gpus), dict(faults))
        self._dirty.set()

    # --- one pass -------------------------------------------------------------------------------

    def sync(self) -> None:
        """Brings the API in line with what is wanted; raises on API errors (the loop retries)."""
        with self._lock:
            wanted = self._wanted
        if wanted is None:
            return
        gpus, faults = wanted
        desired = slices.build(self.node, gpus, faults, generation=0)
        existing_items, self._list_rv = self.api.list(self.node, names.DRIVER)
        existing = {str(o["metadata"]["name"]): o for o in existing_items}
        want_content = slices.content(desired)
        if self._ours_unchanged(existing, want_content):
            return
        have_content = slices.content([{"metadata": {"name": n}, "spec": _without_time_added(o.get("spec", {}))}
                                       for n, o in existing.items()])
        generations = {int(o.get("spec", {}).get("pool", {}).get("generation", 0)) for o in existing.values()}
        if have_content == want_content and len(generations) <= 1:
            self._generation = max(generations, default=self._generation)
            self._written = {n: _rv(o) for n, o in existing.items()}
            self._written_content = want_content
            return
        self._generation = max([self._generation, *generations]) + 1
        owner = self._owner_reference()
        written: dict[str, str] = {}
        for s in slices.build(self.node, gpus, faults, generation=self._generation):
            body: dict[str, Any] = copy.deepcopy(dict(s))
            name = body["metadata"]["name"]
            body["metadata"]["ownerReferences"] = [owner]
            old = existing.get(name)
            _carry_time_added(body["spec"], old)
            if old is None:
                got = self.api.create(body)
            else:
                body["metadata"]["resourceVersion"] = _rv(old)
                got = self.api.replace(name, body)
            written[name] = _rv(got)
        for name in sorted(set(existing) - set(written)):
            self.api.delete(name)
        self._written = written
        self._written_content = want_content
        self.passes += 1
        log.info("published %d ResourceSlice(s) of node %s (generation %d)", len(written), self.node, self._generation)

    def _ours_unchanged(self, existing: Mapping[str, Mapping[str, Any]], want_content: list[Any]) -> bool:
        """The API holds exactly what our last pass wrote, and that is still what is wanted.
        (Trusting our own write, not comparing field by field, is what keeps a server that
        drops a field, say a feature gate off, from making every pass write again.)"""
        return (
            self._written_content == want_content
            and bool(self._written) == bool(existing)
            and {n: _rv(o) for n, o in existing.items()} == self._written
        )

    def _owner_reference(self) -> dict[str, Any]:
        if self._owner is None:
            uid = self.api.node_uid(self.node)
            self._owner = {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": uid, "controller": True}
        return self._owner

    def remove_all(self) -> None:
        items, _ = self.api.list(self.node, names.DRIVER)
        for o in items:
            self.api.delete(str(o["metadata"]["name"]))
        self._written, self._written_content = {}, None
        log.info("removed %d ResourceSlice(s) of node %s", len(items), self.node)

    # --- loops ----------------------------------------------------------------------------------

    def start(self) -> None:
        for name, target in (("publish", self.run), ("slice-watch", self.watch_loop)):
            t = threading.Thread(target=target, name=f"gpupack-dra-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def run(self) -> None:
        wait = self.backoff_s
        while not self._stop.is_set():
            self._dirty.clear()
            try:
                self.sync()
                wait = self.backoff_s
            except Exception as err:  # noqa: BLE001 - the API server may be away: back off and retry
                log.warning("could not publish the ResourceSlices of node %s (%s); retrying in %.0f s",
                            self.node, _reason(err), wait)
                if self._stop.wait(wait):
                    return
                wait = min(wait * 2, self.max_backoff_s)
                self._dirty.set()
                continue
            self._dirty.wait(self.resync_s)

    def watch_loop(self) -> None:
        wait = self.backoff_s
        while not self._stop.is_set():
            try:
                for event in self.api.watch(self.node, names.DRIVER, self._list_rv, self.watch_timeout_s):
                    if self._stop.is_set():
                        return
                    obj = event.get("object") or {}
                    name = str(obj.get("metadata", {}).get("name", ""))
                    if event.get("type") == "ERROR":
                        break  # e.g. 410 Gone: the next pass lists afresh
                    if event.get("type") == "DELETED" or self._written.get(name) != _rv(obj):
                        log.info("ResourceSlice %s was changed by someone else (%s); publishing again", name, event.get("type"))
                        self._dirty.set()
                wait = self.backoff_s
            except Exception as err:  # noqa: BLE001 - retried with backoff
                log.debug("watch on ResourceSlices ended (%s)", _reason(err))
                if self._stop.wait(wait):
                    return
                wait = min(wait * 2, self.max_backoff_s)

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        for t in self._threads:
            t.join(timeout=2)
        if self.remove_on_stop:
            try:
                self.remove_all()
            except Exception as err:  # noqa: BLE001 - the kubelet wipes them 30 s after the driver is gone
                log.warning("could not remove the ResourceSlices of node %s (%s); the kubelet will", self.node, _reason(err))


def _reason(err: Exception) -> str:
    status = getattr(err, "status", None)
    return f"HTTP {status}: {getattr(err, 'reason', '')}" if status else f"{type(err).__name__}: {err}"


class DynamicSliceApi:
    """:class:`SliceApi` over ``kubernetes.dynamic.DynamicClient`` (``resource.k8s.io/v1``), and
    the ResourceClaim getter prepare needs. ``api_client`` is a ``kubernetes.client.ApiClient``."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client
        self._client: Any = None
        self._kinds: dict[tuple[str, str], Any] = {}

    def _kind(self, api_version: str, kind: str) -> Any:
        # The dynamic client discovers resources from the API server: done on first use, so a
        # server that is away yet is retried like any other call.
        if self._client is None:
            from kubernetes import dynamic

            self._client = dynamic.DynamicClient(self.api_client)  # type: ignore[no-untyped-call]
        if (api_version, kind) not in self._kinds:
            self._kinds[api_version, kind] = self._client.resources.get(api_version=api_version, kind=kind)
        return self._kinds[api_version, kind]

    def _slice_api(self) -> Any:
        return self._kind(slices.API_VERSION, "ResourceSlice")

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        """The ResourceClaim as JSON (``prepare.ClaimGetter``)."""
        return dict(self._kind(slices.API_VERSION, "ResourceClaim").get(namespace=namespace, name=name).to_dict())

    @staticmethod
    def _selector(node: str, driver: str) -> str:
        return f"spec.nodeName={node},spec.driver={driver}"

    def node_uid(self, node: str) -> str:
        return str(self._kind("v1", "Node").get(name=node).metadata.uid)

    def list(self, node: str, driver: str) -> tuple[list[dict[str, Any]], str]:
        got = self._slice_api().get(field_selector=self._selector(node, driver)).to_dict()
        return list(got.get("items") or []), str(got.get("metadata", {}).get("resourceVersion", ""))

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._slice_api().create(body=body).to_dict())

    def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._slice_api().replace(body=body, name=name).to_dict())

    def delete(self, name: str) -> None:
        try:
            self._slice_api().delete(name=name)
        except Exception as err:
            if getattr(err, "status", None) != 404:
                raise

    def watch(self, node: str, driver: str, resource_version: str, timeout_s: float) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"field_selector": self._selector(node, driver), "timeout": int(timeout_s)}
        if resource_version:
            kwargs["resource_version"] = resource_version
        for event in self._slice_api().watch(**kwargs):
            raw = event.get("raw_object") or {}
            yield {"type": event.get("type"), "object": raw}
