"""FGD, Fragmentation Gradient Descent (Weng et al., USENIX ATC 2023), as published.

For each typical task shape ``m`` (the shapes covering 95 % of tasks, with frequency
``p_m``), with ``idle(g)`` a GPU's idle capacity in milli-GPUs:

    F_m(node) = sum_g idle(g)                     if m cannot run on the node (CPU, GPU model,
                                                  or too few GPUs with room for it)
              = sum_g idle(g) * [g has no room for m's per-GPU request]    otherwise
    F(node)   = sum_m p_m * F_m(node)
    delta     = F_before - F_after                (milli-GPUs; negative when it fragments)
    score     = floor(100 * sigmoid(delta / 1000))

The highest integer score wins; ties go to the first node in the run's seeded random node
order (the integer score makes many nodes tie, which turns FGD partly into first-fit
packing; ranking by the exact delta does far worse on the Alibaba trace). Within the node a
share (one unit smaller than a whole device) goes to the GPU with the best delta, lowest
index on ties; whole GPUs go to the lowest-index free ones. "Room for m" is the kernel's
unit rule (free shares and free memory per slot), which on the trace is the paper's "free
milli-GPU >= gpu_milli"; memory is not part of the fragmentation measure, as in the paper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy

from simulator.baselines import common
from simulator.model import IntArray, State, Task
from gpupack.kernel import Slots
from gpupack.kernel import slots as kslots
from gpupack.kernel.usage import idle_capacity
from gpupack.kernel.xp import to_host

if TYPE_CHECKING:
    from simulator.placers import Choice, Workload

H = common.HostArray


def node_score(delta: H) -> H:
    """``floor(100 * sigmoid(delta / 1000))``."""
    return numpy.floor(100.0 / (1.0 + numpy.exp(-numpy.clip(delta / 1000.0, -50.0, 50.0))))


class Placer:
    name = "fgd"

    def __init__(self, wl: Workload) -> None:
        self.wl = wl
        self._models: dict[frozenset[int], H] = {}

    def _model_ok(self, st: State, shape: Task, rows: IntArray) -> H:
        if not shape.models:
            return numpy.ones(rows.shape[0], dtype=bool)
        ok = self._models.get(shape.models)
        if ok is None:
            probe = Task("", 0, 0, models=shape.models)
            ok = self._models[shape.models] = numpy.zeros(st.cluster.nodes, dtype=bool)
            ok[st.candidates(probe, numpy.arange(st.cluster.nodes))] = True
        return ok[rows]

    def _shape_terms(
        self, st: State, sub: Slots, free: object, free_mem: object, shape: Task, rows: IntArray
    ) -> tuple[H, H]:
        """``(units of shape per slot, whether the node has enough of them)`` on host."""
        if not shape.wants_gpu:
            u = numpy.zeros(sub.shape, dtype=numpy.int32)
            return u, numpy.ones(rows.shape[0], dtype=bool)
        u = to_host(kslots.units(sub, shape.request, st.xp, free=free, free_memory_mib=free_mem))
        return u, u.sum(axis=1) >= shape.count

    def fragmentation(self, st: State, sub: Slots, free: object, free_mem: object, cpu_free: H, rows: IntArray) -> H:
        """``F(node)`` for the given free shares, memory and CPU, milli-GPUs."""
        idle = 1000.0 * to_host(idle_capacity(sub, free, free_mem, st.xp))
        total = idle.sum(axis=1)
        out = numpy.zeros(rows.shape[0])
        for shape, p in self.wl.shapes:
            u, enough = self._shape_terms(st, sub, free, free_mem, shape, rows)
            fits = enough & (cpu_free >= shape.cpu_milli) & self._model_ok(st, shape, rows)
            out += p * numpy.where(fits, (idle * (u == 0)).sum(axis=1), total)
        return out

    def choose(self, st: State, task: Task, rows: IntArray) -> Choice:
        if rows.shape[0] == 0:
            return None
        xp = st.xp
        sub, units, feasible = common.view(st, task, rows)
        if not feasible.any():
            return None
        cpu = st.cpu_free[rows]
        f_before = self.fragmentation(st, sub, sub.free, sub.free_memory_mib, cpu, rows)
        if task.wants_gpu and task.count == 1 and task.gpu_milli < 1000:
            delta, col = self._share_deltas(st, sub, task, units, cpu, f_before, rows)
            i = common.pick(node_score(delta), feasible)
            if i is None:
                return None
            return int(rows[i]), ((int(col[i]), 1),)
        take = numpy.zeros(units.shape, dtype=numpy.int32)
        if task.wants_gpu:
            before = numpy.cumsum(units, axis=1) - units
            take = numpy.clip(numpy.minimum(units, task.count - before), 0, None).astype(numpy.int32)
        um = to_host(kslots.unit_memory(sub, task.request, xp)) if task.wants_gpu else numpy.zeros_like(take)
        free = sub.free - xp.asarray(take)
        free_mem = sub.free_memory_mib - xp.asarray(take * um)
        f_after = self.fragmentation(st, sub, free, free_mem, cpu - task.cpu_milli, rows)
        i = common.pick(node_score(f_before - f_after), feasible)
        if i is None:
            return None
        return int(rows[i]), common.first_fit(units[i], task.count)

    def _share_deltas(
        self, st: State, sub: Slots, task: Task, units: H, cpu: H, f_before: H, rows: IntArray
    ) -> tuple[H, H]:
        """Best delta per node over the slots that can take the share, and that slot.

        Placing one unit on slot ``c`` changes only column ``c``, so every column's
        alternative is computed at once: per slot, its values as if it alone took the unit."""
        xp = st.xp
        um = kslots.unit_memory(sub, task.request, xp)
        free_alt = sub.free - 1
        mem_alt = sub.free_memory_mib - um
        idle = 1000.0 * to_host(idle_capacity(sub, sub.free, sub.free_memory_mib, xp))
        idle_alt = 1000.0 * to_host(idle_capacity(sub, free_alt, mem_alt, xp))
        total = idle.sum(axis=1)[:, None]
        total_alt = total - idle + idle_alt
        cpu_after = cpu - task.cpu_milli
        f_after = numpy.zeros(units.shape)
        for shape, p in self.wl.shapes:
            model_ok = self._model_ok(st, shape, rows)[:, None]
            if not shape.wants_gpu:
                fits = (cpu_after >= shape.cpu_milli)[:, None] & model_ok
                f_after += p * numpy.where(fits, 0.0, total_alt)
                continue
            u_b, _ = self._shape_terms(st, sub, sub.free, sub.free_memory_mib, shape, rows)
            u_a = numpy.maximum(
                to_host(kslots.units(sub, shape.request, xp, free=xp.maximum(free_alt, 0),
                                     free_memory_mib=xp.maximum(mem_alt, 0))), 0)
            count_a = u_b.sum(axis=1)[:, None] - u_b + u_a
            stranded_b = (idle * (u_b == 0)).sum(axis=1)[:, None]
            stranded_a = stranded_b - idle * (u_b == 0) + idle_alt * (u_a == 0)
            fits = (count_a >= shape.count) & (cpu_after >= shape.cpu_milli)[:, None] & model_ok
            f_after += p * numpy.where(fits, stranded_a, total_alt)
        delta = numpy.where(units > 0, f_before[:, None] - f_after, -numpy.inf)
        col = numpy.argmax(delta, axis=1)
        return delta[numpy.arange(delta.shape[0]), col], col
