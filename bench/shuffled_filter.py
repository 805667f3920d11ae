"""Filter time when kube-scheduler names the same nodes in another order each time.

    .venv/bin/python bench/shuffled_filter.py [--nodes 5000] [--filters 30] [--policy fragmentation]

kube-scheduler's filter runs on parallel workers, so it sends the same candidate set pod after
pod in a new order. The cache keeps rows and verdicts per candidate set (scheduler_ext/cache/
candidates.py); this prints the median and p90 of ``Decider.filter`` for a 1-GPU pod over the
same list in the same order and over shuffled copies of it, on a cluster of 8-GPU nodes each
with a random number of GPUs in use. Nothing changes between filters, so it is the best case
of keeping (a bind between filters makes the memo evaluate that node's row again).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpupack import contract  # noqa: E402
from scheduler_ext.cache import ClusterCache  # noqa: E402
from scheduler_ext.decide import Decider  # noqa: E402
from scheduler_ext.podspec import pod_demand  # noqa: E402
from tests.fixtures import node, pod  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--filters", type=int, default=30)
    p.add_argument("--policy", default="fragmentation")
    a = p.parse_args()
    rng = random.Random(1)
    pods = [pod(f"p{k}-{g}", gpus={contract.NVIDIA_GPU: 1}, node=f"n{k}", phase="Running",
                devices={"c0": {contract.NVIDIA_GPU: [f"GPU-n{k}-{g}"]}})
            for k in range(a.nodes) for g in range(rng.randrange(0, 8))]
    cache = ClusterCache()
    cache.replace_all([node(f"n{k}", n=8) for k in range(a.nodes)], pods)
    decider = Decider(cache, a.policy)
    names = [f"n{k}" for k in range(a.nodes)]
    print(f"{a.nodes} nodes, {len(pods)} pods, policy {a.policy}, {a.filters} filters each")
    for mode in ("same order", "shuffled"):
        times = []
        for i in range(a.filters + 2):
            listed = names if mode == "same order" else rng.sample(names, len(names))
            demand = pod_demand(pod(f"w{i}", gpus={contract.NVIDIA_GPU: 1}))
            t0 = time.perf_counter()
            decider.filter(demand, listed)
            times.append(time.perf_counter() - t0)
        times = sorted(times[2:])  # the first two make and keep the copy
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        print(f"{mode:10s}  median {statistics.median(times) * 1000:6.2f} ms  p90 {p90 * 1000:6.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
