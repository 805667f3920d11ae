"""The preferred-allocation rule, by hand-checked cases and by properties on random machines."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupack.topology import EXHAUSTIVE_LIMIT, PreferenceError, Topology, choose

from tests.profiles import explore, invariant


def pairs_machine() -> Topology:
    # 8 GPUs, bridged pairs (0,1) (2,3) (4,5) (6,7) with 4 links; NUMA 0 = 0-3, NUMA 1 = 4-7
    return Topology.build(
        [0, 0, 0, 0, 1, 1, 1, 1],
        [(i, i + 1, 4) for i in range(0, 8, 2)],
        {f"g{i}": i for i in range(8)},
    )


def ids(*n: int) -> list[str]:
    return [f"g{i}" for i in n]


@pytest.mark.parametrize(
    "available, must, size, expected",
    [
        # links inside {2,3} = 4 beat {0,5}, {0,2} ... = 0
        (ids(0, 2, 3, 5), [], 2, ids(2, 3)),
        # single GPU from a broken pair: left-over group squares are
        #   take 0: {2,3}=2,{5}=1,{6,7}=2 -> 4+1+4 = 9 ;  take 2: {0}=1,{3}=1,{5}=1,{6,7}=2 -> 7
        (ids(0, 2, 3, 5, 6, 7), [], 1, ids(0)),
        # must-include g7 and size 2: its partner g6 (4 links) wins
        (ids(0, 1, 6, 7), ids(7), 2, ids(6, 7)),
        # size equals must-include: answer is exactly that set
        (ids(0, 1, 2), ids(1), 1, ids(1)),
        # 3 GPUs: a whole pair plus one from the same NUMA node (span 1) wins
        (ids(0, 1, 4, 6), [], 3, ids(0, 1, 4)),
    ],
)
def test_cases(available: list[str], must: list[str], size: int, expected: list[str]) -> None:
    assert choose(available, must, size, pairs_machine()) == expected


@pytest.mark.parametrize(
    "available, must, size, message",
    [
        (ids(0, 1), [], 3, "cannot choose 3"),
        (ids(0, 1), ids(2), 2, "must-include devices not available: g2"),
        (ids(0) + ["zz"], [], 1, "unknown device ids: zz"),
        (ids(0, 1, 2), ids(0, 1), 1, "cannot choose 1"),
    ],
)
def test_refusals_say_why(available: list[str], must: list[str], size: int, message: str) -> None:
    with pytest.raises(PreferenceError, match=message):
        choose(available, must, size, pairs_machine())


@st.composite
def machines(draw: st.DrawFn) -> tuple[Topology, list[str], list[str], int]:
    n = draw(st.integers(1, 24))
    numa = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    links = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.integers(1, 12)), max_size=3 * n))
    topo = Topology.build(numa, links, {f"g{i}": i for i in range(n)})
    available = draw(st.lists(st.sampled_from([f"g{i}" for i in range(n)]), min_size=1, unique=True))
    must = draw(st.lists(st.sampled_from(available), unique=True, max_size=len(available)))
    size = draw(st.integers(len(must), len(available)))
    return topo, available, must, size


@invariant(200)
@given(machines())
def test_answer_is_a_subset_of_the_right_size_holding_must_include(case: tuple[Topology, list[str], list[str], int]) -> None:
    topo, available, must, size = case
    got = choose(available, must, size, topo)
    assert len(got) == size == len(set(got))
    assert set(must) <= set(got) <= set(available)


@explore(100)
@given(machines())
def test_no_other_set_has_more_nvlinks_when_searched_exhaustively(case: tuple[Topology, list[str], list[str], int]) -> None:
    topo, available, must, size = case
    got = choose(available, must, size, topo)

    def links(s: list[str]) -> int:
        return sum(topo.nvlinks[topo.gpu_of[a]][topo.gpu_of[b]] for a, b in itertools.combinations(s, 2))

    pool = [d for d in available if d not in must]
    if math.comb(len(pool), size - len(must)) <= EXHAUSTIVE_LIMIT:  # the greedy path promises less
        best = max(links(list(must) + list(c)) for c in itertools.combinations(pool, size - len(must)))
        assert links(got) == best


def test_large_node_takes_whole_pairs_on_one_numa_node() -> None:
    # 64 GPUs in bridged pairs, 8 per NUMA node; GPUs 0, 2 and 9 busy. C(61, 4) is far past the
    # exhaustive limit, so the greedy path answers: two whole pairs (links 4 + 4), one NUMA node,
    # taken from node 0 whose 5 free GPUs are already broken into pieces rather than a whole node.
    topo = Topology.build([i // 8 for i in range(64)], [(i, i + 1, 4) for i in range(0, 64, 2)], {f"g{i}": i for i in range(64)})
    available = [f"g{i}" for i in range(64) if i not in (0, 2, 9)]
    got = choose(available, [], 4, topo)
    assert got == ids(4, 5, 6, 7)
