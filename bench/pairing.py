"""How well online rules pair GPU shares, with nodes and CPU left out: the shares of protocol (a)'s
arrivals, in arrival order, into as many GPUs as they need. Prints, per seed, the GPUs' worth of
remainders each rule leaves and the bound's (the least any packing of the same shares leaves).

    .venv/bin/python bench/pairing.py /work/shared/data/alibaba-gpu-v2023 [--seeds 42-44]

Rules: best fit (the fullest GPU the share fits); FGD's measure (the GPU whose fragmentation for
the workload's share and whole-GPU mix grows least); sum of squares (Csirik et al. 2006: keep the
counts of GPUs per free amount even); and best fit kept to the patterns of the bound's packing (a
share joins a used GPU only where the GPU's use plus the share is part of a set of shares the
linear programme fills GPUs with; else a fresh GPU). Needs SciPy (the ``bench`` extra). See
docs/history/simulator.md, "Against the bound", for what the full simulator makes of them.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator import bound, protocols, trace  # noqa: E402
from simulator import main as simulate  # noqa: E402

MILLI = bound.GPU_MILLI
Rule = Callable[[Sequence[int], Sequence[int]], float]


def best_fit(shares: Sequence[int], _all: Sequence[int]) -> float:
    gaps: list[int] = []  # free milli of the used GPUs, sorted
    for s in shares:
        i = bisect.bisect_left(gaps, s)
        g = gaps.pop(i) if i < len(gaps) else MILLI
        if g - s:
            bisect.insort(gaps, g - s)
    return sum(gaps) / MILLI


def _least_cost(shares: Sequence[int], cost: Callable[[collections.Counter[int], int, int], float]) -> float:
    """Each share on the used GPU (by its free milli ``g``) or the fresh GPU (``g`` = 1000) of
    least ``cost(free, g, share)``, ties to the fuller GPU; ``free`` counts used GPUs per free milli."""
    free: collections.Counter[int] = collections.Counter()
    for s in shares:
        g = min([g for g, n in free.items() if n and g >= s] + [MILLI], key=lambda g: (cost(free, g, s), g))
        if g != MILLI:
            free[g] -= 1
        if g - s:
            free[g - s] += 1
    return sum(g * n for g, n in free.items()) / MILLI


def fgd_measure(shares: Sequence[int], gpu_sizes: Sequence[int]) -> float:
    """FGD's per-GPU fragmentation: free capacity times the share of the mix that cannot use it."""
    mix = collections.Counter(gpu_sizes)
    total = sum(mix.values())
    frag = {f: f * sum(n for size, n in mix.items() if size > f) / total for f in range(MILLI + 1)}
    return _least_cost(shares, lambda free, g, s: frag[g - s] - frag[g])


def sum_of_squares(shares: Sequence[int], _all: Sequence[int]) -> float:
    """Csirik et al.: the change in the sum of squared counts of used GPUs per free milli."""
    def cost(free: collections.Counter[int], g: int, s: int) -> float:
        left = 0 if g == MILLI else -(2 * free[g] - 1)
        return left + (2 * free[g - s] + 1 if g - s else 0)
    return _least_cost(shares, cost)


def packing(sizes: collections.Counter[int]) -> list[tuple[tuple[int, ...], float]]:
    """The fewest-GPUs packing of ``sizes`` (a linear programme over every set of shares that
    fits a GPU): each set it uses and how many GPUs hold it."""
    from scipy.optimize import linprog

    pats = [tuple(sorted(p.elements(), reverse=True)) for p in bound.patterns(sizes)]
    order = sorted(sizes)
    a = numpy.zeros((len(order), len(pats)))
    for j, p in enumerate(pats):
        for size, k in collections.Counter(p).items():
            a[order.index(size), j] = k
    res = linprog(numpy.ones(len(pats)), A_ub=-a, b_ub=-numpy.array([sizes[s] for s in order], dtype=float),
                  bounds=(0, None), method="highs")
    return [(p, float(x)) for p, x in zip(pats, res.x) if x > 1e-9]


def pattern_best_fit(shares: Sequence[int], _all: Sequence[int]) -> float:
    """Best fit among the used GPUs where the share keeps to a set :func:`packing` of the shares'
    own sizes puts on more than half a GPU, else a fresh GPU."""
    allowed: set[tuple[int, int]] = set()  # (used milli, share): both inside one set
    for p, gpus in packing(collections.Counter(shares)):
        if gpus <= 0.5:
            continue
        have = collections.Counter(p)
        for taken in itertools.product(*(range(n + 1) for n in have.values())):
            part = dict(zip(have, taken))
            base = sum(size * k for size, k in part.items())
            allowed |= {(base, size) for size in have if part[size] < have[size]}
    used: list[int] = []  # milli taken on each GPU opened
    for s in shares:
        fits = [i for i, u in enumerate(used) if (u, s) in allowed and u + s <= MILLI]
        if fits:
            used[max(fits, key=lambda i: used[i])] += s
        else:
            used.append(s)
    return sum(MILLI - u for u in used) / MILLI


RULES: dict[str, Rule] = {"best fit": best_fit, "FGD's measure": fgd_measure, "sum of squares": sum_of_squares,
                          "best fit on the bound's patterns": pattern_best_fit}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="folder with openb_node_list_gpu_node.csv and openb_pod_list_default.csv")
    p.add_argument("--seeds", default="42-44")
    a = p.parse_args()
    try:
        seeds = simulate.parse_seeds(a.seeds)
        cluster, tasks = trace.load(Path(a.folder) / "openb_node_list_gpu_node.csv",
                                    Path(a.folder) / "openb_pod_list_default.csv")
    except (ValueError, OSError, trace.TraceError, argparse.ArgumentTypeError) as err:
        print(f"bench/pairing.py: {err}", file=sys.stderr)
        return 2
    head = ["seed"] + list(RULES) + ["bound (shares only)"]
    print("| " + " | ".join(head) + " |\n|" + "---:|" * len(head))
    for seed in seeds:
        arrived = bound.arrived(protocols.fgd_sequence(tasks, cluster.gpu_milli, seed), cluster.gpu_milli)
        gpu = [t for t in arrived if t.wants_gpu]
        shares = [t.gpu_milli for t in gpu if t.count == 1 and t.gpu_milli < MILLI]
        sizes = [min(t.gpu_milli, MILLI) for t in gpu]  # the mix FGD's measure weighs, whole GPUs as 1000
        least = sum(gpus for _, gpus in packing(collections.Counter(shares))) - sum(shares) / MILLI
        cells = [str(seed)] + [f"{rule(shares, sizes):.1f}" for rule in RULES.values()] + [f"{least:.1f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
    print("(GPUs' worth of free milli left on used GPUs; lower is better)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
