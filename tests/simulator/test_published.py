"""The "published" column (the FGD paper's figures) shows only on the paper's own trace, told by
its content (``trace.fingerprint``), not by its files' names, and not once its tasks are changed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from simulator import main, report, trace
from tests.simulator.conftest import NODE_HEAD, POD_HEAD, write_trace

SHARED = Path("/work/shared/data/alibaba-gpu-v2023")
PAPER_NODES, PAPER_PODS = "openb_node_list_gpu_node.csv", "openb_pod_list_default.csv"

NODES = ["a,32000,131072,2,T4", "b,64000,262144,4,V100M16"]
PODS = ["p0,4000,8192,1,1000,,LS,Running,0,100,0", "p1,2000,4096,1,500,T4,LS,Running,10,,10",
        "p2,8000,16384,2,1000,,BE,Running,20,90,20", "p3,1000,2048,0,0,,LS,Running,30,60,30"]
#: trace.fingerprint of NODES + PODS: changes only when what the simulator is given changes
#: (then check why, and record the paper trace's anew in report.PUBLISHED_TRACE).
SMALL = "97e48f41ad03b59ca16f0dfbbedc82de5115f9547a7d34fe08678803b7e2df52"


def _tiny(folder: Path) -> tuple[Path, Path]:
    return write_trace(folder, NODES, PODS)


def _run(folder: Path, nodes: Path, pods: Path, *flags: str) -> str:
    argv = ["--trace-nodes", str(nodes), "--trace-pods", str(pods), "--out", str(folder / "out"), "--policies",
            "best-fit", "--seeds", "42", "--jobs", "1", "--no-placements", "--progress", "never", *flags]
    assert main.main(argv) == 0
    return (folder / "out" / "table.txt").read_text()


def test_fingerprint_of_a_small_trace_is_stable(tmp_path: Path) -> None:
    assert trace.fingerprint(*trace.load(*_tiny(tmp_path))) == SMALL


def test_fingerprint_reads_content_not_spelling(tmp_path: Path) -> None:
    """Other file names, columns in another order, ``2.0`` for ``2``, spaces, a blank line: the same trace."""
    nodes, pods = tmp_path / "x.csv", tmp_path / "y.csv"
    nodes.write_text("model,gpu,memory_mib,cpu_milli,sn\n"
                     + "".join(",".join(reversed(r.split(","))) + "\n" for r in NODES).replace(",2,", ", 2.0 ,"))
    pods.write_text(POD_HEAD + "\n" + "".join(r + "\n" for r in PODS).replace("4000", "4000.0"))
    assert trace.fingerprint(*trace.load(nodes, pods)) == SMALL


@pytest.mark.parametrize("nodes,pods", [
    pytest.param([NODES[0].replace("32000", "32001"), NODES[1]], PODS, id="a-node-cpu"),
    pytest.param([NODES[0].replace("T4", "A10"), NODES[1]], PODS, id="a-node-model"),
    pytest.param(NODES[::-1], PODS, id="nodes-reordered"),
    pytest.param(NODES, [PODS[0], PODS[1].replace(",500,", ",501,"), *PODS[2:]], id="a-pod-gpu-milli"),
    pytest.param(NODES, [PODS[0], PODS[1].replace(",10,,", ",10,1000,"), *PODS[2:]], id="a-pod-deletion-time"),
    pytest.param(NODES, PODS[::-1], id="pods-reordered"),
    pytest.param(NODES, PODS[:-1], id="a-pod-less"),
])
def test_fingerprint_sees_one_change(tmp_path: Path, nodes: list[str], pods: list[str]) -> None:
    assert trace.fingerprint(*trace.load(*write_trace(tmp_path, nodes, pods))) != SMALL


def test_small_trace_under_the_papers_names_gets_no_column(tmp_path: Path) -> None:
    nodes, pods = _tiny(tmp_path)
    nodes, pods = nodes.rename(tmp_path / PAPER_NODES), pods.rename(tmp_path / PAPER_PODS)
    assert "published" not in _run(tmp_path, nodes, pods)


@pytest.mark.parametrize("flags,shown", [
    pytest.param([], True, id="as-is"),
    pytest.param(["--max-pods", "10"], True, id="max-pods-keeps-all"),  # 4 pods: the same tasks
    pytest.param(["--max-pods", "3"], False, id="max-pods-cuts"),
    pytest.param(["--variant", "more-cpu-only"], False, id="variant"),
    pytest.param(["--protocol", "replay"], False, id="replay"),
])
def test_column_follows_the_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str],
                                    shown: bool) -> None:
    """With the small trace recorded as the paper's, the column shows while its tasks are run as they are."""
    monkeypatch.setattr(report, "PUBLISHED_TRACE", SMALL)
    table = _run(tmp_path, *_tiny(tmp_path), *flags)
    assert ("published" in table.splitlines()[0]) == shown, table


def _shared() -> tuple[Path, Path]:
    nodes, pods = SHARED / PAPER_NODES, SHARED / PAPER_PODS
    if not (nodes.is_file() and pods.is_file()):
        pytest.skip(f"shared trace not here: {SHARED} (the FGD paper's default trace, read-only, never in the repo)")
    return nodes, pods


def test_the_papers_trace_matches_in_well_under_a_second() -> None:
    cluster, tasks = trace.load(*_shared())
    t0 = time.perf_counter()
    fp = trace.fingerprint(cluster, tasks)
    assert time.perf_counter() - t0 < 1.0
    assert fp == report.PUBLISHED_TRACE


@pytest.mark.parametrize("which", ["nodes", "pods"])
def test_the_papers_trace_with_one_row_changed_does_not(tmp_path: Path, which: str) -> None:
    """A copy in the test's temporary folder (never the repo) with row 100's memory one MiB more."""
    nodes, pods = _shared()
    source = nodes if which == "nodes" else pods
    lines = source.read_text().splitlines(keepends=True)
    cells = lines[100].split(",")
    cells[2] = str(int(cells[2]) + 1)
    lines[100] = ",".join(cells)
    copy = tmp_path / source.name
    copy.write_text("".join(lines))
    changed = (copy, pods) if which == "nodes" else (nodes, copy)
    assert trace.fingerprint(*trace.load(*changed)) != report.PUBLISHED_TRACE
