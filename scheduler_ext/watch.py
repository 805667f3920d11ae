"""List and watch Nodes and Pods into the cache; the only module that streams from the API.

With DRA awareness (``--dra``) also ResourceSlices, ResourceClaims, ResourceClaimTemplates and
DeviceClasses (``resource.k8s.io/v1``, :data:`DRA_KINDS`), each a kind of its own with the same
list-then-watch loop; :meth:`KubeWatchSource.check_dra` refuses, in one line, an API server
that does not serve them.

:class:`WatchSource` is the seam: :class:`KubeWatchSource` wraps the kubernetes client,
tests pass a fake that plays a script of events. :class:`Syncer` lists each kind in full
(the cache is ready only after both first lists), then watches from the list's
resourceVersion; ``410 Gone`` relists at once, any other failure relists after an
exponential backoff.

A list comes in pages of :data:`LIST_PAGE` objects (``limit`` and ``continue``, one snapshot
of the API server's), each parsed and handed to the cache before the next is read: a
cluster's 150,000 pods are about 240 MB of JSON and 1.2 GB as Python objects at once, while
the cache keeps a few hundred bytes of each. The cache takes a list only once it has read all
of it, so a list cut short (an expired ``continue``: ``410``, relisted at once; the API server
gone: relisted after the backoff) changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from scheduler_ext.cache import DRA_KINDS, ClusterCache
from scheduler_ext.wire import KubeObject

log = logging.getLogger(__name__)

KINDS = ("Node", "Pod")
#: Objects per page of a list (the API's ``limit``; client-go's informers ask for 500 too).
LIST_PAGE = 500
__all__ = ["DRA_KINDS", "KINDS", "LIST_PAGE", "Backoff", "Gone", "KubeWatchSource", "Syncer", "WatchSource"]


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


class WatchSource(Protocol):
    def list(self, kind: str) -> tuple[Iterable[KubeObject], str]:
        """All objects of ``kind`` and the list's resourceVersion. The objects may be read from
        the API as they are iterated (once); iterating raises what the API raises (:class:`Gone`
        for an expired list)."""

    def watch(self, kind: str, resource_version: str) -> Iterator[dict[str, Any]]:
        """Events ``{"type", "object"}`` after ``resource_version``; raises :class:`Gone`."""


@dataclasses.dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5  # first wait after a failure, seconds
    max_s: float = 30.0  # cap: the API server may be down for a while; keep trying
    factor: float = 2.0


class Sink(Protocol):
    """Where the watch's objects go: a :class:`ClusterCache`, or in gate mode the
    :class:`scheduler_ext.placement.Tee` in front of it."""

    def replace_nodes(self, nodes: Iterable[KubeObject]) -> None: ...

    def replace_pods(self, pods: Iterable[KubeObject]) -> None: ...

    def replace_kind(self, kind: str, items: Iterable[KubeObject]) -> None: ...

    def apply_event(self, event: Mapping[str, Any], kind: str = "") -> None: ...


class Syncer:
    """Keeps ``cache`` in step with the API; ``wait(stop, seconds)`` is injectable for tests."""

    def __init__(
        self,
        cache: ClusterCache | Sink,
        source: WatchSource,
        backoff: Backoff = Backoff(),
        wait: Callable[[threading.Event, float], None] | None = None,
        on_listed: Callable[[str], None] = lambda kind: None,
        kinds: tuple[str, ...] = KINDS,
    ) -> None:
        self.cache = cache
        self.source = source
        self.backoff = backoff
        self.wait = wait or (lambda stop, s: (stop.wait(s), None)[1])
        self.kinds = kinds  # KINDS, plus DRA_KINDS with DRA awareness
        self.relists: dict[str, int] = {k: 0 for k in kinds}
        self.on_listed = on_listed

    def run_kind(self, kind: str, stop: threading.Event) -> None:
        delay = self.backoff.initial_s
        rv = ""
        while not stop.is_set():
            try:
                if not rv:
                    items, rv = self.source.list(kind)
                    self.relists[kind] += 1
                    if kind == "Node":
                        self.cache.replace_nodes(items)
                    elif kind == "Pod":
                        self.cache.replace_pods(items)
                    else:
                        self.cache.replace_kind(kind, items)
                    del items
                    self.on_listed(kind)
                    delay = self.backoff.initial_s
                for event in self.source.watch(kind, rv):
                    if stop.is_set():
                        return
                    obj = event.get("object") or {}
                    new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(str(obj.get("message", "")))
                        raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                    if event.get("type") != "BOOKMARK":
                        self.cache.apply_event(event, kind)
                    if new_rv:
                        rv = str(new_rv)
            except Gone:
                log.info("%s watch: resourceVersion %s gone; listing again", kind, rv)
                rv = ""
            except Exception as err:
                log.warning("%s watch failed (%s); listing again in %.1fs", kind, err, delay)
                rv = ""
                self.wait(stop, delay)
                delay = min(delay * self.backoff.factor, self.backoff.max_s)

    def start(self, stop: threading.Event) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.run_kind, args=(k, stop), name=f"watch-{k}", daemon=True) for k in self.kinds]
        for t in threads:
            t.start()
        return threads


class KubeWatchSource:
    """:class:`WatchSource` over the official client's ``CoreV1Api`` and, for the DRA kinds,
    ``ResourceV1Api`` (raw JSON, no models: the client's models would drop fields newer than
    they are, such as ``consumedCapacity``)."""

    #: Server-side watch timeout, seconds: the stream ends and is resumed from the last version.
    WATCH_TIMEOUT_S = 300

    def __init__(self, core_v1: Any, resource_v1: Any = None) -> None:
        self.core = core_v1
        self.resource = resource_v1  # kubernetes.client.ResourceV1Api, with DRA awareness

    def _lister(self, kind: str) -> Any:
        if kind == "Node":
            return self.core.list_node
        if kind == "Pod":
            return self.core.list_pod_for_all_namespaces
        if self.resource is None or kind not in DRA_KINDS:
            raise ValueError(f"no lister for {kind} (DRA awareness is off)")
        return {
            "ResourceSlice": self.resource.list_resource_slice,
            "ResourceClaim": self.resource.list_resource_claim_for_all_namespaces,
            "ResourceClaimTemplate": self.resource.list_resource_claim_template_for_all_namespaces,
            "DeviceClass": self.resource.list_device_class,
        }[kind]

    def check_dra(self) -> None:
        """Raises ValueError, one line, when the API server does not serve ``resource.k8s.io/v1``
        to this extender (an older cluster, DRA off, or RBAC without the DRA kinds)."""
        for kind in DRA_KINDS:
            try:
                self._lister(kind)(limit=1, _preload_content=False)
            except Exception as err:
                status = getattr(err, "status", None)
                if status == 404:
                    raise ValueError("--dra: the API server does not serve resource.k8s.io/v1 (Kubernetes 1.34+ "
                                     "with DynamicResourceAllocation); run without --dra") from err
                if status == 403:
                    raise ValueError(f"--dra: not allowed to list {kind}s (resource.k8s.io/v1): give the extender's "
                                     "ClusterRole list and watch on them (the chart does with extender.dra)") from err
                raise ValueError(f"--dra: listing {kind}s (resource.k8s.io/v1) failed: "
                                 f"{status or type(err).__name__} {getattr(err, 'reason', err)}") from err

    def list(self, kind: str) -> tuple[Iterator[KubeObject], str]:
        """The first page is read now (its resourceVersion is the list's); the others as the
        objects are iterated, each page dropped before the next is read."""
        first = self._page(kind, "")
        return self._objects(kind, first), str(_dict(first.get("metadata")).get("resourceVersion", ""))

    def _page(self, kind: str, token: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        more = {"_continue": token} if token else {}
        try:
            resp = self._lister(kind)(limit=LIST_PAGE, _preload_content=False, **more)
        except ApiException as err:
            if err.status == 410:  # the continue token expired: list again from the start
                raise Gone(f"{kind} list expired while paging: {err.reason}") from err
            raise
        doc = json.loads(resp.data)
        if not isinstance(doc, dict):
            raise ValueError(f"{kind} list: the API server answered {type(doc).__name__}, not a list object")
        return doc

    def _objects(self, kind: str, doc: dict[str, Any]) -> Iterator[KubeObject]:
        seen: set[str] = set()
        while True:
            items = doc.get("items") or []
            token = str(_dict(doc.get("metadata")).get("continue") or "")
            del doc
            yield from items
            del items
            if not token:
                return
            if token in seen:  # a server that hands back a token twice would page for ever
                raise RuntimeError(f"{kind} list: the API server repeated a continue token")
            seen.add(token)
            doc = self._page(kind, token)

    def watch(self, kind: str, resource_version: str) -> Iterator[dict[str, Any]]:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        w: Any = _raw_events(watch)
        try:
            for event in w.stream(
                self._lister(kind), resource_version=resource_version,
                timeout_seconds=self.WATCH_TIMEOUT_S, allow_watch_bookmarks=True,
            ):
                yield {"type": event.get("type"), "object": event.get("raw_object")}
        except ApiException as err:
            if err.status == 410:
                raise Gone(str(err.reason)) from err
            raise
        finally:
            w.stop()


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _raw_events(watch: Any) -> Any:
    """A ``kubernetes.watch.Watch`` that hands on each event's JSON as the API server sent it.
    The stock one also builds a model object (``V1Pod``...) per event, which the cache never
    reads (it takes ``raw_object``): 3.4 of the extender's 32 ms per pod at 5,000 nodes
    (docs/extender.md, "Where the extender's CPU goes"). Without a return type the client skips
    that step; the resourceVersion to resume from is tracked by :class:`Syncer` itself."""

    class RawWatch(watch.Watch):  # type: ignore[misc]
        def get_return_type(self, func: Any) -> None:
            return None

    return RawWatch()
