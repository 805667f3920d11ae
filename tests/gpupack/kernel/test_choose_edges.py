"""Fixed tables for the kernel's building blocks, called directly: ``empty_slots``'s sentinels
and dtypes, ``unit_memory`` and ``units`` at their boundaries (capacity 1 vs 2, a hint of
1 MiB, no hint), ``take_plan`` taking several units from one slot or a given ``avail``, and
``choose_devices``'s NUMA spreading and row selection."""

from __future__ import annotations

import numpy as np
import pytest

from gpupack.kernel.choose import choose_devices
from gpupack.kernel.slots import UNLIMITED, Request, empty_slots, take_plan, unit_memory, units
from tests.gpupack.kernel.kernel_tables import S, slots


def test_empty_slots_sentinels_and_dtypes() -> None:
    s = empty_slots(np, 2, 3)
    for name, dtype, fill in [
        ("resource", np.int32, -1), ("capacity", np.int32, 0), ("free", np.int32, 0),
        ("memory_mib", np.int32, 0), ("free_memory_mib", np.int32, 0), ("weight", np.float64, 0.0),
        ("model", np.int32, -1), ("gpu", np.int32, -1), ("numa", np.int32, -1), ("nvgroup", np.int32, -1),
        ("healthy", np.bool_, False),
    ]:
        a = getattr(s, name)
        assert a.shape == (2, 3) and a.dtype == dtype and (a == fill).all(), name
    for name in ("node_cpu_free", "node_memory_free"):
        a = getattr(s, name)
        assert a.shape == (2,) and a.dtype == np.int64 and (a == UNLIMITED).all(), name


@pytest.mark.parametrize(
    "cap, mem, hint, expected",
    [
        (1, 40960, 0, 40960),  # whole device: all of it
        (1, 40960, 1, 40960),  # whole device: all of it, whatever the hint
        (1, 40960, 100, 40960),
        (2, 40960, 0, 20480),  # two shares, no hint: the fair half
        (2, 40960, 1, 1),  # a 1 MiB hint is a hint
        (2, 40960, 5000, 5000),
        (3, 10, 0, 3),  # fair part rounded down, an integer
        (4, 40960, 0, 10240),
    ],
)
def test_unit_memory(cap: int, mem: int, hint: int, expected: int) -> None:
    s = slots([[S(cap=cap, free=cap, mem=mem)]])
    got = unit_memory(s, Request(0, 1, memory_mib=hint), np)
    assert got.dtype.kind == "i" and int(got[0, 0]) == expected


@pytest.mark.parametrize(
    "slot, req, expected",
    [
        (S(cap=2, free=2, mem=40960), Request(0, 1, memory_mib=1), 2),
        (S(cap=8, free=8, mem=8, free_mem=3), Request(0, 1, memory_mib=1), 3),  # 1 MiB per unit
        (S(cap=2, free=2, mem=1000), Request(0, 1, memory_mib=1001), 0),  # a share's hint may exceed? no: memory left
        (S(cap=2, free=2, mem=1000), Request(0, 1, memory_mib=500), 2),
        (S(cap=1, free=1, mem=1000), Request(0, 1, memory_mib=1001), 0),  # too big for the whole device
        (S(cap=1, free=1, mem=1000), Request(0, 1, memory_mib=1000), 1),  # exactly its memory
        (S(cap=2, free=2, mem=1000, free_mem=1000), Request(0, 1), 2),
        (S(cap=3, free=3, mem=10), Request(0, 1), 3),
        (S(resource=1, cap=2, free=2), Request(0, 1), 0),  # another resource
        (S(resource=1, cap=2, free=2, model=7), Request(0, 1, models=frozenset({7})), 0),  # model but not resource
        (S(cap=2, free=2, healthy=False, model=7), Request(0, 1, models=frozenset({7})), 0),
        (S(cap=2, free=2, healthy=False), Request(0, 1, memory_mib=10), 0),  # unhealthy, with a hint
        (S(cap=2, free=2, model=7), Request(0, 1, models=frozenset({7})), 2),
        (S(cap=2, free=2, model=6), Request(0, 1, models=frozenset({7})), 0),
    ],
)
def test_units_table(slot: S, req: Request, expected: int) -> None:
    got = units(slots([[slot]]), req, np)
    assert got.dtype == np.int32 and int(got[0, 0]) == expected


