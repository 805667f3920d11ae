"""Placers: the rule that picks a node and devices for one task. gpupack policies, and the registry.

A placer sees the state and the candidate nodes (those passing the node filters, in the run's
seeded random node order) and answers ``(row, devices)`` or ``None``. The published rules
(FGD, best-fit, ...) break ties by that order, as their simulator does. gpupack's policies
run inside kube-scheduler, which picks uniformly at random among the nodes with the highest
total score (1.37: a heap of totals whose ties go by a random number drawn for every node an
extender scored, ``framework.NewSortedScoredNodes``; the extender scores every candidate):
:class:`KernelPlacer` does the same with a generator seeded by the run's seed. (Ties to the first node in a fixed order would concentrate the load, a
first-fit packing kube-scheduler does not do; it flattered gpupack by about 0.1 point on the
trace, see docs/simulator.md.)

A gpupack policy is placed exactly as the extender does it: :func:`evaluate` on the
candidates' rows with the policy from ``POLICIES`` and the workload's mix of shapes (each with
its CPU and memory, CPU-only pods' shapes included) and, for the packing policies, its share
sizes (:mod:`gpupack.kernel.pairing`: the GPU a share takes, and the named node), the best
node, then :func:`choose_devices` on it under the same share sizes. The extender is asked about every pod (the deployed profile
names no ``managedResources``), so CPU-only pods are scored by the kernel too: a request of
no GPU whose CPU and memory the policy weighs (``fragmentation``: the idle GPUs they would
strand). ``select="deployed"`` adds the
extender's 0..10 level, weighted, to kube-scheduler's own scores, as a cluster does (with
the packing policies' named node for pods with GPUs: ``kernel.with_lead``, by node name);
``select="raw"`` takes the extender's raw ranking alone. ``devices="first-fit"``
(``gpupack-<name>@dra``) is DRA mode: the node is the extender's as above, the devices on it
are kube-scheduler's DRA allocator's, :func:`first_fit_devices`. kube-scheduler runs
with the profile gpupack deploys (``deploy/scheduler/kube-scheduler-config.yaml``:
NodeResourcesFit MostAllocated over CPU and memory, BalancedAllocation off, the extender at
weight 5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy

from simulator.model import Devices, FloatArray, IntArray, State, Task
from gpupack import kernel
from gpupack.kernel import pairing
from gpupack.kernel.node_sums import NodeSumsMemo, RowSubset
from gpupack.kernel.slots import units
from gpupack.kernel.xp import to_host

Choice = tuple[int, Devices] | None


class Placer(Protocol):
    name: str

    def choose(self, st: State, task: Task, rows: IntArray) -> Choice: ...


@dataclasses.dataclass(frozen=True)
class Workload:
    """What a placer may know of the workload as a whole: its mix of shapes (FGD's "typical
    pods"), the shapes that cover :data:`MIX_COVERAGE` of tasks, with CPU for FGD."""

    mix: kernel.Mix  # request shapes with CPU and memory (CPU-only ones too), for ``fragmentation``
    shapes: tuple[tuple[Task, float], ...]  # representative tasks with CPU, for FGD
    seed: int = 0
    shares: pairing.ShareMix = pairing.NO_SHARES  # every share size of the workload, for the pairing rule


#: FGD keeps the most frequent shapes that together cover this fraction of tasks.
MIX_COVERAGE = 0.95


def _top(counts: dict[object, int], total: int) -> list[tuple[object, int]]:
    out: list[tuple[object, int]] = []
    covered = 0
    for key, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        if covered >= MIX_COVERAGE * total:
            break
        out.append((key, n))
        covered += n
    return out


def workload(tasks: list[Task], seed: int = 0) -> Workload:
    """The mix of shapes of ``tasks`` (most frequent first, covering 95 %, renormalised): the
    kernel's requests, GPU part, CPU and memory, CPU-only pods included, as the extender
    records them."""
    req_counts: dict[object, int] = {}
    for t in tasks:
        req_counts[t.request] = req_counts.get(t.request, 0) + 1
    top = _top(req_counts, len(tasks))
    covered = sum(n for _, n in top) or 1
    mix = tuple((r, n / covered) for r, n in top if isinstance(r, kernel.Request))
    task_counts: dict[object, int] = {}
    first: dict[object, Task] = {}
    for t in tasks:
        key = (t.cpu_milli, t.resource, t.count, t.gpu_memory_mib, t.models)
        task_counts[key] = task_counts.get(key, 0) + 1
        first.setdefault(key, t)
    top_t = _top(task_counts, len(tasks))
    covered_t = sum(n for _, n in top_t) or 1
    shapes = tuple((first[k], n / covered_t) for k, n in top_t)
    shares = pairing.share_mix((t.gpu_memory_mib, t.cpu_milli, 1) for t in tasks
                               if t.count == 1 and 0 < t.gpu_milli < 1000 and t.gpu_memory_mib > 0)
    return Workload(mix, shapes, seed, shares)


#: The extender's weight in the deployed kube-scheduler configuration
#: (deploy/scheduler/kube-scheduler-config.yaml): its 0..10 level counts ``10 * EXTENDER_WEIGHT``
#: points per level against NodeResourcesFit's 0..100.
EXTENDER_WEIGHT = 5


def node_fit_most_allocated(st: State, task: Task, rows: IntArray) -> FloatArray:
    """NodeResourcesFit with MostAllocated over CPU and memory, as the deployed profile has it:
    ``floor(mean(100 * used_cpu, 100 * used_memory))`` once placed."""
    c = st.cluster
    cpu = (c.cpu_milli[rows] - st.cpu_free[rows] + task.cpu_milli) / numpy.maximum(c.cpu_milli[rows], 1)
    mem = (c.memory_mib[rows] - st.memory_free[rows] + task.memory_mib) / numpy.maximum(c.memory_mib[rows], 1)
    return numpy.floor(50.0 * (numpy.clip(cpu, 0, 1) + numpy.clip(mem, 0, 1)))


def first_fit_devices(st: State, row: int, task: Task) -> Devices:
    """The devices kube-scheduler's DRA allocator gives a claim of ``task.count`` devices on
    node ``row``: it scores nothing and walks the node's devices in the driver's order (GPU
    index order, each GPU's MIG devices after it: the slot columns' order here), taking each
    that still has room for one unit (a shared GPU: a share and the memory), one unit per
    device, until the count is met (docs/extender.md, "Who decides what"). ``()`` when the
    node has fewer such devices than the count: a claim's devices are distinct, so several
    shares of one GPU for one request, which the kernel may count, are not possible."""
    xp = st.xp
    one = st.slots.rows(xp.asarray([row]))
    avail = to_host(units(one, task.request, xp)[0])
    cols = [int(c) for c in numpy.flatnonzero(avail > 0)[: task.count]]
    return tuple((c, 1) for c in cols) if len(cols) == task.count else ()


@dataclasses.dataclass
class KernelPlacer:
    """A gpupack policy, through the extender's kernel, inside the deployed kube-scheduler profile.

    ``select="deployed"``: kube-scheduler's sum, ``10 * EXTENDER_WEIGHT * level`` plus
    NodeResourcesFit MostAllocated (CPU, memory); ``select="raw"``: the extender's raw ranking
    alone. CPU-only pods are scored the same way, as a request of no GPU. Ties: seeded random
    among the best, as kube-scheduler picks among its best totals."""

    name: str
    policy: kernel.Policy
    wl: Workload
    select: str = "deployed"
    devices: str = "kernel"  # or "first-fit": DRA mode, the allocator's choice on the node
    rng: numpy.random.Generator = dataclasses.field(init=False)
    _memo: NodeSumsMemo | None = dataclasses.field(init=False, default=None)
    _memo_of: State | None = dataclasses.field(init=False, default=None)

    def __post_init__(self) -> None:
        self.rng = numpy.random.default_rng(self.wl.seed)

    def _sums(self, st: State, rows: IntArray) -> RowSubset | None:
        """The per-node sums before placement, kept across tasks and recomputed only on the
        rows placed on or freed since (as the extender keeps them): ``fragmentation`` needs
        them on every candidate, and most rows do not change from one task to the next."""
        if not self.policy.uses_mix or st.xp is not numpy:
            return None
        if self._memo is None or self._memo_of is not st:
            self._memo, self._memo_of = NodeSumsMemo(st.slots.shape[0]), st
        elif st.changed:
            self._memo.mark(numpy.asarray(st.changed, dtype=numpy.int64))
        st.changed.clear()
        return RowSubset(self._memo, st.slots, rows)

    def choose(self, st: State, task: Task, rows: IntArray) -> Choice:
        if rows.shape[0] == 0:
            return None
        xp = st.xp
        sub = st.slots.rows(xp.asarray(rows))
        shares = self.wl.shares if self.policy.leads(task.request.count) else pairing.NO_SHARES
        v = kernel.evaluate(sub, task.request, self.policy, xp, mix=self.wl.mix, memo=self._sums(st, rows),
                            shares=shares)
        feasible = to_host(v.feasible)
        if not feasible.any():
            return None
        if self.select == "raw":
            key = to_host(v.raw)
        else:
            level = to_host(v.level)
            if self.policy.leads(task.request.count):  # one node named, as the extender does
                names = st.cluster.names
                level = kernel.with_lead(level, [names[r] for r in rows.tolist()], to_host(v.keeps))
            key = 10.0 * EXTENDER_WEIGHT * level + node_fit_most_allocated(st, task, rows)
        key = numpy.where(feasible, key, -numpy.inf)
        best = numpy.flatnonzero(key == key.max())
        i = int(best[self.rng.integers(best.shape[0])]) if best.shape[0] > 1 else int(best[0])
        row = int(rows[i])
        if not task.wants_gpu:
            return row, ()
        if self.devices == "first-fit":
            devices = first_fit_devices(st, row, task)
        else:
            devices = kernel.choose_devices(st.slots, row, task.request, xp, shares)
        return (row, devices) if devices else None


PlacerFactory = Callable[[Workload], Placer]


def registry() -> Mapping[str, PlacerFactory]:
    """Every placer by name: the baselines, then each gpupack policy as deployed
    (``gpupack-<name>``), by its raw ranking alone (``gpupack-<name>@raw``) and in DRA mode
    (``gpupack-<name>@dra``: devices by the DRA allocator's first fit)."""
    from simulator import baselines

    out: dict[str, PlacerFactory] = dict(baselines.BASELINES)
    for name, policy in kernel.POLICIES.items():
        for suffix, select, devices in (("", "deployed", "kernel"), ("@raw", "raw", "kernel"),
                                        ("@dra", "deployed", "first-fit")):
            label = f"gpupack-{name}{suffix}"

            def make(wl: Workload, label: str = label, policy: kernel.Policy = policy, select: str = select,
                     devices: str = devices) -> Placer:
                return KernelPlacer(label, policy, wl, select, devices)

            out[label] = make
    return out


def default_names() -> list[str]:
    """The placers a run compares unless told otherwise."""
    from simulator import baselines

    return list(baselines.BASELINES) + [f"gpupack-{n}" for n in kernel.POLICIES]


def make(names: list[str], wl: Workload) -> list[Placer]:
    """Placers by name; ``ValueError`` naming the known ones for an unknown name."""
    known = registry()
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown policies {', '.join(bad)}; choose from {', '.join(known)}")
    return [known[n](wl) for n in names]
