"""The cluster cache: every node's GPU slots and what pods hold, kept as kernel arrays.

Fed by events (:meth:`ClusterCache.apply_event` takes the watch's ``{"type", "object"}``
dicts), updated per event for the one node it touches, never rebuilt per request. The
watch I/O lives in :mod:`scheduler_ext.watch`; :func:`from_snapshot` builds the same state
from ``kubectl get nodes,pods -o json``.

One piece per concern, all on one lock and one set of arrays; :class:`ClusterCache` puts
them behind one object:

- :mod:`~scheduler_ext.cache.state`: node and pod records, the arrays written from them, each
  node's CPU and memory, and ``generation``;
- :mod:`~scheduler_ext.cache.events`: Node and Pod objects (watch events, full lists) read into it;
- :mod:`~scheduler_ext.cache.holds`: reservations of binds in flight, the bind's device
  choice, and provisional holds between prioritize and bind with their expiry;
- :mod:`~scheduler_ext.cache.candidates`: the copies of rows that decisions evaluate on, and
  the copies and verdicts kept for candidate lists seen again;
- :mod:`~scheduler_ext.cache.mix`: the mix of recent request shapes for ``fragmentation``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy

from gpupack import contract, kernel
from gpupack.kernel import slots as kslots
from gpupack.kernel.verdict_memo import VerdictMemo
from scheduler_ext.cache.candidates import KEEP_ROWS_FROM, SELECTIONS, Candidates
from scheduler_ext.cache.events import Events
from scheduler_ext.cache.holds import HOLD_SECONDS, Holds
from scheduler_ext.cache.mix import (MIX_COVERAGE, MIX_MAX_SHAPES, MIX_MEMORY, MIX_REFRESH, MIX_TOLERANCE,
                                     ShapeMix, mix_distance)
from scheduler_ext.cache.state import ClusterState, NodeState, PodRecord, Use
from scheduler_ext.podspec import PodDemand
from scheduler_ext.wire import KubeObject

__all__ = [
    "HOLD_SECONDS", "KEEP_ROWS_FROM", "MIX_COVERAGE", "MIX_MAX_SHAPES", "MIX_MEMORY", "MIX_REFRESH",
    "MIX_TOLERANCE", "SELECTIONS", "ClusterCache", "NodeState", "PodRecord", "Use",
    "from_objects", "from_snapshot", "mix_distance",
]


class ClusterCache:
    """Nodes x slots arrays plus the pod records behind them. Thread-safe: every public method
    holds the one lock; evaluation works on copies (:meth:`select`, :meth:`rows_of`). Each
    method is its piece's (see the module docstring), which documents it."""

    def __init__(self, width: int = 8, rows: int = 64, clock: Callable[[], float] = time.monotonic,
                 hold_seconds: float = HOLD_SECONDS, keep_rows_from: int = KEEP_ROWS_FROM) -> None:
        self._state = ClusterState(width, rows)
        self._events = Events(self._state)
        self._holds = Holds(self._state, clock, hold_seconds)
        self._candidates = Candidates(self._state, self._holds, keep_rows_from)
        self._shapes = ShapeMix(self._state)
        self.resources = self._state.resources
        self.models = self._state.models

    @property
    def generation(self) -> int:
        """Bumped on every change a decision could see, for callers that memoise."""
        return self._state.generation

    @property
    def synced(self) -> bool:
        """True once nodes and pods have each been listed in full."""
        return self._events.synced

    @property
    def hold_seconds(self) -> float:
        return self._holds.hold_seconds

    @property
    def keep_rows_from(self) -> int:
        return self._candidates.keep_rows_from

    # --- reading (candidates, state) -------------------------------------------------------

    def select(self, names: Iterable[str]) -> tuple[kslots.Slots, list[str], list[str]]:
        return self._candidates.select(names)

    def select_positions(
        self, names: Sequence[str], exclude: str = ""
    ) -> tuple[kslots.Slots, numpy.ndarray[Any, Any]]:
        return self._candidates.select_positions(names, exclude)

    def rows_of(
        self, names: Sequence[str], exclude: str = ""
    ) -> contextlib.AbstractContextManager[tuple[kslots.Slots, numpy.ndarray[Any, Any], VerdictMemo | None]]:
        return self._candidates.rows_of(names, exclude)

    def all_rows(self) -> tuple[kslots.Slots, list[str]]:
        return self._candidates.all_rows()

    def node(self, name: str) -> NodeState | None:
        return self._state.node(name)

    def node_error(self, name: str) -> str:
        return self._state.node_error(name)

    def pod(self, uid: str) -> PodRecord | None:
        return self._state.pod(uid)

    def pods_on(self, node: str) -> list[PodRecord]:
        return self._state.pods_on(node)

    def counts(self) -> tuple[int, int]:
        return self._state.counts()

    def request(self, resource: str, count: int, memory_mib: int, cpu_milli: int = 0,
                node_memory_mib: int = 0, products: frozenset[str] = frozenset()) -> kernel.Request:
        return self._state.request(resource, count, memory_mib, cpu_milli, node_memory_mib, products)

    def node_free(self, name: str) -> tuple[int, int]:
        return self._state.node_free(name)

    def without(self, node: str, uids: Iterable[str]) -> kslots.Slots | None:
        return self._state.without(node, uids)

    # --- the mix of shapes -----------------------------------------------------------------

    def record_shape(self, uid: str, req: kernel.Request) -> None:
        self._shapes.record_shape(uid, req)

    def mix(self) -> kernel.Mix:
        return self._shapes.mix()

    # --- events ----------------------------------------------------------------------------

    def apply_event(self, event: Mapping[str, Any], kind: str = "") -> None:
        self._events.apply_event(event, kind)

    def replace_nodes(self, nodes: Iterable[KubeObject]) -> None:
        self._events.replace_nodes(nodes)

    def replace_pods(self, pods: Iterable[KubeObject]) -> None:
        self._events.replace_pods(pods)

    def replace_all(self, nodes: Iterable[KubeObject], pods: Iterable[KubeObject]) -> None:
        self._events.replace_all(nodes, pods)

    def upsert_node(self, obj: KubeObject) -> None:
        self._events.upsert_node(obj)

    def delete_node(self, name: str) -> None:
        self._state.delete_node(name)

    def upsert_pod(self, obj: KubeObject) -> None:
        self._events.upsert_pod(obj)

    def put_pod(self, demand: PodDemand) -> None:
        self._state.put_pod(demand)

    def delete_pod(self, uid: str) -> None:
        self._state.delete_pod(uid)

    # --- reservations and provisional holds ------------------------------------------------

    def reserve(self, demand: PodDemand, node: str, assignment: contract.Assignment,
                provisional: bool = False) -> None:
        self._holds.reserve(demand, node, assignment, provisional)

    def release(self, uid: str) -> None:
        self._holds.release(uid)

    def assign(self, demand: PodDemand, node: str, policy: kernel.Policy,
               provisional: bool = False) -> contract.Assignment | None:
        return self._holds.assign(demand, node, policy, provisional)

    def hold(self, demand: PodDemand, node: str, policy: kernel.Policy) -> contract.Assignment | None:
        return self._holds.hold(demand, node, policy)

    def held(self, uid: str) -> str:
        return self._holds.held(uid)

    def holds(self) -> int:
        return self._holds.count()


def from_snapshot(path: str) -> ClusterCache:
    """The cache for a ``kubectl get nodes,pods -o json`` file (a List of Nodes and Pods)."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return from_objects(doc.get("items", []) if isinstance(doc, dict) else [])


def from_objects(items: Iterable[KubeObject]) -> ClusterCache:
    nodes: list[KubeObject] = []
    pods: list[KubeObject] = []
    for obj in items:
        if not isinstance(obj, dict):
            continue
        if obj.get("kind") == "Node":
            nodes.append(obj)
        elif obj.get("kind") == "Pod":
            pods.append(obj)
    cache = ClusterCache(rows=max(len(nodes), 1))
    cache.replace_all(nodes, pods)
    return cache
