"""Hypothesis properties of the kernel on small random clusters."""

from __future__ import annotations

import dataclasses
from typing import Any
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupack import kernel
from gpupack.kernel import Request, reference
from gpupack.kernel.verdict_memo import VerdictMemo
from gpupack.kernel.levels import LEAD
from gpupack.kernel.slots import Slots, take_plan, unit_memory, units
from gpupack.kernel.usage import ScoreInput

from tests.gpupack.kernel.kernel_tables import S, slots
from tests.profiles import SIZES, invariant


@st.composite
def slot(draw: st.DrawFn) -> S:
    cap = draw(st.sampled_from([1, 1, 2, 4]))
    free = draw(st.integers(0, cap))
    mem = draw(st.sampled_from([10240, 40960]))
    # any amount, or an eighth's step (between two shapes' hints more often than at the ends)
    free_mem = draw(st.one_of(st.integers(0, mem), st.sampled_from([mem * k // 8 for k in range(9)]))) if cap > 1 \
        else (mem if free else 0)
    return S(resource=draw(st.integers(0, 2)), cap=cap, free=free, mem=mem, free_mem=free_mem,
             healthy=draw(st.booleans()), weight=draw(st.sampled_from([1.0, 0.5, 0.25])),
             nvgroup=draw(st.integers(-1, 1)), numa=draw(st.integers(-1, 1)), model=draw(st.integers(0, 1)))


clusters = st.lists(st.lists(slot(), min_size=0, max_size=SIZES.slots), min_size=1, max_size=SIZES.nodes)
#: GPU model pins as node affinity on the product makes them: none (most pods), one model, either
pins = st.sampled_from([frozenset(), frozenset(), frozenset({0}), frozenset({1}), frozenset({0, 1})])
requests = st.builds(Request, st.integers(0, 2), st.integers(0, SIZES.count), st.sampled_from([0, 0, 5000, 12000, 50000]),
                     models=pins)
#: every property here guards an invariant of the kernel: derandomized in CI (tests/profiles.py)
SETTINGS = invariant(150)


def _slot_ok(x: S, n: int, req: Request) -> bool:
    """Can slot ``x`` give ``n`` units of ``req``? Checked from the definitions directly."""
    if n == 0:
        return True
    if x.resource != req.resource or not x.healthy:
        return False
    if req.models and x.model not in req.models:
        return False
    free_mem = x.free_mem if x.free_mem is not None else x.mem
    if x.cap == 1:
        return n == 1 and x.free == 1 and free_mem >= x.mem and req.memory_mib <= x.mem
    per = req.memory_mib or x.mem // x.cap
    return n <= x.free and n * per <= free_mem


def brute_force_fits(row: list[S], req: Request) -> bool:
    for split in itertools.product(range(req.count + 1), repeat=len(row)):
        if sum(split) == req.count and all(_slot_ok(x, n, req) for x, n in zip(row, split)):
            return True
    return False


@SETTINGS
@given(clusters, requests)
def test_feasibility_equals_brute_force(rows: list[list[S]], req: Request) -> None:
    v = kernel.evaluate(slots(rows), req, kernel.get_policy("binpack"), np, score=False)
    assert v.feasible.tolist() == [brute_force_fits(r, req) for r in rows]


@SETTINGS
@given(clusters, requests)
def test_placement_never_beyond_capacity(rows: list[list[S]], req: Request) -> None:
    s = slots(rows)
    take = take_plan(s, req, np)
    per = unit_memory(s, req, np)
    assert (take <= units(s, req, np)).all()
    assert (s.free - take >= 0).all()
    assert (s.free_memory_mib - take * per >= 0).all()


@SETTINGS
@given(clusters, requests)
def test_chosen_devices_exist_are_free_and_healthy(rows: list[list[S]], req: Request) -> None:
    s = slots(rows)
    feasible = kernel.evaluate(s, req, kernel.get_policy("binpack"), np, score=False).feasible
    for i, row in enumerate(rows):
        chosen = kernel.choose_devices(s, i, req, np)
        if not feasible[i]:
            assert chosen == ()
            continue
        assert sum(n for _, n in chosen) == req.count
        for col, n in chosen:
            assert 0 <= col < len(row)
            assert _slot_ok(row[col], n, req)


cpu_mem = st.sampled_from([0, 2000, 4000, 8000])


@SETTINGS
@given(clusters, requests, st.data())
def test_the_devices_chosen_are_the_placement_the_kernel_scored(rows: list[list[S]], req: Request,
                                                                 data: st.DataObject) -> None:
    """The node's score is the score of the devices the extender then gives: for shares the
    very units of the packed plan the kernel scored; for whole devices (chosen by NVLink and
    NUMA) a placement of the same score wherever the node's free whole devices of the resource
    are alike in what the score reads (weight, memory, model). Where they are not (one
    resource over two GPU models), the topology choice may differ from the plan scored
    (docs/extender.md, "Known gaps")."""
    n = len(rows)
    s = slots(rows, cpu=data.draw(st.lists(cpu_mem, min_size=n, max_size=n)))
    mix = ((req, 0.5), (Request(1, 1, 5000, cpu_milli=2000), 0.2), (Request(0, 2), 0.2),
           (Request(0, 1, models=frozenset({1})), 0.1))
    policy = kernel.get_policy("fragmentation")
    v = kernel.evaluate(s, req, policy, np, mix=mix)
    plan = take_plan(s, req, np)
    for i, row in enumerate(rows):
        chosen = kernel.choose_devices(s, i, req, np)
        if not v.feasible[i] or req.count == 0:
            continue
        take = np.zeros((1, s.shape[1]), dtype=np.int32)
        for col, k in chosen:
            take[0, col] = k
        shares = any(row[c].cap > 1 for c, _ in chosen)
        if shares:  # the plan itself
            assert take[0].tolist() == plan[i].tolist()
        alike = {(row[c].weight, row[c].mem, row[c].model) for c in range(len(row))
                 if _slot_ok(row[c], 1, req) and row[c].cap == 1}
        if shares or len(alike) <= 1:
            one = s.rows(np.asarray([i]))
            got = policy.score(ScoreInput(one, take, req, mix, np))
            assert float(got[0]) == pytest.approx(float(v.raw[i]))


@SETTINGS
@given(clusters, requests, st.sampled_from(sorted(kernel.POLICIES)), st.data())
def test_array_kernel_equals_plain_python_reference(rows: list[list[S]], req: Request, policy: str,
                                                    data: st.DataObject) -> None:
    n = len(rows)
    free_cpu = data.draw(st.lists(st.sampled_from([0, 3000, 8000, 16000]), min_size=n, max_size=n))
    free_mem = data.draw(st.lists(st.sampled_from([1000, 6000, 2**62]), min_size=n, max_size=n))
    req = dataclasses.replace(req, cpu_milli=data.draw(cpu_mem), node_memory_mib=data.draw(cpu_mem))
    s = slots(rows, cpu=free_cpu, mem=free_mem)
    mix = ((req, 0.5), (Request(1, 1, 5000, cpu_milli=data.draw(cpu_mem)), 0.2),
           (Request(1, 1, 5000, node_memory_mib=data.draw(cpu_mem)), 0.1),
           (Request(-1, 0, cpu_milli=data.draw(cpu_mem), node_memory_mib=data.draw(cpu_mem)), 0.1),
           (Request(0, data.draw(st.integers(1, 2)), models=frozenset({data.draw(st.integers(0, 2))})), 0.1),
           (Request(1, 1), 0.1))  # a second part of resource 1: which of them strands least varies
    v = kernel.evaluate(s, req, kernel.get_policy(policy), np, mix=mix)
    feasible, raw = reference.evaluate(s, req, policy, mix if policy == "fragmentation" else ())
    assert v.feasible.tolist() == feasible
    assert v.raw.tolist() == pytest.approx(raw)


@SETTINGS
@given(clusters, requests, st.data())
def test_cpu_and_memory_never_change_feasibility(rows: list[list[S]], req: Request, data: st.DataObject) -> None:
    n = len(rows)
    free_cpu = data.draw(st.lists(st.sampled_from([0, 3000]), min_size=n, max_size=n))
    big = dataclasses.replace(req, cpu_milli=data.draw(cpu_mem), node_memory_mib=data.draw(cpu_mem))
    with_cpu = kernel.evaluate(slots(rows, cpu=free_cpu, mem=free_cpu), big, kernel.get_policy("fragmentation"), np)
    without = kernel.evaluate(slots(rows), req, kernel.get_policy("fragmentation"), np)
    assert with_cpu.feasible.tolist() == without.feasible.tolist()


def _u_after(s: Slots, req: Request) -> list[float]:
    from gpupack.kernel.usage import ScoreInput, node_utilisation

    free, free_mem = ScoreInput(s, take_plan(s, req, np), req, (), np).after()
    return [float(x) for x in node_utilisation(s, free, free_mem, np)]


@SETTINGS
@given(clusters, requests)
def test_policies_order_nodes_as_they_claim(rows: list[list[S]], req: Request) -> None:
    s = slots(rows)
    u = _u_after(s, req)
    spread = kernel.evaluate(s, req, kernel.get_policy("spread"), np)
    binpack = kernel.evaluate(s, req, kernel.get_policy("binpack"), np)
    ok = [i for i in range(len(rows)) if spread.feasible[i]]
    for a, b in itertools.permutations(ok, 2):
        # spread: an emptier node after placement never scores lower
        if u[a] < u[b] - 1e-9:
            assert spread.level[a] >= spread.level[b]
        # binpack: a fuller node scores at least as high when both fill the same share of used slots
        ga, gb = binpack.raw[a] - u[a], binpack.raw[b] - u[b]
        if abs(ga - gb) < 1e-9 and u[a] > u[b] + 1e-9:
            assert binpack.level[a] >= binpack.level[b]
    # levels keep the raw order, and the best feasible node gets 10
    for v in (spread, binpack):
        for a, b in itertools.permutations(ok, 2):
            if v.raw[a] > v.raw[b] + 1e-9:
                assert v.level[a] >= v.level[b]
        if ok:
            assert max(v.level[i] for i in ok) == 10


@SETTINGS
@given(st.lists(st.floats(-10, 10), max_size=30), st.data())
def test_the_named_node_is_the_first_by_name_of_the_top_two_levels(raw: list[float], data: st.DataObject) -> None:
    """One node at 10, the node of the top two levels (10 and 9) whose name sorts first; every
    other node at 8 at most, in the plain levels' order."""
    n = len(raw)
    names = data.draw(st.lists(st.text("abc", min_size=1, max_size=4), min_size=n, max_size=n, unique=True))
    feasible = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    plain = kernel.to_levels(np.asarray(raw, dtype=float), feasible, np)
    led = kernel.with_lead(plain, names)
    band = [i for i in range(n) if plain[i] >= 9]
    if not band:
        assert led.tolist() == plain.tolist()
        return
    first = min(band, key=lambda i: names[i])
    assert [i for i in range(n) if led[i] == 10] == [first]
    others = [i for i in range(n) if i != first]
    assert all(led[i] == min(plain[i], 10 - LEAD) for i in others)


#: raw scores with many ties (a few distinct values, so both of to_levels' rules and every
#: band width are drawn), or any floats, and -inf for a node that does not fit
tied_raw = st.one_of(st.lists(st.sampled_from([-1.0, -0.5, -0.25, 0.0, 0.001, 0.25, 1.0, 1.0 + 1e-12, 2.0, -np.inf]),
                              max_size=40),
                     st.lists(st.integers(0, 15).map(lambda k: k / 8), max_size=40),
                     st.lists(st.integers(0, 60), min_size=8, max_size=40, unique=True).map(lambda ks: [k / 16 for k in ks]),
                     st.lists(st.floats(-10, 10), max_size=40))


@SETTINGS
@given(tied_raw, st.data())
def test_the_band_and_order_without_levels_are_those_of_the_levels(raw: list[float], data: st.DataObject) -> None:
    """Gate mode's shortcut (kernel.top_band, lead_node, best_first: no level per node) gives
    the nodes at the top two levels, the named node and the first nodes of a stable sort by
    (level with the named node at 10, raw) that to_levels and with_lead give."""
    n = len(raw)
    r = np.asarray(raw, dtype=float)
    names = data.draw(st.lists(st.text("abcd", min_size=1, max_size=4), min_size=n, max_size=n, unique=True))
    mostly = st.lists(st.sampled_from([True, True, True, False]), min_size=n, max_size=n)
    feasible = np.asarray(data.draw(mostly), dtype=bool)
    among = feasible & np.asarray(data.draw(mostly), dtype=bool)
    limit = data.draw(st.integers(1, 5))
    plain = kernel.to_levels(r, feasible, np)
    assert kernel.top_band(r, feasible).tolist() == (feasible & (plain >= 9)).tolist()
    first = kernel.lead_node(r, feasible, names)
    assert first == kernel.named(plain, names)
    ordered = sorted(range(n), key=lambda i: names[i])  # the same nodes, listed in name order
    at = np.asarray(ordered, dtype=np.int64)
    assert kernel.lead_node(r[at], feasible[at], [names[i] for i in ordered], in_name_order=True) == \
        (ordered.index(first) if first >= 0 else -1)
    for lead, level in ((first, kernel.with_lead(plain, names)), (-1, plain)):
        f = np.flatnonzero(among)
        want = f[np.lexsort((-r[f], -level[f]))][:limit].tolist()
        assert kernel.best_first(r, among, lead, limit) == want


@SETTINGS
@given(clusters, clusters, requests, st.data())
def test_a_kept_memo_gives_the_scores_of_a_fresh_evaluation(rows: list[list[S]], later: list[list[S]], req: Request,
                                                           data: st.DataObject) -> None:
    """A memo kept from an earlier state of the rows, told which rows changed since, gives
    exactly the raw scores of an evaluation without it."""
    n = len(rows)
    changed = data.draw(st.lists(st.integers(0, n - 1), unique=True))
    before = slots(rows)
    now = slots([(later[i % len(later)] if i in changed else rows[i]) for i in range(n)])
    mix = ((req, 0.5), (Request(1, 1, 5000), 0.2), (Request(0, 2), 0.2), (Request(0, 1, models=frozenset({1})), 0.1))
    policy = kernel.get_policy("fragmentation")
    memo = kernel.NodeSumsMemo(n)
    kernel.evaluate(before, Request(0, 1), policy, np, mix=mix, memo=memo)  # the memo learns the old rows
    memo.mark(np.asarray(changed, dtype=np.int64))
    kept = kernel.evaluate(now, req, policy, np, mix=mix, memo=memo)
    fresh = kernel.evaluate(now, req, policy, np, mix=mix)
    assert kept.raw.tolist() == fresh.raw.tolist()
    assert kept.level.tolist() == fresh.level.tolist()


@SETTINGS
@given(clusters, clusters, requests, st.data())
def test_kept_verdicts_equal_a_fresh_evaluation(rows: list[list[S]], later: list[list[S]], req: Request,
                                                data: st.DataObject) -> None:
    """Verdicts kept for a request from an earlier state of the rows, told which rows changed
    since (only those are evaluated again), equal an evaluation of the rows as they are, for
    every policy; a new mix is never answered from verdicts kept under the old one."""
    n = len(rows)
    changed = data.draw(st.lists(st.integers(0, n - 1), unique=True))
    before = slots(rows)
    now = slots([(later[i % len(later)] if i in changed else rows[i]) for i in range(n)])
    mix = ((req, 0.5), (Request(1, 1, 5000), 0.2), (Request(0, 2), 0.2), (Request(0, 1, models=frozenset({1})), 0.1))
    other_mix = ((Request(0, 2), 1.0),)
    for name in kernel.POLICIES:
        policy = kernel.get_policy(name)
        memo = VerdictMemo(n)
        memo.evaluate(before, req, policy, mix)  # learnt on the old rows
        memo.evaluate(before, Request(0, 1), policy, mix)
        memo.mark(np.asarray(changed, dtype=np.int64))
        for m in (mix, other_mix):
            kept = memo.evaluate(now, req, policy, m)
            fresh = kernel.evaluate(now, req, policy, np, mix=m)
            for f in ("feasible", "reason", "free_units", "total_units", "level"):
                assert getattr(kept, f).tolist() == getattr(fresh, f).tolist(), (name, f)
            np.testing.assert_allclose(kept.raw, fresh.raw, rtol=0, atol=1e-12)


CPU_NEAR_CUTS = [0, 999, 1000, 1500, 2499, 2500, 4000, kernel.slots.UNLIMITED]


@SETTINGS
@given(st.lists(slot(), min_size=1, max_size=3), requests, st.sampled_from([0, 1000, 1500]), st.data())
def test_a_full_evaluation_once_per_distinct_state_equals_one_of_every_row(pool: list[S], req: Request, cpu: int,
                                                                           data: st.DataObject) -> None:
    """A request evaluated on every row (its first time, and again under a new mix) evaluates
    one row per distinct state (slots, and which CPU cuts the node reaches) when those are at
    most half the rows, and its verdicts equal an evaluation of every row, bit for bit, for
    every policy: also after the rows change to states numbered before and new ones."""
    from gpupack.kernel import verdict_memo

    req = dataclasses.replace(req, cpu_milli=cpu)
    states = [[x] * 2 for x in pool]
    n = 16
    mix = ((req, 0.5), (Request(0, 1, cpu_milli=1000), 0.3), (Request(-1, 0, cpu_milli=1500), 0.2))
    other_mix = ((req, 0.2), (Request(1, 2, 12000), 0.8))
    draw_rows = st.lists(st.tuples(st.integers(0, len(states) - 1), st.sampled_from(CPU_NEAR_CUTS)),
                         min_size=n, max_size=n)
    first, second = data.draw(draw_rows), data.draw(draw_rows)
    plain = verdict_memo.evaluate
    for name in kernel.POLICIES:
        policy = kernel.get_policy(name)
        memo = VerdictMemo(n)
        for call, (picked, m) in enumerate(((first, mix), (second, other_mix), (second, mix))):
            now = slots([states[i] for i, _ in picked], cpu=[c for _, c in picked], mem=[4000] * n)
            memo.mark(np.arange(n))
            evaluated: list[int] = []

            def counting(rows: Slots, *args: Any, **kwargs: Any) -> Any:
                evaluated.append(rows.shape[0])
                return plain(rows, *args, **kwargs)

            verdict_memo.evaluate = counting  # type: ignore[assignment]
            try:
                kept = memo.evaluate(now, req, policy, m)
            finally:
                verdict_memo.evaluate = plain  # type: ignore[assignment]
            fresh = kernel.evaluate(now, req, policy, np, mix=m)
            for f in ("feasible", "reason", "free_units", "total_units", "level", "raw"):  # raw bit for bit
                assert getattr(kept, f).tolist() == getattr(fresh, f).tolist(), (name, call, f)
            if call == 0 or policy.uses_mix:  # evaluated on every row: the first time, or a new mix
                cpu_cuts, _ = policy.node_cuts(req, m if policy.uses_mix else ())
                distinct = len({(repr(states[i]), int(np.searchsorted(cpu_cuts, c, side="right"))) for i, c in picked})
                assert evaluated == ([n] if 2 * distinct > n else [distinct]), (name, call)


@SETTINGS
@given(st.lists(slot(), min_size=1, max_size=4), requests, st.sampled_from([0, 1000, 1500]), st.data())
def test_verdicts_kept_by_row_state_equal_a_fresh_evaluation(pool: list[S], req: Request, cpu: int,
                                                             data: st.DataObject) -> None:
    """Rows that pass through the same few states, with free CPU on either side of the mix's
    CPU amounts, change a few at a time: the verdicts answered from the states seen before
    equal an evaluation of the rows as they are, for every policy."""
    req = dataclasses.replace(req, cpu_milli=cpu)
    states = [[x] * 2 for x in pool]  # nodes of two slots alike
    n = 6
    mix = ((req, 0.4), (Request(0, 1, cpu_milli=1000), 0.3), (Request(-1, 0, cpu_milli=1500), 0.2),
           (Request(1, 1, 5000, node_memory_mib=2000), 0.1))
    rounds = data.draw(st.lists(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, len(states) - 1),
                                                   st.sampled_from(CPU_NEAR_CUTS), st.sampled_from([0, 2000, 4000])),
                                         min_size=1, max_size=3), min_size=1, max_size=6))
    for name in kernel.POLICIES:
        policy = kernel.get_policy(name)
        rows, cpus, mems = [states[0]] * n, [4000] * n, [4000] * n
        memo = VerdictMemo(n)
        memo.evaluate(slots(rows, cpu=cpus, mem=mems), req, policy, mix)
        for changes in rounds:
            for i, state, c, m in changes:
                rows[i], cpus[i], mems[i] = states[state], c, m
            memo.mark(np.asarray(sorted({i for i, *_ in changes}), dtype=np.int64))
            now = slots(rows, cpu=cpus, mem=mems)
            kept = memo.evaluate(now, req, policy, mix)
            fresh = kernel.evaluate(now, req, policy, np, mix=mix)
            for f in ("feasible", "reason", "free_units", "total_units", "level", "raw"):  # raw bit for bit
                assert getattr(kept, f).tolist() == getattr(fresh, f).tolist(), (name, f)


@st.composite
def alike_node(draw: st.DrawFn) -> list[S]:
    """A node whose slots of each resource are of one kind (capacity, memory, model), in any
    state: the usual node, one GPU model and one sharing setup."""
    kinds = {r: (draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([10240, 40960])), draw(st.integers(0, 1)))
             for r in range(3)}
    out = []
    for _ in range(draw(st.integers(1, SIZES.slots))):
        r = draw(st.sampled_from([0, 0, 0, 1, 2]))
        cap, mem, model = kinds[r]
        free = draw(st.integers(0, cap))
        free_mem = mem * draw(st.sampled_from([0, 1, 2, 3, 4, 6, 8])) // 8 if cap > 1 else (mem if free else 0)
        out.append(S(resource=r, cap=cap, free=free, mem=mem, free_mem=free_mem,
                     healthy=draw(st.sampled_from([True, True, True, False])), model=model))
    return out


