"""The workload variants rewrite a trace's tasks as their docstrings say, the same way for a seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator import main as sim_main
from simulator import trace, variants
from simulator.model import Cluster, Task


def _load(small_trace: tuple[Path, Path]) -> tuple[Cluster, list[Task]]:
    return trace.load(*small_trace)


def test_same_seed_same_tasks(small_trace: tuple[Path, Path]) -> None:
    cluster, tasks = _load(small_trace)
    for name in variants.VARIANTS:
        assert variants.apply(name, tasks, cluster, 3) == variants.apply(name, tasks, cluster, 3)


def test_more_sharing_turns_whole_single_gpus_into_trace_shares(small_trace: tuple[Path, Path]) -> None:
    cluster, tasks = _load(small_trace)
    out = variants.apply("more-sharing", tasks, cluster, 0)
    share_sizes = {t.gpu_memory_mib for t in tasks if t.wants_gpu and t.gpu_memory_mib < trace.MILLI}
    changed = [(a, b) for a, b in zip(tasks, out) if a != b]
    whole = [t for t in tasks if t.wants_gpu and t.count == 1 and t.gpu_memory_mib == trace.MILLI]
    assert len(out) == len(tasks)
    assert 0 < len(changed) < len(whole)
    for a, b in changed:
        assert a.count == b.count == 1 and a.gpu_memory_mib == trace.MILLI
        assert b.gpu_memory_mib in share_sizes and b.gpu_milli == b.gpu_memory_mib


def test_more_multi_gpu_scales_cpu_within_the_largest_node(small_trace: tuple[Path, Path]) -> None:
    cluster, tasks = _load(small_trace)
    out = variants.apply("more-multi-gpu", tasks, cluster, 0)
    changed = [(a, b) for a, b in zip(tasks, out) if a != b]
    assert changed
    for a, b in changed:
        assert b.count in (2, 4, 8) and b.gpu_milli == b.count * trace.MILLI
        assert b.cpu_milli == min(a.cpu_milli * b.count, int(cluster.cpu_milli.max()))


def test_gpu_models_pins_gpu_tasks_to_a_model_the_cluster_has(small_trace: tuple[Path, Path]) -> None:
    cluster, tasks = _load(small_trace)
    out = variants.apply("gpu-models", tasks, cluster, 0)
    pinned = [b for a, b in zip(tasks, out) if a != b]
    assert pinned and all(b.wants_gpu and len(b.models) == 1 for b in pinned)
    assert {m for b in pinned for m in b.models} <= set(range(len(cluster.models)))
    assert all(not b.models for b in out if not b.wants_gpu)


def test_more_cpu_only_triples_cpu_only_tasks(small_trace: tuple[Path, Path]) -> None:
    cluster, tasks = _load(small_trace)
    out = variants.apply("more-cpu-only", tasks, cluster, 0)
    cpu = sum(1 for t in tasks if not t.wants_gpu)
    assert sum(1 for t in out if not t.wants_gpu) == 3 * cpu
    assert len(out) == len(tasks) + 2 * cpu
    assert len({t.name for t in out}) == len(out)


def test_unknown_variant_refused(small_trace: tuple[Path, Path]) -> None:
    cluster, tasks = _load(small_trace)
    with pytest.raises(ValueError, match="more-sharing"):
        variants.apply("everything", tasks, cluster)


def test_variant_runs_through_simulate(tmp_path: Path, small_trace: tuple[Path, Path]) -> None:
    nodes, pods = small_trace
    rc = sim_main.main(["--trace-nodes", str(nodes), "--trace-pods", str(pods), "--variant", "gpu-models",
                        "--policies", "fgd,gpupack-fragmentation", "--seeds", "42", "--jobs", "1",
                        "--out", str(tmp_path / "out"), "--progress", "never", "--no-placements"])
    assert rc == 0
    assert "variant gpu-models" in (tmp_path / "out" / "summary.json").read_text()


def test_variant_needs_a_trace(tmp_path: Path) -> None:
    assert sim_main.main(["--variant", "more-sharing", "--out", str(tmp_path)]) == 2
