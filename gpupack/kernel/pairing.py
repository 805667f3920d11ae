"""Which shares go together on one GPU: the patterns of the share mix, and the GPU a share takes.

Best fit puts a share on the GPU it leaves least room on. With the trace's sizes that often
pairs a 320 with a 470 (210 left, which only the rare 160 and 110 fill) where a 470 waits
for a 460 or a 480. The *patterns* say which sets of sizes fill a GPU well for the mix: the
sets a fewest-GPUs packing of the mix's shares uses (a linear programme over every set of
share sizes that fits a GPU and has no room for one more, each set costing one GPU, less
:data:`MIXED_TIE` for each distinct size beyond its first, so that among equally good
packings the one mixing more sizes wins: a share then has more partners to wait for). A
share *keeps to a pattern* on a GPU whose claimed memory is the sum of part of a pattern that
has the share's size in the rest.

The GPU a share takes on a node (:func:`share_ranks`): a GPU where it keeps to a pattern;
else an empty GPU, when the share's size is in no pattern or the node keeps
:data:`PARTNER_ROOM` times the median share's CPU free after it (room for the partners that
would close the GPU); else any GPU; within each, the least memory left, then the lowest
column. The kernel scores nodes under this choice and ``choose_devices`` makes it; the
packing policies name, among their top nodes, one where the share keeps to a pattern
(``Verdicts.keeps``). Why and what it measured: docs/simulator.md, "Pairing shares".

The share mix is every share size seen (a pod of one share with a memory hint smaller than a
GPU), with how often, and the median CPU of those pods (:class:`ShareMix`). Bounded: at most
:data:`MAX_SIZES` sizes (the most frequent), :data:`MAX_SETS` sets and :data:`MAX_STEPS`
simplex steps; past a bound there are no patterns and shares take the plain best fit.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy

from gpupack.kernel.slots import Request, Slots
from gpupack.kernel.xp import Array, Namespace, to_host

#: Each distinct size in a set beyond its first makes the set this much cheaper than one GPU.
MIXED_TIE = 1e-4
#: A set is a pattern when the packing uses it on more than this many GPUs per share of the mix
#: (half a GPU per 3,000 shares: a set that a size seen once in a few thousand shares needs
#: counts; the simplex's numerical dust does not).
MIN_USE = 0.5 / 3000
#: An empty GPU is opened for a share only where the node keeps this many median shares' CPU free after it.
PARTNER_ROOM = 8
#: Bounds on the work for one share mix and GPU size; past any of them, plain best fit.
MAX_SIZES = 64  # share sizes (the most frequent)
MAX_SETS = 50_000  # sets in the programme
MAX_VISITS = 1_000_000  # steps of the search for them
MAX_STEPS = 20_000  # simplex steps
MAX_PARTS = 4096  # parts of one pattern (the claimed amounts it allows)
_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class ShareMix:
    """Share sizes (memory hints, MiB) with their frequencies (summing to 1), ascending by size,
    and the median CPU (millicores) of the pods asking for them."""

    sizes: tuple[tuple[int, float], ...] = ()
    cpu_milli: int = 0

    def __bool__(self) -> bool:
        return bool(self.sizes)


NO_SHARES = ShareMix()


def share_mix(shares: Iterable[tuple[int, int, int]]) -> ShareMix:
    """The :class:`ShareMix` of ``(memory hint, cpu_milli, pods)`` entries: share pods by hint
    and CPU, with how many."""
    counts: dict[int, int] = {}
    by_cpu: dict[int, int] = {}
    for mib, cpu, n in shares:
        if mib > 0 and n > 0:
            counts[int(mib)] = counts.get(int(mib), 0) + int(n)
            by_cpu[int(cpu)] = by_cpu.get(int(cpu), 0) + int(n)
    if not counts:
        return NO_SHARES
    top = sorted(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_SIZES])
    total = sum(n for _, n in top)
    return ShareMix(tuple((m, n / total) for m, n in top), _median(by_cpu))


def _median(counts: dict[int, int]) -> int:
    """The (lower) median of values given with their counts."""
    half = (sum(counts.values()) + 1) // 2
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= half:
            return value
    return 0


def maximal_sets(sizes: Sequence[int], capacity: int, most: int) -> list[tuple[int, ...]]:
    """Every multiset of ``sizes`` (ascending) of at most ``most`` shares that fits ``capacity``
    and leaves no room for one more (of the smallest, or ``most`` reached), as counts per size; ``[]`` past :data:`MAX_SETS` sets or
    :data:`MAX_VISITS` steps of the search. (A set with room
    for one more is never cheaper than the set with it, and covers less.)"""
    out: list[tuple[int, ...]] = []
    if not sizes or sizes[0] > capacity:
        return out
    smallest = sizes[0]
    counts = [0] * len(sizes)
    visits = [0]

    def grow(i: int, left: int, room: int) -> bool:
        visits[0] += 1
        if visits[0] > MAX_VISITS:
            return False
        if i < 0:
            if left < smallest or room == 0:
                out.append(tuple(counts))
            return len(out) <= MAX_SETS
        for k in range(min(left // sizes[i], room), -1, -1):
            counts[i] = k
            if not grow(i - 1, left - k * sizes[i], room - k):
                return False
        counts[i] = 0
        return True

    if most <= 0 or not grow(len(sizes) - 1, capacity, most):
        return []
    return out


def candidate_sets(sizes: Sequence[int], capacity: int, most: int) -> list[tuple[int, ...]]:
    """:func:`maximal_sets`, and each size alone as many times as it fits (the simplex's first
    basis); ``[]`` past :data:`MAX_SETS`."""
    sets = maximal_sets(sizes, capacity, most)
    if not sets:
        return sets
    known = set(sets)
    for i, m in enumerate(sizes):
        alone = tuple(min(capacity // m, most) if j == i else 0 for j in range(len(sizes)))
        if alone not in known:
            sets.append(alone)
    return sets


def fewest_gpus(a: numpy.ndarray[Any, Any], cost: numpy.ndarray[Any, Any],
                demand: numpy.ndarray[Any, Any]) -> numpy.ndarray[Any, Any] | None:
    """A basic optimal ``x >= 0`` of ``min cost.x`` subject to ``a x >= demand`` (``a``: sizes x
    sets, every size alone in some set), by a revised simplex from the basis of the one-size
    sets (Dantzig's rule, Bland's on a degenerate step); ``None`` past :data:`MAX_STEPS`."""
    m, n = a.shape
    full = numpy.hstack([a, -numpy.eye(m)])  # sets, then surplus columns
    c = numpy.concatenate([cost, numpy.zeros(m)])
    basis = numpy.asarray([int(numpy.flatnonzero((a[i] > 0) & (a.sum(axis=0) == a[i]))[0]) for i in range(m)])
    inv = numpy.linalg.inv(full[:, basis])
    x = inv @ demand
    degenerate = False
    for step in range(MAX_STEPS):
        if step % 64 == 63:  # refresh the inverse against drift
            inv = numpy.linalg.inv(full[:, basis])
            x = inv @ demand
        y = c[basis] @ inv
        reduced = c - y @ full
        reduced[basis] = 0.0
        candidates = numpy.flatnonzero(reduced < -_EPS)
        if not candidates.shape[0]:
            out = numpy.zeros(n + m)
            out[basis] = numpy.maximum(x, 0.0)
            return out[:n]
        q = int(candidates[0]) if degenerate else int(candidates[numpy.argmin(reduced[candidates])])
        u = inv @ full[:, q]
        rows = numpy.flatnonzero(u > _EPS)
        if not rows.shape[0]:
            return None  # unbounded: cannot happen with positive costs
        ratio = x[rows] / u[rows]
        best = ratio.min()
        tied = rows[ratio <= best + _EPS]
        leave = int(tied[numpy.argmin(basis[tied])])
        degenerate = best <= _EPS
        pivot = u[leave]
        x = x - best * u
        x[leave] = best
        inv_row = inv[leave] / pivot
        inv = inv - numpy.outer(u, inv_row)
        inv[leave] = inv_row
        basis[leave] = q
    return None


@dataclasses.dataclass(frozen=True)
class Patterns:
    """The patterns of a share mix for GPUs of one memory size: per size, the claimed memory
    amounts beside which it keeps to a pattern (``partners``), and the sizes some pattern holds."""

    sets: tuple[tuple[tuple[int, int], ...], ...]  # ((size, count), ...) per pattern
    partners: dict[int, frozenset[int]]  # size -> claimed memory on a GPU where it keeps to a pattern
    in_some: frozenset[int]


EMPTY = Patterns((), {}, frozenset())


@functools.lru_cache(maxsize=64)
def patterns(mix: ShareMix, capacity: int, most: int) -> Patterns:
    """The :class:`Patterns` of ``mix`` on GPUs of ``capacity`` MiB advertised as ``most``
    shares (the module's rule)."""
    fit = [(m, p) for m, p in mix.sizes if m < capacity]
    if not fit:
        return EMPTY
    sizes = [m for m, _ in fit]
    sets = candidate_sets(sizes, capacity, most)
    if not sets:
        return EMPTY
    a = numpy.asarray(sets, dtype=numpy.float64).T
    distinct = (a > 0).sum(axis=0)
    cost = 1.0 - MIXED_TIE * (distinct - 1)
    demand = numpy.asarray([p for _, p in fit])
    x = fewest_gpus(a, cost, demand / demand.sum())  # per share that fits these GPUs
    if x is None:
        return EMPTY
    chosen = [tuple((sizes[i], k) for i, k in enumerate(sets[j]) if k) for j in numpy.flatnonzero(x > MIN_USE)]
    if any(numpy.prod([k + 1 for _, k in pat]) > MAX_PARTS for pat in chosen):
        return EMPTY
    partners: dict[int, set[int]] = {}
    for pat in chosen:
        for claimed, rest in _splits(pat):
            for size in rest:
                partners.setdefault(size, set()).add(claimed)
    return Patterns(tuple(chosen), {k: frozenset(v) for k, v in partners.items()},
                    frozenset(m for pat in chosen for m, _ in pat))


def _splits(pat: tuple[tuple[int, int], ...]) -> list[tuple[int, list[int]]]:
    """``(claimed, sizes left)`` for every non-empty part of ``pat`` that leaves some size."""
    out: list[tuple[int, list[int]]] = []

    def walk(i: int, claimed: int, left: list[int]) -> None:
        if i == len(pat):
            if claimed and left:
                out.append((claimed, sorted(set(left))))
            return
        size, k = pat[i]
        for j in range(k + 1):
            walk(i + 1, claimed + j * size, left + [size] * (k - j))

    walk(0, 0, [])
    return out


def share_ranks(s: Slots, req: Request, avail: Array, mix: ShareMix, xp: Namespace) -> Array | None:
    """Per slot, 0 (the share keeps to a pattern there), 1 (an empty GPU it may open), 2 (any
    other) where ``avail`` > 0, and 3 where it is 0; ``None`` when ``req`` is no share or the
    mix has no patterns for these GPUs (then: plain best fit)."""
    if not mix or req.count != 1 or req.memory_mib <= 0:
        return None
    share = (s.capacity > 1) & (s.memory_mib > req.memory_mib) & (avail > 0)  # a share of a time-sliced GPU
    if not bool(share.any()):
        return None
    claimed = s.memory_mib - s.free_memory_mib
    keeps = xp.zeros(share.shape, dtype=bool)
    opens = xp.zeros(share.shape, dtype=bool)
    any_pattern = False
    room = (s.node_cpu_free - req.cpu_milli >= PARTNER_ROOM * mix.cpu_milli)[:, None]
    kinds = numpy.unique((to_host(s.memory_mib[share]).astype(numpy.int64) << 32) | to_host(s.capacity[share]))
    for kind in kinds.tolist():  # GPUs of one memory size and number of shares
        cap, most = kind >> 32, kind & 0xFFFFFFFF
        pats = patterns(mix, int(cap), int(most))
        if not pats.sets:
            continue
        any_pattern = True
        on = share & (s.memory_mib == cap) & (s.capacity == most)
        partners = pats.partners.get(req.memory_mib, frozenset())
        if partners:
            keeps |= on & xp.isin(claimed, xp.asarray(sorted(partners), dtype=claimed.dtype))
        fresh = on & (claimed == 0)
        opens |= fresh & (room if req.memory_mib in pats.in_some else True)
    if not any_pattern:
        return None
    ranks = xp.where(keeps, 0, xp.where(opens, 1, 2))
    return xp.where(avail > 0, ranks, 3)


def share_plan(s: Slots, req: Request, avail: Array, mix: ShareMix, xp: Namespace) -> tuple[Array, Array] | None:
    """``(take, keeps)`` of a share under the patterns: the take plan (one unit on the slot
    :func:`share_ranks` picks, per node; nothing where no slot has room) and per node whether
    the share keeps to a pattern there; ``None``: no share or no patterns, plain best fit."""
    ranks = share_ranks(s, req, avail, mix, xp)
    if ranks is None:
        return None
    left = s.free_memory_mib.astype(xp.int64) - req.memory_mib
    key = ranks.astype(xp.int64) * (1 << 40) + xp.clip(left, 0, 1 << 39)
    col = xp.argmin(key, axis=1)
    rows = xp.arange(avail.shape[0])
    take = xp.zeros_like(avail)
    take[rows, col] = (avail[rows, col] > 0).astype(take.dtype)
    return take, (ranks == 0).any(axis=1)


def cpu_cuts(req: Request, mix: ShareMix) -> tuple[int, ...]:
    """The node free CPU at which :func:`share_ranks` changes its mind about ``req`` (the CPU
    guard), for a caller that keeps verdicts by node state."""
    if not mix or req.count != 1 or req.memory_mib <= 0:
        return ()
    return (req.cpu_milli + PARTNER_ROOM * mix.cpu_milli,)