@SETTINGS
@given(st.lists(alike_node(), min_size=1, max_size=SIZES.nodes), st.data())
def test_the_permanent_strand_is_the_capacity_no_hosted_part_can_use(rows: list[list[S]],
                                                                      data: st.DataObject) -> None:
    """On nodes whose slots of a resource are alike, the reference's ``P`` (the least that a
    hosted part of each resource strands) is the idle capacity of the slots that no GPU shape
    the node can host has room on, counted slot by slot from the definition."""
    n = len(rows)
    cpu = data.draw(st.lists(st.sampled_from([3000, 8000, 8000]), min_size=n, max_size=n))
    mix = tuple((Request(data.draw(st.sampled_from([0, 0, 0, 1])), data.draw(st.sampled_from([1, 1, 2])),
                         data.draw(st.sampled_from([0, 5000, 8000, 12000])),
                         cpu_milli=data.draw(st.sampled_from([0, 0, 4000]))), 0.25) for _ in range(4))
    s = slots(rows, cpu=cpu)
    for i, row in enumerate(rows):
        node = reference._node(reference._lists(s), i)
        idle = reference._idle(node)
        hosted = [shape for shape, _ in mix if reference._hosts(node, shape, cpu[i], 2**62)[0]]
        asked = {shape.resource for shape, _ in mix}
        exact = sum(x for x, slot in zip(idle, node)
                    if slot["resource"] in asked and not any(reference._units(slot, shape) > 0 for shape in hosted))
        assert reference._permanent(node, mix, cpu[i], 2**62) == pytest.approx(exact)
