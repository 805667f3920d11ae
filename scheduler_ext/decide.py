"""The extender's answers, from the cache and the kernel: filter, prioritize, preempt, explain.

No HTTP here and no Kubernetes API calls: :mod:`scheduler_ext.server` converts JSON to and
from these functions, and :mod:`scheduler_ext.explain` prints them.

kube-scheduler calls filter and then prioritize for the same pod, the second time with the
nodes the first let through. :meth:`Decider.filter` therefore scores as well and remembers
the raw scores under the pod's uid and the cache's generation; :meth:`Decider.prioritize`
reuses them while the generation is unchanged (nothing the kernel reads has changed) and
ranks its own subset into levels, else it decides afresh.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy

from gpupack import kernel
from gpupack.kernel import pairing
from scheduler_ext.cache import ClusterCache
from gpupack.kernel.verdict_memo import SubsetView, VerdictMemo
from scheduler_ext.podspec import PodDemand


@dataclasses.dataclass(frozen=True)
class NodeVerdict:
    """One node's answer for one pod."""

    node: str
    fits: bool
    unresolvable: bool
    level: int  # 0..10
    raw: float  # the policy's raw score (-inf when it does not fit)
    reason: str  # why not, or how it fits
    code: str  # short failure reason for metrics: fits, unknown-node, no-resource, ...


UNKNOWN_NODE = "node is not in the extender's cache yet"


@dataclasses.dataclass(frozen=True)
class Decision:
    """One pod's answer for many nodes, as arrays in the order of ``names``."""

    names: Sequence[str]
    fits: numpy.ndarray[Any, Any]  # bool
    unresolvable: numpy.ndarray[Any, Any]  # bool
    level: numpy.ndarray[Any, Any]  # int64 0..10, 0 where it does not fit
    raw: numpy.ndarray[Any, Any]  # float64, -inf where it does not fit
    groups: list[Group]  # the failing nodes (and with ``detail`` the fitting ones), by shared text
    # the leading resource's raw score where that resource alone fits, -inf elsewhere: what
    # ``level`` ranks (None without a score)
    lead_raw: numpy.ndarray[Any, Any] | None = None
    generation: int = -1  # the cache's generation the decision was read at
    # bool: the pod is a share that keeps to a pattern on the node (kernel.pairing); the named
    # node is one of these when the top levels hold any (None: no such pod)
    keeps: numpy.ndarray[Any, Any] | None = None

    @functools.cached_property
    def fitting_names(self) -> list[str]:
        return list(itertools.compress(self.names, self.fits.tolist()))


#: The default cap on the nodes filter lets a GPU pod through to (``--filter-top``); 0: none.
#: Tens, not thousands: kube-scheduler then scores and sends prioritize only these (at 5,000
#: nodes -15 ms of its CPU per pod, docs/extender.md); more than the nodes at the top levels.
FILTER_TOP = 50

#: Pods whose filter scores are remembered for their prioritize (kube-scheduler decides one
#: pod at a time; a few more cover retries and a second profile).
MEMO_PODS = 8


@dataclasses.dataclass
class _Memo:
    demand: PodDemand
    decision: Decision
    index: dict[str, int] | None = None  # node name -> position in the filter's list, on demand
    # with a filter cap: each node's level among every node that fit (what prioritize would
    # have ranked without the cap), by position in the filter's list; None without one
    levels: numpy.ndarray[Any, Any] | None = None

    def positions(self, names: Sequence[str]) -> numpy.ndarray[Any, Any] | None:
        """Positions of ``names`` in the filter's list; None when one was not there."""
        d = self.decision
        if names == d.fitting_names:  # the common case: prioritize gets what filter let through
            return numpy.nonzero(d.fits)[0]
        if self.index is None:
            self.index = {n: i for i, n in enumerate(d.names)}
        idx = numpy.fromiter(map(self.index.get, names, [-1] * len(names)), dtype=numpy.int64, count=len(names))
        return None if bool((idx < 0).any()) else idx


