"""The simulator's headline figures on traces small enough to work out by hand.

Trace GPUs are shared slots whose "memory" is 1000 milli-GPUs; a sharing task asks one share
with a memory hint of its ``gpu_milli`` (simulator/trace.py), so these cases fail if the GPU
accounting ever stops counting memory-hinted shares by their memory.

FGD protocol (a), one shape per trace, so the seeded shuffle cannot change the order:

- ``one-gpu-600``: 1 node x 1 GPU (1000 milli), tasks of 600 milli. The sequence is cloned
  until 130 % of capacity: 600, 1200, 1800. Arrival reaches 100 % at the 2nd task (1200).
  The 1st is placed (600 taken); the 2nd fails (400 left < 600).
  unallocated = 100 - 100 * 600 / 1000 = 40.0 %; failed 1, failed GPU = 600 / 1000 = 60.0 %.
- ``two-gpus-700``: 1 node x 2 GPUs (2000 milli), tasks of 700: 700, 1400, 2100, 2800. 100 %
  at the 3rd. Two fit, one per GPU (700 + 700 > 1000); the 3rd fails.
  unallocated = 100 - 100 * 1400 / 2000 = 30.0 %; failed 1, failed GPU = 35.0 %.
- ``whole-and-quarter``: 2 nodes x 1 GPU, tasks of one whole GPU (1000): 1000, 2000, 3000.
  100 % at the 2nd: both placed, one per node. unallocated = 0.0 %, failed 0.

Replay protocol (b), departures and retries:

- ``replay-600``: 1 node x 1 GPU; p0 600 milli from t=0 to t=10000, p1 600 milli from t=1000.
  Every sample lies in [0, 1000] (the curve ends at the last arrival): p0 runs, p1 cannot fit
  (400 left) and waits. idle = 100 * (1000 - 600) / 1000 = 40.0 % at every sample; peak
  pending 1 (the sample at t=1000, after p1 queued), never placed 1 (p0 leaves after the end).
  waited 1 (p1); waited with GPUs idle 0: 400 milli were idle, p1 asks 600.
- ``replay-split``: 2 nodes x 1 GPU; p0 and p1 of 600 milli take one GPU each (600 + 600 >
  1000); p2 of 700 arrives at t=2000: 400 + 400 = 800 milli idle >= 700, but no GPU has 700.
  waited 1, waited with GPUs idle 1 (capacity split across GPUs, what a packer should avoid).
"""

from __future__ import annotations

from pathlib import Path

import numpy
import pytest

from simulator import placers, protocols, trace
from tests.simulator.conftest import write_trace

PACKERS = ["gpupack-fragmentation", "gpupack-binpack", "fgd", "best-fit"]


def _run(tmp_path: Path, nodes: list[str], pods: list[str], name: str, protocol: str) -> dict[str, float]:
    cluster, tasks = trace.load(*write_trace(tmp_path, nodes, pods))
    wl = placers.workload(tasks, 42)
    placer = placers.make([name], wl)[0]
    run = protocols.run_fgd if protocol == "fgd" else protocols.run_replay
    return run(cluster, tasks, placer, wl, 42, numpy).figures


@pytest.mark.parametrize("nodes,pods,unallocated,failed,failed_gpu", [
    pytest.param(["a,32000,65536,1,T4"], ["s,1000,1024,1,600,,LS,Running,0,,0"], 40.0, 1, 60.0, id="one-gpu-600"),
    pytest.param(["a,32000,65536,2,T4"], ["s,1000,1024,1,700,,LS,Running,0,,0"], 30.0, 1, 35.0, id="two-gpus-700"),
    pytest.param(["a,32000,65536,1,T4", "b,32000,65536,1,T4"], ["w,1000,1024,1,1000,,LS,Running,0,,0"], 0.0, 0, 0.0,
                 id="whole-gpus"),
])
@pytest.mark.parametrize("name", PACKERS)
def test_fgd_protocol_figures(tmp_path: Path, nodes: list[str], pods: list[str], unallocated: float, failed: int,
                              failed_gpu: float, name: str) -> None:
    f = _run(tmp_path, nodes, pods, name, "fgd")
    assert f["unallocated_pct"] == pytest.approx(unallocated, abs=1e-9)
    assert f["failed_tasks"] == failed
    assert f["failed_gpu_pct"] == pytest.approx(failed_gpu, abs=1e-9)


@pytest.mark.parametrize("name", PACKERS)
def test_replay_protocol_figures(tmp_path: Path, name: str) -> None:
    pods = ["p0,1000,1024,1,600,,LS,Running,0,10000,0", "p1,1000,1024,1,600,,LS,Running,1000,20000,1000"]
    f = _run(tmp_path, ["a,32000,65536,1,T4"], pods, name, "replay")
    assert f["mean_idle_pct"] == pytest.approx(40.0, abs=1e-9)
    assert f["peak_pending"] == 1
    assert f["never_placed"] == 1
    assert (f["waited"], f["waited_gpus_idle"]) == (1, 0)


@pytest.mark.parametrize("name", PACKERS + ["kube-default"])
def test_replay_counts_waits_with_gpus_idle(tmp_path: Path, name: str) -> None:
    pods = ["p0,1000,1024,1,600,,LS,Running,0,10000,0", "p1,1000,1024,1,600,,LS,Running,1000,10000,1000",
            "p2,1000,1024,1,700,,LS,Running,2000,20000,2000"]
    f = _run(tmp_path, ["a,32000,65536,1,T4", "b,32000,65536,1,T4"], pods, name, "replay")
    assert (f["placed"], f["waited"], f["waited_gpus_idle"]) == (2, 1, 1)
