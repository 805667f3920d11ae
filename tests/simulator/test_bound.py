"""The bound (simulator/bound.py): exact on cases worked by hand, and never above what a placer
reaches on the same arrivals."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator import bound, placers, protocols, trace
from simulator.model import Cluster, Task
from tests.simulator.conftest import write_trace

pytest.importorskip("scipy", reason="the bound needs SciPy (the test extra installs it)")


def _load(folder: Path, nodes: list[str], pods: list[tuple[int, int, int]]) -> tuple[Cluster, list[Task]]:
    """Pods as (num_gpu, gpu_milli, cpu_milli)."""
    rows = [f"p{i},{cpu},1024,{k},{milli},,LS,Running,{i},,{i}" for i, (k, milli, cpu) in enumerate(pods)]
    return trace.load(*write_trace(folder, nodes, rows))


@pytest.mark.parametrize(("pods", "least"), [
    # two 810 shares and a 160: the 810s need a GPU each, the 160 fits beside one: 1,780 of 2,000
    ([(1, 810, 1000), (1, 810, 1000), (1, 160, 1000)], 11.0),
    # three 600 shares on two GPUs: only two fit
    ([(1, 600, 1000)] * 3, 40.0),
    # 500 + 500 fill one GPU, a whole GPU the other
    ([(1, 500, 1000), (1, 500, 1000), (1, 1000, 1000)], 0.0),
    # a pair of GPUs on a node of two, and nothing else
    ([(2, 1000, 1000)], 0.0),
    # the node's 8 cores bind: one 1-GPU task of 8 cores, not two
    ([(1, 1000, 8000), (1, 1000, 8000)], 50.0),
    # tasks are fractional in the programme: 8 cores hold 4/3 of a 6-core task (a bound, not a plan)
    ([(1, 1000, 6000), (1, 1000, 6000)], 100 / 3),
])
def test_bound_of_hand_worked_cases(tmp_path: Path, pods: list[tuple[int, int, int]], least: float) -> None:
    cluster, tasks = _load(tmp_path, ["a,8000,65536,2,T4"], pods)
    assert bound.least_unallocated_pct(tasks, cluster) == pytest.approx(least, abs=1e-6)


def test_a_multi_gpu_task_needs_one_node_with_that_many(tmp_path: Path) -> None:
    cluster, tasks = _load(tmp_path, ["a,32000,65536,2,T4", "b,32000,65536,2,T4"], [(4, 1000, 1000)])
    assert bound.least_unallocated_pct(tasks, cluster) == pytest.approx(100.0)


def test_a_pinned_task_only_on_its_models(tmp_path: Path) -> None:
    rows = ["p0,1000,1024,1,1000,V100M16,LS,Running,0,,0", "p1,1000,1024,1,1000,T4|V100M16,LS,Running,1,,1"]
    cluster, tasks = trace.load(*write_trace(tmp_path, ["a,32000,65536,1,T4", "b,32000,65536,1,P100"], rows))
    assert bound.least_unallocated_pct(tasks, cluster) == pytest.approx(50.0)  # p0 has no V100M16; p1 goes on the T4


def test_patterns_are_every_set_that_fits() -> None:
    got = sorted(tuple(sorted(p.elements())) for p in bound.patterns(collections.Counter({600: 2, 300: 3})))
    assert got == [(300,), (300, 300), (300, 300, 300), (300, 600), (600,)]


def test_too_many_patterns_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bound, "MAX_PATTERNS", 10)
    with pytest.raises(ValueError, match="more than 10 ways"):
        bound.patterns(collections.Counter({100: 10, 50: 10}))


NODE_KINDS = ["32000,131072,2,T4", "16000,65536,4,V100M16", "64000,262144,8,G2"]
SIZES = [0, 110, 250, 320, 470, 500, 810, 1000]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(NODE_KINDS), min_size=1, max_size=4),
       pods=st.lists(st.tuples(st.sampled_from(SIZES), st.sampled_from([1, 1, 1, 2, 4]),
                               st.integers(1, 24).map(lambda c: 1000 * c)), min_size=1, max_size=40),
       seed=st.integers(0, 3))
def test_no_placer_goes_below_the_bound(tmp_path: Path, kinds: list[str], pods: list[tuple[int, int, int]],
                                        seed: int) -> None:
    """Protocol (a) on a small random cluster: every placer's unallocated % at 100 % arrived is
    at least the bound of the same arrivals."""
    nodes = [f"n{i},{k}" for i, k in enumerate(kinds)]
    rows = [(0 if milli == 0 else (count if milli == 1000 else 1), milli or 0, cpu) for milli, count, cpu in pods]
    cluster, tasks = _load(tmp_path, nodes, rows)
    if not any(t.wants_gpu for t in tasks):
        return
    arrived = bound.arrived(protocols.fgd_sequence(tasks, cluster.gpu_milli, seed), cluster.gpu_milli)
    least = bound.least_unallocated_pct(arrived, cluster)
    wl = placers.workload(tasks, seed)
    for placer in placers.make(["gpupack-fragmentation", "fgd", "best-fit"], wl):
        got = protocols.run_fgd(cluster, tasks, placer, wl, seed, numpy).figures["unallocated_pct"]
        assert got >= least - 1e-6, (placer.name, got, least)