def test_units_of_a_two_share_slot_with_a_hint_above_its_memory_left() -> None:
    # a 2-share slot is not whole: a hint above the device's memory leaves 0 units by memory,
    # not by the whole-device rule; with free memory for one hint it gives one
    s = slots([[S(cap=2, free=2, mem=1000, free_mem=1000)]])
    assert int(units(s, Request(0, 1, memory_mib=600), np)[0, 0]) == 1


@pytest.mark.parametrize(
    "row, count, expected",
    [
        ([S(cap=4, free=4)], 3, [3]),  # three units from one slot
        ([S(cap=4, free=2), S(cap=4, free=4)], 3, [2, 1]),  # fewest left first, then the next
        ([S(cap=4, free=1)], 3, [1]),  # a node that cannot host them all gets what it has
        ([S(cap=4, free=0), S(cap=4, free=2)], 2, [0, 2]),
        ([S(cap=4, free=3), S(cap=4, free=3)], 4, [3, 1]),
    ],
)
def test_take_plan_packs(row: list[S], count: int, expected: list[int]) -> None:
    take = take_plan(slots([row]), Request(0, count), np)
    assert take[0].tolist() == expected


def test_take_plan_uses_the_given_avail_and_leaves_it_alone() -> None:
    s = slots([[S(cap=4, free=4), S(cap=4, free=4)]])
    avail = np.array([[0, 2]], dtype=np.int32)
    assert take_plan(s, Request(0, 2), np, avail=avail)[0].tolist() == [0, 2]
    assert avail.tolist() == [[0, 2]]


def test_take_plan_with_no_nodes() -> None:
    s = empty_slots(np, 0, 2)
    assert take_plan(s, Request(0, 2), np).shape == (0, 2)


@pytest.mark.parametrize(
    "numas, count, expected",
    [
        # no NUMA node holds them all: the fullest NUMA nodes first, lowest ids on ties
        ([0, 1, 1, 2, 2, 2], 4, [3, 4, 5, 1]),
        ([1, 0, 1, 0, 2], 3, [1, 3, 0]),
        ([2, 2, 1, 1], 3, [2, 3, 0]),
        ([1, 1, 0, 0, 3], 3, [2, 3, 0]),
        # one NUMA node holds them: the smallest that does
        ([0, 0, 0, 1, 1], 2, [3, 4]),
        ([0, 1, 1, 1], 1, [0]),
    ],
)
def test_whole_devices_spread_over_numa(numas: list[int], count: int, expected: list[int]) -> None:
    s = slots([[S(numa=n) for n in numas]])
    got = choose_devices(s, 0, Request(0, count), np)
    assert sorted(c for c, _ in got) == sorted(expected)
    assert all(u == 1 for _, u in got)


@pytest.mark.parametrize("row", [0, 1, 2])
def test_choose_devices_reads_the_row_asked_for(row: int) -> None:
    rows = [[S(free=0), S()], [S(), S(free=0)], [S(free=0), S(free=0)]]
    got = choose_devices(slots(rows), row, Request(0, 1), np)
    assert got == [((1, 1),), ((0, 1),), ()][row]


def test_choose_devices_on_a_one_row_copy() -> None:
    s = slots([[S(cap=4, free=1), S(cap=4, free=4)]])
    assert choose_devices(s, 0, Request(0, 2), np) == ((0, 1), (1, 1))


def test_take_plan_gives_nothing_on_a_node_without_units() -> None:
    # node 0 has no unit; node 1 has two: the steps node 1 needs take nothing on node 0
    s = slots([[S(cap=4, free=0), S(cap=4, free=0)], [S(cap=4, free=2), S(cap=4, free=0)]])
    assert take_plan(s, Request(0, 2), np).tolist() == [[0, 0], [2, 0]]


@pytest.mark.parametrize(
    "rows",
    [
        [[S(cap=4, free=1)], [S(cap=4, free=4)]],  # one column per node
        [[S(cap=4, free=1), S(cap=4, free=0)], [S(cap=4, free=4), S(cap=4, free=4)]],
    ],
)
def test_choose_devices_judges_only_its_own_row(rows: list[list[S]]) -> None:
    # row 0 holds one share; other nodes' free shares must not make two fit there
    assert choose_devices(slots(rows), 0, Request(0, 2), np) == ()
    assert choose_devices(slots(rows), 1, Request(0, 2), np) != ()


def test_two_share_slots_are_packed_not_taken_whole() -> None:
    s = slots([[S(cap=2, free=2), S(cap=2, free=1)]])
    assert choose_devices(s, 0, Request(0, 3), np) == ((0, 2), (1, 1))
