"""The simulated cluster, its tasks, and the state being filled (host bookkeeping + kernel arrays).

The kernel's slots carry each node's free CPU and memory too (``node_cpu_free``,
``node_memory_free``), kept in step with the host arrays the node filters read.

GPU capacity is counted in *milli-GPUs*: a slot of weight ``w`` (a whole GPU is 1, a MIG
instance its memory share) holds ``1000 * w``; a task's GPU demand is what it takes of that.
CPU and memory are node-level hard filters, as kube-scheduler's NodeResourcesFit applies them
before the extender is asked; a task's allowed GPU models (``gpu_spec``) are a node filter, as
node affinity on ``gpupack.io/gpu.product`` would be.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy

from gpupack.kernel import Request, Slots
from gpupack.kernel import slots as kslots
from gpupack.kernel.usage import idle_capacity
from gpupack.kernel.xp import Array, Namespace, to_host

IntArray = numpy.ndarray[Any, numpy.dtype[numpy.int64]]
FloatArray = numpy.ndarray[Any, numpy.dtype[numpy.float64]]
BoolArray = numpy.ndarray[Any, numpy.dtype[numpy.bool_]]

#: A device choice: ``((slot column, units), ...)``, as :func:`choose_devices` returns it.
Devices = tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class Task:
    """One pod: CPU and memory, at most one GPU resource, allowed GPU models, life span."""

    name: str
    cpu_milli: int
    memory_mib: int
    resource: int = -1  # interned resource id; -1: CPU-only
    count: int = 0  # units of ``resource``
    gpu_memory_mib: int = 0  # per-unit memory hint (0: none)
    models: frozenset[int] = frozenset()  # allowed GPU model ids; empty: any
    gpu_milli: int = 0  # GPU capacity it takes in total, milli-GPUs (its arrived GPU workload)
    start: float = 0.0  # arrival time, seconds
    end: float = math.inf  # departure time, seconds

    @property
    def wants_gpu(self) -> bool:
        return self.resource >= 0 and self.count > 0

    @property
    def request(self) -> Request:
        """The kernel's request: the GPU part, and the CPU and memory (which ``fragmentation``
        reads to see what the placement leaves of the node)."""
        return Request(self.resource, self.count, self.gpu_memory_mib, self.cpu_milli, self.memory_mib,
                       self.models if self.wants_gpu else frozenset())


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Nodes (host arrays, one entry per node) and their GPU slots (kernel arrays, NumPy)."""

    names: tuple[str, ...]
    cpu_milli: IntArray
    memory_mib: IntArray
    slots: Slots  # every slot free
    resources: tuple[str, ...]  # interned resource names, by id
    models: tuple[str, ...]  # interned GPU model names, by id

    @property
    def nodes(self) -> int:
        return len(self.names)

    @property
    def gpu_milli(self) -> float:
        """Total GPU capacity, milli-GPUs (healthy slots)."""
        s = self.slots
        return float(1000.0 * (s.weight * (s.capacity > 0) * s.healthy).sum())

    def has_model(self) -> BoolArray:
        """``(nodes, models)``: whether a node has a slot of each GPU model."""
        out = numpy.zeros((self.nodes, max(len(self.models), 1)), dtype=bool)
        model = to_host(self.slots.model)
        rows, cols = numpy.nonzero((model >= 0) & (to_host(self.slots.capacity) > 0))
        out[rows, model[rows, cols]] = True
        return out


