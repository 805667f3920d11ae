"""Benchmark: gate mode's placement decisions in process, without a control plane. Prints
figures; not a test.

    .venv/bin/python bench/gate_decisions.py [--nodes 5000] [--pods 500] [--passes 7,93,150,250]
                                             [--mix mixed] [--policy fragmentation]

One extender replica as gate mode runs it (cache, decider, binder, ledger, placement
controller), fed by the test suite's fake API (``tests/scheduler_ext/test_placement.py``:
watch events, JSON patches, a kube-scheduler that binds pinned pods), over the fleet of
``bench/scheduler_throughput.py`` (3/8 8x A100, 2/8 8x H100, 2/8 8x H100 time-sliced 4 ways,
1/8 CPU-only; as the device plugin publishes them) and its pod mixes. The pods arrive in
passes (``--passes``: how many are gated before each pass, as a cluster's first passes pick
up pods still being created), each decided by ``PlacementController.place_ready``. Twice in
one process, each on a fresh replica: without the controller's warm-up (its first decision
prepares the kept rows), then with it (``PlacementController.warm``, which the run loop calls
while no pod waits), after a throwaway run on a few nodes that pays the process's first calls. Per pass and in all: the time of each decision (as
``gpupack_placement_decision_seconds`` measures it), its mean, p50, p99 and the slowest.
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy  # noqa: E402

import scheduler_throughput as fleet  # noqa: E402
from scheduler_ext.decide import Decider  # noqa: E402
from scheduler_ext.main import freeze_heap  # noqa: E402
from tests.scheduler_ext.test_ledger import FakeLedgerApi  # noqa: E402
from tests.scheduler_ext.test_placement import GATE, FakeCluster, Replica  # noqa: E402


def nodes(count: int, folder: pathlib.Path) -> list[dict[str, Any]]:
    return [fleet.node_object(f"node-{i:05d}", fleet.FLEET[i % len(fleet.FLEET)], folder) for i in range(count)]


def gated(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in pods:
        p = copy.deepcopy(p)
        p["metadata"].update(namespace=fleet.NAMESPACE, uid=p["metadata"]["name"], resourceVersion="1")
        p["spec"]["schedulingGates"] = [{"name": GATE}]
        out.append(p)
    return out


def run(fleet_nodes: list[dict[str, Any]], pods: list[dict[str, Any]], passes: Sequence[int], policy: str,
        warm: bool) -> tuple[list[list[float]], float]:
    """Decision times (ms) per pass, and the warm-up's time (ms, 0 without)."""
    cluster = FakeCluster()
    r = Replica(cluster, fleet_nodes, FakeLedgerApi())
    r.decider = r.controller.decider = Decider(r.cache, policy)
    r.binder.policy = r.decider.policy
    freeze_heap()  # as the extender does once it has listed the cluster
    took = 0.0
    if warm:
        t0 = time.perf_counter()
        r.controller.warm()
        took = (time.perf_counter() - t0) * 1000
    times: list[float] = []
    decide = r.controller._decide

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return decide(*args, **kwargs)
        finally:
            times.append((time.perf_counter() - t0) * 1000)

    r.controller._decide = timed  # type: ignore[method-assign]
    out, at = [], 0
    for size in passes:
        for p in pods[at:at + size]:
            cluster.create(copy.deepcopy(p))
        at += size
        start = len(times)
        stats = r.controller.place_ready()
        cluster.schedule()
        out.append(times[start:])
        if stats.errors or stats.waiting:
            raise SystemExit(f"a pass left pods unplaced ({stats}): use more --nodes or fewer --pods")
    return out, took


def line(what: str, ms: Sequence[float]) -> str:
    a = numpy.asarray(ms)
    return (f"| {what} | {a.shape[0]} | {a.mean():.2f} | {numpy.median(a):.2f} | {numpy.percentile(a, 99):.2f} "
            f"| {a.max():.2f} |")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--pods", type=int, default=500)
    p.add_argument("--passes", default="7,93,150,250", help="pods gated before each pass (summing to --pods)")
    p.add_argument("--mix", default="mixed", choices=fleet.MIXES)
    p.add_argument("--policy", default="fragmentation")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    passes = [int(x) for x in args.passes.split(",")]
    if sum(passes) != args.pods or min(passes) < 1:
        p.error(f"--passes {args.passes} must be positive and sum to --pods {args.pods}")
    fleet.check_capacity(args.mix, args.pods, args.nodes)
    with tempfile.TemporaryDirectory() as folder:
        fleet_nodes = nodes(args.nodes, pathlib.Path(folder))
    pods = gated(fleet.make_pods(args.mix, args.pods, args.seed))
    print(f"# gate mode in process: {args.nodes} nodes, {args.pods} pods of mix {args.mix} in passes of "
          f"{args.passes}, policy {args.policy}; {platform.machine()}, CPython {platform.python_version()}, "
          f"numpy {numpy.__version__}", flush=True)
    # a throwaway run first, so that neither measured one pays the process's own first calls
    run(fleet_nodes[:64], gated(fleet.make_pods("mixed", 10, args.seed + 1)), [10], args.policy, warm=False)
    for warm in (False, True):
        per_pass, took = run(fleet_nodes, pods, passes, args.policy, warm)
        print(f"\n{'with' if warm else 'without'} the warm-up" + (f" (it took {took:.1f} ms, before the first pass)"
                                                               if warm else "") + ", decision times in ms:\n")
        print("| pass | decisions | mean | p50 | p99 | slowest |")
        print("|---|---:|---:|---:|---:|---:|")
        for i, ms in enumerate(per_pass, 1):
            print(line(str(i), ms))
        every = [t for ms in per_pass for t in ms]
        print(line("all", every))
        print(f"\nslowest five: {', '.join(f'{t:.1f}' for t in sorted(every)[-5:])}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
