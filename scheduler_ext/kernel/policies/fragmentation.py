"""``fragmentation``: the placement that raises the node's expected fragmentation least.

After the FGD rule of Weng et al. (USENIX ATC 2023), extended to MIG instances and
memory-sized shares by working on slots and units (see :mod:`scheduler_ext.kernel.slots`):

    idle(s)     = weight(s) * (1 - used(s))                  for healthy slots, in GPUs
    F_m(node)   = sum_s idle(s)                              if node cannot host shape m
                = sum_s idle(s) * [units_m(s) == 0]          otherwise
    F(node)     = sum_m p_m * F_m(node)                      over the recent mix of shapes
    raw         = -(F_after - F_before) + 0.001 * u_after

A shape ``m`` is a request: its GPU part (resource, count, memory hint) and its CPU and
node memory. The node "cannot host m" when too few slots have room for m's units, **or when
m's CPU (``cpu_milli``) or memory (``node_memory_mib``) exceeds the node's free CPU or
memory** (``Slots.node_cpu_free``/``node_memory_free``, after the placement for
``F_after``): GPUs beside which a typical pod's CPU no longer fits are stranded just as much
as GPUs too small for it. A CPU-only shape (``count == 0``) strands nothing where its CPU and
memory fit and all the node's idle GPU capacity where they do not. ``units_m(s)`` is how
many of m's units slot ``s`` can host, so a GPU whose memory is mostly claimed by hinted
shares is a fragment for a large-memory share, and a free MIG 1g slice is a fragment for a
3g request. The small ``u_after`` term breaks ties towards fuller nodes, like FGD's
first-fit ties. Without a recorded mix, the request itself is the only shape. Nodes whose
CPU and memory are not tracked (``UNLIMITED``) fit every shape's CPU and memory.

Shapes that share a GPU part share one pass over the slots; each shape's CPU and memory
test is one comparison per node.
"""

from __future__ import annotations

from scheduler_ext.kernel.slots import Mix, Request, Slots, units
from scheduler_ext.kernel.usage import ScoreInput, idle_capacity, node_utilisation
from scheduler_ext.kernel.xp import Array, Namespace, row_sum


def _by_gpu_part(mix: Mix) -> dict[Request, list[tuple[Request, float]]]:
    out: dict[Request, list[tuple[Request, float]]] = {}
    for shape, p in mix:
        out.setdefault(shape.gpu, []).append((shape, p))
    return out


def expected_fragmentation(
    s: Slots,
    free: Array,
    free_memory_mib: Array,
    mix: Mix,
    xp: Namespace,
    cpu_free: Array | None = None,
    memory_free: Array | None = None,
) -> Array:
    """``F(node)`` for the given free shares and memory, per node, in GPUs; the node's free
    CPU and memory default to ``s.node_cpu_free``/``s.node_memory_free``."""
    cpu = s.node_cpu_free if cpu_free is None else cpu_free
    mem = s.node_memory_free if memory_free is None else memory_free
    idle = idle_capacity(s, free, free_memory_mib, xp)
    total_idle = row_sum(idle, xp)
    out = xp.zeros(s.shape[0], dtype=xp.float64)
    for gpu, shapes in _by_gpu_part(mix).items():
        if gpu.count <= 0:
            fits = xp.ones(s.shape[0], dtype=bool)
            stranded = xp.zeros(s.shape[0], dtype=xp.float64)
        else:
            u = units(s, gpu, xp, free=free, free_memory_mib=free_memory_mib)
            fits = row_sum(u, xp) >= gpu.count
            stranded = row_sum(idle * (u == 0), xp)
        for shape, p in shapes:
            ok = fits
            if shape.cpu_milli > 0:
                ok = ok & (cpu >= shape.cpu_milli)
            if shape.node_memory_mib > 0:
                ok = ok & (mem >= shape.node_memory_mib)
            out += p * xp.where(ok, stranded, total_idle)
    return out


def score(inp: ScoreInput) -> Array:
    xp, s = inp.xp, inp.before
    mix = inp.mix or ((inp.request, 1.0),)
    free, free_mem = inp.after()
    cpu, mem = inp.node_after()
    f_before = expected_fragmentation(s, s.free, s.free_memory_mib, mix, xp)
    f_after = expected_fragmentation(s, free, free_mem, mix, xp, cpu, mem)
    return -(f_after - f_before) + 0.001 * node_utilisation(s, free, free_mem, xp)
