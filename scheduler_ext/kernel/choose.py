"""The concrete devices for the chosen node.

Shares follow the packed take plan (fewest units left first, so whole GPUs stay whole).
Whole devices prefer locality: the smallest NVLink group that holds them all (keeping
bigger free groups whole for bigger requests; for one device, the most broken group), else
the smallest NUMA node that does, else the lowest free indices.
"""

from __future__ import annotations

from collections import defaultdict

from scheduler_ext.kernel.slots import Request, Slots, take_plan, units
from scheduler_ext.kernel.xp import Namespace, to_host


def _best_group(cols: list[int], groups: list[int], count: int) -> list[int] | None:
    members: dict[int, list[int]] = defaultdict(list)
    for c, g in zip(cols, groups):
        if g >= 0:
            members[g].append(c)
    fitting = [(len(m), g) for g, m in members.items() if len(m) >= count]
    if not fitting:
        return None
    _, group = min(fitting)
    return sorted(members[group])[:count]


def choose_devices(s: Slots, row: int, req: Request, xp: Namespace) -> tuple[tuple[int, int], ...]:
    """``((column, units), ...)`` for ``req`` on node ``row``; ``()`` when it does not fit."""
    one = s.rows(xp.asarray([row]))
    avail = units(one, req, xp)
    if int(avail.sum()) < req.count or req.count <= 0:
        return ()
    whole = to_host(one.capacity[0] <= 1)
    free_cols = [int(c) for c in to_host(xp.nonzero(avail[0] > 0)[0])]
    if all(bool(whole[c]) for c in free_cols):
        nvgroup = to_host(one.nvgroup[0])
        numa = to_host(one.numa[0])
        picked = _best_group(free_cols, [int(nvgroup[c]) for c in free_cols], req.count)
        if picked is None:
            picked = _best_group(free_cols, [int(numa[c]) for c in free_cols], req.count)
        if picked is None:
            picked = free_cols[: req.count]
        return tuple((c, 1) for c in picked)
    take = to_host(take_plan(one, req, xp, avail=avail)[0])
    return tuple((int(c), int(take[c])) for c in range(take.shape[0]) if take[c] > 0)
