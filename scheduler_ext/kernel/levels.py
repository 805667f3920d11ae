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
"""

from __future__ import annotations

from scheduler_ext.kernel.xp import Array, Namespace

MAX_LEVEL = 10


def to_levels(raw: Array, feasible: Array, xp: Namespace) -> Array:
    """int64 levels 0..10 for ``raw`` (higher is better), 0 where not ``feasible``."""
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
    return out
