"""Every headline figure can be recomputed from the placements files alone; same seed, same result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator import main, placements, trace

POLICIES = "fgd,best-fit,kube-default,random,gpupack-binpack,gpupack-fragmentation"


def _run(tmp_path: Path, trace_files: tuple[Path, Path], protocol: str, out: str) -> dict[str, object]:
    n, p = trace_files
    rc = main.main(["--trace-nodes", str(n), "--trace-pods", str(p), "--protocol", protocol, "--policies", POLICIES,
                    "--seeds", "1-2", "--out", str(tmp_path / out), "--jobs", "1", "--progress", "never"])
    assert rc == 0
    summary: dict[str, object] = json.loads((tmp_path / out / "summary.json").read_text())
    return summary


def test_fgd_figures_recomputed_from_placements(tmp_path: Path, small_trace: tuple[Path, Path]) -> None:
    s = _run(tmp_path, small_trace, "fgd", "a")
    cap = float(s["gpu_capacity_milli"])  # type: ignore[arg-type]
    assert (tmp_path / "a" / "plot.png").stat().st_size > 0
    for name, e in s["placers"].items():  # type: ignore[attr-defined]
        for seed, figures in e["seeds"].items():
            records = placements.read(tmp_path / "a" / "placements" / f"{name}_seed{seed}.csv.gz")
            again = placements.fgd_figures(records, cap)
            for key, value in again.items():
                assert figures[key] == pytest.approx(value, abs=1e-6), (name, seed, key)


def test_replay_allocation_recomputed_from_placements(tmp_path: Path, small_trace: tuple[Path, Path]) -> None:
    from simulator import placers, protocols
    import numpy

    cluster, tasks = trace.load(*small_trace)
    wl = placers.workload(tasks, 1)
    for name in POLICIES.split(","):
        r = protocols.run_replay(cluster, tasks, placers.make([name], wl)[0], wl, 1, numpy)
        t0 = min(t.start for t in tasks)
        times = [t0 + h * 3600.0 for h in r.curves["time_h"]]
        again = placements.allocated_at(r.records, cluster.gpu_milli, times)
        assert again == pytest.approx(r.curves["allocated_pct"], abs=1e-6), name
        assert r.figures["never_placed"] == sum(1 for x in r.records if not x.node)


def test_same_seed_same_result(tmp_path: Path, small_trace: tuple[Path, Path]) -> None:
    a = _run(tmp_path, small_trace, "fgd", "a")
    b = _run(tmp_path, small_trace, "fgd", "b")
    assert a["placers"] == {k: {**v, "seconds": a["placers"][k]["seconds"]}  # type: ignore[index]
                            for k, v in b["placers"].items()}  # type: ignore[attr-defined]
    for f in (tmp_path / "a" / "placements").iterdir():
        assert placements.read(f) == placements.read(tmp_path / "b" / "placements" / f.name)


def test_bad_trace_row_names_file_and_line(tmp_path: Path) -> None:
    from tests.simulator.conftest import write_trace

    n, p = write_trace(tmp_path, ["n0,32000,131072,2,T4"], ["p0,1000,1024,2,500,,LS,Running,0,10,0"])
    with pytest.raises(trace.TraceError, match=r"openb_pod_list_t.csv:2"):
        trace.load(n, p)
    assert main.main(["--trace-nodes", str(n), "--trace-pods", str(p), "--out", str(tmp_path / "o")]) == 2


def test_unknown_policy_refused(tmp_path: Path) -> None:
    assert main.main(["--policies", "nope", "--out", str(tmp_path / "o"), "--progress", "never"]) == 2


@pytest.mark.parametrize("protocol", ["fgd", "replay"])
def test_kept_sums_give_the_placements_of_fresh_ones(small_trace: tuple[Path, Path], protocol: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator keeps fragmentation's per-node sums across tasks (recomputing the rows
    placed on or freed); without them every task computes them afresh: same placements."""
    from simulator import placers, protocols
    import numpy

    cluster, tasks = trace.load(*small_trace)
    wl = placers.workload(tasks, 3)
    run = protocols.run_fgd if protocol == "fgd" else protocols.run_replay

    def records() -> list[object]:
        return list(run(cluster, tasks, placers.make(["gpupack-fragmentation"], wl)[0], wl, 3, numpy).records)

    kept = records()
    monkeypatch.setattr(placers.KernelPlacer, "_sums", lambda self, st, rows: None)
    assert records() == kept
