"""Which devices to prefer for a container: NVLink-joined, NUMA-local, keeping groups whole.

Pure. Answers the kubelet's GetPreferredAllocation for one container: choose ``size`` of the
``available`` devices, containing every ``must_include`` one. Candidate sets compare
lexicographically on

1. NVLink links inside the set, summed over pairs (more is better: a 4-GPU job on an NVSwitch
   or on two bridged pairs talks over NVLink);
2. NUMA nodes the set spans (fewer is better);
3. what is left: the sum over NVLink groups of (devices left free in the group)^2, then the
   same over NUMA nodes (larger is better). Squares reward leaving free devices together, so
   a single-GPU request takes a GPU from an already broken group and whole groups stay whole;
4. the lowest device indices, so the answer is deterministic.

Small cases (at most ``EXHAUSTIVE_LIMIT`` candidate sets) are searched exhaustively; larger
ones greedily from one seed per (NVLink group, NUMA node).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence

EXHAUSTIVE_LIMIT = 2000


class PreferenceError(ValueError):
    """The request cannot be answered (sizes or ids that do not fit); the message says why."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """GPUs by index: NUMA node and NVLink count to each other GPU, and each device's GPU."""

    numa: tuple[int, ...]  # per GPU
    nvlinks: tuple[tuple[int, ...], ...]  # GPU x GPU link counts, symmetric
    gpu_of: dict[str, int]  # device id -> GPU index
    group: tuple[int, ...] = ()  # per GPU: NVLink-connected component id

    @staticmethod
    def build(numa: Sequence[int], links: Iterable[tuple[int, int, int]], gpu_of: dict[str, int]) -> Topology:
        """``links`` holds (gpu a, gpu b, nvlinks); missing pairs have none."""
        n = len(numa)
        matrix = [[0] * n for _ in range(n)]
        for a, b, count in links:
            if 0 <= a < n and 0 <= b < n and a != b:
                matrix[a][b] = matrix[b][a] = max(matrix[a][b], count)
        group = list(range(n))

        def root(x: int) -> int:
            while group[x] != x:
                group[x] = group[group[x]]
                x = group[x]
            return x

        for a in range(n):
            for b in range(a + 1, n):
                if matrix[a][b]:
                    group[root(a)] = root(b)
        return Topology(tuple(numa), tuple(tuple(r) for r in matrix), dict(gpu_of), tuple(root(g) for g in range(n)))


def _score(chosen: Sequence[str], topo: Topology, free: _Free) -> tuple[int, int, int, int]:
    gpus = [topo.gpu_of[d] for d in chosen]
    links = sum(topo.nvlinks[a][b] for a, b in itertools.combinations(gpus, 2))
    taken_group: dict[int, int] = {}
    taken_numa: dict[int, int] = {}
    for g in gpus:
        taken_group[topo.group[g]] = taken_group.get(topo.group[g], 0) + 1
        taken_numa[topo.numa[g]] = taken_numa.get(topo.numa[g], 0) + 1
    # sum of (free - taken)^2 over groups, from the precomputed sum of free^2
    left_group = free.group_sq - sum(free.group[x] ** 2 - (free.group[x] - c) ** 2 for x, c in taken_group.items())
    left_numa = free.numa_sq - sum(free.numa[x] ** 2 - (free.numa[x] - c) ** 2 for x, c in taken_numa.items())
    return links, -len(taken_numa), left_group, left_numa


@dataclasses.dataclass(frozen=True)
class _Free:
    """Available devices counted per NVLink group and per NUMA node, with their sums of squares."""

    group: dict[int, int]
    numa: dict[int, int]
    group_sq: int
    numa_sq: int

    @staticmethod
    def of(devices: Sequence[str], topo: Topology) -> _Free:
        group: dict[int, int] = {}
        numa: dict[int, int] = {}
        for d in devices:
            g = topo.gpu_of[d]
            group[topo.group[g]] = group.get(topo.group[g], 0) + 1
            numa[topo.numa[g]] = numa.get(topo.numa[g], 0) + 1
        return _Free(group, numa, sum(v * v for v in group.values()), sum(v * v for v in numa.values()))


def choose(available: Sequence[str], must_include: Sequence[str], size: int, topo: Topology) -> list[str]:
    """The preferred ``size`` devices out of ``available``, always containing ``must_include``."""
    avail = list(dict.fromkeys(available))
    must = list(dict.fromkeys(must_include))
    unknown = [d for d in avail if d not in topo.gpu_of]
    if unknown:
        raise PreferenceError(f"unknown device ids: {', '.join(unknown)}")
    missing = [d for d in must if d not in avail]
    if missing:
        raise PreferenceError(f"must-include devices not available: {', '.join(missing)}")
    if size < len(must) or size > len(avail):
        raise PreferenceError(
            f"cannot choose {size} devices from {len(avail)} available with {len(must)} required"
        )
    order = {d: i for i, d in enumerate(avail)}
    pool = [d for d in avail if d not in must]
    need = size - len(must)
    if need == 0:
        return must

    free = _Free.of(avail, topo)

    def key(chosen: Sequence[str]) -> tuple[tuple[int, int, int, int], list[int]]:
        return _score(chosen, topo, free), sorted((-order[d] for d in chosen), reverse=True)

    if math.comb(len(pool), need) <= EXHAUSTIVE_LIMIT:
        best = max((must + list(c) for c in itertools.combinations(pool, need)), key=key)
    else:
        best = max((_greedy(must, pool, need, seed, key) for seed in _seeds(pool, topo)), key=key)
    return sorted(best, key=order.__getitem__)


def _seeds(pool: Sequence[str], topo: Topology) -> list[str | None]:
    """One starting device per (NVLink group, NUMA node), plus 'no seed'."""
    seen: dict[tuple[int, int], str] = {}
    for d in pool:
        g = topo.gpu_of[d]
        seen.setdefault((topo.group[g], topo.numa[g]), d)
    return [None, *seen.values()]


def _greedy(must: list[str], pool: list[str], need: int, seed: str | None, key: object) -> list[str]:
    score = key  # type: ignore[assignment]
    chosen = list(must)
    left = list(pool)
    if seed is not None:
        chosen.append(seed)
        left.remove(seed)
    while len(chosen) < len(must) + need:
        nxt = max(left, key=lambda d: score(chosen + [d]))  # type: ignore[operator]
        chosen.append(nxt)
        left.remove(nxt)
    return chosen
