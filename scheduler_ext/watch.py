"""List and watch Nodes and Pods into the cache; the only module that streams from the API.

:class:`WatchSource` is the seam: :class:`KubeWatchSource` wraps the kubernetes client,
tests pass a fake that plays a script of events. :class:`Syncer` lists each kind in full
(the cache is ready only after both first lists), then watches from the list's
resourceVersion; ``410 Gone`` relists at once, any other failure relists after an
exponential backoff.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from scheduler_ext.cache import ClusterCache
from scheduler_ext.wire import KubeObject

log = logging.getLogger(__name__)

KINDS = ("Node", "Pod")


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


class WatchSource(Protocol):
    def list(self, kind: str) -> tuple[list[KubeObject], str]:
        """All objects of ``kind`` and the list's resourceVersion."""

    def watch(self, kind: str, resource_version: str) -> Iterator[dict[str, Any]]:
        """Events ``{"type", "object"}`` after ``resource_version``; raises :class:`Gone`."""


@dataclasses.dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5  # first wait after a failure, seconds
    max_s: float = 30.0  # cap: the API server may be down for a while; keep trying
    factor: float = 2.0


class Syncer:
    """Keeps ``cache`` in step with the API; ``wait(stop, seconds)`` is injectable for tests."""

    def __init__(
        self,
        cache: ClusterCache,
        source: WatchSource,
        backoff: Backoff = Backoff(),
        wait: Callable[[threading.Event, float], None] | None = None,
        on_listed: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self.cache = cache
        self.source = source
        self.backoff = backoff
        self.wait = wait or (lambda stop, s: (stop.wait(s), None)[1])
        self.relists: dict[str, int] = {k: 0 for k in KINDS}
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
                    else:
                        self.cache.replace_pods(items)
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
        threads = [threading.Thread(target=self.run_kind, args=(k, stop), name=f"watch-{k}", daemon=True) for k in KINDS]
        for t in threads:
            t.start()
        return threads


class KubeWatchSource:
    """:class:`WatchSource` over the official client's ``CoreV1Api`` (raw JSON, no models)."""

    #: Server-side watch timeout, seconds: the stream ends and is resumed from the last version.
    WATCH_TIMEOUT_S = 300

    def __init__(self, core_v1: Any) -> None:
        self.core = core_v1

    def _lister(self, kind: str) -> Any:
        return self.core.list_node if kind == "Node" else self.core.list_pod_for_all_namespaces

    def list(self, kind: str) -> tuple[list[KubeObject], str]:
        resp = self._lister(kind)(_preload_content=False)
        doc = json.loads(resp.data)
        return list(doc.get("items") or []), str((doc.get("metadata") or {}).get("resourceVersion", ""))

    def watch(self, kind: str, resource_version: str) -> Iterator[dict[str, Any]]:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        w: Any = getattr(watch, "Watch")()
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
