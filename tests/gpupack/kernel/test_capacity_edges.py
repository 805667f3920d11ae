"""Fixed regression tables for every capacity edge of the kernel: the exact point where a
request stops fitting, checked through every entry that decides capacity (``units``,
``evaluate``, ``take_plan``, ``choose_devices``), each case with its arithmetic.

Each edge is a pair: the last request that fits and the first that does not. An off-by-one
anywhere in the unit rule (a share more than is free, a MiB more than is left, one MIG slice
too many, a model pin that leaks) fails one of these rows, whatever the random seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gpupack import kernel
from gpupack.kernel import Reason, Request
from gpupack.kernel.slots import take_plan, units
from gpupack.kernel.xp import to_host

from tests.gpu import unavailable
from tests.gpupack.kernel.kernel_tables import S, slots

GPU, SHARED, MIG1G, MIG3G = 0, 1, 2, 3
A100 = 40960  # MiB
#: An A100-40GB in MIG mode: 7 x 1g.5gb is its placement limit (4864 MiB each, weight 1/8 of
#: memory); 3g.20gb fits twice (19968 MiB each).
MIG1G_SLOT = S(resource=MIG1G, mem=4864, weight=0.125)
MIG3G_SLOT = S(resource=MIG3G, mem=19968, weight=0.5)

CASES = [
    # --- shares: the share count binds --------------------------------------------------------
    # 4 shares, all taken, yet 20480 MiB of memory left (hinted pods used less than their part):
    # units = min(free 0, 20480 // 10240) = 0 -> busy, never a fifth share
    pytest.param([S(resource=SHARED, cap=4, free=0, free_mem=20480)], Request(SHARED, 1), 0, Reason.BUSY,
                 id="all-shares-taken-memory-left"),
    # the same GPU with one share free: min(1, 20480 // 10240 = 2) = 1 -> fits 1, not 2
    pytest.param([S(resource=SHARED, cap=4, free=1, free_mem=20480)], Request(SHARED, 1), 1, Reason.FITS,
                 id="last-share-fits"),
    pytest.param([S(resource=SHARED, cap=4, free=1, free_mem=20480)], Request(SHARED, 2), 1, Reason.BUSY,
                 id="one-share-more-than-free"),
    # --- shares: the memory binds ---------------------------------------------------------------
    # hint 10240 with exactly 10240 MiB left and 3 shares free: min(3, 10240 // 10240 = 1) = 1
    pytest.param([S(resource=SHARED, cap=4, free=3, free_mem=10240)], Request(SHARED, 1, 10240), 1, Reason.FITS,
                 id="hint-exactly-the-memory-left"),
    # one MiB more: 10240 // 10241 = 0 -> busy (an empty GPU would hold it)
    pytest.param([S(resource=SHARED, cap=4, free=3, free_mem=10240)], Request(SHARED, 1, 10241), 0, Reason.BUSY,
                 id="hint-one-mib-beyond-the-memory-left"),
    # hint of the whole GPU's memory on an empty shared GPU: min(4, 40960 // 40960 = 1) = 1
    pytest.param([S(resource=SHARED, cap=4, free=4)], Request(SHARED, 1, A100), 1, Reason.FITS,
                 id="share-hint-exactly-the-gpu"),
    pytest.param([S(resource=SHARED, cap=4, free=4)], Request(SHARED, 2, A100), 1, Reason.TOO_SMALL,
                 id="two-shares-of-the-whole-gpu"),
    # one MiB beyond the GPU: 40960 // 40961 = 0 even empty -> too small, not busy
    pytest.param([S(resource=SHARED, cap=4, free=4)], Request(SHARED, 1, A100 + 1), 0, Reason.TOO_SMALL,
                 id="share-hint-beyond-the-gpu"),
    # --- whole GPUs and memory hints --------------------------------------------------------------
    # a whole GPU takes all its memory; a hint of exactly its memory fits, one MiB more never does
    pytest.param([S(mem=A100)], Request(GPU, 1, A100), 1, Reason.FITS, id="whole-gpu-hint-exactly-its-memory"),
    pytest.param([S(mem=A100)], Request(GPU, 1, A100 + 1), 0, Reason.TOO_SMALL, id="whole-gpu-hint-one-mib-beyond"),
    # 4 GPUs, 1 in use: 3 fit, 4 are busy (they exist), 5 are too small (they never will)
    pytest.param([S(free=0)] + [S()] * 3, Request(GPU, 3), 3, Reason.FITS, id="whole-gpus-all-free-ones"),
    pytest.param([S(free=0)] + [S()] * 3, Request(GPU, 4), 3, Reason.BUSY, id="whole-gpus-one-more-than-free"),
    pytest.param([S(free=0)] + [S()] * 3, Request(GPU, 5), 3, Reason.TOO_SMALL, id="whole-gpus-more-than-exist"),
    # --- MIG profiles at their placement limits ---------------------------------------------------
    # 7 x 1g.5gb is the A100-40GB's limit: all 7 fit; an 8th slice does not exist
    pytest.param([MIG1G_SLOT] * 7, Request(MIG1G, 7), 7, Reason.FITS, id="mig-1g-all-seven"),
    pytest.param([MIG1G_SLOT] * 7, Request(MIG1G, 8), 7, Reason.TOO_SMALL, id="mig-1g-an-eighth"),
    # 6 of 7 taken: 1 fits, 2 are busy
    pytest.param([S(resource=MIG1G, mem=4864, weight=0.125, free=0)] * 6 + [MIG1G_SLOT], Request(MIG1G, 2), 1,
                 Reason.BUSY, id="mig-1g-last-slice-taken-twice"),
    # 2 x 3g.20gb: both fit, a third does not exist; free 1g slices never stand in for a 3g one
    pytest.param([MIG3G_SLOT] * 2, Request(MIG3G, 2), 2, Reason.FITS, id="mig-3g-both"),
    pytest.param([MIG3G_SLOT, S(resource=MIG3G, mem=19968, weight=0.5, free=0)] + [MIG1G_SLOT] * 4,
                 Request(MIG3G, 2), 1, Reason.BUSY, id="mig-3g-one-taken-1g-free"),
    # a hint beyond the slice's memory: 4864 MiB < 5000 -> no 1g slice holds it
    pytest.param([MIG1G_SLOT] * 7, Request(MIG1G, 1, 5000), 0, Reason.TOO_SMALL, id="mig-hint-beyond-the-slice"),
    # --- model pins ---------------------------------------------------------------------------------
    # pinned to model 1 on a node of model 0 only: nothing there counts, and never will (too
    # small, which preemption cannot cure; kube-scheduler's NodeAffinity names the real reason)
    pytest.param([S(model=0)] * 4, Request(GPU, 1, models=frozenset({1})), 0, Reason.TOO_SMALL,
                 id="pinned-model-absent"),
    # two models on one node: only the pinned model's free GPUs count (2 of model 1)
    pytest.param([S(model=0)] * 2 + [S(model=1)] * 2, Request(GPU, 2, models=frozenset({1})), 2, Reason.FITS,
                 id="pinned-model-present"),
    pytest.param([S(model=0)] * 2 + [S(model=1)] * 2, Request(GPU, 3, models=frozenset({1})), 2, Reason.TOO_SMALL,
                 id="pinned-model-one-more-than-it-has"),
    # --- health ---------------------------------------------------------------------------------------
    # 2 GPUs, one unhealthy: 1 fits; 2 exist but are not healthy
    pytest.param([S(), S(healthy=False)], Request(GPU, 1), 1, Reason.FITS, id="healthy-one"),
    pytest.param([S(), S(healthy=False)], Request(GPU, 2), 1, Reason.UNHEALTHY, id="one-unhealthy"),
]


@pytest.mark.parametrize("row,req,free_units,reason", CASES)
@pytest.mark.parametrize("policy", sorted(kernel.POLICIES))
def test_capacity_edge(row: list[S], req: Request, free_units: int, reason: Reason, policy: str) -> None:
    s = slots([row])
    v = kernel.evaluate(s, req, kernel.get_policy(policy), np)
    assert int(to_host(v.free_units)[0]) == free_units
    assert Reason(int(to_host(v.reason)[0])) == reason
    assert bool(to_host(v.feasible)[0]) == (reason == Reason.FITS)


@pytest.mark.parametrize("row,req,free_units,reason", CASES)
def test_the_devices_chosen_never_exceed_the_edge(row: list[S], req: Request, free_units: int, reason: Reason) -> None:
    s = slots([row])
    per_slot = units(s, req, np)[0]
    assert int(per_slot.sum()) == free_units
    plan = take_plan(s, req, np)[0]
    # the plan never takes more of a slot than it can host, nor more than asked
    assert (plan <= per_slot).all() and int(plan.sum()) == min(req.count, free_units)
    chosen = kernel.choose_devices(s, 0, req, np)
    if reason == Reason.FITS:
        assert sum(n for _, n in chosen) == req.count
        assert all(n <= int(per_slot[c]) for c, n in chosen)
    else:
        assert chosen == ()


def test_a_count_far_beyond_any_node_answers_at_once() -> None:
    # 10^18 GPUs: the plan stops at the units the node has (8), it does not loop 10^18 times
    s = slots([[S()] * 8])
    req = Request(GPU, 10**18)
    assert int(take_plan(s, req, np).sum()) == 8
    v = kernel.evaluate(s, req, kernel.get_policy("fragmentation"), np)
    assert Reason(int(v.reason[0])) == Reason.TOO_SMALL
    assert kernel.choose_devices(s, 0, req, np) == ()


def _cupy() -> Any:
    try:
        xp = kernel.namespace("cupy")
        xp.zeros(1).sum()
        return xp
    except Exception as err:  # no CuPy, or no GPU behind it
        unavailable(f"CuPy is not usable here ({type(err).__name__}: {err})")


def test_capacity_edges_on_cupy() -> None:
    xp = _cupy()
    for case in CASES:
        row, req, free_units, reason = case.values
        v = kernel.evaluate(slots([row], xp), req, kernel.get_policy("fragmentation"), xp)
        assert (int(to_host(v.free_units)[0]), Reason(int(to_host(v.reason)[0]))) == (free_units, reason), case.id
