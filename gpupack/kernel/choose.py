"""The concrete devices for the chosen node.

Shares follow the packed take plan (fewest units left first, so whole GPUs stay whole).
Whole devices prefer locality: the smallest NVLink group that holds them all (keeping
bigger free groups whole for bigger requests; for one device, the most broken group), then
within it the smallest NUMA node that holds them all, else as few NUMA nodes as possible
(largest free NUMA groups first), lowest indices on ties.
"""

from __future__ import annotations

from collections import defaultdict

from gpupack.kernel import pairing
from gpupack.kernel.slots import Request, Slots, take_plan, units
from gpupack.kernel.xp import Namespace, to_host


def _members(cols: list[int], groups: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for c, g in zip(cols, groups):
        out[g].append(c)
    return out


def _best_fit(members: dict[int, list[int]], count: int) -> list[int] | None:
    """The columns of the smallest group (id >= 0) holding ``count``, lowest ids on ties."""
    fitting = [(len(m), g) for g, m in members.items() if g >= 0 and len(m) >= count]
    if not fitting:
        return None
    return sorted(members[min(fitting)[1]])


def _whole(cols: list[int], nvgroup: list[int], numa: list[int], count: int) -> list[int]:
    # 1. the smallest NVLink group that holds them all (others stay whole for bigger requests)
    group = _best_fit(_members(cols, [nvgroup[c] for c in cols]), count)
    if group is not None:
        cols = group
    # 2. within it, the smallest NUMA node that holds them all
    by_numa = _members(cols, [numa[c] for c in cols])
    local = _best_fit(by_numa, count)
    if local is not None:
        return local[:count]
    # 3. else span as few NUMA nodes as possible: fullest-of-free NUMA nodes first
    ordered = sorted(by_numa.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return sorted([c for _, m in ordered for c in sorted(m)][:count])


def choose_devices(s: Slots, row: int, req: Request, xp: Namespace,
                   shares: pairing.ShareMix = pairing.NO_SHARES) -> tuple[tuple[int, int], ...]:
    """``((column, units), ...)`` for ``req`` on node ``row``; ``()`` when it does not fit. A
    share under a ``shares`` mix with patterns takes the GPU :mod:`~gpupack.kernel.pairing` picks."""
    one = s if s.shape[0] == 1 and row == 0 else s.rows(xp.asarray([row]))  # the caller's one-row copy as it is
    avail = units(one, req, xp)
    if int(avail.sum()) < req.count or req.count <= 0:
        return ()
    whole = to_host(one.capacity[0] <= 1)
    free_cols = [int(c) for c in to_host(xp.nonzero(avail[0] > 0)[0])]
    if all(bool(whole[c]) for c in free_cols):
        nvgroup = [int(x) for x in to_host(one.nvgroup[0])]
        numa = [int(x) for x in to_host(one.numa[0])]
        return tuple((c, 1) for c in _whole(free_cols, nvgroup, numa, req.count))
    plan = pairing.share_plan(one, req, avail, shares, xp)
    take = to_host((take_plan(one, req, xp, avail=avail) if plan is None else plan[0])[0])
    return tuple((int(c), int(take[c])) for c in range(take.shape[0]) if take[c] > 0)
