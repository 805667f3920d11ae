"""Verdicts kept across requests on a row copy that lives across them (NumPy only).

kube-scheduler sends the extender the same candidate list pod after pod, and pods come in a
few shapes. A node's verdict for a request (feasible, reason, units, raw score) depends on
that node's row, the request, the policy and the mix of shapes only, never on the other
nodes. So for a request seen before, with the same policy and the same mix, only the rows
changed since need evaluating again: :class:`VerdictMemo` keeps the last few requests' verdicts
with a stale mask each, and recomputes the stale rows alone, on a row subset with the kept
per-node sums of :class:`~gpupack.kernel.node_sums.NodeSumsMemo`. The result equals
:func:`~gpupack.kernel.evaluate.evaluate` on all rows (levels are ranked afresh from
the raw scores every time, since they depend on every row).

Rows changed since are few (kube-scheduler binds one pod per cycle), and the nodes of a
fleet pass through the same states: eight GPUs of one model with five in use look alike on
every node. So each kept request also remembers verdicts by row *state*: the bytes of the
row's slots, with the node's free CPU and memory reduced to which of the policy's
:attr:`~gpupack.kernel.policies.Policy.node_cuts` they reach (its score can change
nowhere else). A changed row in a state seen before takes that verdict without array work;
the others are evaluated together. At most :data:`STATE_ROWS` changed rows are looked up
this way (more are evaluated at once), and the states kept per request take about
:data:`KEPT_STATE_BYTES` at most (a key grows with the slots per node: about 560 bytes with
8, 3 KB with 64).

A request not kept (its first pod, or its first under a new mix) is evaluated on every row,
but rows in one state share one verdict there too: the memo numbers each row's slot state
(recomputed for the rows marked changed), and evaluates one row per distinct pair of state
and CPU and memory cuts, when those are at most half the rows (5,000 nodes of a few kinds,
most of them empty or full: a few hundred).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable

import numpy

from gpupack.kernel import pairing
from gpupack.kernel.node_sums import BeforeSums, NodeSumsMemo, RowSubset
from gpupack.kernel.evaluate import Verdicts, evaluate
from gpupack.kernel.levels import to_levels
from gpupack.kernel.policies import Policy
from gpupack.kernel.slots import Mix, Request, Slots
from gpupack.kernel.xp import Array, Namespace

#: Requests whose verdicts are kept per row copy (a few bytes x nodes each).
KEPT_REQUESTS = 16
#: Changed rows up to this many are looked up by their state; more are evaluated at once.
STATE_ROWS = 64
#: Bytes of row states (keys and verdicts) kept per request, about: 16 requests, 4 MiB.
KEPT_STATE_BYTES = 256 * 1024
#: What a kept state costs beyond its key's bytes (the bytes and tuple objects, the dict slot).
_STATE_OVERHEAD = 200
#: Bytes of numbered slot states per memo, about: past it the numbering starts again. A copy
#: whose every row in its own state would not fit (about 18,000 nodes at 8 slots, 2,800 at 64)
#: is evaluated on every row instead.
NUMBERED_STATE_BYTES = 8 * 1024 * 1024
#: What a numbered state costs beyond its key's bytes (the bytes object, the dict slot).
_NUMBER_OVERHEAD = 100

_SLOT_FIELDS = tuple(f.name for f in dataclasses.fields(Slots) if f.name not in ("node_cpu_free", "node_memory_free"))
_VERDICT_FIELDS = ("feasible", "reason", "free_units", "total_units", "raw", "keeps")


@dataclasses.dataclass
class _Entry:
    mix: Mix  # the mix the verdicts were scored under (compared by identity)
    shares: pairing.ShareMix  # the share mix they were scored under (compared by identity)
    verdicts: Verdicts  # levels not kept (0)
    stale: Array  # bool per row: changed since
    cuts: tuple[Array, Array]  # the policy's node_cuts for the request and mix, as arrays
    states: dict[bytes, tuple[object, ...]] = dataclasses.field(default_factory=dict)  # row state -> verdict


class VerdictMemo:
    """Per-node sums and recent requests' verdicts of one row copy. The owner of the rows
    calls :meth:`mark` with the positions of the rows it changes."""

    def __init__(self, nodes: int, requests: int = KEPT_REQUESTS, state_bytes: int = KEPT_STATE_BYTES) -> None:
        self.nodes = nodes
        self.sums = NodeSumsMemo(nodes, states=self._states)
        self._requests = requests
        self._state_bytes = state_bytes  # 0: no verdicts kept by row state
        self._entries: collections.OrderedDict[tuple[str, Request, bool], _Entry] = collections.OrderedDict()
        self._state_of = numpy.zeros(nodes, dtype=numpy.int64)  # per row: the number of its slot state
        self._state_stale = numpy.ones(nodes, dtype=bool)
        self._numbers: dict[bytes, int] = {}

    def mark(self, positions: Array) -> None:
        self.sums.mark(positions)
        self._state_stale[positions] = True
        for e in self._entries.values():
            e.stale[positions] = True

    def prepare(self, s: Slots) -> None:
        """Works out now what every request's first evaluation on ``s`` (the kept rows) would:
        the rows' numbered slot states and their per-node sums without GPU parts."""
        self._states(s)
        self.sums.get(s, (), numpy)

    def evaluate(self, s: Slots, req: Request, policy: Policy, mix: Mix = (), score: bool = True,
                 levels: bool = True, shares: pairing.ShareMix = pairing.NO_SHARES) -> Verdicts:
        """:func:`~gpupack.kernel.evaluate.evaluate` of ``req`` on ``s`` (the kept rows,
        NumPy), from the kept verdicts where the rows have not changed. The arrays returned
        are read-only and valid until the next call."""
        mix = mix if policy.uses_mix else ()
        key = (policy.name, req, score)
        entry = self._entries.get(key)
        if entry is None or entry.mix is not mix or entry.shares is not shares:
            cpu, mem = policy.node_cuts(req, mix)
            guard = sorted(set(cpu) | set(pairing.cpu_cuts(req, shares)))  # and where the share's CPU guard turns
            cuts = (numpy.asarray(guard, dtype=numpy.int64), numpy.asarray(mem, dtype=numpy.int64))
            entry = _Entry(mix, shares, self._evaluate_all(s, req, policy, mix, score, cuts, shares),
                           numpy.zeros(self.nodes, dtype=bool), cuts)
            self._entries[key] = entry
            while len(self._entries) > self._requests:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
            at = numpy.nonzero(entry.stale)[0]
            if at.shape[0] > STATE_ROWS or not self._state_bytes:
                self._evaluate_rows(entry, s, req, policy, at, score)
            elif at.shape[0]:
                self._by_state(entry, s, req, policy, at, score)
            entry.stale[:] = False
        v = entry.verdicts
        if levels and score:
            return dataclasses.replace(v, level=to_levels(v.raw, v.feasible, numpy))
        return v

    def _evaluate_all(self, s: Slots, req: Request, policy: Policy, mix: Mix, score: bool,
                      cuts: tuple[Array, Array], shares: pairing.ShareMix) -> Verdicts:
        """Every row's verdict, evaluated once per distinct state (slots, and which cuts the
        node's free CPU and memory reach) when those are at most half the rows."""
        n = s.shape[0]
        states = self._states(s)
        if states is None:
            return evaluate(s, req, policy, numpy, mix=mix, score=score, memo=self.sums, levels=False, shares=shares)
        cpu = numpy.searchsorted(cuts[0], s.node_cpu_free, side="right")
        mem = numpy.searchsorted(cuts[1], s.node_memory_free, side="right")
        key = (states * (cuts[0].shape[0] + 1) + cpu) * (cuts[1].shape[0] + 1) + mem
        distinct, first, inverse = numpy.unique(key, return_index=True, return_inverse=True)
        if 2 * distinct.shape[0] > n:
            return evaluate(s, req, policy, numpy, mix=mix, score=score, memo=self.sums, levels=False, shares=shares)
        sub = evaluate(s.rows(first), req, policy, numpy, mix=mix, score=score, memo=RowSubset(self.sums, s, first),
                       levels=False, shares=shares)
        inverse = inverse.reshape(-1)
        return Verdicts(**{name: getattr(sub, name).take(inverse) for name in _VERDICT_FIELDS},
                        level=numpy.zeros(n, numpy.int64))

    def _states(self, s: Slots) -> Array | None:
        """Per row of ``s``, the number of its slot state (rows alike in every slot array share
        one), numbered again for the rows marked since; None when the copy's rows, each in a
        state of its own, would take more than :data:`NUMBERED_STATE_BYTES`."""
        width = sum(getattr(s, name).dtype.itemsize for name in _SLOT_FIELDS) * s.shape[1]
        limit = NUMBERED_STATE_BYTES // (width + _NUMBER_OVERHEAD)
        if s.shape[0] > limit:
            return None
        at = numpy.nonzero(self._state_stale)[0]
        if at.shape[0]:
            if len(self._numbers) + at.shape[0] > limit:
                self._numbers.clear()
                at = numpy.arange(s.shape[0])
            numbers = self._numbers
            self._state_of[at] = [numbers.setdefault(k, len(numbers)) for k in _slot_keys(s, at)]
            self._state_stale[:] = False
        return self._state_of

    def _evaluate_rows(self, entry: _Entry, s: Slots, req: Request, policy: Policy, at: Array,
                       score: bool) -> Verdicts:
        """Evaluates rows ``at`` of ``s`` and writes their verdicts into the entry's."""
        sub = evaluate(s.rows(at), req, policy, numpy, mix=entry.mix, score=score,
                       memo=RowSubset(self.sums, s, at), levels=False, shares=entry.shares)
        kept = entry.verdicts
        for name in _VERDICT_FIELDS:
            getattr(kept, name)[at] = getattr(sub, name)
        return sub

    def _by_state(self, entry: _Entry, s: Slots, req: Request, policy: Policy, at: Array, score: bool) -> None:
        """Rows ``at``'s verdicts from the states seen before; the rest evaluated and learnt."""
        keys = _state_keys(s, at, entry.cuts)
        found = [entry.states.get(k) for k in keys]
        miss = [i for i, f in enumerate(found) if f is None]
        hit = [i for i, f in enumerate(found) if f is not None]
        if miss:
            sub = self._evaluate_rows(entry, s, req, policy, at[miss], score)
            limit = max(STATE_ROWS, self._state_bytes // (len(keys[0]) + _STATE_OVERHEAD))
            if len(entry.states) + len(miss) > limit:
                entry.states.clear()
            columns = [getattr(sub, name).tolist() for name in _VERDICT_FIELDS]
            for j, i in enumerate(miss):
                entry.states[keys[i]] = tuple(c[j] for c in columns)
        if hit:
            kept = entry.verdicts
            rows = at[hit]
            for f, name in enumerate(_VERDICT_FIELDS):
                getattr(kept, name)[rows] = [found[i][f] for i in hit]  # type: ignore[index]


class SubsetView:
    """The verdicts of some rows of a kept row copy, from that copy's :class:`VerdictMemo`.

    kube-scheduler sends prioritize the nodes its filter let through: a subset of the filter's
    list that changes whenever a node's fit does (a pod pinned to one GPU model, a node that
    filled up). Evaluated as a list of its own, each such subset would compute every row's
    sums afresh. Its rows are rows of the kept copy (``copy``, positions ``at``), and a row's
    verdict depends on the row alone, so they are taken from the copy's memo, where only the
    rows changed since are evaluated again; levels are then ranked among the subset's rows,
    as :func:`~gpupack.kernel.evaluate.evaluate` on the subset ranks them."""

    def __init__(self, memo: VerdictMemo, copy: Slots, at: Array) -> None:
        self._memo = memo
        self._copy = copy
        self._at = at

    def mark(self, positions: Array) -> None:
        self._memo.mark(self._at[positions])

    @property
    def sums(self) -> _SubsetSums:
        """The per-node sums of the subset's rows, from the copy's memo."""
        return _SubsetSums(self._memo.sums, self._copy, self._at)

    def evaluate(self, s: Slots, req: Request, policy: Policy, mix: Mix = (), score: bool = True,
                 levels: bool = True, shares: pairing.ShareMix = pairing.NO_SHARES) -> Verdicts:
        """:func:`~gpupack.kernel.evaluate.evaluate` of ``req`` on ``s``, the copy's rows at
        ``at`` (``s`` itself is not read: the copy is)."""
        v = self._memo.evaluate(self._copy, req, policy, mix, score=score, levels=False, shares=shares)
        at = self._at
        taken = {name: getattr(v, name).take(at) for name in _VERDICT_FIELDS}
        sub = Verdicts(**taken, level=numpy.zeros(at.shape[0], numpy.int64))
        if levels and score:
            return dataclasses.replace(sub, level=to_levels(sub.raw, sub.feasible, numpy))
        return sub


@dataclasses.dataclass(frozen=True)
class _SubsetSums:
    memo: NodeSumsMemo
    copy: Slots
    at: Array

    def get(self, s: Slots, gpus: Iterable[Request], xp: Namespace) -> BeforeSums:
        """:class:`BeforeSums` of the copy's rows at ``at`` (``s`` is those rows; not read)."""
        b = self.memo.get(self.copy, gpus, xp)
        at = self.at
        parts = {g: (c.take(at), st.take(at), al.take(at), ow.take(at)) for g, (c, st, al, ow) in b.parts.items()}
        return BeforeSums(b.total_idle.take(at), b.used_weight.take(at), b.total_weight.take(at), parts)


def _slot_keys(s: Slots, at: Array) -> list[bytes]:
    """Per row of ``at``: the bytes of its slot arrays (one matrix, cut in rows)."""
    parts = [numpy.ascontiguousarray(getattr(s, name).take(at, axis=0)) for name in _SLOT_FIELDS]
    matrix = numpy.concatenate([p.view(numpy.uint8).reshape(at.shape[0], -1) for p in parts], axis=1)
    width = matrix.shape[1]
    flat = matrix.tobytes()
    return [flat[i * width:(i + 1) * width] for i in range(at.shape[0])]


def _state_keys(s: Slots, at: Array, cuts: tuple[Array, Array]) -> list[bytes]:
    """Per row of ``at``: the bytes of its slots and of which cuts its free CPU and memory reach."""
    parts = [getattr(s, name).take(at, axis=0) for name in _SLOT_FIELDS]
    parts.append(numpy.searchsorted(cuts[0], s.node_cpu_free.take(at), side="right"))
    parts.append(numpy.searchsorted(cuts[1], s.node_memory_free.take(at), side="right"))
    return [b"".join(p[i].tobytes() for p in parts) for i in range(at.shape[0])]
