"""The bound: the least unallocated GPU % any placement rule, even one that knows the future,
could leave at 100 % arrived under protocol (a).

A linear programme (a relaxation, so its optimum is at least any rule's allocation):

- **nodes of one kind pooled**: nodes with the same GPU count, GPU models, CPU and memory are
  one bin of their summed CPU, memory and GPUs (a task may split over them; a multi-GPU task
  still needs a kind with that many GPUs on one node, of an allowed model);
- **GPUs packed exactly**: each GPU of a kind hosts one whole-GPU unit or one *pattern*, a set
  of shares whose milli-GPUs sum to at most 1000 (every such set is a column);
- **tasks fractional**: each task class (GPU part, CPU, memory, allowed models) places any
  amount up to its count, and may fail, CPU-only ones included.

Maximising the placed GPU milli gives the bound ``100 - 100 * placed / capacity``. Whole-GPU
work packs without loss, so on the Alibaba trace the bound is set by the shares: each
810-milli share leaves 190 that only the rare 50-160 milli shares can use. Needs SciPy (the
``bench`` extra); a pure function of the tasks and the cluster.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy

from gpupack.kernel.xp import to_host
from simulator.model import Cluster, Task

#: A GPU's capacity in milli-GPUs, the unit of shares.
GPU_MILLI = 1000
#: At most this many share patterns (sets of share sizes that fit one GPU) per cluster.
MAX_PATTERNS = 200_000
#: At most this many columns in the programme.
MAX_COLUMNS = 2_000_000

Kind = tuple[int, frozenset[int], int, int]  # GPUs a node, its GPU models, CPU milli, memory MiB
TaskClass = tuple[int, int, int, int, frozenset[int]]  # gpu milli, count, CPU, memory, models


def arrived(seq: Sequence[Task], capacity_milli: float) -> list[Task]:
    """The tasks of a protocol (a) sequence up to the one that brings the arrived GPU request to
    the capacity, as the headline figure counts them."""
    out: list[Task] = []
    total = 0.0
    for t in seq:
        out.append(t)
        total += t.gpu_milli
        if total >= capacity_milli:
            break
    return out


def node_kinds(cluster: Cluster) -> collections.Counter[Kind]:
    """How many nodes there are of each kind (GPU count, GPU models, CPU, memory). Only whole
    healthy GPUs: MIG slices (slot weights below one) are not modelled."""
    s = cluster.slots
    cap, weight, healthy, model = (to_host(x) for x in (s.capacity, s.weight, s.healthy, s.model))
    gpu = (cap > 0) & (healthy > 0)
    if numpy.any(gpu & (weight != 1)):
        raise ValueError("the bound models whole GPUs and shares of them; this cluster has MIG slices")
    kinds: collections.Counter[Kind] = collections.Counter()
    for i in range(cluster.nodes):
        models = frozenset(int(m) for m in model[i][gpu[i]])
        kinds[(int(gpu[i].sum()), models, int(cluster.cpu_milli[i]), int(cluster.memory_mib[i]))] += 1
    return kinds


def _task_class(t: Task) -> TaskClass:
    if not t.wants_gpu:
        return (0, 0, t.cpu_milli, t.memory_mib, frozenset())
    if t.count == 1 and 0 < t.gpu_milli < GPU_MILLI:
        return (t.gpu_milli, 1, t.cpu_milli, t.memory_mib, t.models)
    return (GPU_MILLI * t.count, t.count, t.cpu_milli, t.memory_mib, t.models)


def patterns(sizes: collections.Counter[int]) -> list[collections.Counter[int]]:
    """Every non-empty set of share sizes (with repeats, up to each size's count) that fits one
    GPU. ``ValueError`` past :data:`MAX_PATTERNS`."""
    order = sorted(sizes, reverse=True)
    out: list[collections.Counter[int]] = []

    def grow(i: int, left: int, cur: collections.Counter[int]) -> None:
        if i == len(order):
            if cur:
                out.append(collections.Counter(cur))
                if len(out) > MAX_PATTERNS:
                    raise ValueError(f"more than {MAX_PATTERNS} ways to fill a GPU with these share sizes")
            return
        size = order[i]
        for k in range(min(sizes[size], left // size) + 1):
            if k:
                cur[size] = k
            grow(i + 1, left - k * size, cur)
        cur.pop(size, None)

    grow(0, GPU_MILLI, collections.Counter())
    return out


def least_unallocated_pct(tasks: Sequence[Task], cluster: Cluster) -> float:
    """The least unallocated GPU % (of ``cluster.gpu_milli``) that placing ``tasks`` on
    ``cluster`` can leave, by the programme in the module docstring. ``ValueError`` when the
    programme would be too large or the solver fails."""
    from scipy.optimize import linprog  # the bench extra
    from scipy.sparse import coo_matrix

    capacity = cluster.gpu_milli
    if capacity <= 0:
        raise ValueError("the cluster has no GPU capacity")
    classes = collections.Counter(_task_class(t) for t in tasks)
    shares: collections.Counter[int] = collections.Counter()
    for (milli, count, *_), n in classes.items():
        if count == 1 and milli < GPU_MILLI and milli > 0:
            shares[milli] += n
    pats = patterns(shares)
    kinds = node_kinds(cluster)
    if len(kinds) * (len(pats) + len(classes)) > MAX_COLUMNS:
        raise ValueError(f"the programme would have more than {MAX_COLUMNS} columns")
    names = sorted(classes, key=repr)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    cost: list[float] = []
    limit: list[float] = []

    def row(bound: float) -> int:
        limit.append(bound)
        return len(limit) - 1

    def column(gain: float, entries: Sequence[tuple[int, float]]) -> None:
        for r, a in entries:
            rows.append(r)
            cols.append(len(cost))
            vals.append(a)
        cost.append(-gain)

    of_class = {c: row(classes[c]) for c in names}
    for (gpus, models, cpu, memory), n in kinds.items():
        r_gpu, r_cpu, r_mem = row(n * gpus), row(n * cpu), row(n * memory)
        r_size = {size: row(0) for size in shares}
        if gpus:
            for p in pats:
                column(0.0, [(r_gpu, 1.0)] + [(r_size[size], -float(k)) for size, k in p.items()])
        for c in names:
            milli, count, c_cpu, c_mem, allowed = c
            if count and (count > gpus or (allowed and not allowed & models)):
                continue
            entries = [(of_class[c], 1.0), (r_cpu, float(c_cpu)), (r_mem, float(c_mem))]
            if milli >= GPU_MILLI:
                entries.append((r_gpu, float(count)))
            elif count:
                entries.append((r_size[milli], 1.0))
            column(float(milli), entries)
    if not cost:  # nothing can go anywhere
        return 100.0
    a = coo_matrix((vals, (rows, cols)), shape=(len(limit), len(cost))).tocsr()
    res = linprog(numpy.asarray(cost), A_ub=a, b_ub=numpy.asarray(limit), bounds=(0, None), method="highs")
    if res.status != 0:
        raise ValueError(f"the bound's linear programme failed: {res.message}")
    return max(0.0, 100.0 - 100.0 * float(-res.fun) / capacity)
