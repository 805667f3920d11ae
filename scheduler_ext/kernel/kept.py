"""Verdicts kept across requests on a row copy that lives across them (NumPy only).

kube-scheduler sends the extender the same candidate list pod after pod, and pods come in a
few shapes. A node's verdict for a request (feasible, reason, units, raw score) depends on
that node's row, the request, the policy and the mix of shapes only, never on the other
nodes. So for a request seen before, with the same policy and the same mix, only the rows
changed since need evaluating again: :class:`RowMemo` keeps the last few requests' verdicts
with a stale mask each, and recomputes the stale rows alone, on a row subset with the kept
per-node sums of :class:`~scheduler_ext.kernel.before.BeforeMemo`. The result equals
:func:`~scheduler_ext.kernel.evaluate.evaluate` on all rows (levels are ranked afresh from
the raw scores every time, since they depend on every row).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy

from scheduler_ext.kernel.before import BeforeMemo, RowSubset
from scheduler_ext.kernel.evaluate import Verdicts, evaluate
from scheduler_ext.kernel.levels import to_levels
from scheduler_ext.kernel.policies import Policy
from scheduler_ext.kernel.slots import Mix, Request, Slots
from scheduler_ext.kernel.xp import Array

#: Requests whose verdicts are kept per row copy (a few bytes x nodes each).
KEPT_REQUESTS = 16


@dataclasses.dataclass
class _Entry:
    mix: Mix  # the mix the verdicts were scored under (compared by identity)
    verdicts: Verdicts  # levels not kept (0)
    stale: Array  # bool per row: changed since


class RowMemo:
    """Per-node sums and recent requests' verdicts of one row copy. The owner of the rows
    calls :meth:`mark` with the positions of the rows it changes."""

    def __init__(self, nodes: int, requests: int = KEPT_REQUESTS) -> None:
        self.nodes = nodes
        self.sums = BeforeMemo(nodes)
        self._requests = requests
        self._entries: collections.OrderedDict[tuple[str, Request, bool], _Entry] = collections.OrderedDict()

    def mark(self, positions: Array) -> None:
        self.sums.mark(positions)
        for e in self._entries.values():
            e.stale[positions] = True

    def evaluate(self, s: Slots, req: Request, policy: Policy, mix: Mix = (), score: bool = True,
                 levels: bool = True) -> Verdicts:
        """:func:`~scheduler_ext.kernel.evaluate.evaluate` of ``req`` on ``s`` (the kept rows,
        NumPy), from the kept verdicts where the rows have not changed. The arrays returned
        are read-only and valid until the next call."""
        mix = mix if policy.uses_mix else ()
        key = (policy.name, req, score)
        entry = self._entries.get(key)
        if entry is None or entry.mix is not mix:
            v = evaluate(s, req, policy, numpy, mix=mix, score=score, memo=self.sums, levels=False)
            entry = _Entry(mix, v, numpy.zeros(self.nodes, dtype=bool))
            self._entries[key] = entry
            while len(self._entries) > self._requests:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
            at = numpy.nonzero(entry.stale)[0]
            if at.shape[0]:
                sub = evaluate(s.rows(at), req, policy, numpy, mix=mix, score=score,
                               memo=RowSubset(self.sums, s, at), levels=False)
                kept = entry.verdicts
                for name in ("feasible", "reason", "free_units", "total_units", "raw"):
                    getattr(kept, name)[at] = getattr(sub, name)
                entry.stale[:] = False
        v = entry.verdicts
        if levels and score:
            return dataclasses.replace(v, level=to_levels(v.raw, v.feasible, numpy))
        return v
