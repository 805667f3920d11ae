"""The pairing rule for shares: the patterns' programme, the GPU a share takes, the named node."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linprog

from gpupack import kernel
from gpupack.kernel import Request, pairing
from gpupack.kernel.slots import units
from gpupack.kernel.usage import ScoreInput
from gpupack.kernel.verdict_memo import VerdictMemo

from tests.gpupack.kernel.kernel_tables import S, slots
from tests.profiles import invariant

SETTINGS = invariant(100)
GPU = 1000  # the trace's GPUs: 1,000 "MiB", one per milli-GPU
#: share sizes (milli-GPUs) as the trace has them, with made-up frequencies
MIX = pairing.share_mix([(470, 4000, 40), (460, 4000, 15), (480, 4000, 5), (50, 2000, 10), (320, 4000, 20),
                         (650, 8000, 8), (810, 6000, 2)])


def test_the_share_mix_counts_every_size_and_the_median_cpu() -> None:
    assert [m for m, _ in MIX.sizes] == [50, 320, 460, 470, 480, 650, 810]
    assert sum(p for _, p in MIX.sizes) == pytest.approx(1.0)
    assert dict(MIX.sizes)[470] == pytest.approx(0.4)
    assert MIX.cpu_milli == 4000
    assert pairing.share_mix([]) is pairing.NO_SHARES and not pairing.NO_SHARES
    assert pairing.share_mix([(0, 4000, 3)]) is pairing.NO_SHARES  # unhinted shares have no size
    many = pairing.share_mix([(m, 1000, 1 + m % 3) for m in range(1, 200)])
    assert len(many.sizes) == pairing.MAX_SIZES


@given(st.lists(st.integers(1, 60), min_size=1, max_size=5, unique=True), st.integers(1, 120), st.integers(1, 8))
@SETTINGS
def test_maximal_sets_are_every_set_that_fits_with_no_room_for_one_more(sizes: list[int], capacity: int,
                                                                        most: int) -> None:
    sizes = sorted(sizes)
    got = pairing.maximal_sets(sizes, capacity, most)
    want = []
    for counts in itertools.product(*[range(capacity // m + 1) for m in sizes]):
        used = sum(k * m for k, m in zip(counts, sizes))
        if any(counts) and used <= capacity and sum(counts) <= most \
                and (capacity < used + sizes[0] or sum(counts) == most):
            want.append(counts)
    assert sorted(got) == sorted(want)


@given(st.lists(st.integers(5, 700), min_size=1, max_size=6, unique=True),
       st.lists(st.integers(1, 500), min_size=6, max_size=6))
@SETTINGS
def test_the_simplex_reaches_the_optimum_of_highs(sizes: list[int], demand: list[int]) -> None:
    """The fewest GPUs (with the mixed tie-break) for covering the counts, as HiGHS finds them."""
    sizes = sorted(sizes)
    sets = pairing.candidate_sets(sizes, GPU, 1000)
    a = np.asarray(sets, dtype=np.float64).T
    cost = 1.0 - pairing.MIXED_TIE * ((a > 0).sum(axis=0) - 1)
    d = np.asarray(demand[: len(sizes)], dtype=np.float64)
    x = pairing.fewest_gpus(a, cost, d)
    assert x is not None
    assert (x >= 0).all()
    assert (a @ x >= d - 1e-6).all()
    best = linprog(cost, A_ub=-a, b_ub=-d, bounds=(0, None), method="highs")
    assert float(cost @ x) == pytest.approx(best.fun, rel=1e-9)


def test_patterns_of_the_trace_like_mix_pair_the_big_sizes_with_partners() -> None:
    pats = pairing.patterns(MIX, GPU, 1000)
    sets = {tuple(sorted(collections.Counter(dict(p)).elements())) for p in pats.sets}
    for p in sets:
        assert sum(p) <= GPU
        assert GPU - sum(p) < 50  # maximal: no room for the smallest size
    assert any(470 in p and 460 in p for p in sets)  # a 470 waits for a 460 ...
    assert (320, 650) in sets  # ... and a 320 for a 650, not for a 470
    assert not any(320 in p and 470 in p for p in sets)
    # claimed memory beside which a 460 keeps to a pattern: a 470 (with or without the 50)
    assert 470 in pats.partners[460]
    assert 320 not in pats.partners.get(470, frozenset())
    assert pats.in_some == frozenset(m for p in sets for m in p)


def test_a_pattern_holds_no_more_shares_than_the_gpu_advertises() -> None:
    """GPUs of 4 shares: 470 + 460 + 50 is a pattern, five 50s and more are not."""
    small = pairing.share_mix([(50, 1000, 10), (470, 1000, 5), (460, 1000, 5)])
    for most in (2, 3, 4, 1000):
        pats = pairing.patterns(small, GPU, most)
        assert pats.sets and all(sum(k for _, k in p) <= most for p in pats.sets), most
    assert any(sum(k for _, k in p) > 4 for p in pairing.patterns(small, GPU, 1000).sets)


def test_past_the_bounds_there_are_no_patterns() -> None:
    tiny = pairing.share_mix([(m, 1000, 1) for m in range(1, 40)])
    assert pairing.patterns(tiny, 10_000, 1000) is pairing.EMPTY  # more than MAX_SETS sets
    assert pairing.patterns(MIX, 40, 4) is pairing.EMPTY  # no size fits such a GPU


def _keeps(claimed: int, size: int, pats: pairing.Patterns) -> bool:
    """From the definition: ``claimed`` is the sum of part of a pattern whose rest holds ``size``."""
    for pat in pats.sets:
        items = list(collections.Counter(dict(pat)).elements())
        for k in range(1, len(items)):
            for part in itertools.combinations(range(len(items)), k):
                rest = [items[i] for i in range(len(items)) if i not in part]
                if sum(items[i] for i in part) == claimed and size in rest:
                    return True
    return False


SIZES = [m for m, _ in MIX.sizes]
#: claimed memory of a time-sliced GPU: sums of the mix's sizes, or anything
claimed_memory = st.one_of(st.lists(st.sampled_from(SIZES), max_size=3).map(sum), st.integers(0, GPU))


@st.composite
def share_node(draw: st.DrawFn) -> list[S]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        claimed = min(draw(claimed_memory), GPU)
        free = draw(st.integers(0, 4))
        out.append(S(cap=4, free=free, mem=GPU, free_mem=GPU - claimed))
    return out


share_requests = st.builds(lambda m, c: Request(0, 1, m, cpu_milli=c), st.sampled_from(SIZES + [130, 999]),
                           st.sampled_from([0, 2000, 4000]))
node_cpu = st.sampled_from([0, 10_000, 31_999, 32_000, 33_999, 34_000, 35_999, 36_000, kernel.slots.UNLIMITED])


@given(st.lists(share_node(), min_size=1, max_size=5), share_requests, st.data())
@SETTINGS
def test_a_share_takes_the_gpu_of_the_rule_and_it_is_the_one_scored(rows: list[list[S]], req: Request,
                                                                     data: st.DataObject) -> None:
    """On every node: a GPU where the share keeps to a pattern when there is one; else an
    empty one when its size is in no pattern or the node keeps PARTNER_ROOM median shares' CPU
    after it; else any; least memory left within each. What choose_devices gives is what
    evaluate scored, and never beyond the GPU's room."""
    n = len(rows)
    cpu = data.draw(st.lists(node_cpu, min_size=n, max_size=n))
    s = slots(rows, cpu=cpu)
    policy = kernel.get_policy("fragmentation")
    mix = ((req, 0.6), (Request(0, 1, 320, cpu_milli=4000), 0.4))
    v = kernel.evaluate(s, req, policy, np, mix=mix, shares=MIX)
    pats = pairing.patterns(MIX, GPU, 4)
    avail = units(s, req, np)
    for i, row in enumerate(rows):
        chosen = kernel.choose_devices(s, i, req, np, MIX)
        if not v.feasible[i]:
            assert chosen == () and not v.keeps[i]
            continue
        (col, k), = chosen
        assert k == 1 and avail[i, col] >= 1
        claimed = [GPU - (x.free_mem or 0) for x in row]
        ok = [c for c in range(len(row)) if avail[i, c] >= 1]
        keeps = [c for c in ok if claimed[c] > 0 and _keeps(claimed[c], req.memory_mib, pats)]
        room = cpu[i] - req.cpu_milli >= pairing.PARTNER_ROOM * MIX.cpu_milli or req.memory_mib not in pats.in_some
        opens = [c for c in ok if claimed[c] == 0 and room]
        first = keeps or opens or ok
        assert col in first
        assert row[col].free_mem == min(row[c].free_mem for c in first)
        assert bool(v.keeps[i]) == bool(keeps)
        take = np.zeros((1, s.shape[1]), dtype=np.int32)
        take[0, col] = 1
        got = policy.score(ScoreInput(s.rows(np.asarray([i])), take, req, mix, np))
        assert float(got[0]) == pytest.approx(float(v.raw[i]))


