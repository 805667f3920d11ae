"""Mapping raw policy scores to kube-scheduler's extender range 0..10.

Let the feasible nodes' raw scores (rounded to 1e-9, so float noise makes no distinction)
have ``u`` distinct values, and ``r`` be a node's dense rank among them (0 = best):

    level = 10 - round(r * 10 / (u - 1))      when 2 <= u <= 11: every distinction kept,
                                               spread over the whole range
    level = 10 - floor(r * 11 / u)            when u > 11: eleven bands of equal numbers
                                               of distinct values
    level = 10                                when u == 1

so the best nodes always get 10, the worst feasible ones 0 (when u > 1), and a better raw
score never gets a lower level. Infeasible nodes get 0.

For packing policies and pods with GPUs (``Policy.leads``) the caller then names one node
(:func:`with_lead`): among the nodes at the top two levels (10 and 9, ``NAMED_FROM``), the
one whose name sorts first gets 10 and every other node at most ``10 - LEAD``. (With seven
distinct scores or fewer no node is at 9, so the named node is among the best alone.)
kube-scheduler adds the extender's level times ten times its weight to its own scores and
picks at random among the best totals; the top levels hold many nodes of nearly equal raw
score, and a random pick (or NodeResourcesFit's CPU packing) spreads a burst over them,
where a fixed first choice among the good nodes fills one node after another and keeps the
rest whole, as first-fit does. The order is the node names', not the candidate list's:
kube-scheduler's filter runs on parallel workers, so the list's order changes from one
cycle to the next. Why the top two levels and not one or three: docs/history/simulator.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy

from gpupack.kernel.xp import Array, Namespace

MAX_LEVEL = 10
#: Levels by which the named node leads every other node (:func:`with_lead`): NodeResourcesFit scores
#: 0..100 and the shipped extender weight 5 makes a level worth 50 points, so a lead of 2
#: levels lets NodeResourcesFit break a tie at most, never overrule the choice.
LEAD = 2
#: The named node is the first by name among the nodes at this level and above.
NAMED_FROM = MAX_LEVEL - 1


def _rank_levels(r: Array, u: int, xp: Namespace) -> Array:
    """The level of dense rank ``r`` (0 = best) among ``u`` distinct values (the module's rule)."""
    if u == 1:
        return xp.full(r.shape, MAX_LEVEL, dtype=xp.int64)
    if u <= MAX_LEVEL + 1:
        return MAX_LEVEL - xp.round(r * MAX_LEVEL / (u - 1)).astype(xp.int64)
    return MAX_LEVEL - (r * (MAX_LEVEL + 1)) // u


def to_levels(raw: Array, feasible: Array, xp: Namespace) -> Array:
    """int64 levels 0..10 for ``raw`` (higher is better), 0 where not ``feasible``."""
    out = xp.zeros(raw.shape[0], dtype=xp.int64)
    if raw.shape[0] == 0 or not bool(feasible.any()):
        return out
    q = xp.round(raw[feasible], 9)
    distinct, inverse = xp.unique(-q, return_inverse=True)  # ascending -q: best first
    out[feasible] = _rank_levels(inverse.reshape(-1).astype(xp.int64), int(distinct.shape[0]), xp)
    return out


def top_band(raw: numpy.ndarray[Any, Any], feasible: numpy.ndarray[Any, Any]) -> numpy.ndarray[Any, Any]:
    """The ``feasible`` nodes that :func:`to_levels` puts at ``NAMED_FROM`` or above, worked out
    on the distinct raw values alone (no level per node: at thousands of nodes a third of the
    cost). Bool, in the order of ``raw``."""
    out = numpy.zeros(raw.shape[0], dtype=bool)
    if raw.shape[0] == 0 or not bool(feasible.any()):
        return out
    q = numpy.round(raw[feasible], 9)
    ordered = numpy.sort(-q)  # ascending -q: best first (numpy.unique without an inverse would import numpy.ma)
    distinct = ordered[numpy.concatenate(([True], ordered[1:] != ordered[:-1]))]
    u = int(distinct.shape[0])
    # levels fall as the rank grows: the band is the first k distinct values
    k = int((_rank_levels(numpy.arange(u, dtype=numpy.int64), u, numpy) >= NAMED_FROM).sum())
    out[feasible] = -q <= distinct[k - 1]
    return out


def _preferred(band: numpy.ndarray[Any, Any], prefer: numpy.ndarray[Any, Any] | None) -> numpy.ndarray[Any, Any]:
    """The band's positions that ``prefer`` marks, when there are any; else the whole band."""
    if prefer is None or not band.shape[0]:
        return band
    kept = band[prefer[band]]
    return kept if kept.shape[0] else band


def lead_node(raw: numpy.ndarray[Any, Any], feasible: numpy.ndarray[Any, Any], names: Sequence[str],
              in_name_order: bool = False, prefer: numpy.ndarray[Any, Any] | None = None) -> int:
    """:func:`named` of ``to_levels(raw, feasible)`` (-1 when nothing is feasible), without the
    levels; ``in_name_order``: ``names`` are sorted, so the band's first position is its first
    by name."""
    band = _preferred(numpy.flatnonzero(top_band(raw, feasible)), prefer)
    if not band.shape[0]:
        return -1
    return int(band[0]) if in_name_order else min(band.tolist(), key=names.__getitem__)


def best_first(raw: numpy.ndarray[Any, Any], among: numpy.ndarray[Any, Any], first: int, limit: int) -> list[int]:
    """Up to ``limit`` positions of ``among`` (bool, nodes of the feasible set ``raw`` was
    levelled over), in the order of their levels (with ``first`` named, :func:`with_lead`, or
    plain when ``first`` is -1), then raw score, then position: a stable sort by
    ``(-level, -raw)``. A better raw score never has a lower level, so past the named node
    that order is the raw scores' (higher first, ties by position) and needs no levels."""
    out: list[int] = []
    left = among.copy()
    if first >= 0 and bool(left[first]):
        out.append(first)
        left[first] = False
    key = numpy.where(left, raw, -numpy.inf)
    while len(out) < limit and bool(left.any()):
        i = int(numpy.flatnonzero(left & (key == key[left].max()))[0])
        out.append(i)
        left[i] = False
        key[i] = -numpy.inf
    return out


def named(level: numpy.ndarray[Any, Any], names: Sequence[str], prefer: numpy.ndarray[Any, Any] | None = None) -> int:
    """The position of the node the levels name: among those at ``NAMED_FROM`` and above, the
    one whose name sorts first; -1 when there is none (no node fits). ``prefer`` (bool per
    node): name among the band's nodes it marks, when there are any (a share that keeps to a
    pattern there: ``Verdicts.keeps``, :mod:`gpupack.kernel.pairing`)."""
    band = _preferred(numpy.flatnonzero(level >= NAMED_FROM), prefer).tolist()
    return min(band, key=names.__getitem__) if band else -1


def with_lead(level: numpy.ndarray[Any, Any], names: Sequence[str],
              prefer: numpy.ndarray[Any, Any] | None = None) -> numpy.ndarray[Any, Any]:
    """``level`` (host levels of the nodes ``names``) with one node named: :func:`named` gets
    10, every other node at most ``10 - LEAD``."""
    first = named(level, names, prefer)
    if first < 0:
        return level
    out: numpy.ndarray[Any, Any] = numpy.minimum(level, MAX_LEVEL - LEAD)
    out[first] = MAX_LEVEL
    return out
