"""Which of the offered devices to take when the packing rule cannot say: NVLink-joined,
NUMA-local, keeping groups whole; and time-sliced shares packed or spread over distinct GPUs.

Pure; called by :mod:`gpupack.node_slots` only, where the kernel's choice
(:func:`gpupack.kernel.choose_devices`) does not fit the devices the kubelet offers, or the
node spreads one container's shares over distinct GPUs (a node setting the kernel does not
model). Chooses ``size`` of the ``available`` devices, containing every ``must_include`` one.
Candidate sets compare lexicographically on

1. NVLink links inside the set, summed over pairs (more is better: a 4-GPU job on an NVSwitch
   or on two bridged pairs talks over NVLink);
2. NUMA nodes the set spans (fewer is better);
3. what is left: the sum over NVLink groups of (devices left free in the group)^2, then the
   same over NUMA nodes (larger is better). Squares reward leaving free devices together, so
   a single-GPU request takes a GPU from an already broken group and whole groups stay whole;
4. the lowest device indices, so the answer is deterministic.

Small cases (at most ``EXHAUSTIVE_LIMIT`` candidate sets) are searched exhaustively; larger
ones greedily (vectorised with NumPy), adding the best pair of devices at a time and, as a
second try, the best single device at a time, keeping the better result.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

EXHAUSTIVE_LIMIT = 300


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


def _checked(
    available: Sequence[str], must_include: Sequence[str], size: int, known: Mapping[str, object]
) -> tuple[list[str], list[str]]:
    """Available and must-include ids without repeats; refuses ids and sizes that do not fit."""
    avail = list(dict.fromkeys(available))
    must = list(dict.fromkeys(must_include))
    unknown = [d for d in avail if d not in known]
    if unknown:
        raise PreferenceError(f"unknown device ids: {', '.join(unknown)}")
    missing = [d for d in must if d not in avail]
    if missing:
        raise PreferenceError(f"must-include devices not available: {', '.join(missing)}")
    if size < len(must) or size > len(avail):
        raise PreferenceError(f"cannot choose {size} devices from {len(avail)} available with {len(must)} required")
    return avail, must


def choose(available: Sequence[str], must_include: Sequence[str], size: int, topo: Topology) -> list[str]:
    """The preferred ``size`` devices out of ``available``, always containing ``must_include``."""
    avail, must = _checked(available, must_include, size, topo.gpu_of)
    order = {d: i for i, d in enumerate(avail)}
    pool = [d for d in avail if d not in must]
    need = size - len(must)
    if need == 0:
        return must

    free = _Free.of(avail, topo)

    def key(chosen: Sequence[str]) -> tuple[tuple[int, int, int, int], list[int]]:
        return _score(chosen, topo, free), sorted((-order[d] for d in chosen), reverse=True)

    if need == 1:  # one step of the greedy scan is an exhaustive search
        best = _Greedy(avail, topo, free).run(must, need, pairs=False)
    elif math.comb(len(pool), need) <= EXHAUSTIVE_LIMIT:
        best = max((must + list(c) for c in itertools.combinations(pool, need)), key=key)
    else:
        greedy = _Greedy(avail, topo, free)
        best = max((greedy.run(must, need, pairs) for pairs in (True, False)), key=key)
    return sorted(best, key=order.__getitem__)


class _Greedy:
    """Adds one device at a time, the one whose addition scores best, all candidates at once.

    The four parts of the score change by amounts that depend only on the candidate's GPU,
    so each step is a few array operations: links gained to the chosen devices, whether its
    NUMA node is new, and how its group's and NUMA node's free counts shrink.
    """

    def __init__(self, avail: Sequence[str], topo: Topology, free: _Free) -> None:
        self.ids = list(avail)
        self.pos = {d: i for i, d in enumerate(self.ids)}
        gpu = np.array([topo.gpu_of[d] for d in self.ids])
        self.links = np.array(topo.nvlinks, dtype=np.int64)[np.ix_(gpu, gpu)] if len(topo.nvlinks) else np.zeros((len(gpu), len(gpu)), np.int64)
        groups = np.array(topo.group)[gpu] if topo.group else gpu
        numas = np.array(topo.numa)[gpu]
        _, self.group = np.unique(groups, return_inverse=True)
        _, self.numa = np.unique(numas, return_inverse=True)
        self.free_group = np.bincount(self.group).astype(np.int64)
        self.free_numa = np.bincount(self.numa).astype(np.int64)
        self.rank = np.arange(len(self.ids), dtype=np.int64)

    def run(self, must: Sequence[str], need: int, pairs: bool) -> list[str]:
        """Greedy from ``must``; with ``pairs`` it adds the best two devices at a time, which
        sees that a bridged pair is worth taking whole."""
        n = len(self.ids)
        taken = np.zeros(n, dtype=bool)
        gain = np.zeros(n, dtype=np.int64)  # links from the chosen set to each device
        taken_group = np.zeros_like(self.free_group)
        taken_numa = np.zeros_like(self.free_numa)
        chosen: list[str] = []
        lowest = np.iinfo(np.int64).min

        def take(i: int) -> None:
            taken[i] = True
            gain[:] += self.links[i]
            taken_group[self.group[i]] += 1
            taken_numa[self.numa[i]] += 1
            chosen.append(self.ids[i])

        for d in must:
            take(self.pos[d])
        while need > 0:
            left_g = self.free_group[self.group] - taken_group[self.group]
            left_n = self.free_numa[self.numa] - taken_numa[self.numa]
            new_numa = (taken_numa[self.numa] == 0).astype(np.int64)
            # Shrinking a free count c by one lowers its square by 2c - 1.
            loss_g = 2 * left_g - 1
            loss_n = 2 * left_n - 1
            if pairs and need >= 2:
                same_g = self.group[:, None] == self.group[None, :]
                same_n = self.numa[:, None] == self.numa[None, :]
                links = gain[:, None] + gain[None, :] + self.links
                span = new_numa[:, None] + np.where(same_n, 0, new_numa[None, :])
                # the second pick from the same group or node loses 2(c-1) - 1 = 2c - 3
                lg = loss_g[:, None] + np.where(same_g, loss_g[None, :] - 2, loss_g[None, :])
                ln = loss_n[:, None] + np.where(same_n, loss_n[None, :] - 2, loss_n[None, :])
                rank = self.rank[:, None] + self.rank[None, :]
                key = _combine(links, span, lg, ln, rank)
                key[taken, :] = lowest
                key[:, taken] = lowest
                np.fill_diagonal(key, lowest)
                a, b = divmod(int(np.argmax(key)), n)
                take(a)
                take(b)
                need -= 2
            else:
                key = _combine(gain, new_numa, loss_g, loss_n, self.rank)
                key[taken] = lowest
                take(int(np.argmax(key)))
                need -= 1
        return chosen


def _combine(links: Any, span: Any, loss_g: Any, loss_n: Any, rank: Any) -> Any:
    """One int64 per candidate ordering lexicographically: links up, NUMA span down, leftover
    losses down, rank down (each part fits below the next part's multiplier for n < 1024)."""
    return (((links * 128 - span) * 8192 - loss_g) * 8192 - loss_n) * 2048 - rank


def choose_shares(
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    device_of: dict[str, str],
    replicas_of: dict[str, int],
    distinct: bool = False,
) -> list[str]:
    """Time-sliced shares, packed: fill the physical device with the most shares in use.

    ``device_of`` maps each share id to its physical device (GPU or MIG UUID), ``replicas_of``
    gives each physical device's share count. A device's shares in use are its replicas minus
    its available shares; taking from the busiest device first keeps whole devices whole. With
    ``distinct``, a container's shares come from distinct devices while there are enough.
    """
    avail, must = _checked(available, must_include, size, device_of)
    free: dict[str, list[str]] = {}
    for d in avail:
        if d not in must:
            free.setdefault(device_of[d], []).append(d)
    order = {dev: i for i, dev in enumerate(dict.fromkeys(device_of[d] for d in avail))}

    def busiest(dev: str) -> tuple[int, int, int]:
        in_use = replicas_of.get(dev, 1) - len(free[dev]) - sum(1 for m in must if device_of[m] == dev)
        return (-in_use, len(free[dev]), order[dev])

    chosen = list(must)
    used = {device_of[m] for m in must}
    ranked = sorted(free, key=busiest)
    if distinct:
        for dev in ranked:
            if len(chosen) == size:
                break
            if dev not in used:
                chosen.append(free[dev].pop(0))
                used.add(dev)
    for dev in ranked:
        while len(chosen) < size and free[dev]:
            chosen.append(free[dev].pop(0))
    return chosen