@dataclasses.dataclass(frozen=True)
class Group:
    """Nodes (positions in the request's list) that share one reason text."""

    positions: numpy.ndarray[Any, Any]
    text: str
    code: str  # short reason for metrics
    unresolvable: bool


def _units_text(count: int, resource: str, memory_mib: int, products: frozenset[str] = frozenset()) -> str:
    mem = f" with {memory_mib} MiB each" if memory_mib else ""
    # a pin makes "at most 0 even when empty" on a node of another model read as what it is
    pin = f" of model {' or '.join(sorted(products))}" if products else ""
    return f"{count} {resource}{pin}{mem}"


def _reason_text(reason: kernel.Reason, ask: str, free: int, total: int, node_error: str) -> str:
    # ``total`` is only known for nodes that do not fit
    if reason == kernel.Reason.NO_RESOURCE:
        return f"needs {ask}; node has no such device" + (f" ({node_error})" if node_error else "")
    if reason == kernel.Reason.TOO_SMALL:
        return f"needs {ask}; node can hold at most {total} even when empty"
    if reason == kernel.Reason.UNHEALTHY:
        return f"needs {ask}; only {total} healthy on this node"
    if reason == kernel.Reason.BUSY:
        return f"needs {ask}; {free} free now of {total}"
    return f"fits: {free} free for {ask}"


