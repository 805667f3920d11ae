"""The workload families reach their levels, the same way for a seed, within the trace's encoding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator import families, trace
from simulator.model import Cluster, Task
from tests.simulator.conftest import write_trace

TRACE = Path("/work/shared/data/alibaba-gpu-v2023")
LEVELS = [(f, name, level) for f, levels in families.FAMILIES.items() for name, level in levels.items()]
IDS = [name for _, name, _ in LEVELS]

#: (num_gpu, gpu_milli) of a 400-pod trace: CPU-only 12.5 %, sharing 41 %, 1 whole GPU 37.5 %,
#: 2, 4 and 8 GPUs 3 % each (by count); 8 shapes of sharing, as the trace's spread of sizes.
SHAPES = ([(0, 0)] * 50 + [(1, m) for m in (110, 250, 320, 460, 500, 650, 810, 900) for _ in range(20)]
          + [(1, 1000)] * 150 + [(2, 1000)] * 12 + [(4, 1000)] * 12 + [(8, 1000)] * 12)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cluster, list[Task]]:
    """40 nodes of 2, 4 and 8 GPUs, three models; 400 pods of the shapes above, none pinned."""
    folder = tmp_path_factory.mktemp("families")
    nodes = [f"n{i},96000,786432,{g},{m}" for i, (g, m) in enumerate([(2, "T4"), (4, "V100M16"), (8, "G2")] * 14)]
    pods = [f"p{i},{1000 * (1 + i % 16)},{4096 * (1 + i % 8)},{k},{milli},,LS,Running,{i},,{i}"
            for i, (k, milli) in enumerate(SHAPES)]
    return trace.load(*write_trace(folder, nodes, pods))


@pytest.fixture(scope="module")
def real() -> tuple[Cluster, list[Task]]:
    if not (TRACE / "openb_pod_list_default.csv").exists():
        pytest.skip(f"the Alibaba default trace is not at {TRACE} (it is read in place, never shipped)")
    return trace.load(TRACE / "openb_node_list_gpu_node.csv", TRACE / "openb_pod_list_default.csv")


def _encoded(t: Task, cluster: Cluster) -> bool:
    """The trace's encoding (simulator/trace.py): a GPU task asks ``count`` shares of resource 0
    with a hint of its per-GPU milli, whole GPUs when more than one, pins among the cluster's
    models; a CPU-only task asks nothing of a GPU."""
    if not t.wants_gpu:
        return t.resource == -1 and t.count == 0 and t.gpu_memory_mib == 0 and t.gpu_milli == 0 and not t.models
    return (t.resource == 0 and t.count in (1, 2, 4, 8) and 0 < t.gpu_memory_mib <= trace.MILLI
            and (t.count == 1 or t.gpu_memory_mib == trace.MILLI) and t.gpu_milli == t.count * t.gpu_memory_mib
            and t.models <= set(range(len(cluster.models))))


def _shape(t: Task) -> tuple[int, int, int, int]:
    return (t.cpu_milli, t.memory_mib, t.count, t.gpu_memory_mib)


@pytest.mark.parametrize(("family", "name", "level"), LEVELS, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 42])
def test_level_reached_on_a_synthetic_trace(synthetic: tuple[Cluster, list[Task]], family: str, name: str,
                                            level: float, seed: int) -> None:
    cluster, tasks = synthetic
    out = families.generate(name, tasks, cluster, seed)
    # e.g. gpushare40: sharing tasks' milli / all GPU milli within 0.40 +- 0.01
    assert families.level_of(family, out) == pytest.approx(level, abs=0.01)
    assert {_shape(t) for t in out} <= {_shape(t) for t in tasks}  # drawn from the trace, no new shape
    assert len({t.name for t in out}) == len(out)


@pytest.mark.parametrize(("family", "name", "level"), LEVELS, ids=IDS)
def test_level_reached_on_the_default_trace(real: tuple[Cluster, list[Task]], family: str, name: str,
                                            level: float) -> None:
    cluster, tasks = real
    for seed in (42, 43):
        out = families.generate(name, tasks, cluster, seed)
        assert families.level_of(family, out) == pytest.approx(level, abs=0.01), seed


def test_what_each_family_keeps(real: tuple[Cluster, list[Task]]) -> None:
    """As the published files: cpu keeps every GPU task, multigpu every task, gpushare the CPU-only
    tasks and the number of tasks, gpuspec the tasks themselves."""
    cluster, tasks = real
    gpu = [t for t in tasks if t.wants_gpu]
    cpu_only = [t for t in tasks if not t.wants_gpu]
    assert [t for t in families.generate("cpu050", tasks, cluster, 42) if t.wants_gpu] == gpu
    # 5 % of all tasks: 7,064 GPU tasks / 0.95 * 0.05 = 371.8 -> 372 CPU-only tasks
    assert len(families.generate("cpu050", tasks, cluster, 42)) == 7064 + 372
    assert families.generate("multigpu20", tasks, cluster, 42)[: len(tasks)] == tasks
    share = families.generate("gpushare60", tasks, cluster, 42)
    assert len(share) == len(tasks) and [t for t in share if not t.wants_gpu] == cpu_only
    spec = families.generate("gpuspec20", tasks, cluster, 42)
    assert [_unpinned(t) for t in spec] == [_unpinned(t) for t in tasks]


def _unpinned(t: Task) -> tuple[object, ...]:
    """A task less its pins."""
    return (t.name, _shape(t), t.gpu_milli, t.start, t.end)


@pytest.mark.parametrize("name", IDS)
def test_same_seed_same_tasks(synthetic: tuple[Cluster, list[Task]], name: str) -> None:
    cluster, tasks = synthetic
    assert families.generate(name, tasks, cluster, 7) == families.generate(name, tasks, cluster, 7)
    assert families.generate(name, tasks, cluster, 7) != families.generate(name, tasks, cluster, 8)


def test_pins_are_lists_of_the_clusters_models(synthetic: tuple[Cluster, list[Task]]) -> None:
    cluster, tasks = synthetic
    out = families.generate("gpuspec33", tasks, cluster, 3)
    pinned = [t for t in out if t.models]
    assert pinned and all(t.wants_gpu for t in pinned)
    assert {m for t in pinned for m in t.models} <= set(range(len(cluster.models)))
    for t in pinned:  # an 8-GPU task is pinned only to a model some node has 8 of (G2 here)
        if t.count == 8:
            assert t.models == {cluster.models.index("G2")}


def test_pins_drawn_from_a_pod_lists_own_lists_by_class(tmp_path: Path, synthetic: tuple[Cluster, list[Task]]) -> None:
    """Pins are the given lists, per class: sharing tasks get the sharing tasks' lists; a model
    the cluster lacks is dropped from a list (A100 here)."""
    cluster, tasks = synthetic
    nodes = ["n0,96000,786432,2,T4", "n1,96000,786432,4,V100M16", "n2,96000,786432,8,G2"]
    pods = ["a,1000,1024,1,500,T4,LS,Running,0,,0", "b,1000,1024,1,1000,V100M16|G2|A100,LS,Running,0,,0",
            "c,1000,1024,8,1000,G2,LS,Running,0,,0"]
    _, pinned = trace.load(*write_trace(tmp_path, nodes, pods))
    pins = families.pin_distribution(pinned, cluster)
    t4, v100, g2 = (cluster.models.index(m) for m in ("T4", "V100M16", "G2"))
    assert pins[families.SHARE] == [(frozenset({t4}), 1.0)]
    assert pins[families.WHOLE] == [(frozenset({v100, g2}), 1.0)]
    out = families.generate("gpuspec33", tasks, cluster, 1, pins=pins)
    for t in out:
        if t.models:
            want = {families.SHARE: {t4}, families.WHOLE: {v100, g2}, families.MULTI: {g2}}[families.task_class(t)]
            assert t.models == want


def test_unknown_level_refused(synthetic: tuple[Cluster, list[Task]]) -> None:
    cluster, tasks = synthetic
    with pytest.raises(ValueError, match="gpushare40"):
        families.generate("gpushare50", tasks, cluster, 0)


def test_held_out_levels_are_levels() -> None:
    assert families.HELD_OUT_LEVELS <= {name for levels in families.FAMILIES.values() for name in levels}
    assert [families.held_out_seed(s) for s in (42, 44, 45, 51, 999, 1000, 1009, 1010)] == \
        [False, False, True, True, True, False, False, True]
    assert {families.family_of(n) for n in families.HELD_OUT_LEVELS} == set(families.FAMILIES)


_pod = st.tuples(st.sampled_from([(0, 0), (1, 1000), (1, 100), (1, 500), (1, 999), (2, 1000), (4, 1000), (8, 1000)]),
                 st.integers(500, 64000), st.integers(1024, 262144), st.sampled_from(["", "T4", "G2|T4", "A100"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pods=st.lists(_pod, min_size=1, max_size=60), name=st.sampled_from(IDS), seed=st.integers(0, 2**16))
def test_never_outside_the_trace_encoding(tmp_path_factory: pytest.TempPathFactory,
                                          pods: Sequence[tuple[tuple[int, int], int, int, str]],
                                          name: str, seed: int) -> None:
    """Any trace (pinned or not, some classes missing), any level: every task generated is encoded
    as the trace encodes its tasks, or the generator refuses the level for lack of a class."""
    folder = tmp_path_factory.mktemp("prop")
    nodes = ["n0,64000,262144,2,T4", "n1,96000,786432,8,G2"]
    lines = [f"p{i},{cpu},{mem},{k},{milli},{spec if k else ''},LS,Running,{i},,{i}"
             for i, ((k, milli), cpu, mem, spec) in enumerate(pods)]
    cluster, tasks = trace.load(*write_trace(folder, nodes, lines))
    tasks = [t for t in tasks if t.models != {-2}]  # a pin to a model the cluster lacks: not an input we draw pins from
    try:
        out = families.generate(name, tasks, cluster, seed)
    except ValueError as err:
        assert "no task of the class" in str(err) or "no multi-GPU" in str(err) or "no list" in str(err)
        return
    assert all(_encoded(t, cluster) for t in out)
    assert {_shape(t) for t in out} <= {_shape(t) for t in tasks}
