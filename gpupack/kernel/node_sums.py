"""Per-node sums of the state before a placement, and a memo that keeps them across requests.

``fragmentation`` needs, for every node, sums over all its slots of the state *before* the
placement: idle capacity, weighted use, and per GPU part of the mix how many units the node
can host and how much idle capacity is stranded for that part. They depend on the rows only,
not on the request, so a caller that evaluates pod after pod on the same rows (the extender's
kept candidate copy) can keep them and recompute only the rows that changed
(:class:`NodeSumsMemo`); the request's own effect is then worked out on the few columns it
touches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy

from gpupack.kernel.slots import Request, Slots, of_models, parts_fit, units_of
from gpupack.kernel.usage import idle_of_used, slot_used
from gpupack.kernel.xp import Array, Namespace, row_sum


@dataclasses.dataclass(frozen=True)
class BeforeSums:
    """Per node: ``total_idle`` (idle GPU capacity of healthy slots, in GPUs), ``used_weight``
    (``sum(weight * used)``), ``total_weight`` (``sum(weight)`` over slots that exist), and per
    GPU part ``parts[gpu] = (count, stranded, allowed, own)``: units of the part the node can
    host, its idle capacity on slots that can host none, whether the node has a GPU of a model
    the part may run on (always, for a part without models), and the idle capacity on slots of
    the part's resource."""

    total_idle: Array
    used_weight: Array
    total_weight: Array
    parts: dict[Request, PartSums]


#: Per node, of one GPU part: ``(count, stranded, allowed, own)`` (:class:`BeforeSums`).
PartSums = tuple[Array, Array, Array, Array]


def allowed_nodes(s: Slots, gpu: Request, xp: Namespace) -> Array:
    """Per node: it has a device of one of ``gpu.models`` (every node when ``models`` is empty)."""
    if not gpu.models:
        return xp.ones(s.shape[0], dtype=bool)
    return xp.any(of_models(s, gpu.models, xp) & (s.capacity > 0), axis=1)


def parts_sums(s: Slots, gpus: Sequence[Request], idle: Array, xp: Namespace) -> list[PartSums]:
    """``(count, stranded, allowed, own)`` of each GPU part (``count > 0``) on every node of
    ``s``: units of the part the node can host, its idle capacity on slots that can host none,
    whether it has a GPU of a model the part may run on, and the idle capacity on slots of its
    resource; ``idle`` is
    :func:`~gpupack.kernel.usage.idle_capacity` of ``s`` now. Counted for all parts at once."""
    if not gpus:
        return []
    u = units_of(parts_fit(s, gpus, xp), s.free, s.free_memory_mib, xp)
    count, stranded = row_sum(u, xp), row_sum(idle * (u == 0), xp)
    own = {r: row_sum(idle * (s.resource == r), xp) for r in {g.resource for g in gpus}}
    return [(count[i], stranded[i], allowed_nodes(s, g, xp), own[g.resource]) for i, g in enumerate(gpus)]


def before_sums(s: Slots, gpus: Iterable[Request], xp: Namespace) -> BeforeSums:
    """:class:`BeforeSums` of ``s`` now, for the GPU parts ``gpus`` (parts with ``count <= 0``,
    CPU-only shapes, need none and are skipped)."""
    used = slot_used(s, s.free, s.free_memory_mib, xp)
    idle = idle_of_used(s, used, xp)
    wanted = [g for g in gpus if g.count > 0]
    parts = dict(zip(wanted, parts_sums(s, wanted, idle, xp)))
    return BeforeSums(row_sum(idle, xp), row_sum(s.weight * used, xp), row_sum(s.weight * (s.capacity > 0), xp), parts)


class NodeSumsProvider(Protocol):
    """Where a policy gets :class:`BeforeSums` of the rows it scores from."""

    def get(self, s: Slots, gpus: Iterable[Request], xp: Namespace) -> BeforeSums: ...


