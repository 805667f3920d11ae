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
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy

from gpupack import contract, kernel
from gpupack.kernel import pairing, slots as kslots
from gpupack.kernel.verdict_memo import SubsetView, VerdictMemo
from scheduler_ext.cache.candidates import KEEP_ROWS_FROM, SELECTIONS, Candidates
from scheduler_ext.cache.dra import KINDS as DRA_KINDS, DraObjects
from scheduler_ext.cache.events import Events
from scheduler_ext.cache.holds import HOLD_SECONDS, Holds
from scheduler_ext.cache.mix import (MIX_COVERAGE, MIX_MAX_SHAPES, MIX_MEMORY, MIX_REFRESH, MIX_TOLERANCE,
                                     ShapeMix, mix_distance)
from scheduler_ext.cache.state import ClusterState, NodeState, PodRecord, Use
from scheduler_ext import nodefilter, podspec
from scheduler_ext.podspec import PodDemand
from scheduler_ext.wire import KubeObject

#: Pod shapes (selector, affinity, tolerations) whose node masks :meth:`ClusterCache.eligible` keeps.
ELIGIBLE_SHAPES = 64

__all__ = [
    "DRA_KINDS", "HOLD_SECONDS", "KEEP_ROWS_FROM", "MIX_COVERAGE", "MIX_MAX_SHAPES", "MIX_MEMORY", "MIX_REFRESH",
    "MIX_TOLERANCE", "SELECTIONS", "ClusterCache", "NodeState", "PodRecord", "Use",
    "from_objects", "from_snapshot", "mix_distance",
]


