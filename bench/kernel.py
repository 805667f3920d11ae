"""Benchmark: the kernel alone, NumPy against the plain-Python reference of the same rule.

Both evaluate one request (feasibility + raw score) on the same random cluster of N nodes x
8 GPUs, 60 % occupied, in the same run; the ratio is reference time / NumPy time. CuPy is
timed too when it imports and a GPU answers. "kept memo": NumPy with the per-node sums
before placement kept from the previous request (:class:`gpupack.kernel.NodeSumsMemo`),
as the extender evaluates pod after pod on its kept candidate rows (only ``fragmentation``
uses them). "kept verdicts": the request's verdicts kept from its previous evaluation on
the same rows, one row changed since (:class:`gpupack.kernel.verdict_memo.VerdictMemo`), as the
extender answers the next pod of a shape it has seen, after one bind: "new state" when the
changed row is in a state not seen before (evaluated), "seen state" when another node was
evaluated in that state before (its verdict taken, no array work).

    .venv/bin/python bench/kernel.py [--sizes 100,1000,5000] [--policies binpack,fragmentation]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpupack import kernel  # noqa: E402
from gpupack.kernel import reference  # noqa: E402
from gpupack.kernel.verdict_memo import KEPT_STATE_BYTES, VerdictMemo  # noqa: E402
from gpupack.kernel.slots import empty_slots  # noqa: E402

GPU, SHARED = 0, 1


def cluster(nodes: int, seed: int = 7) -> kernel.Slots:
    """8 slots per node: 6 whole GPUs and 2 time-sliced GPUs of 4 shares; about 60 % in use."""
    rng = np.random.default_rng(seed)
    s = empty_slots(np, nodes, 8)
    s.resource[:, :6], s.resource[:, 6:] = GPU, SHARED
    s.capacity[:, :6], s.capacity[:, 6:] = 1, 4
    s.memory_mib[:] = 81559
    s.free[:, :6] = rng.random((nodes, 6)) >= 0.6
    s.free[:, 6:] = rng.integers(0, 5, (nodes, 2))
    s.free_memory_mib[:] = s.memory_mib * s.free // s.capacity
    s.healthy[:] = rng.random((nodes, 8)) > 0.01
    s.weight[:] = 1.0
    s.gpu[:] = np.arange(8)
    s.numa[:] = np.arange(8) // 4
    s.nvgroup[:] = 0
    return s


def timed(fn: Callable[[], Any], min_s: float = 0.5) -> float:
    """Seconds per call, repeating for at least ``min_s``."""
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return elapsed / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", default="100,1000,5000")
    p.add_argument("--policies", default="binpack,fragmentation")
    args = p.parse_args()
    try:
        cupy = kernel.namespace("cupy")
        cupy.zeros(1).sum()
    except Exception as err:  # no cupy, or no GPU
        cupy = None
        print(f"# cupy: not timed ({str(err).splitlines()[0][:80]})")
    print(f"# {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, numpy {np.__version__}")
    print(f"{'nodes':>6} {'policy':>14} {'request':>12} {'numpy ms':>9} {'kept memo':>9} {'kept, new state':>15} {'kept, seen state':>16} {'python ms':>10} {'ratio':>7} {'cupy ms':>8}")
    mix = ((kernel.Request(GPU, 1), 0.5), (kernel.Request(GPU, 2), 0.2), (kernel.Request(SHARED, 1, 20000), 0.3))
    for n in (int(x) for x in args.sizes.split(",")):
        s = cluster(n)
        for name in args.policies.split(","):
            policy = kernel.get_policy(name)
            for req in (kernel.Request(GPU, 2), kernel.Request(SHARED, 1, 20000)):
                v = kernel.evaluate(s, req, policy, np, mix=mix)
                ref_feasible, ref_raw = reference.evaluate(s, req, name, mix if policy.uses_mix else ())
                assert v.feasible.tolist() == ref_feasible, "numpy and reference disagree"
                assert np.allclose(v.raw[v.feasible], np.asarray(ref_raw)[v.feasible])
                t_np = timed(lambda: kernel.evaluate(s, req, policy, np, mix=mix))
                # as the extender runs it: the per-node sums kept from the previous request
                memo = kernel.NodeSumsMemo(n)
                t_memo = timed(lambda: kernel.evaluate(s, req, policy, np, mix=mix, memo=memo))
                one = np.asarray([n // 2])
                t_kept = []
                for budget in (0, KEPT_STATE_BYTES):  # 0: nothing kept by state, so the row is always new
                    rows = VerdictMemo(n, state_bytes=budget)
                    rows.evaluate(s, req, policy, mix)

                    def kept_verdicts() -> None:
                        rows.mark(one)  # a bind changed one node since
                        rows.evaluate(s, req, policy, mix, levels=False)

                    t_kept.append(timed(kept_verdicts))
                t_py = timed(lambda: reference.evaluate(s, req, name, mix if policy.uses_mix else ()), min_s=0.2)
                t_cp = float("nan")
                if cupy is not None:
                    sc = kernel.Slots(**{f.name: cupy.asarray(getattr(s, f.name)) for f in dataclasses.fields(s)})

                    def on_gpu() -> None:
                        kernel.evaluate(sc, req, policy, cupy, mix=mix)
                        cupy.cuda.Stream.null.synchronize()

                    t_cp = timed(on_gpu)
                label = f"{req.count}x{'gpu' if req.resource == GPU else 'share'}" + (f"/{req.memory_mib}M" if req.memory_mib else "")
                print(f"{n:>6} {name:>14} {label:>12} {t_np * 1e3:>9.3f} {t_memo * 1e3:>9.3f} {t_kept[0] * 1e3:>15.3f} {t_kept[1] * 1e3:>16.3f} {t_py * 1e3:>10.1f} {t_py / t_np:>6.0f}x {t_cp * 1e3:>8.3f}",
                      flush=True)


if __name__ == "__main__":
    main()
