"""kube-scheduler's node filters that gate mode must apply itself, as pure functions.

In extender mode kube-scheduler filters the nodes (taints, selectors, affinity, CPU and memory,
...) before gpupack sees them. In gate mode gpupack pins a pod to one node ahead of
kube-scheduler, so a pin kube-scheduler's filters would refuse leaves the pod pending there.
This module answers, per pod and node, what kube-scheduler's NodeUnschedulable, TaintToleration
and NodeAffinity filters would (NodeResourcesFit's CPU and memory are the cache's free CPU and
memory, :meth:`scheduler_ext.cache.ClusterCache.eligible`), and names what it cannot evaluate
(:func:`unsupported`): a pod with any of that is handed to kube-scheduler as it is.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy

from gpupack import contract
from scheduler_ext import podspec
from scheduler_ext.wire import KubeObject

#: The taint kube-scheduler's NodeUnschedulable filter stands for (a cordoned node).
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
#: Pod volume kinds whose binding (VolumeBinding, VolumeZone, volume limits) needs kube-scheduler.
BOUND_VOLUMES = ("persistentVolumeClaim", "ephemeral")
#: Resources every node has that kube-scheduler fits and gpupack counts (or need not).
PLAIN_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage", "pods"})


def _dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else {}


def _list(obj: Any) -> list[Any]:
    return obj if isinstance(obj, list) else []


@dataclasses.dataclass(frozen=True)
class NodeFacts:
    """What the filters read of a Node."""

    labels: Mapping[str, str]
    taints: tuple[tuple[str, str, str], ...]  # (key, value, effect), NoSchedule and NoExecute only
    unschedulable: bool
    max_pods: int | None = None  # status.allocatable.pods; None when the node does not say


def node_facts(node: KubeObject) -> NodeFacts:
    meta, spec = _dict(node.get("metadata")), _dict(node.get("spec"))
    labels = {str(k): str(v) for k, v in _dict(meta.get("labels")).items()}
    taints = tuple((str(t.get("key", "")), str(t.get("value", "")), str(t.get("effect", "")))
                   for t in _list(spec.get("taints")) if isinstance(t, dict)
                   and t.get("effect") in ("NoSchedule", "NoExecute"))
    return NodeFacts(labels, taints, bool(spec.get("unschedulable")), _max_pods(node))


def _max_pods(node: KubeObject) -> int | None:
    """``status.allocatable.pods`` as a whole number (kube-scheduler's NodeResourcesFit counts
    pods against it); None when absent or unreadable."""
    value = podspec.quantity(_dict(_dict(node.get("status")).get("allocatable")).get("pods"))
    return None if value is None or value < 0 else int(value)


@dataclasses.dataclass(frozen=True)
class PodConstraints:
    """What a pod's spec says about nodes; ``key`` is its canonical JSON (for caching masks)."""

    selector: tuple[tuple[str, str], ...]
    terms: tuple[Any, ...]  # required node affinity terms, as JSON
    tolerations: tuple[Any, ...]
    key: str


def pod_constraints(spec: Mapping[str, Any]) -> PodConstraints:
    selector = tuple(sorted((str(k), str(v)) for k, v in _dict(spec.get("nodeSelector")).items()))
    required = _dict(_dict(_dict(spec.get("affinity")).get("nodeAffinity")).get(
        "requiredDuringSchedulingIgnoredDuringExecution"))
    terms = tuple(t for t in _list(required.get("nodeSelectorTerms")) if isinstance(t, dict))
    tolerations = tuple(t for t in _list(spec.get("tolerations")) if isinstance(t, dict))
    key = json.dumps([selector, terms, tolerations], sort_keys=True, separators=(",", ":"))
    return PodConstraints(selector, terms, tolerations, key)


def unsupported(spec: Mapping[str, Any]) -> str:
    """What in the pod gate mode cannot evaluate ahead of kube-scheduler, or ""."""
    affinity = _dict(spec.get("affinity"))
    for kind in ("podAffinity", "podAntiAffinity"):
        if _dict(affinity.get(kind)).get("requiredDuringSchedulingIgnoredDuringExecution"):
            return f"required {kind}"
    if any(isinstance(c, dict) and c.get("whenUnsatisfiable", "DoNotSchedule") == "DoNotSchedule"
           for c in _list(spec.get("topologySpreadConstraints"))):
        return "a topology spread constraint with whenUnsatisfiable: DoNotSchedule"
    for v in _list(spec.get("volumes")):
        kind = next((k for k in BOUND_VOLUMES if isinstance(v, dict) and k in v), "")
        if kind:
            return f"a {kind} volume"
    for c in [*_list(spec.get("initContainers")), *_list(spec.get("containers"))]:
        if not isinstance(c, dict):
            continue
        if any(isinstance(p, dict) and p.get("hostPort") for p in _list(c.get("ports"))):
            return "a host port"
        resources = _dict(c.get("resources"))
        for r in [*_dict(resources.get("requests")), *_dict(resources.get("limits"))]:
            if r not in PLAIN_RESOURCES and not r.startswith("hugepages-") and not contract.is_gpu_resource(str(r)):
                return f"the resource {r}"
    return ""