class State:
    """What is free now: CPU and memory per node (host), and the kernel's slots (``xp``)."""

    def __init__(self, cluster: Cluster, xp: Namespace) -> None:
        self.cluster = cluster
        self.xp = xp
        self.cpu_free: IntArray = cluster.cpu_milli.copy()
        self.memory_free: IntArray = cluster.memory_mib.copy()
        s = cluster.slots
        self.slots = Slots(**{f.name: xp.asarray(getattr(s, f.name)).copy() for f in dataclasses.fields(s)})
        # the kernel's copy of the free CPU and memory, kept in step by place()
        self.slots.node_cpu_free[:] = xp.asarray(self.cpu_free)
        self.slots.node_memory_free[:] = xp.asarray(self.memory_free)
        self._has_model = cluster.has_model()
        self._weight = to_host(s.weight)
        self._memory = to_host(s.memory_mib)
        self._capacity = to_host(s.capacity)
        self.changed: list[int] = []  # rows placed on or freed since a reader last cleared this

    def candidates(self, task: Task, order: IntArray) -> IntArray:
        """The nodes, in ``order``, that pass the node filters: CPU, memory, GPU model."""
        ok = (self.cpu_free >= task.cpu_milli) & (self.memory_free >= task.memory_mib)
        if task.models:
            known = [m for m in sorted(task.models) if 0 <= m < self._has_model.shape[1]]
            ok &= self._has_model[:, known].any(axis=1) if known else False
        return order[ok[order]]

    def unit_memory(self, row: int, col: int, task: Task) -> int:
        """Memory one unit of ``task`` takes on a slot (the kernel's rule, on one slot)."""
        if self._capacity[row, col] <= 1:
            return int(self._memory[row, col])
        if task.gpu_memory_mib > 0:
            return task.gpu_memory_mib
        return int(self._memory[row, col]) // max(int(self._capacity[row, col]), 1)

    def gpu_taken(self, row: int, devices: Devices, task: Task) -> float:
        """Milli-GPUs a placement takes: per slot, the larger of its share and memory fractions."""
        out = 0.0
        for col, n in devices:
            cap = max(int(self._capacity[row, col]), 1)
            mem = max(int(self._memory[row, col]), 1)
            frac = max(n / cap, n * self.unit_memory(row, col, task) / mem)
            out += 1000.0 * float(self._weight[row, col]) * min(frac, 1.0)
        return out

    def place(self, row: int, task: Task, devices: Devices, sign: int = 1) -> None:
        """Take (``sign=1``) or give back (``-1``) what ``task`` holds on ``row``."""
        self.cpu_free[row] -= sign * task.cpu_milli
        self.memory_free[row] -= sign * task.memory_mib
        self.changed.append(row)
        self.slots.node_cpu_free[row] = int(self.cpu_free[row])
        self.slots.node_memory_free[row] = int(self.memory_free[row])
        for col, n in devices:
            self.slots.free[row, col] -= sign * n
            self.slots.free_memory_mib[row, col] -= sign * n * self.unit_memory(row, col, task)

    def idle_milli_for(self, task: Task) -> float:
        """Idle GPU capacity, milli-GPUs, of the kind ``task`` asks (its resource, on nodes with
        an allowed model), on every node whatever its free CPU and memory."""
        s = self.slots
        mask = s.resource == task.resource
        if task.models:
            known = [m for m in sorted(task.models) if 0 <= m < self._has_model.shape[1]]
            rows = self._has_model[:, known].any(axis=1) if known else numpy.zeros(self.cluster.nodes, dtype=bool)
            mask = mask & self.xp.asarray(rows)[:, None]
        idle = idle_capacity(s, s.free, s.free_memory_mib, self.xp)
        return 1000.0 * float(self.xp.where(mask, idle, 0.0).sum())

    def allocated_milli(self) -> float:
        """GPU capacity in use now, milli-GPUs (total minus idle)."""
        s = self.slots
        idle = float(idle_capacity(s, s.free, s.free_memory_mib, self.xp).sum())
        return self.cluster.gpu_milli - 1000.0 * idle

    def free_nodes(self) -> int:
        """Nodes with nothing placed on them: what a cluster autoscaler could remove."""
        s = self.slots
        gpu_free = to_host(((s.free == s.capacity) & (s.free_memory_mib == s.memory_mib)).all(axis=1))
        c = self.cluster
        return int((gpu_free & (self.cpu_free == c.cpu_milli) & (self.memory_free == c.memory_mib)).sum())


def build_slots(
    gpus: list[list[tuple[int, int, int, float, int, int]]], width: int
) -> Slots:
    """Slots (NumPy) from per-node lists of ``(resource, capacity, memory_mib, weight, model,
    gpu index)`` columns; healthy, NUMA and NVLink unknown (-1) unless set by the caller."""
    s = kslots.empty_slots(numpy, len(gpus), width)
    for row, cols in enumerate(gpus):
        for col, (res, cap, mem, weight, model, gpu) in enumerate(cols):
            s.resource[row, col] = res
            s.capacity[row, col] = cap
            s.free[row, col] = cap
            s.memory_mib[row, col] = mem
            s.free_memory_mib[row, col] = mem
            s.healthy[row, col] = True
            s.weight[row, col] = weight
            s.model[row, col] = model
            s.gpu[row, col] = gpu
    return s


def host(a: Array) -> numpy.ndarray[Any, Any]:
    """A NumPy view of a kernel array (a copy from the GPU under CuPy)."""
    return to_host(a)