@given(st.lists(share_node(), min_size=1, max_size=3), share_requests, st.data())
@SETTINGS
def test_kept_verdicts_with_shares_equal_a_fresh_evaluation(pool: list[list[S]], req: Request,
                                                            data: st.DataObject) -> None:
    """Rows passing through a few states, with free CPU on either side of the CPU guard, change
    a few at a time: the verdicts kept under a share mix (by row state, the guard one of the
    cuts they are kept by) equal an evaluation of the rows as they are, and a new share mix is
    never answered from the old one's."""
    n = 6
    policy = kernel.get_policy("fragmentation")
    mix = ((req, 1.0),)
    rounds = data.draw(st.lists(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, len(pool) - 1), node_cpu),
                                         min_size=1, max_size=3), min_size=1, max_size=6))
    rows, cpus = [pool[0]] * n, [40_000] * n
    memo = VerdictMemo(n)
    memo.evaluate(slots(rows, cpu=cpus), req, policy, mix, shares=MIX)
    for changes in rounds:
        for i, state, c in changes:
            rows[i], cpus[i] = pool[state], c
        memo.mark(np.asarray(sorted({i for i, *_ in changes}), dtype=np.int64))
        now = slots(rows, cpu=cpus)
        kept = memo.evaluate(now, req, policy, mix, shares=MIX)
        fresh = kernel.evaluate(now, req, policy, np, mix=mix, shares=MIX)
        for f in ("feasible", "reason", "free_units", "keeps", "level", "raw"):
            assert getattr(kept, f).tolist() == getattr(fresh, f).tolist(), f
    other = pairing.share_mix([(320, 4000, 1), (650, 4000, 1)])
    kept = memo.evaluate(now, req, policy, mix, shares=other)
    fresh = kernel.evaluate(now, req, policy, np, mix=mix, shares=other)
    assert kept.keeps.tolist() == fresh.keeps.tolist() and kept.raw.tolist() == fresh.raw.tolist()