class NodeSumsMemo:
    """:class:`BeforeSums` of a row copy that lives across requests (NumPy only).

    The owner of the rows calls :meth:`mark` with the positions of the rows it changes; the
    next :meth:`get` recomputes those rows (for every part it keeps) and computes parts it has
    not seen on all rows. Row-wise sums are computed the same way on a subset as on all rows,
    so the result equals :func:`before_sums` of the rows as they are.

    ``states``, when given, numbers the rows' slot states (rows alike in every slot array
    share a number; None when it has none): a part not seen before is then counted on one row
    per state (a fleet of a few kinds of node has a few hundred states in 5,000 rows) and
    copied to the others, since a part's sums read the slots alone."""

    def __init__(self, nodes: int, states: Callable[[Slots], Array | None] | None = None) -> None:
        self._sums: BeforeSums | None = None
        self._stale = numpy.zeros(nodes, dtype=bool)
        self._states = states

    def mark(self, positions: Array) -> None:
        self._stale[positions] = True

    def get(self, s: Slots, gpus: Iterable[Request], xp: Namespace) -> BeforeSums:
        wanted = {g for g in gpus if g.count > 0}
        if self._sums is None:
            self._sums = before_sums(s, wanted, xp)
            self._stale[:] = False
            return self._sums
        sums = self._sums
        at = numpy.nonzero(self._stale)[0]
        if at.shape[0]:
            fresh = before_sums(s.rows(at), sums.parts, xp)
            sums.total_idle[at], sums.used_weight[at], sums.total_weight[at] = (
                fresh.total_idle, fresh.used_weight, fresh.total_weight)
            for g, fresh_part in fresh.parts.items():
                for kept, now in zip(sums.parts[g], fresh_part):
                    kept[at] = now
            self._stale[:] = False
        if len(sums.parts) > 4 * max(len(wanted), 8):  # parts the mix has long forgotten
            for g in sums.parts.keys() - wanted:
                del sums.parts[g]
        new = wanted - sums.parts.keys()
        if new:
            added = list(new)
            sums.parts.update(zip(added, self._parts_of_all(s, added, xp)))
        return sums

    def _parts_of_all(self, s: Slots, gpus: list[Request], xp: Namespace) -> list[PartSums]:
        """:func:`parts_sums` of every row of ``s``, on one row per slot state where the owner
        numbers them and they are at most half the rows."""
        states = self._states(s) if self._states is not None else None
        if states is not None:
            _, first, inverse = numpy.unique(states, return_index=True, return_inverse=True)
            if 2 * first.shape[0] <= s.shape[0]:
                one = s.rows(first)
                idle = idle_of_used(one, slot_used(one, one.free, one.free_memory_mib, xp), xp)
                back = inverse.reshape(-1)
                return [(c.take(back), st.take(back), al.take(back), ow.take(back))
                        for c, st, al, ow in parts_sums(one, gpus, idle, xp)]
        idle = idle_of_used(s, slot_used(s, s.free, s.free_memory_mib, xp), xp)
        return parts_sums(s, gpus, idle, xp)


@dataclasses.dataclass(frozen=True)
class RowSubset:
    """The sums of some rows of a memo's arrays: for a caller that keeps a memo of all its
    nodes and scores a different subset each time (the simulator's candidates). ``get``'s
    ``s`` must be ``full.rows(rows)``."""

    memo: NodeSumsMemo
    full: Slots
    rows: Array

    def get(self, s: Slots, gpus: Iterable[Request], xp: Namespace) -> BeforeSums:
        wanted = [g for g in gpus if g.count > 0]
        sums = self.memo.get(self.full, wanted, xp)
        r = self.rows
        parts = {g: (sums.parts[g][0][r], sums.parts[g][1][r], sums.parts[g][2][r], sums.parts[g][3][r])
                 for g in wanted}
        return BeforeSums(sums.total_idle[r], sums.used_weight[r], sums.total_weight[r], parts)