def _requirement(req: Any, value: str | None) -> bool:
    """One NodeSelectorRequirement against the node's value of its key (None: no such label)."""
    if not isinstance(req, dict):
        return False
    op, values = req.get("operator"), [str(v) for v in _list(req.get("values"))]
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            have, bound = int(value), int(values[0])
        except ValueError:
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def _term(term: Mapping[str, Any], name: str, facts: NodeFacts) -> bool:
    """A NodeSelectorTerm: its requirements ANDed; an empty term matches nothing."""
    expressions, fields = _list(term.get("matchExpressions")), _list(term.get("matchFields"))
    if not expressions and not fields:
        return False
    return (all(_requirement(e, facts.labels.get(str(_dict(e).get("key", "")))) for e in expressions)
            and all(_dict(f).get("key") == "metadata.name" and _requirement(f, name) for f in fields))


def _tolerated(taint: tuple[str, str, str], tolerations: tuple[Any, ...]) -> bool:
    key, value, effect = taint
    for t in tolerations:
        if t.get("effect") not in (None, "", effect):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t.get("key") == key:
                return True
        elif t.get("key") == key and str(t.get("value", "")) == value:
            return True
    return False


def label_keys(c: PodConstraints) -> tuple[str, ...] | None:
    """The node labels :func:`allows` reads for ``c`` (its selector's and its terms' expression
    keys), or None when it reads the node's name too (a term with ``matchFields``)."""
    if any(_list(t.get("matchFields")) for t in c.terms):
        return None
    keys = {k for k, _ in c.selector}
    keys.update(str(_dict(e).get("key", "")) for t in c.terms for e in _list(t.get("matchExpressions")))
    return tuple(sorted(keys))


#: Label keys whose columns :meth:`FactsColumns.warm` numbers ahead, the most common first.
WARM_LABELS = 64


class FactsColumns:
    """The facts of a list of nodes by column, for :func:`allows_all` to read over many pods'
    constraints: the list of the known nodes' facts, each node's cordon and taints as a number
    (nodes alike share one) built once, each label's column of numbers once (a fleet's worth of
    lookups costs more than the rest of a filter). Valid while the facts are unchanged."""

    def __init__(self, names: Sequence[str], facts: Mapping[str, NodeFacts]) -> None:
        self.names = names
        self.known = [n for n in names if n in facts]
        self.of = [facts[n] for n in self.known]
        # positions in ``names`` of the known nodes, where some are not
        self.at = None if len(self.known) == len(names) else numpy.flatnonzero([n in facts for n in names])
        self.base = _numbered((f.unschedulable, f.taints) for f in self.of)
        self._labels: dict[str, numpy.ndarray[Any, Any]] = {}

    def warm(self) -> None:
        """Numbers ahead the columns of the labels a pod's constraints may read: every key the
        nodes carry (the :data:`WARM_LABELS` most common)."""
        carried = collections.Counter(k for f in self.of for k in f.labels)
        for key, _ in carried.most_common(WARM_LABELS):
            self.label(key)

    def label(self, key: str) -> numpy.ndarray[Any, Any]:
        """The known nodes' values of label ``key``, numbered (nodes with the same value share
        a number; a node without the label has one too)."""
        column = self._labels.get(key)
        if column is None:
            column = self._labels[key] = _numbered(f.labels.get(key) for f in self.of)
        return column


def _numbered(values: Iterable[Any]) -> numpy.ndarray[Any, Any]:
    """int64 per value: its number among the distinct values, in order of first appearance."""
    numbers: dict[Any, int] = {}
    return numpy.fromiter((numbers.setdefault(v, len(numbers)) for v in values), dtype=numpy.int64)


def allows_all(c: PodConstraints, nodes: FactsColumns) -> numpy.ndarray[Any, Any]:
    """:func:`allows` for each of ``nodes.names`` (bool; False for a name without facts), worked
    out once per distinct set of what it reads (cordon, taints, the labels of
    :func:`label_keys`): a fleet of thousands of nodes has a few such sets."""
    keys = label_keys(c)
    known, of = nodes.known, nodes.of
    if keys is None:
        out = numpy.array([allows(c, n, f) for n, f in zip(known, of)], dtype=bool)
    else:
        sig = nodes.base
        for k in keys:  # one number per distinct (base, labels so far), kept below the node count
            column = nodes.label(k)
            _, sig = numpy.unique(sig * (int(column.max(initial=0)) + 1) + column, return_inverse=True)
        _, first, inverse = numpy.unique(sig, return_index=True, return_inverse=True)
        verdict = numpy.array([allows(c, known[i], of[i]) for i in first.tolist()], dtype=bool)  # allows reads no name
        out = verdict[inverse.reshape(-1)]
    if nodes.at is None:
        return out
    full = numpy.zeros(len(nodes.names), dtype=bool)
    full[nodes.at] = out
    return full


def allows(c: PodConstraints, name: str, facts: NodeFacts) -> bool:
    """Whether NodeUnschedulable, TaintToleration and NodeAffinity let the pod onto the node."""
    if facts.unschedulable and not _tolerated((UNSCHEDULABLE_TAINT, "", "NoSchedule"), c.tolerations):
        return False
    if not all(_tolerated(t, c.tolerations) for t in facts.taints):
        return False
    if any(facts.labels.get(k) != v for k, v in c.selector):
        return False
    return not c.terms or any(_term(t, name, facts) for t in c.terms)