class ClusterCache:
    """Nodes x slots arrays plus the pod records behind them. Thread-safe: every public method
    holds the one lock; evaluation works on copies (:meth:`select`, :meth:`rows_of`). Each
    method is its piece's (see the module docstring), which documents it."""

    def __init__(self, width: int = 8, rows: int = 64, clock: Callable[[], float] = time.monotonic,
                 hold_seconds: float = HOLD_SECONDS, keep_rows_from: int = KEEP_ROWS_FROM,
                 dra: bool = False) -> None:
        self._state = ClusterState(width, rows)
        # DRA awareness (``--dra``): ResourceSlices, claims, templates and classes are read too
        self._dra = DraObjects(self._state) if dra else None
        self._events = Events(self._state, self._dra)
        self._shapes = ShapeMix(self._state)
        self._holds = Holds(self._state, clock, hold_seconds, self._shapes.shares)
        self._candidates = Candidates(self._state, self._holds, keep_rows_from)
        self._eligible: dict[tuple[str, int, int, str], numpy.ndarray[Any, Any]] = {}  # eligible()'s masks
        self._rows_for: tuple[int, Sequence[str], numpy.ndarray[Any, Any]] | None = None  # eligible()'s rows
        self._facts_columns: tuple[int, nodefilter.FactsColumns] | None = None  # eligible()'s node facts
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
    ) -> contextlib.AbstractContextManager[tuple[kslots.Slots, numpy.ndarray[Any, Any], VerdictMemo | SubsetView | None]]:
        return self._candidates.rows_of(names, exclude)

    def _columns(self, names: Sequence[str]) -> nodefilter.FactsColumns:
        """The facts of ``names`` by column, kept while no node's facts change. Under the state's lock."""
        st = self._state
        kept = self._facts_columns
        if kept is None or kept[0] != st.facts_generation or kept[1].names is not names:
            kept = self._facts_columns = (st.facts_generation, nodefilter.FactsColumns(names, st.facts))
        return kept[1]

    def _rows(self, names: Sequence[str]) -> numpy.ndarray[Any, Any]:
        """The row of each of ``names`` (-1: unknown), kept while no node comes or goes. Under the state's lock."""
        st = self._state
        kept = self._rows_for
        if kept is None or kept[0] != st.node_generation or kept[1] is not names:
            rows = numpy.fromiter((st.row_of.get(n, -1) for n in names), dtype=numpy.int64, count=len(names))
            # the list itself is kept (node_names() hands out one per node set), never a copy
            kept = self._rows_for = (st.node_generation, names, rows)
        return kept[2]

    def warm(self, names: Sequence[str]) -> bool:
        """Ahead of the first decision over ``names``: their rows kept with their memo prepared
        (:meth:`Candidates.warm <scheduler_ext.cache.candidates.Candidates.warm>`), and what
        :meth:`eligible` reads of them (their rows, their facts by column, the label columns)."""
        with self._state.lock:
            self._columns(names).warm()
            self._rows(names)
        return self._candidates.warm(names)

    def all_rows(self) -> tuple[kslots.Slots, list[str]]:
        return self._candidates.all_rows()

    def node_names(self) -> list[str]:
        """Every node's name, in name order (one list per set of nodes: the same object until
        the nodes change)."""
        return self._candidates.node_names()

    def eligible(self, constraints: nodefilter.PodConstraints, names: Sequence[str], cpu_milli: int = 0,
                 memory_mib: int = 0) -> numpy.ndarray[Any, Any]:
        """Per name: whether kube-scheduler's node filters would let the pod there (taints,
        cordon, selector and required node affinity: :func:`scheduler_ext.nodefilter.allows`)
        and its CPU and memory requests fit the node's free CPU and memory now, and the node
        holds fewer pods than its ``allocatable.pods``. Gate mode pins
        a pod ahead of kube-scheduler, so it must ask first. The filters' part is kept per pod
        shape while no node's facts change (:data:`ELIGIBLE_SHAPES` of them)."""
        st = self._state
        with st.lock:
            key = (constraints.key, st.facts_generation, len(names), names[0] if names else "")
            mask = self._eligible.get(key)
            if mask is None:
                mask = numpy.array(nodefilter.allows_all(constraints, self._columns(names)), dtype=bool)
                self._eligible[key] = mask
                while len(self._eligible) > ELIGIBLE_SHAPES:
                    self._eligible.pop(next(iter(self._eligible)))
            rows = self._rows(names)
            known = rows >= 0
            at = numpy.where(known, rows, 0)
            a = st.arrays
            room = known & (a.node_cpu_free[at] >= cpu_milli) & (a.node_memory_free[at] >= memory_mib)
            if st.pods_full:  # NodeResourcesFit's pod count: a node at its allocatable.pods takes no more
                room &= ~numpy.isin(rows, [st.row_of[n] for n in st.pods_full if n in st.row_of])
            return numpy.asarray(mask & room)

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

    def shares(self) -> pairing.ShareMix:
        """The share sizes of the recent pods, for :mod:`gpupack.kernel.pairing`."""
        return self._shapes.shares()

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

    def replace_kind(self, kind: str, items: Iterable[KubeObject]) -> None:
        self._events.replace_kind(kind, items)

    # --- DRA (:mod:`~scheduler_ext.cache.dra`; off unless built with ``dra=True``) ----------

    @property
    def dra_aware(self) -> bool:
        return self._dra is not None

    def is_dra_node(self, name: str) -> bool:
        """Whether the node's GPUs come from ResourceSlices: kube-scheduler allocates them."""
        return self._dra is not None and self._dra.is_dra_node(name)

    def resolve_claims(self, demand: PodDemand) -> PodDemand:
        """A pending pod's demand with what its resource claims ask read in (unchanged without DRA awareness)."""
        return self._dra.resolve(demand) if self._dra is not None else demand

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


#: Largest snapshot read (bytes), 1 GiB; a larger file is refused unread. The largest cluster
#: the extender is sized for, 5,000 Nodes (17,470 bytes each as the informer holds them,
#: docs/reliability.md: 83 MiB) and 150,000 pods (a few KB each in ``kubectl``'s JSON), comes
#: to well under it; ``json`` holds a file several times over while it reads it.
MAX_SNAPSHOT_BYTES = 2**30

#: How to make a snapshot, for the messages that refuse one (``-A``: pods of every namespace hold devices).
SNAPSHOT_HOWTO = "make one with `kubectl get nodes,pods -A -o json > cluster.json`"