def test_the_named_node_is_one_where_the_share_keeps_to_a_pattern() -> None:
    """Among the top two levels the named node is the first by name where the share keeps to a
    pattern; without such a node there, the first by name as before."""
    level = np.asarray([10, 9, 9, 7])
    names = ["a", "b", "c", "d"]
    assert kernel.named(level, names, np.asarray([False, False, True, True])) == 2
    assert kernel.named(level, names, np.asarray([False, False, False, True])) == 0  # d is not in the band
    assert kernel.named(level, names, None) == 0
    raw = np.asarray([3.0, 2.0, 2.0, 1.0])
    feasible = np.ones(4, bool)
    band = kernel.top_band(raw, feasible)
    prefer = np.asarray([False, True, False, False])
    want = 1 if band[1] else 0
    assert kernel.lead_node(raw, feasible, names, prefer=prefer) == want


def test_no_shares_or_whole_gpus_keep_the_plain_best_fit() -> None:
    """Whole-GPU requests and a share mix without patterns leave the packed take plan as it was."""
    rows = [[S(cap=4, free=4, mem=GPU, free_mem=GPU), S(cap=4, free=3, mem=GPU, free_mem=530)]]
    s = slots(rows)
    whole = Request(0, 1, GPU)
    assert kernel.choose_devices(s, 0, whole, np, MIX) == kernel.choose_devices(s, 0, whole, np)
    share = Request(0, 1, 320)
    assert kernel.choose_devices(s, 0, share, np) == ((1, 1),)  # best fit: 530 left
    # 470 claimed: a 320 does not keep to a pattern beside it, and the empty GPU may be opened
    assert kernel.choose_devices(s, 0, share, np, MIX) == ((0, 1),)


def test_a_search_past_its_bound_gives_up() -> None:
    """Many small sizes on a big GPU: the search for sets stops at its bound, no patterns."""
    sizes = list(range(1000, 1064))
    assert pairing.maximal_sets(sizes, 81559, 1000) == []
    mix = pairing.share_mix([(m, 1000, 1) for m in sizes])
    assert pairing.patterns(mix, 81559, 1000) is pairing.EMPTY
