"""``fragmentation``: the placement that raises the node's expected fragmentation least.

After the FGD rule of Weng et al. (USENIX ATC 2023), extended to MIG instances and
memory-sized shares by working on slots and units (see :mod:`scheduler_ext.kernel.slots`):

    idle(s)     = weight(s) * (1 - used(s))                  for healthy slots, in GPUs
    F_m(node)   = sum_s idle(s)                              if node cannot host shape m
                = sum_s idle(s) * [units_m(s) == 0]          otherwise
    F(node)     = sum_m p_m * F_m(node)                      over the recent mix of shapes
    raw         = -(F_after - F_before) + 0.001 * u_after

A shape ``m`` is a request (resource, count, memory hint); ``units_m(s)`` is how many of its
units slot ``s`` can host, so a GPU whose memory is mostly claimed by hinted shares is a
fragment for a large-memory share, and a free MIG 1g slice is a fragment for a 3g request.
The small ``u_after`` term breaks ties towards fuller nodes, like FGD's first-fit ties.
Without a recorded mix, the request itself is the only shape.
"""

from __future__ import annotations

from scheduler_ext.kernel.slots import Mix, Slots, units
from scheduler_ext.kernel.usage import ScoreInput, idle_capacity, node_utilisation
from scheduler_ext.kernel.xp import Array, Namespace, row_sum


def expected_fragmentation(
    s: Slots,
    free: Array,
    free_memory_mib: Array,
    mix: Mix,
    xp: Namespace,
) -> Array:
    """``F(node)`` for the given free shares and memory, per node, in GPUs."""
    idle = idle_capacity(s, free, free_memory_mib, xp)
    total_idle = row_sum(idle, xp)
    out = xp.zeros(s.shape[0], dtype=xp.float64)
    for shape, p in mix:
        u = units(s, shape, xp, free=free, free_memory_mib=free_memory_mib)
        fits = row_sum(u, xp) >= shape.count
        stranded = row_sum(idle * (u == 0), xp)
        out += p * xp.where(fits, stranded, total_idle)
    return out


def score(inp: ScoreInput) -> Array:
    xp, s = inp.xp, inp.before
    mix = inp.mix or ((inp.request, 1.0),)
    free, free_mem = inp.after()
    f_before = expected_fragmentation(s, s.free, s.free_memory_mib, mix, xp)
    f_after = expected_fragmentation(s, free, free_mem, mix, xp)
    return -(f_after - f_before) + 0.001 * node_utilisation(s, free, free_mem, xp)