def from_snapshot(path: str, max_bytes: int = MAX_SNAPSHOT_BYTES) -> ClusterCache:
    """The cache for a ``kubectl get nodes,pods -o json`` file: a List whose Nodes and Pods are
    read (other kinds are skipped). Raises ValueError, one line naming the file and, where one
    is at fault, the item and field: a file that cannot be read or is larger than
    ``max_bytes``, not JSON text (UTF-8, or UTF-16 as PowerShell's ``>`` writes it), not a
    List, an item that is not an object, a Node or Pod whose JSON types are not the API's."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size  # a regular file's; 0 for a pipe, read below
            if size > max_bytes:
                raise ValueError(f"{path}: {size} bytes, more than a snapshot may have ({max_bytes})")
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror or err})") from err
    if len(data) > max_bytes:
        raise ValueError(f"{path}: more than {max_bytes} bytes, more than a snapshot may have")
    if not data.strip():
        raise ValueError(f"{path}: empty; {SNAPSHOT_HOWTO}")
    try:
        text = data.decode(json.detect_encoding(data))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not JSON text (byte {err.start} is 0x{data[err.start]:02x}); {SNAPSHOT_HOWTO}") from err
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        hint = "" if text.lstrip()[:1] in ("{", "[") else f" ({SNAPSHOT_HOWTO})"
        raise ValueError(f"{path}: not JSON: line {err.lineno} column {err.colno}: {err.msg}{hint}") from err
    except RecursionError as err:
        raise ValueError(f"{path}: not JSON this program can read: nested too deeply") from err
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a List of Nodes and Pods, got {_json_kind(doc)}; {SNAPSHOT_HOWTO}")
    kind = doc.get("kind")
    if kind in ("Node", "Pod"):
        raise ValueError(f"{path}: one {kind}, expected a List of Nodes and Pods; {SNAPSHOT_HOWTO}")
    if "items" not in doc:
        what = f"a {kind}" if isinstance(kind, str) and kind else "an object"
        raise ValueError(f"{path}: {what} without items, expected a List of Nodes and Pods; {SNAPSHOT_HOWTO}")
    items = doc["items"]
    if items is None:  # Go writes an empty list as null
        items = []
    if not isinstance(items, list):
        raise ValueError(f"{path}: items: expected a list, got {_json_kind(items)}")
    for i, obj in enumerate(items):
        where = f"items[{i}]"
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: {where}: expected an object, got {_json_kind(obj)}")
        try:
            if obj.get("kind") == "Node":
                _check_node(obj)
            elif obj.get("kind") == "Pod":
                podspec.check_shape(obj)
        except podspec.ShapeError as err:  # "Pod.spec: ..." -> "items[3].spec: ..."
            message = str(err).removeprefix(str(obj["kind"]))
            name = _name_of(obj)
            raise ValueError(f"{path}: {where}{message}" + (f" ({obj['kind']} {name})" if name else "")) from err
    return from_objects(items)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def _name_of(obj: KubeObject) -> str:
    """``namespace/name`` (a Node: ``name``) where they are strings, else ""."""
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str):
        return ""
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    return f"{namespace}/{name}" if isinstance(namespace, str) and namespace else name


def _check_node(node: KubeObject) -> None:
    """Raises :class:`podspec.ShapeError` where a Node's fields that the cache reads have JSON
    types the API never writes (``Node.metadata: expected an object, got a list``)."""
    meta = node.get("metadata")
    if not isinstance(meta, dict):
        raise podspec.ShapeError(f"Node.metadata: expected an object, got {_json_kind(meta)}")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        got = "an empty string" if isinstance(name, str) else _json_kind(name)
        raise podspec.ShapeError(f"Node.metadata.name: expected the node's name, got {got}")
    annotations = meta.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        raise podspec.ShapeError(f"Node.metadata.annotations: expected an object, got {_json_kind(annotations)}")
    inventory = (annotations or {}).get(contract.INVENTORY_ANNOTATION)
    if inventory is not None and not isinstance(inventory, str):
        raise podspec.ShapeError(f"Node.metadata.annotations[{contract.INVENTORY_ANNOTATION!r}]: expected a string, "
                                 f"got {_json_kind(inventory)}")
    status = node.get("status")
    if status is not None and not isinstance(status, dict):
        raise podspec.ShapeError(f"Node.status: expected an object, got {_json_kind(status)}")
    allocatable = (status or {}).get("allocatable")
    if allocatable is not None and not isinstance(allocatable, dict):
        raise podspec.ShapeError(f"Node.status.allocatable: expected an object, got {_json_kind(allocatable)}")


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
