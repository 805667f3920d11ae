"""The recent mix of shapes the fragmentation policy reads: counted per arrival over a window,
worked out again every few arrivals, and replaced only when the make-up of traffic changed."""

from __future__ import annotations

import collections
import random

from scheduler_ext import cache as cache_mod
from scheduler_ext.cache import ClusterCache, mix_distance
from gpupack.kernel import Request

SHAPES = [Request(0, 1), Request(0, 2), Request(0, 1, 5000), Request(-1, 0, 2000), Request(0, 8)]


def from_scratch(window: list[Request]) -> dict[Request, float]:
    """The mix by its definition: the most frequent shapes of the window covering 95 %."""
    counts = collections.Counter(window)
    out, covered = [], 0
    for shape, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        if covered >= cache_mod.MIX_COVERAGE * len(window):
            break
        out.append((shape, n))
        covered += n
    return {s: n / covered for s, n in out}


def test_counts_kept_per_arrival_equal_the_window_counted_afresh() -> None:
    rng = random.Random(1)
    cache = ClusterCache()
    window: collections.deque[Request] = collections.deque(maxlen=cache_mod.MIX_MEMORY)
    weights = [50, 25, 10, 10, 5]
    for i in range(3 * cache_mod.MIX_MEMORY):
        if i == cache_mod.MIX_MEMORY:  # the make-up changes: the window must forget the old
            weights = [5, 10, 10, 25, 50]
        shape = rng.choices(SHAPES, weights)[0]
        cache.record_shape(f"p{i}", shape)
        cache.record_shape(f"p{i}", shape)  # the same pod again (filter, then a retry) counts once
        window.append(shape)
        assert dict(cache._shapes._count) == collections.Counter(window)
    # after the change the mix in use is near the window's own, and shapes come most frequent first
    mix = cache.mix()
    assert mix_distance(mix, tuple(from_scratch(list(window)).items())) <= cache_mod.MIX_TOLERANCE
    assert [s for s, _ in mix][:2] == [SHAPES[4], SHAPES[3]]
    assert abs(sum(p for _, p in mix) - 1.0) < 1e-12


def test_steady_traffic_keeps_one_mix_and_a_change_replaces_it() -> None:
    rng = random.Random(2)
    cache = ClusterCache()
    for i in range(cache_mod.MIX_MEMORY):
        cache.record_shape(f"a{i}", rng.choices(SHAPES[:2], [2, 1])[0])
        cache.mix()
    kept = cache.mix()
    for i in range(cache_mod.MIX_MEMORY):  # the same make-up goes on: the same object
        cache.record_shape(f"b{i}", rng.choices(SHAPES[:2], [2, 1])[0])
        assert cache.mix() is kept
    replaced = False
    for i in range(cache_mod.MIX_MEMORY // 2):  # now 8-GPU pods come in
        cache.record_shape(f"c{i}", SHAPES[4])
        replaced |= cache.mix() is not kept
    assert replaced and SHAPES[4] in dict(cache.mix())


def test_mix_distance() -> None:
    a = ((SHAPES[0], 0.5), (SHAPES[1], 0.5))
    assert mix_distance(a, a) == 0.0
    assert mix_distance(a, ((SHAPES[2], 1.0),)) == 1.0
    assert abs(mix_distance(a, ((SHAPES[0], 0.6), (SHAPES[1], 0.4))) - 0.1) < 1e-12
    assert mix_distance((), ()) == 0.0
