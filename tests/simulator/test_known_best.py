"""A tiny hand-made cluster and workload whose best answer is known.

Two nodes of two GPUs. Arrivals: a 500-milli share, another 500-milli share, two whole GPUs,
one whole GPU. Best answer: both shares on one GPU, the pair on the other node, the last
whole GPU beside the shares: everything placed, 0 % unallocated. Spreading the two shares
over two GPUs (or nodes) leaves no node with two whole GPUs free, so the pair fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy
import pytest

from simulator import placers, protocols, trace
from tests.simulator.conftest import write_trace

PODS = ["s1,1000,1024,1,500,,LS,Running,0,,0", "s2,1000,1024,1,500,,LS,Running,1,,1",
        "pair,1000,1024,2,1000,,LS,Running,2,,2", "one,1000,1024,1,1000,,LS,Running,3,,3"]


def _placed(tmp_path: Path, name: str, seed: int) -> dict[str, str]:
    cluster, tasks = trace.load(*write_trace(tmp_path, ["a,32000,65536,2,T4", "b,32000,65536,2,T4"], PODS))
    wl = placers.workload(tasks, seed)
    r = protocols.run_replay(cluster, tasks, placers.make([name], wl)[0], wl, seed, numpy)
    return {x.pod: x.node for x in r.records}


@pytest.mark.parametrize("name", ["gpupack-binpack", "gpupack-fragmentation", "fgd", "best-fit", "most-allocated"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_packers_find_the_best_answer(tmp_path: Path, name: str, seed: int) -> None:
    placed = _placed(tmp_path, name, seed)
    assert all(placed.values()), placed
    assert placed["s1"] == placed["s2"] == placed["one"] != placed["pair"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spreading_misses_it(tmp_path: Path, seed: int) -> None:
    placed = _placed(tmp_path, "gpupack-spread", seed)
    assert placed["s1"] != placed["s2"]
    assert placed["pair"] == ""
