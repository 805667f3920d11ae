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

With ``lead`` (packing policies, for requests with GPUs: ``Policy.leads``), one node is named: the first, in the order of the
list, of the nodes at 10 (the best band) keeps 10 and every other node gets at most
``10 - LEAD``. kube-scheduler adds the extender's level times ten times its weight to its
own scores and picks at random among the best totals; the best band holds many nodes of
nearly equal raw score, and a random pick among them (or NodeResourcesFit's CPU packing)
spreads a burst over them, where a fixed first choice fills one node after another and
keeps the rest whole, as first-fit does. On the Alibaba trace with the FGD protocol the
default policy went from 4.96 % unallocated (random among the best band) to 4.80 %
(docs/simulator.md).
"""

from __future__ import annotations

from scheduler_ext.kernel.xp import Array, Namespace

MAX_LEVEL = 10
#: Levels by which the named node leads every other node (``lead``): NodeResourcesFit scores
#: 0..100 and the shipped extender weight 5 makes a level worth 50 points, so a lead of 2
#: levels lets NodeResourcesFit break a tie at most, never overrule the choice.
LEAD = 2


def to_levels(raw: Array, feasible: Array, xp: Namespace, lead: bool = False) -> Array:
    """int64 levels 0..10 for ``raw`` (higher is better), 0 where not ``feasible``; with
    ``lead``, the first node of the best band alone at 10 (see the module)."""
    out = xp.zeros(raw.shape[0], dtype=xp.int64)
    if raw.shape[0] == 0 or not bool(feasible.any()):
        return out
    q = xp.round(raw[feasible], 9)
    distinct, inverse = xp.unique(-q, return_inverse=True)  # ascending -q: best first
    u = int(distinct.shape[0])
    r = inverse.reshape(-1).astype(xp.int64)
    if u == 1:
        lv = xp.full(r.shape, MAX_LEVEL, dtype=xp.int64)
    elif u <= MAX_LEVEL + 1:
        lv = MAX_LEVEL - xp.round(r * MAX_LEVEL / (u - 1)).astype(xp.int64)
    else:
        lv = MAX_LEVEL - (r * (MAX_LEVEL + 1)) // u
    out[feasible] = lv
    if lead:
        first = int(xp.argmax(out))  # the first node at 10
        out = xp.minimum(out, MAX_LEVEL - LEAD)
        out[first] = MAX_LEVEL
    return out