class Decider:
    """Filter, prioritize and preempt for one policy over one cache."""

    def __init__(self, cache: ClusterCache, policy: str = kernel.DEFAULT_POLICY, xp_name: str = "numpy",
                 holds: bool = False, filter_top: int = 0) -> None:
        self.cache = cache
        self.policy = kernel.get_policy(policy)  # unknown names refused here, at start-up
        self.xp = kernel.namespace(xp_name)
        self.holds = holds  # prioritize leaves a provisional hold on the node it ranks first
        if filter_top < 0:
            raise ValueError(f"filter_top must be 0 (no cap) or more, got {filter_top}")
        self.filter_top = filter_top  # filter lets through at most this many of a GPU pod's nodes; 0: all
        self._memo: collections.OrderedDict[str, _Memo] = collections.OrderedDict()
        self._memo_lock = threading.Lock()

    def filter(self, demand: PodDemand, names: Sequence[str]) -> Decision:
        """:meth:`decide` with scores, remembered for the pod's :meth:`prioritize`. With
        ``filter_top``, a GPU pod that fits more nodes than that is let through to the best
        ``filter_top`` of them only (:meth:`_cap`)."""
        demand = self.cache.resolve_claims(demand)
        d = self.decide(demand, names, score=True, levels=False)  # prioritize ranks its own subset
        levels = None
        if self.filter_top and demand.wants_gpu and d.lead_raw is not None and int(d.fits.sum()) > self.filter_top:
            d, levels = self._cap(d, demand)
        if demand.uid and d.lead_raw is not None:
            with self._memo_lock:
                self._memo.pop(demand.uid, None)
                self._memo[demand.uid] = _Memo(demand, d, levels=levels)
                while len(self._memo) > MEMO_PODS:
                    self._memo.popitem(last=False)
        return d

    def _cap(self, d: Decision, demand: PodDemand) -> tuple[Decision, numpy.ndarray[Any, Any]]:
        """The decision with only the ``filter_top`` best fitting nodes left fitting, and every
        node's level among all that fit (by position in ``d.names``). The best: by that level,
        then raw score, then their order in the list, so the node the levels name is always
        among them. The
        others are left out of the answer without a failure reason (kube-scheduler scores and
        binds only among the nodes an extender's filter returns; a pod that fits nowhere gets
        the full failure map as before, so preemption sees every node's reason)."""
        at = numpy.flatnonzero(d.fits)
        fitting = [d.names[i] for i in at.tolist()]
        lead_raw = d.lead_raw
        assert lead_raw is not None
        raw = lead_raw[at]
        keeps = None if d.keeps is None else d.keeps[at]
        level_fit = self._levels(raw, numpy.ones(at.shape[0], bool), fitting, self.names_one(demand), keeps)
        # best level first (the named node alone at 10), then raw score; ties in list order
        keep = at[numpy.lexsort((-raw, -level_fit))[: self.filter_top]]
        fits = numpy.zeros_like(d.fits)
        fits[keep] = True
        levels = numpy.zeros(len(d.names), numpy.int64)
        levels[at] = level_fit
        return dataclasses.replace(d, fits=fits), levels

    def prioritize(self, demand: PodDemand, names: Sequence[str]) -> numpy.ndarray[Any, Any]:
        """0..10 per node of ``names``: from the pod's filter scores while the cache is unchanged
        since, else decided afresh. With ``holds``, the devices the pod would get on the node
        ranked first are held for it until its bind (:meth:`ClusterCache.hold`)."""
        demand = self.cache.resolve_claims(demand)  # DRA: what its claims ask (the filter's memo has it so)
        with self._memo_lock:
            memo = self._memo.get(demand.uid) if demand.uid else None
        idx = None
        lead = self.names_one(demand)
        if memo is not None and memo.demand == demand and memo.decision.generation == self.cache.generation:
            idx = memo.positions(names)
        if idx is not None and memo is not None and memo.decision.lead_raw is not None:
            raw = memo.decision.lead_raw[idx]
            fits = memo.decision.fits[idx]
            if memo.levels is not None:  # a capped filter: the levels among every node that fit, as uncapped
                level = numpy.asarray(memo.levels[idx] * fits, dtype=numpy.int64)
            else:
                keeps = None if memo.decision.keeps is None else memo.decision.keeps[idx]
                level = self._levels(raw, fits, names, lead, keeps)
        else:
            d = self.decide(demand, names, reasons=False)
            raw, fits, level = d.raw, d.fits, d.level
        if self.holds and demand.wants_gpu and not demand.error and bool(fits.any()):
            # the node the levels name (alone at 10), else the best raw score
            best = int(numpy.argmax(level)) if lead else int(numpy.argmax(numpy.where(fits, raw, -numpy.inf)))
            self.cache.hold(demand, names[best], self.policy)
        return level

    def names_one(self, demand: PodDemand) -> bool:
        """Whether the levels for this pod name one node (a packing policy, a pod with GPUs)."""
        return self.policy.leads(1 if demand.wants_gpu else 0)

    def _levels(self, raw: numpy.ndarray[Any, Any], fits: numpy.ndarray[Any, Any], names: Sequence[str],
                lead: bool, keeps: numpy.ndarray[Any, Any] | None = None) -> numpy.ndarray[Any, Any]:
        """0..10 for the nodes that fit every resource (ranked among themselves: a node that fits
        the leading resource only must not take a level), with one node named when ``lead``
        (among the top nodes that ``keeps`` marks, when any)."""
        level = numpy.asarray(kernel.to_levels(raw, fits, numpy))
        return kernel.with_lead(level, names, None if keeps is None else keeps & fits) if lead else level

    def _to_xp(self, s: kernel.Slots) -> kernel.Slots:
        if self.xp is numpy:
            return s
        return kernel.Slots(**{f.name: self.xp.asarray(getattr(s, f.name)) for f in dataclasses.fields(s)})

    def decide(
        self, demand: PodDemand, names: Sequence[str], score: bool = True, detail: bool = False, reasons: bool = True,
        levels: bool = True,
    ) -> Decision:
        """Every named node's answer for the pod, as arrays in the order of ``names``; reasons
        are worded for the failing nodes only (and, with ``detail``, for the fitting ones);
        without ``levels`` the 0..10 levels are left at 0 (raw scores are still computed)."""
        demand = self.cache.resolve_claims(demand)
        n = len(names)
        everyone = numpy.arange(n)
        if demand.error:
            msg = f"pod's request cannot be read: {demand.error}"
            return Decision(names, numpy.zeros(n, bool), numpy.ones(n, bool), numpy.zeros(n, numpy.int64),
                            numpy.full(n, -numpy.inf), [Group(everyone, msg, "bad-request", True)])
        if not demand.wants_gpu:
            return self._cpu_only(demand, names, score, detail, levels)
        lead = demand.lead
        self.record_shape(demand)
        # the generation is read before the state: a change in between makes it stale, never wrong
        generation = self.cache.generation
        with self.cache.rows_of(names, exclude=demand.uid) as (rows, pos, memo):
            fits, unres, raw, lead_raw, groups, keeps = self._evaluate(demand, lead, names, rows, pos, score, detail,
                                                                       reasons, memo)
        for g in groups:
            unres[g.positions] |= g.unresolvable
        raw[~fits] = -numpy.inf
        level = self._levels(raw, fits, names, self.names_one(demand), keeps) if score and levels \
            else numpy.zeros(n, numpy.int64)
        return Decision(names, fits, unres, level, raw, groups, lead_raw, generation, keeps)

    def _evaluate(
        self, demand: PodDemand, lead: str, names: Sequence[str], rows: kernel.Slots, pos: numpy.ndarray[Any, Any],
        score: bool, detail: bool, reasons: bool, memo: VerdictMemo | SubsetView | None = None,
    ) -> tuple[numpy.ndarray[Any, Any], numpy.ndarray[Any, Any], numpy.ndarray[Any, Any],
               numpy.ndarray[Any, Any] | None, list[Group], numpy.ndarray[Any, Any] | None]:
        """The kernel's verdicts for every resource of a GPU pod on ``rows`` (the known names at
        positions ``pos``), gathered into arrays in the order of ``names``: fits, unresolvable,
        the leading resource's raw score (also as ``lead_raw`` with ``score``), reason groups,
        and where the leading share keeps to a pattern (with ``score`` and a share mix).
        Levels are the caller's (:meth:`_levels`, over the nodes that fit every resource)."""
        n = len(names)
        totals = demand.totals()
        rows = self._to_xp(rows)
        fits = numpy.zeros(n, dtype=bool)
        fits[pos] = True
        unres = numpy.zeros(n, dtype=bool)
        raw = numpy.full(n, -numpy.inf)
        lead_raw = numpy.full(n, -numpy.inf) if score else None
        keeps: numpy.ndarray[Any, Any] | None = None
        groups: list[Group] = []
        unknown = numpy.nonzero(~fits)[0]
        if unknown.shape[0]:
            groups.append(Group(unknown, UNKNOWN_NODE, "unknown-node", False))
        for resource in sorted(totals, key=lambda r: r != lead):
            req = self._request(demand, resource, lead)
            mix = self.cache.mix() if self.policy.uses_mix else ()
            scored = score and resource == lead
            shares = self.cache.shares() if scored and self.names_one(demand) else pairing.NO_SHARES
            v = self._verdicts(rows, req, mix, scored, memo, False, shares)
            ok = kernel.xp.to_host(v.feasible)
            free = kernel.xp.to_host(v.free_units)
            total = kernel.xp.to_host(v.total_units)
            ask = _units_text(totals[resource], resource, demand.memory_mib, demand.products)
            if reasons:
                bad = numpy.nonzero(~ok & fits[pos])[0]
                groups.extend(self._groups(names, pos[bad], kernel.xp.to_host(v.reason)[bad], free[bad], total[bad], ask))
            if resource == lead:
                raw[pos] = kernel.xp.to_host(v.raw)
                if lead_raw is not None:
                    lead_raw[pos] = raw[pos]
                if shares:
                    keeps = numpy.zeros(n, dtype=bool)
                    keeps[pos] = kernel.xp.to_host(v.keeps)
                if detail:
                    good = numpy.nonzero(ok)[0]
                    for j in good.tolist():
                        text = _reason_text(kernel.Reason.FITS, ask, int(free[j]), 0, "")
                        groups.append(Group(pos[j : j + 1], text, "fits", False))
            fits[pos] &= ok
        return fits, unres, raw, lead_raw, groups, keeps

    def _verdicts(self, rows: kernel.Slots, req: kernel.Request, mix: kernel.Mix, score: bool,
                  memo: VerdictMemo | SubsetView | None, levels: bool,
                  shares: pairing.ShareMix = pairing.NO_SHARES) -> kernel.Verdicts:
        """The kernel's verdicts on ``rows``: from the kept rows' memo when there is one (NumPy;
        only the rows changed since the request was last evaluated are evaluated again)."""
        if memo is not None and self.xp is numpy:
            return memo.evaluate(rows, req, self.policy, mix, score=score, levels=levels, shares=shares)
        return kernel.evaluate(rows, req, self.policy, self.xp, mix=mix, score=score, levels=levels, shares=shares)

    def record_shape(self, demand: PodDemand) -> None:
        """Notes the pod's shape in the mix, once per pod (a pod noted before is not counted
        again): its leading GPU part with its CPU and memory, or for a CPU-only pod a request
        of no GPU. :meth:`decide` notes each pod it decides (a CPU-only one only when some
        candidate has GPUs); gate mode notes a whole pass's pods before deciding the first, so
        that one mix scores the pass. ``demand`` with its claims resolved."""
        if demand.error:
            return
        if demand.wants_gpu:
            lead = demand.lead
            self.cache.record_shape(demand.uid, self._request(demand, lead, lead))
        else:
            self.cache.record_shape(demand.uid, kernel.Request(-1, 0, 0, demand.cpu_milli, demand.node_memory_mib))

    def _request(self, demand: PodDemand, resource: str, lead: str) -> kernel.Request:
        """The kernel's request for one resource of the pod; the pod's CPU and memory go with
        the leading resource."""
        return self.cache.request(resource, demand.totals()[resource], demand.memory_mib,
                                  demand.cpu_milli if resource == lead else 0,
                                  demand.node_memory_mib if resource == lead else 0, demand.products)

    def _cpu_only(self, demand: PodDemand, names: Sequence[str], score: bool, detail: bool,
                  levels: bool = True) -> Decision:
        """A pod without GPUs fits every node as far as the extender is concerned (CPU and
        memory are NodeResourcesFit's); it is scored by what its CPU and memory would do to
        each node, a request of no GPU (``fragmentation``: the idle GPUs they would strand),
        and its shape joins the mix when some candidate node has GPUs."""
        n = len(names)
        fits = numpy.ones(n, bool)
        level = numpy.zeros(n, numpy.int64)
        raw = numpy.zeros(n)
        lead_raw = None
        generation = -1
        if score:
            req = kernel.Request(-1, 0, 0, demand.cpu_milli, demand.node_memory_mib)
            generation = self.cache.generation
            lead_raw = numpy.full(n, -numpy.inf)  # unknown nodes: level 0, as below
            with self.cache.rows_of(names, exclude=demand.uid) as (rows, pos, memo):
                # Only a pod that may land beside GPUs shapes the mix: in a cluster whose GPU
                # nodes are tainted, the many CPU-only pods reach the extender with CPU nodes
                # alone, and counted they would crowd the GPU shapes out of it.
                if pos.shape[0] and bool((rows.capacity > 0).any()):
                    self.record_shape(demand)
                    generation = self.cache.generation
                    mix = self.cache.mix() if self.policy.uses_mix else ()
                    v = self._verdicts(self._to_xp(rows), req, mix, True, memo, levels)
                    level[pos] = kernel.xp.to_host(v.level)
                    raw[pos] = lead_raw[pos] = kernel.xp.to_host(v.raw)
                else:  # no GPUs among the candidates: nothing to strand, every node alike
                    lead_raw[pos] = 0.0
                    level[pos] = 10
        groups = [Group(numpy.arange(n), "no GPU requested", "fits", False)] if detail else []
        return Decision(names, fits, numpy.zeros(n, bool), level, raw, groups, lead_raw, generation)

    def _groups(
        self, names: Sequence[str], where: numpy.ndarray[Any, Any], reason: numpy.ndarray[Any, Any],
        free: numpy.ndarray[Any, Any], total: numpy.ndarray[Any, Any], ask: str,
    ) -> list[Group]:
        """Failing nodes grouped by their reason text, worded once per group: at thousands of
        nodes a text per node costs more than the decision."""
        out: list[Group] = []
        if not where.shape[0]:
            return out
        no_res = reason == int(kernel.Reason.NO_RESOURCE)
        if no_res.any():
            # a node without devices of the resource may say why (no or unreadable inventory)
            by_error: dict[str, list[int]] = {}
            for i in where[no_res].tolist():
                by_error.setdefault(self.cache.node_error(names[i]), []).append(i)
            for error, members in by_error.items():
                text = _reason_text(kernel.Reason.NO_RESOURCE, ask, 0, 0, error)
                out.append(Group(numpy.asarray(members), text, "no-resource", True))
        rest = ~no_res
        key = (reason[rest].astype(numpy.int64) << 42) | (free[rest].astype(numpy.int64) << 21) | total[rest].astype(numpy.int64)
        distinct, inverse = numpy.unique(key, return_inverse=True)
        members_of = where[rest]
        for g, k in enumerate(distinct.tolist()):
            r = kernel.Reason(k >> 42)
            text = _reason_text(r, ask, (k >> 21) & 0x1FFFFF, k & 0x1FFFFF, "")
            out.append(Group(members_of[inverse.reshape(-1) == g], text, r.name.lower().replace("_", "-"), r.unresolvable))
        return out

    def verdicts(
        self, demand: PodDemand, names: Sequence[str], score: bool = True, detail: bool = False
    ) -> list[NodeVerdict]:
        """:meth:`decide` as one object per node (for explain and tests)."""
        d = self.decide(demand, names, score, detail)
        text: dict[int, tuple[str, str]] = {}
        for g in d.groups:
            for i in g.positions.tolist():
                text.setdefault(i, (g.text, g.code))
        if score and self.names_one(demand) and bool(d.fits.any()):
            named = int(numpy.argmax(d.level))
            fits_text, code = text.get(named, ("", "fits"))
            note = "named node: first by name among the nodes at the top two levels, the others get 8 at most"
            if d.keeps is not None and bool(d.keeps[named]):
                note = ("named node: first by name among the nodes at the top two levels where the share joins "
                        "a pattern of the recent share sizes, the others get 8 at most")
            text[named] = (f"{fits_text}; {note}" if fits_text else note, code)
        return [
            NodeVerdict(name, bool(d.fits[i]), bool(d.unresolvable[i]), int(d.level[i]), float(d.raw[i]),
                        *text.get(i, ("", "fits")))
            for i, name in enumerate(names)
        ]

    def preempt(
        self, demand: PodDemand, proposed: Mapping[str, tuple[Sequence[str], int]]
    ) -> dict[str, tuple[list[str], int]]:
        """Per node, the victims (pod uids) whose removal really frees the pod's GPU request:
        the proposed ones when they suffice, else those plus lower-priority GPU pods on the
        node, fewest first by priority; nodes where nothing suffices are left out."""
        demand = self.cache.resolve_claims(demand)
        if not demand.wants_gpu or demand.error:
            return {n: (list(v), pdb) for n, (v, pdb) in proposed.items()}
        out: dict[str, tuple[list[str], int]] = {}
        for node, (victims, pdb) in proposed.items():
            chosen = list(victims)
            if self._fits_without(demand, node, chosen):
                out[node] = (chosen, pdb)
                continue
            extra = [
                r for r in self.cache.pods_on(node)
                if r.demand.uid not in chosen and not r.reserved and r.demand.priority < demand.priority
            ]
            extra.sort(key=lambda r: (r.demand.priority, -len(r.uses), r.demand.uid))
            for rec in extra:
                chosen.append(rec.demand.uid)
                if self._fits_without(demand, node, chosen):
                    out[node] = (chosen, pdb)
                    break
        return out

    def _fits_without(self, demand: PodDemand, node: str, uids: Iterable[str]) -> bool:
        row = self.cache.without(node, uids)
        if row is None:
            return False
        row = self._to_xp(row)
        for resource, count in demand.totals().items():
            req = self.cache.request(resource, count, demand.memory_mib, products=demand.products)
            if not bool(kernel.evaluate(row, req, self.policy, self.xp, score=False).feasible[0]):
                return False
        return True
