"""The built-in example: a mixed inference fleet and one day of services, from a fixed seed.

Fleet (:func:`fleet`): NVIDIA A100 80GB and H100 80GB nodes of 8 GPUs on an NVSwitch
(whole GPUs), A100s split by MIG (one ``3g.40gb`` and four ``1g.10gb`` per GPU), H100s
time-sliced (4 replicas, pods give a memory hint), AMD MI300X nodes of 8, and Intel Data
Center GPU Max nodes of 4; each node with the CPU and memory of its usual server.

Workload (:func:`workload`): inference services whose replicas arrive over 24 hours (a
daytime peak, Poisson arrivals) and leave after a few hours: large models on 2, 4 or 8
whole GPUs, 7B-class models on one, small models on MIG slices, embedding and rerank
services on time-sliced shares with memory hints, ROCm and oneAPI services on AMD and
Intel, and CPU-only gateways and tokenisers. Everything is drawn from ``seed``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy

from simulator.model import Cluster, Task, build_slots

RESOURCES = ("nvidia.com/gpu", "nvidia.com/mig-3g.40gb", "nvidia.com/mig-1g.10gb", "nvidia.com/gpu.shared",
             "amd.com/gpu", "gpu.intel.com/i915")
MODELS = ("A100-SXM4-80GB", "H100-SXM5-80GB", "MI300X", "Max-1100")
R = {name: i for i, name in enumerate(RESOURCES)}
M = {name: i for i, name in enumerate(MODELS)}


@dataclasses.dataclass(frozen=True)
class NodeKind:
    prefix: str
    count: int
    cpu_milli: int
    memory_mib: int
    columns: tuple[tuple[int, int, int, float, int, int], ...]  # (resource, replicas, MiB, weight, model, gpu)


def _whole(res: str, model: str, n: int, mib: int) -> tuple[tuple[int, int, int, float, int, int], ...]:
    return tuple((R[res], 1, mib, 1.0, M[model], g) for g in range(n))


def _mig_a100() -> tuple[tuple[int, int, int, float, int, int], ...]:
    cols: list[tuple[int, int, int, float, int, int]] = []
    for g in range(8):
        cols.append((R["nvidia.com/mig-3g.40gb"], 1, 40960, 0.5, M["A100-SXM4-80GB"], g))
        cols += [(R["nvidia.com/mig-1g.10gb"], 1, 10240, 0.125, M["A100-SXM4-80GB"], g)] * 4
    return tuple(cols)


def kinds(scale: int = 1) -> tuple[NodeKind, ...]:
    return (
        NodeKind("a100", 10 * scale, 128_000, 1_048_576, _whole("nvidia.com/gpu", "A100-SXM4-80GB", 8, 81920)),
        NodeKind("a100-mig", 3 * scale, 128_000, 1_048_576, _mig_a100()),
        NodeKind("h100", 10 * scale, 192_000, 2_097_152, _whole("nvidia.com/gpu", "H100-SXM5-80GB", 8, 81920)),
        NodeKind("h100-ts", 3 * scale, 192_000, 2_097_152,
                 tuple((R["nvidia.com/gpu.shared"], 4, 81920, 1.0, M["H100-SXM5-80GB"], g) for g in range(8))),
        NodeKind("mi300x", 4 * scale, 192_000, 2_097_152, _whole("amd.com/gpu", "MI300X", 8, 196608)),
        NodeKind("max1100", 4 * scale, 64_000, 524_288, _whole("gpu.intel.com/i915", "Max-1100", 4, 49152)),
    )


def fleet(scale: int = 1) -> Cluster:
    names: list[str] = []
    cpu: list[int] = []
    mem: list[int] = []
    cols: list[list[tuple[int, int, int, float, int, int]]] = []
    for k in kinds(scale):
        for i in range(k.count):
            names.append(f"{k.prefix}-{i:03d}")
            cpu.append(k.cpu_milli)
            mem.append(k.memory_mib)
            cols.append(list(k.columns))
    width = max(len(c) for c in cols)
    s = build_slots(cols, width)
    # NVSwitch: all of a node's whole GPUs in one NVLink group; two NUMA nodes, half the GPUs each
    s.nvgroup[:] = numpy.where((s.capacity == 1) & (s.weight == 1.0), 0, -1)
    s.numa[:] = numpy.where(s.gpu >= 0, (s.gpu >= (s.gpu.max(axis=1, keepdims=True) + 1) // 2).astype(numpy.int32), -1)
    return Cluster(tuple(names), numpy.asarray(cpu, dtype=numpy.int64), numpy.asarray(mem, dtype=numpy.int64),
                   s, RESOURCES, MODELS)


@dataclasses.dataclass(frozen=True)
class Service:
    """A kind of inference service: what one replica asks, how many arrive a day, how long they stay."""

    name: str
    per_day: int
    cpu_milli: int
    memory_mib: int
    resource: str = ""
    count: int = 0
    gpu_memory_mib: int = 0
    models: tuple[str, ...] = ()
    gpu_milli: int = 0
    hours: float = 4.0  # mean life


SERVICES = (
    Service("llm-70b-tp8", 14, 64_000, 524_288, "nvidia.com/gpu", 8, 0, ("H100-SXM5-80GB",), 8000, 8.0),
    Service("llm-70b-tp4", 30, 32_000, 262_144, "nvidia.com/gpu", 4, 0, (), 4000, 6.0),
    Service("llm-13b-tp2", 70, 16_000, 131_072, "nvidia.com/gpu", 2, 0, (), 2000, 4.0),
    Service("llm-7b", 260, 8_000, 65_536, "nvidia.com/gpu", 1, 0, (), 1000, 3.0),
    Service("vision-3g", 120, 6_000, 32_768, "nvidia.com/mig-3g.40gb", 1, 0, (), 500, 3.0),
    Service("classifier-1g", 300, 2_000, 8_192, "nvidia.com/mig-1g.10gb", 1, 0, (), 125, 2.0),
    Service("embed-ts", 260, 4_000, 16_384, "nvidia.com/gpu.shared", 1, 12_288, (), 250, 3.0),
    Service("rerank-ts", 160, 4_000, 16_384, "nvidia.com/gpu.shared", 1, 24_576, (), 300, 3.0),
    Service("llm-rocm-tp8", 8, 64_000, 524_288, "amd.com/gpu", 8, 0, (), 8000, 8.0),
    Service("llm-rocm-tp2", 40, 16_000, 131_072, "amd.com/gpu", 2, 0, (), 2000, 4.0),
    Service("llm-rocm", 80, 8_000, 65_536, "amd.com/gpu", 1, 0, (), 1000, 3.0),
    Service("asr-oneapi", 90, 4_000, 32_768, "gpu.intel.com/i915", 1, 0, (), 1000, 3.0),
    Service("gateway", 300, 2_000, 4_096, hours=6.0),
    Service("tokenizer", 200, 1_000, 2_048, hours=3.0),
)


def _rate(hour: float) -> float:
    """Relative arrival rate over the day: low at night, a peak in the afternoon."""
    return 0.35 + 0.65 * math.exp(-((hour - 14.0) / 4.0) ** 2)


def workload(seed: int = 7, scale: int = 1) -> list[Task]:
    """One day of replicas of every service, sorted by arrival; deterministic for ``seed``."""
    rng = numpy.random.default_rng(seed)
    hours = numpy.linspace(0.0, 24.0, 24 * 60, endpoint=False)
    weights = numpy.array([_rate(h) for h in hours])
    weights /= weights.sum()
    tasks: list[Task] = []
    for svc in SERVICES:
        n = int(rng.poisson(svc.per_day * scale))
        starts = rng.choice(hours, size=n, p=weights) * 3600.0 + rng.uniform(0, 60, size=n)
        lives = rng.exponential(svc.hours * 3600.0, size=n) + 600.0
        for i in range(n):
            tasks.append(Task(
                name=f"{svc.name}-{i:04d}", cpu_milli=svc.cpu_milli, memory_mib=svc.memory_mib,
                resource=R[svc.resource] if svc.resource else -1, count=svc.count,
                gpu_memory_mib=svc.gpu_memory_mib, models=frozenset(M[m] for m in svc.models),
                gpu_milli=svc.gpu_milli, start=float(starts[i]), end=float(starts[i] + lives[i]),
            ))
    tasks.sort(key=lambda t: (t.start, t.name))
    return tasks
