"""Other shapes of workload, made from a trace's own tasks, to check a rule is not fitted to one trace.

Each variant is a pure function of the trace's tasks, its cluster and a seed (the same seed
gives the same tasks). The issue names the shapes to try: more sharing, more multi-GPU,
GPU-model constraints, more CPU-only tasks.

- ``more-sharing``: each whole one-GPU task becomes, with probability 1/2, a sharing task
  whose per-GPU request is drawn from the trace's own sharing tasks.
- ``more-multi-gpu``: each whole one-GPU task becomes, with probability 1/4, a task of 2, 4
  or 8 whole GPUs (equally likely, at most the largest node's GPU count), its CPU and memory
  multiplied by the count and capped at the largest node's.
- ``gpu-models``: each GPU task is pinned, with probability 1/2, to one GPU model, drawn in
  proportion to the model's GPUs in the cluster (node affinity on the GPU product).
- ``more-cpu-only``: every CPU-only task comes three times.

Only the trace's encoding is rewritten (one shared resource, a hint in milli-GPUs, see
:mod:`simulator.trace`), so variants apply to trace input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy

from simulator import trace
from simulator.model import Cluster, Task
from gpupack.kernel.xp import to_host

Variant = Callable[[Sequence[Task], Cluster, numpy.random.Generator], list[Task]]


def _whole_single(t: Task) -> bool:
    return t.wants_gpu and t.count == 1 and t.gpu_memory_mib >= trace.MILLI


def more_sharing(tasks: Sequence[Task], cluster: Cluster, rng: numpy.random.Generator) -> list[Task]:
    sizes = [t.gpu_memory_mib for t in tasks if t.wants_gpu and t.count == 1 and t.gpu_memory_mib < trace.MILLI]
    pool = numpy.asarray(sizes or [trace.MILLI // 2])
    out = []
    for t in tasks:
        if _whole_single(t) and rng.random() < 0.5:
            milli = int(pool[rng.integers(pool.shape[0])])
            t = dataclasses.replace(t, gpu_memory_mib=milli, gpu_milli=milli)
        out.append(t)
    return out


def more_multi_gpu(tasks: Sequence[Task], cluster: Cluster, rng: numpy.random.Generator) -> list[Task]:
    most = int(to_host(cluster.slots.capacity > 0).sum(axis=1).max(initial=1))
    counts = [k for k in (2, 4, 8) if k <= most] or [most]
    cpu_cap, mem_cap = int(cluster.cpu_milli.max()), int(cluster.memory_mib.max())
    out = []
    for t in tasks:
        if _whole_single(t) and rng.random() < 0.25:
            k = int(counts[rng.integers(len(counts))])
            t = dataclasses.replace(t, count=k, gpu_milli=k * trace.MILLI,
                                    cpu_milli=min(t.cpu_milli * k, cpu_cap), memory_mib=min(t.memory_mib * k, mem_cap))
        out.append(t)
    return out


def gpu_models(tasks: Sequence[Task], cluster: Cluster, rng: numpy.random.Generator) -> list[Task]:
    s = cluster.slots
    model = to_host(s.model)[to_host(s.capacity) > 0]
    gpus = numpy.bincount(model[model >= 0], minlength=len(cluster.models)).astype(float)
    p = gpus / gpus.sum()
    out = []
    for t in tasks:
        if t.wants_gpu and not t.models and rng.random() < 0.5:
            t = dataclasses.replace(t, models=frozenset({int(rng.choice(p.shape[0], p=p))}))
        out.append(t)
    return out


def more_cpu_only(tasks: Sequence[Task], cluster: Cluster, rng: numpy.random.Generator) -> list[Task]:
    out = []
    for t in tasks:
        out.append(t)
        if not t.wants_gpu:
            out.extend(dataclasses.replace(t, name=f"{t.name}-cpu{i}") for i in (1, 2))
    return out


VARIANTS: dict[str, Variant | None] = {
    "as-is": None,
    "more-sharing": more_sharing,
    "more-multi-gpu": more_multi_gpu,
    "gpu-models": gpu_models,
    "more-cpu-only": more_cpu_only,
}


def apply(name: str, tasks: Sequence[Task], cluster: Cluster, seed: int = 0) -> list[Task]:
    """The tasks of variant ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in VARIANTS:
        raise ValueError(f"unknown workload variant {name!r}; choose one of {', '.join(VARIANTS)}")
    fn = VARIANTS[name]
    return list(tasks) if fn is None else fn(tasks, cluster, numpy.random.default_rng(seed))
