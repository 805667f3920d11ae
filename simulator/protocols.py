"""The two ways a workload is played against a cluster, one (placer, seed) run at a time.

- ``fgd``: the FGD paper's protocol. Tasks shuffled with the seed, clones of random tasks
  appended until the GPU request reaches :data:`INFLATE` of the cluster's GPU capacity, no
  departures, a task that fits nowhere is dropped. Key figure: unallocated GPU % when the
  arrived GPU request first reaches 100 % of capacity.
- ``replay``: arrivals and departures in time order; a pod that fits nowhere waits (pending)
  and is retried, first come first served, whenever something departs. Sampled over time:
  idle and fragmented GPU capacity, nodes entirely free, pods pending.

Both write every decision to a :class:`~simulator.placements.Record` list, from which
:mod:`~simulator.placements` recomputes the figures.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence

import numpy

from simulator import kinds
from simulator.model import Cluster, IntArray, State, Task
from simulator.placements import Record
from simulator.placers import Placer, Workload
from gpupack import kernel
from gpupack.kernel.slots import units
from gpupack.kernel.xp import row_sum, to_host

#: The FGD protocol inflates the workload to this share of cluster GPU capacity.
INFLATE = 1.3
#: Points kept of each curve for the plot and summary.
CURVE_POINTS = 200

Tick = Callable[[int], None]


@dataclasses.dataclass
class RunResult:
    """One (placer, seed) run: headline figures, curves, and the records behind them."""

    placer: str
    seed: int
    protocol: str
    figures: dict[str, float]
    curves: dict[str, list[float]]
    records: list[Record]
    seconds: float = 0.0


def fgd_sequence(tasks: Sequence[Task], capacity_milli: float, seed: int) -> list[Task]:
    """The seeded shuffle, inflated with clones of random tasks to ``INFLATE`` x capacity."""
    rng = numpy.random.default_rng(seed)
    seq = [tasks[int(i)] for i in rng.permutation(len(tasks))]
    total = sum(t.gpu_milli for t in seq)
    n = 0
    while total < INFLATE * capacity_milli and tasks:
        t = tasks[int(rng.integers(len(tasks)))]
        seq.append(dataclasses.replace(t, name=f"{t.name}-clone{n}"))
        total += t.gpu_milli
        n += 1
    return seq


def node_order(cluster: Cluster, seed: int) -> IntArray:
    """The seeded random order of nodes that decides ties."""
    return numpy.random.default_rng(seed + 1_000_003).permutation(cluster.nodes).astype(numpy.int64)


def _sample(n: int) -> list[int]:
    return sorted({int(round(i)) for i in numpy.linspace(0, max(n - 1, 0), min(n, CURVE_POINTS))})


def _fragmented_pct(st: State, wl: Workload) -> float:
    _, frag = kernel.idle_and_fragmented(st.slots, wl.mix, st.xp)
    return 100.0 * 1000.0 * frag / max(st.cluster.gpu_milli, 1e-9)


def run_fgd(cluster: Cluster, tasks: Sequence[Task], placer: Placer, wl: Workload, seed: int,
            xp: object, tick: Tick | None = None) -> RunResult:
    st = State(cluster, xp)
    cap = cluster.gpu_milli
    seq = fgd_sequence(tasks, cap, seed)
    order = node_order(cluster, seed)
    records: list[Record] = []
    arrived = allocated = 0.0
    arrived_curve: list[float] = []
    alloc_curve: list[float] = []
    figures: dict[str, float] = {}
    for i, task in enumerate(seq):
        choice = placer.choose(st, task, st.candidates(task, order))
        taken = 0.0
        node = ""
        devices: tuple[tuple[int, int], ...] = ()
        if choice is not None and (choice[1] or not task.wants_gpu):
            row, devices = choice
            taken = st.gpu_taken(row, devices, task)
            st.place(row, task, devices)
            node = cluster.names[row]
        records.append(Record(i, task.name, node, devices, task.gpu_milli, taken,
                              task.cpu_milli, task.memory_mib, float(i), math.inf))
        arrived += task.gpu_milli
        allocated += taken
        arrived_curve.append(100.0 * arrived / cap)
        alloc_curve.append(100.0 * allocated / cap)
        if not figures and arrived >= cap:
            figures = {
                "unallocated_pct": 100.0 - 100.0 * allocated / cap,
                "fragmented_pct": _fragmented_pct(st, wl),
                "failed_tasks": float(sum(1 for r in records if not r.node)),
                "failed_gpu_pct": 100.0 * sum(r.requested for r in records if not r.node) / cap,
                "free_nodes": float(st.free_nodes()),
            }
        if tick is not None and i % 256 == 255:
            tick(256)
    if tick is not None:
        tick(len(seq) % 256)
    if not figures:  # the workload never reached capacity: report the end
        figures = {"unallocated_pct": 100.0 - 100.0 * allocated / cap, "fragmented_pct": _fragmented_pct(st, wl),
                   "failed_tasks": float(sum(1 for r in records if not r.node)),
                   "failed_gpu_pct": 100.0 * sum(r.requested for r in records if not r.node) / cap,
                   "free_nodes": float(st.free_nodes())}
    figures["allocated_end_pct"] = 100.0 * allocated / cap
    figures["failed_tasks_end"] = float(sum(1 for r in records if not r.node))
    keep = _sample(len(seq))
    curves = {"arrived_pct": [arrived_curve[k] for k in keep], "allocated_pct": [alloc_curve[k] for k in keep]}
    return RunResult(placer.name, seed, "fgd", figures, curves, records)


def run_replay(cluster: Cluster, tasks: Sequence[Task], placer: Placer, wl: Workload, seed: int,
               xp: object, tick: Tick | None = None, ask_all: bool = False) -> RunResult:
    """The replay protocol. ``ask_all``: on every departure, ask the placer about every pending
    pod, without the shortcut in ``retry`` (the same placements, several times slower; the
    tests compare the two)."""
    st = State(cluster, xp)
    cap = cluster.gpu_milli
    order = node_order(cluster, seed)
    seq = sorted(range(len(tasks)), key=lambda k: (tasks[k].start, k))
    records: dict[int, Record] = {}
    running: list[tuple[float, int, int, tuple[tuple[int, int], ...]]] = []  # (end, task, row, devices)
    pending: deque[int] = deque()
    t0 = tasks[seq[0]].start if seq else 0.0
    t1 = max((tasks[k].start for k in seq), default=0.0)
    grid = list(numpy.linspace(t0, t1, CURVE_POINTS)) if t1 > t0 else [t0]
    curves: dict[str, list[float]] = {k: [] for k in ("time_h", "idle_pct", "fragmented_pct", "allocated_pct",
                                                      "free_nodes", "pending")}

    def try_place(k: int, now: float) -> bool:
        task = tasks[k]
        if task.end <= now:  # gone before it could run: out of the queue, never placed
            records[k] = Record(k, task.name, "", (), task.gpu_milli, 0.0, task.cpu_milli, task.memory_mib,
                                task.start, task.end)
            return True
        choice = placer.choose(st, task, st.candidates(task, order))
        if choice is None or (task.wants_gpu and not choice[1]):
            return False
        row, devices = choice
        taken = st.gpu_taken(row, devices, task)
        st.place(row, task, devices)
        heapq.heappush(running, (task.end, k, row, devices))
        records[k] = Record(k, task.name, cluster.names[row], devices, task.gpu_milli, taken,
                            task.cpu_milli, task.memory_mib, now, task.end)
        return True

    def depart_until(now: float) -> None:
        while running and running[0][0] <= now:
            end, k, row, devices = heapq.heappop(running)
            st.place(row, tasks[k], devices, sign=-1)
            if pending:
                retry(end, row)

    def retry(now: float, freed: int) -> None:
        """Retries the pending pods after a departure from row ``freed``. Each of them fitted
        nowhere when last tried, and only ``freed`` has gained room since (every departure
        retries), so one that does not fit there is kept without asking the placer: every
        placer answers None for a pod that fits no candidate, and draws nothing for it."""
        one = numpy.asarray([freed], dtype=numpy.int64)
        for _ in range(len(pending)):
            k = pending.popleft()
            task = tasks[k]
            if not ask_all and task.end > now and not fits(task, one):
                pending.append(k)
            elif not try_place(k, now):
                pending.append(k)

    def fits(task: Task, one: IntArray) -> bool:
        if st.candidates(task, one).shape[0] == 0:
            return False
        if not task.wants_gpu:
            return True
        return int(to_host(row_sum(units(st.slots.rows(st.xp.asarray(one)), task.request, st.xp), st.xp))[0]) >= task.count

    def sample(now: float) -> None:
        idle = cap - st.allocated_milli()
        curves["time_h"].append((now - t0) / 3600.0)
        curves["idle_pct"].append(100.0 * idle / cap)
        curves["allocated_pct"].append(100.0 - 100.0 * idle / cap)
        curves["fragmented_pct"].append(_fragmented_pct(st, wl))
        curves["free_nodes"].append(float(st.free_nodes()))
        curves["pending"].append(float(len(pending)))

    g = 0
    waited_idle = 0  # pods that found no node although enough GPU capacity of their kind was idle
    for n, k in enumerate(seq):
        now = tasks[k].start
        while g < len(grid) and grid[g] < now:
            depart_until(grid[g])
            sample(grid[g])
            g += 1
        depart_until(now)
        if not try_place(k, now):
            pending.append(k)
            if tasks[k].wants_gpu and st.idle_milli_for(tasks[k]) >= tasks[k].gpu_milli:
                waited_idle += 1
        if tick is not None and n % 256 == 255:
            tick(256)
    while g < len(grid):
        depart_until(grid[g])
        sample(grid[g])
        g += 1
    if tick is not None:
        tick(len(seq) % 256)
    for k in pending:
        t = tasks[k]
        records[k] = Record(k, t.name, "", (), t.gpu_milli, 0.0, t.cpu_milli, t.memory_mib, t.start, t.end)
    out = [records[k] for k in sorted(records)]
    def mean(key: str) -> float:
        return float(numpy.mean(curves[key])) if curves[key] else 0.0
    figures = {
        "mean_idle_pct": mean("idle_pct"),
        "mean_fragmented_pct": mean("fragmented_pct"),
        "mean_free_nodes": mean("free_nodes"),
        "peak_pending": max(curves["pending"], default=0.0),
        "pending_end": float(len(pending)),
        "never_placed": float(sum(1 for r in out if not r.node)),
        "placed": float(sum(1 for r in out if r.node)),
        "waited_gpus_idle": float(waited_idle),
        **kinds.waiting_figures(tasks, out, cluster.resources),
    }
    return RunResult(placer.name, seed, "replay", figures, curves, out)
