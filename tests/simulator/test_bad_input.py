"""Every bad input to ``gpupack simulate`` gets one line naming the file, line and field (or the
flag), exit status 2, and no traceback; ``trace.load`` raises nothing but ``TraceError``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator import main, placers, trace
from tests.profiles import invariant
from tests.simulator.conftest import NODE_HEAD, POD_HEAD

NODES = "openb_node_list_t.csv"
PODS = "openb_pod_list_t.csv"
GOOD_NODE = "n0,32000,131072,2,T4\n"
GOOD_POD = "p0,1000,1024,1,500,,LS,Running,0,10,0\n"
#: The cheapest run: the failures must come before any of it.
RUN = ["--policies", "best-fit", "--no-placements", "--jobs", "1", "--seeds", "42", "--progress", "never"]

Content = str | bytes | None  # None: no file at all; "DIR": a directory


def _write(path: Path, content: Content) -> None:
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)


# (nodes file, pods file, extra flags, what the one line must say)
FILES: dict[str, tuple[Content, Content, list[str], list[str]]] = {
    "nodes-header-only": (NODE_HEAD, POD_HEAD + GOOD_POD, [], [NODES, "no nodes"]),
    "pods-header-only": (NODE_HEAD + GOOD_NODE, POD_HEAD, [], [PODS, "no pods"]),
    "pods-deletion-time-xyz": (NODE_HEAD + GOOD_NODE, POD_HEAD + "p0,1000,1024,1,500,,LS,Running,0,xyz,0\n", [],
                               [f"{PODS}:2", "deletion_time='xyz'", "not a number"]),
    "pods-deletion-before-creation": (NODE_HEAD + GOOD_NODE, POD_HEAD + "p0,1000,1024,1,500,,LS,Running,50,10,0\n",
                                      [], [f"{PODS}:2", "deletion_time", "before"]),
    "nodes-binary": (b"\xff\xfe\x00\x01\x89PNG garbage", POD_HEAD + GOOD_POD, [], [NODES, "not a UTF-8 CSV text file"]),
    "pods-binary": (NODE_HEAD + GOOD_NODE, POD_HEAD.encode() + b"p0,\xc3\x28,1\n", [], [PODS, "not a UTF-8 CSV"]),
    "nodes-missing-file": (None, POD_HEAD + GOOD_POD, [], [NODES, "no such file"]),
    "pods-is-a-directory": (NODE_HEAD + GOOD_NODE, "DIR", [], [PODS, "is a directory"]),
    "nodes-empty-file": ("", POD_HEAD + GOOD_POD, [], [NODES, "empty, no header"]),
    "pods-empty-file": (NODE_HEAD + GOOD_NODE, "", [], [PODS, "empty, no header"]),
    "nodes-missing-columns": ("sn,cpu_milli\nn0,1\n", POD_HEAD + GOOD_POD, [], [f"{NODES}:1", "memory_mib, gpu, model"]),
    "nodes-column-twice": ("sn,sn,cpu_milli,memory_mib,gpu,model\n", POD_HEAD, [], [f"{NODES}:1", "sn more than once"]),
    # line 3: the blank line 2 is skipped, not counted away
    "pods-too-few-fields": (NODE_HEAD + GOOD_NODE, POD_HEAD + "\np0,1000\n", [], [f"{PODS}:3", "2 fields", "has 11"]),
    "pods-too-many-fields": (NODE_HEAD + GOOD_NODE, POD_HEAD + GOOD_POD.strip() + ",x\n", [], [f"{PODS}:2", "12 fields"]),
    "pods-field-too-long": (NODE_HEAD + GOOD_NODE, POD_HEAD + "p" * 200_000 + ",1,1,0,0,,,,,,\n", [],
                            [PODS, "not CSV", "field larger than field limit"]),
    "nodes-negative-cpu": (NODE_HEAD + "n0,-5,131072,2,T4\n", POD_HEAD + GOOD_POD, [],
                           [f"{NODES}:2", "cpu_milli='-5'", "out of range"]),
    "pods-negative-memory": (NODE_HEAD + GOOD_NODE, POD_HEAD + "p0,1000,-1,1,500,,LS,Running,0,10,0\n", [],
                             [f"{PODS}:2", "memory_mib='-1'", "out of range"]),
    "nodes-infinite-memory": (NODE_HEAD + "n0,1000,inf,2,T4\n", POD_HEAD + GOOD_POD, [],
                              [f"{NODES}:2", "memory_mib='inf'", "not a finite number"]),
    "pods-num-gpu-1.5": (NODE_HEAD + GOOD_NODE, POD_HEAD + "p0,1000,1024,1.5,1000,,LS,Running,0,10,0\n", [],
                         [f"{PODS}:2", "num_gpu='1.5'", "not a whole number"]),
    "pods-gpu-milli-over-1000": (NODE_HEAD + GOOD_NODE, POD_HEAD + "p0,1000,1024,1,1500,,LS,Running,0,10,0\n", [],
                                 [f"{PODS}:2", "gpu_milli='1500'", "0..1,000"]),
    "pods-multi-gpu-shared": (NODE_HEAD + GOOD_NODE, POD_HEAD + "p0,1000,1024,2,500,,LS,Running,0,10,0\n", [],
                              [f"{PODS}:2", "num_gpu=2, gpu_milli=500"]),
    "nodes-negative-gpu": (NODE_HEAD + "n0,32000,131072,-2,T4\n", POD_HEAD + GOOD_POD, [],
                           [f"{NODES}:2", "gpu='-2'", "0..64"]),
    "nodes-huge-gpu": (NODE_HEAD + "n0,32000,131072,100000000,T4\n", POD_HEAD + GOOD_POD, [],
                       [f"{NODES}:2", "gpu='100000000'", "0..64"]),
    "nodes-no-gpu": (NODE_HEAD + "n0,32000,131072,0,T4\n", POD_HEAD + GOOD_POD, [], [NODES, "no node has a GPU"]),
    "nodes-empty-name": (NODE_HEAD + " ,32000,131072,2,T4\n", POD_HEAD + GOOD_POD, [], [f"{NODES}:2", "sn is empty"]),
    "nodes-name-twice": (NODE_HEAD + GOOD_NODE * 2, POD_HEAD + GOOD_POD, [], [f"{NODES}:3", "sn='n0' again", ":2"]),
    "pods-cpu-only-under-fgd": (NODE_HEAD + GOOD_NODE, POD_HEAD + "p0,1000,1024,0,0,,LS,Running,0,10,0\n", [],
                                [PODS, "no pod asks for a GPU", "--protocol replay"]),
    "out-is-a-file": (NODE_HEAD + GOOD_NODE, POD_HEAD + GOOD_POD, ["--out", "{tmp}/" + PODS], ["--out", PODS]),
}

# flags, with a good trace; what the one line must say
FLAGS: dict[str, tuple[list[str], list[str]]] = {
    "seeds-abc": (["--seeds", "abc"], ["--seeds", "'abc'"]),
    "seeds-empty-range": (["--seeds", "5-2"], ["--seeds", "5-2 is an empty range"]),
    "seeds-huge-range": (["--seeds", "0-100000000000"], ["--seeds", "more than 1,000 seeds"]),
    "seeds-negative": (["--seeds", "-1"], ["--seeds", "seed -1 is out of range"]),
    "seeds-twice": (["--seeds", "3,1-4"], ["--seeds", "seed 3 given more than once"]),
    "seeds-comma-only": (["--seeds", ","], ["--seeds", "no seeds"]),
    "jobs-0": (["--jobs", "0"], ["--jobs", "0 is out of range 1..1,024"]),
    "jobs-negative": (["--jobs", "-4"], ["--jobs", "-4 is out of range"]),
    "jobs-abc": (["--jobs", "abc"], ["--jobs", "'abc' is not a whole number"]),
    "scale-0": (["--scale", "0"], ["--scale", "0 is out of range 1..1,000"]),
    "scale-negative": (["--scale", "-1"], ["--scale", "-1 is out of range"]),
    "scale-huge": (["--scale", "1000000000"], ["--scale", "1000000000 is out of range"]),
    "max-pods-negative": (["--max-pods", "-1"], ["--max-pods", "-1 is out of range 0..5,000,000"]),
    "policies-unknown": (["--policies", "nope"], ["--policies", "unknown policy 'nope'", "best-fit"]),
    "policies-empty": (["--policies", ","], ["--policies", "no policy names"]),
    "policies-twice": (["--policies", "fgd,fgd"], ["--policies", "fgd given more than once"]),
    "protocol-unknown": (["--protocol", "nope"], ["--protocol", "invalid choice"]),
    "unknown-flag": (["--colour"], ["unrecognized arguments: --colour"]),
}


def _one_line(capsys: pytest.CaptureFixture[str], rc: int) -> str:
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and out == "" and "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("gpupack simulate: ")
    return lines[0]


@pytest.mark.parametrize("case", list(FILES))
def test_bad_file_gets_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    nodes, pods, flags, said = FILES[case]
    _write(tmp_path / NODES, nodes)
    _write(tmp_path / PODS, pods)
    argv = ["--trace-nodes", str(tmp_path / NODES), "--trace-pods", str(tmp_path / PODS), "--out", str(tmp_path / "o")]
    line = _one_line(capsys, main.main(argv + RUN + [f.replace("{tmp}", str(tmp_path)) for f in flags]))
    for words in said:
        assert words in line, line


@pytest.mark.parametrize("case", list(FLAGS))
def test_bad_flag_gets_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    flags, said = FLAGS[case]
    _write(tmp_path / NODES, NODE_HEAD + GOOD_NODE)
    _write(tmp_path / PODS, POD_HEAD + GOOD_POD)
    argv = ["--trace-nodes", str(tmp_path / NODES), "--trace-pods", str(tmp_path / PODS), "--out", str(tmp_path / "o")]
    line = _one_line(capsys, main.main(argv + RUN + flags))  # the later flag wins over RUN's
    for words in said:
        assert words in line, line


@pytest.mark.parametrize("what,limit,rows", [
    pytest.param("nodes", "MAX_NODES", (NODE_HEAD + "".join(f"n{i},1000,1024,1,T4\n" for i in range(4)),
                                        POD_HEAD + GOOD_POD), id="nodes-over-the-bound"),
    pytest.param("pods", "MAX_PODS", (NODE_HEAD + GOOD_NODE, POD_HEAD + GOOD_POD * 4), id="pods-over-the-bound"),
])
def test_files_over_the_bound_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch, what: str, limit: str,
                                      rows: tuple[str, str]) -> None:
    """The bounds (100,000 nodes, 5,000,000 pods) lowered to 3: a fourth row is refused."""
    monkeypatch.setattr(trace, limit, 3)
    _write(tmp_path / NODES, rows[0])
    _write(tmp_path / PODS, rows[1])
    argv = ["--trace-nodes", str(tmp_path / NODES), "--trace-pods", str(tmp_path / PODS), "--out", str(tmp_path / "o")]
    line = _one_line(capsys, main.main(argv + RUN))
    assert f"more than 3 {what}" in line and (NODES if what == "nodes" else PODS) in line


def test_bounds_are_the_documented_ones() -> None:
    assert (trace.MAX_NODES, trace.MAX_PODS, trace.MAX_GPUS_PER_NODE, main.MAX_SEEDS) == (100_000, 5_000_000, 64, 1000)


def test_trace_half_given(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _write(tmp_path / NODES, NODE_HEAD + GOOD_NODE)
    line = _one_line(capsys, main.main(["--trace-nodes", str(tmp_path / NODES), "--out", str(tmp_path / "o")] + RUN))
    assert "--trace-nodes and --trace-pods go together" in line


@pytest.mark.parametrize("argv,said", [
    pytest.param(["--seeds", "5-2"], "argument --seeds: 5-2 is an empty range", id="flag"),
    pytest.param(["--trace-nodes", "{tmp}/nope.csv", "--trace-pods", "{tmp}/nope.csv"], "nope.csv: no such file",
                 id="file"),
])
def test_the_command_says_one_line(tmp_path: Path, argv: list[str], said: str) -> None:
    """The same through the ``gpupack`` command, in a process of its own."""
    code = "import sys; from gpupack_cli.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = subprocess.run([sys.executable, "-c", code, "simulate", *argv, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and said in done.stderr
    assert done.stdout == ""


def test_help_names_every_policy_and_explains_every_flag(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "2000")  # argparse wraps to this width: no policy split over two lines
    assert main.main(["--help"]) == 0
    policies = next(line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("--policies"))
    for name in placers.registry():
        assert f" {name}," in policies or f" {name} " in policies, name
    assert all(a.help for a in main.parser()._actions)


@pytest.mark.parametrize("jobs,seeds,said", [
    pytest.param("1", "1", "seed 1, 1 policy, 1 worker process", id="one"),
    pytest.param("2", "1-2", "seeds 1..2, 1 policy, 2 worker processes", id="two"),
    pytest.param("8", "1-2", "seeds 1..2, 1 policy, 2 worker processes", id="no-more-than-runs"),
])
def test_header_counts_worker_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str], jobs: str, seeds: str,
                                        said: str) -> None:
    _write(tmp_path / NODES, NODE_HEAD + GOOD_NODE)
    _write(tmp_path / PODS, POD_HEAD + GOOD_POD)
    argv = ["--trace-nodes", str(tmp_path / NODES), "--trace-pods", str(tmp_path / PODS), "--out", str(tmp_path / "o")]
    assert main.main(argv + RUN + ["--jobs", jobs, "--seeds", seeds]) == 0
    header = capsys.readouterr().err.splitlines()[0]
    assert header.endswith(said), header


# -- properties: whatever the bytes, load answers a cluster or a TraceError ---------------------------------------

#: Cells a trace parser trips on, and any text at all.
CELLS = st.one_of(
    st.sampled_from(["", " ", "0", "1", "2", "8", "64", "65", "-1", "1.5", "1000", "1000.0", "500", "1e3", "1e400",
                     "nan", "inf", "-inf", "1_000", "0x10", "T4", "G2|T4", '"', '""', "\r", "\x00", "9" * 30]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
)


def _rows(good: str) -> st.SearchStrategy[list[str]]:
    """Up to four rows, each random cells, the good row (its own name), or the good row with one cell random."""
    cells = good.strip().split(",")

    def mutate(at: int, cell: str) -> str:
        return ",".join(cell if i == at else c for i, c in enumerate(cells))

    row = st.one_of(st.lists(CELLS, min_size=len(cells) - 1, max_size=len(cells) + 1).map(",".join),
                    st.integers(0, 99).map(lambda i: mutate(0, f"{cells[0]}-{i}")),  # names seldom twice
                    st.builds(mutate, st.integers(0, len(cells) - 1), CELLS))
    return st.lists(row, max_size=4)


def _load_or_trace_error(nodes: Path, pods: Path) -> None:
    try:
        cluster, tasks = trace.load(nodes, pods)
    except trace.TraceError:
        return
    assert cluster.nodes >= 1 and cluster.gpu_milli > 0 and tasks


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-input")


@invariant(60)
@given(data=st.binary(max_size=300), which=st.sampled_from(["nodes", "pods"]))
def test_random_bytes_give_a_trace_error(folder: Path, data: bytes, which: str) -> None:
    nodes, pods = folder / NODES, folder / PODS
    nodes.write_text(NODE_HEAD + GOOD_NODE)
    pods.write_text(POD_HEAD + GOOD_POD)
    (nodes if which == "nodes" else pods).write_bytes(data)
    _load_or_trace_error(nodes, pods)


@invariant(100)
@given(node_rows=_rows(GOOD_NODE), pod_rows=_rows(GOOD_POD))
def test_random_cells_give_a_trace_error(folder: Path, node_rows: list[str], pod_rows: list[str]) -> None:
    nodes, pods = folder / NODES, folder / PODS
    nodes.write_text(NODE_HEAD + "".join(r + "\n" for r in node_rows), encoding="utf-8")
    pods.write_text(POD_HEAD + "".join(r + "\n" for r in pod_rows), encoding="utf-8")
    _load_or_trace_error(nodes, pods)


def test_fgd_run_too_long_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """64 GPUs = 64,000 milli, 130 % of it 83,200, in pods of 1 milli: 83,200 pods, over a bound lowered to 1,000."""
    monkeypatch.setattr(main, "MAX_DECISIONS", 1000)
    _write(tmp_path / NODES, NODE_HEAD + "n0,32000,131072,64,T4\n")
    _write(tmp_path / PODS, POD_HEAD + "p0,1,1,1,1,,LS,Running,0,10,0\n")
    argv = ["--trace-nodes", str(tmp_path / NODES), "--trace-pods", str(tmp_path / PODS), "--out", str(tmp_path / "o")]
    line = _one_line(capsys, main.main(argv + RUN))
    assert "would clone about 83,200 pods" in line and "more than 1,000" in line, line
