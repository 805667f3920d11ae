"""Shared pieces of the baselines: feasibility by the kernel's unit rule, device choices, fractions."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy

from simulator.model import Devices, FloatArray, IntArray, State, Task
from gpupack.kernel import Slots
from gpupack.kernel import slots as kslots
from gpupack.kernel.usage import idle_capacity
from gpupack.kernel.xp import row_sum, to_host

if TYPE_CHECKING:
    from simulator.placers import Choice, Workload

HostArray = numpy.ndarray[Any, Any]


def view(st: State, task: Task, rows: IntArray) -> tuple[Slots, HostArray, HostArray]:
    """``(sub-slots, units per slot, feasible per node)`` of ``task`` on ``rows`` (host arrays).
    CPU-only tasks fit every candidate (the node filters already checked CPU and memory)."""
    xp = st.xp
    sub = st.slots.rows(xp.asarray(rows))
    if not task.wants_gpu:
        return sub, numpy.zeros(sub.shape, dtype=numpy.int32), numpy.ones(rows.shape[0], dtype=bool)
    u = to_host(kslots.units(sub, task.request, xp))
    return sub, u, u.sum(axis=1) >= task.count


def gpu_used_milli(st: State, sub: Slots) -> tuple[FloatArray, FloatArray]:
    """``(used, total)`` GPU capacity per node, milli-GPUs."""
    xp = st.xp
    idle = to_host(row_sum(idle_capacity(sub, sub.free, sub.free_memory_mib, xp), xp)) * 1000.0
    total = to_host(row_sum(sub.weight * (sub.capacity > 0) * sub.healthy, xp)) * 1000.0
    return total - idle, total


def fractions_after(st: State, task: Task, rows: IntArray, sub: Slots) -> list[FloatArray]:
    """Used fraction of CPU, memory and GPU (an opaque node-level count) per node, once placed."""
    cpu = (st.cluster.cpu_milli[rows] - st.cpu_free[rows] + task.cpu_milli) / numpy.maximum(st.cluster.cpu_milli[rows], 1)
    mem = (st.cluster.memory_mib[rows] - st.memory_free[rows] + task.memory_mib) / numpy.maximum(
        st.cluster.memory_mib[rows], 1)
    used, total = gpu_used_milli(st, sub)
    gpu = (used + task.gpu_milli) / numpy.maximum(total, 1e-9)
    return [cpu, mem, gpu]


def first_fit(units: HostArray, count: int) -> Devices:
    """The lowest-index slots with room, as the device plugin's own first-fit choice makes it."""
    out: list[tuple[int, int]] = []
    left = count
    for col in range(units.shape[0]):
        if left <= 0:
            break
        n = min(int(units[col]), left)
        if n > 0:
            out.append((col, n))
            left -= n
    return tuple(out) if left <= 0 else ()


def tightest(units: HostArray, idle: HostArray) -> Devices:
    """For one unit: the slot with room and the least idle capacity (best fit), lowest index on ties."""
    cols = numpy.nonzero(units > 0)[0]
    if cols.shape[0] == 0:
        return ()
    return ((int(cols[int(numpy.argmin(idle[cols]))]), 1),)


def pick(score: HostArray, feasible: HostArray) -> int | None:
    """Index of the best feasible score, the first (in the seeded node order) on ties."""
    if not feasible.any():
        return None
    return int(numpy.argmax(numpy.where(feasible, score, -numpy.inf)))


class NodeScoringPlacer:
    """A baseline that scores each feasible node from its used fractions once the pod is placed
    (:func:`fractions_after`), takes the best (:func:`pick`) and first-fit devices there. A
    baseline module sets ``name`` and ``score`` (its formula) and may override :meth:`devices`."""

    name = ""
    score: Callable[[list[HostArray]], HostArray]

    def __init__(self, wl: Workload) -> None:
        self.wl = wl

    def devices(self, st: State, task: Task, sub: Slots, units: HostArray, i: int) -> Devices:
        """The devices on candidate ``i`` (a row of ``sub``): the lowest-index ones with room."""
        return first_fit(units[i], task.count)

    def choose(self, st: State, task: Task, rows: IntArray) -> Choice:
        if rows.shape[0] == 0:
            return None
        sub, units, feasible = view(st, task, rows)
        i = pick(type(self).score(fractions_after(st, task, rows, sub)), feasible)
        if i is None:
            return None
        return int(rows[i]), self.devices(st, task, sub, units, i)
