"""Packing benchmark: the FGD paper's protocol on an Alibaba GPU trace, every policy, a table.

    .venv/bin/python bench/packing.py /work/shared/data/alibaba-gpu-v2023 [--seeds 42-51] [--policies a,b]
    .venv/bin/python bench/packing.py /work/shared/data/alibaba-gpu-v2023 --families all [--levels gpushare40,default]

The argument is the folder holding ``openb_node_list_gpu_node.csv`` and
``openb_pod_list_default.csv`` (or ``--nodes FILE --pods FILE``). The trace is read from
there, never copied. Prints the table of medians over the seeds with the published figures,
and writes the summary, plot and placements under ``--out`` (default ``bench-out/packing``).

``--families all|NAME[,NAME]`` runs the workload families of :mod:`simulator.families` instead
(``cpu``, ``multigpu``, ``gpushare``, ``gpuspec``; ``--levels`` keeps some levels, ``default``
being the trace as it is): for each level and seed (default 42-44) the tasks are generated with
that seed, and each policy (default FGD, best-fit, gpupack's default) is run through
:func:`simulator.protocols.run_fgd` as ``gpupack simulate`` runs it. One table: the median
unallocated GPU % at 100 % arrived and the seeds' range per policy, gpupack minus FGD, CPU
seconds per seed per policy, and the ``bound`` (:mod:`simulator.bound`: the least any rule
could leave on the same arrivals; needs SciPy, the ``bench`` extra; ``--policies`` may name
it); rows and seeds kept aside from tuning are marked ``held out``.
Each run is kept under ``--out`` (``runs/<level>/<policy>_seed<N>.json`` and
``placements/<level>/<policy>_seed<N>.csv.gz``) and reused by a later call with
``--reuse``, so seeds can be added a few at a time; ``families.json`` and ``families.md``
hold the table. ``--pins FILE``: draw ``gpuspec`` pins from the ``gpu_spec`` lists of that
pod list (e.g. the public ``openb_pod_list_gpuspec33.csv``) instead of the trace's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpupack import kernel  # noqa: E402
from simulator import bound, families, placements, placers, protocols, trace  # noqa: E402
from simulator import main as simulate  # noqa: E402
from simulator.model import Cluster, Task  # noqa: E402

#: The policies a families run compares, and their column names.
FAMILY_POLICIES = {"fgd": "FGD", "best-fit": "best-fit", f"gpupack-{kernel.DEFAULT_POLICY}": "gpupack"}
DEFAULT = "default"
#: The bound column (:mod:`simulator.bound`), run like a policy when SciPy is installed.
BOUND = "bound"


def _have_scipy() -> bool:
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        return False
    return True


def _levels(fams: str, levels: str) -> list[str]:
    """The level names to run: ``--levels``' order when given, else the table's (``default``,
    the trace as-is, first)."""
    names = list(families.FAMILIES) if fams.strip() == "all" else [f.strip() for f in fams.split(",") if f.strip()]
    bad = [f for f in names if f not in families.FAMILIES]
    if bad:
        raise ValueError(f"unknown families {', '.join(bad)}; choose all or some of {', '.join(families.FAMILIES)}")
    out = [DEFAULT] + [lv for f in names for lv in families.FAMILIES[f]]
    if levels:
        keep = [lv.strip() for lv in levels.split(",") if lv.strip()]
        for lv in keep:
            if lv != DEFAULT:
                families.family_of(lv)  # refuses unknown names
        out = [lv for lv in keep if lv in out or lv == DEFAULT]
    return out


# Set in the parent before a pool forks (as simulator.main does).
_JOB: dict[str, Any] = {}


def _tasks(level: str, seed: int) -> list[Task]:
    if level == DEFAULT:
        return list(_JOB["tasks"])
    return families.generate(level, _JOB["tasks"], _JOB["cluster"], seed, pins=_JOB["pins"])


def _run(job: tuple[str, str, int]) -> dict[str, Any]:
    """One (level, policy, seed): generate, play the FGD protocol, keep the placements."""
    level, name, seed = job
    cluster: Cluster = _JOB["cluster"]
    tasks = _tasks(level, seed)
    t0, c0 = time.perf_counter(), time.process_time()
    out = Path(_JOB["out"])
    if name == BOUND:
        arrived = bound.arrived(protocols.fgd_sequence(tasks, cluster.gpu_milli, seed), cluster.gpu_milli)
        figures = {"unallocated_pct": bound.least_unallocated_pct(arrived, cluster)}
    else:
        wl = dataclasses.replace(placers.workload(tasks), seed=seed)
        placer = placers.make([name], wl)[0]
        result = protocols.run_fgd(cluster, tasks, placer, wl, seed, kernel.namespace(_JOB["xp"]))
        figures = result.figures
        pdir = out / "placements" / level
        pdir.mkdir(parents=True, exist_ok=True)
        placements.write(pdir / f"{name}_seed{seed}.csv.gz", result.records)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    family = families.family_of(level) if level != DEFAULT else ""
    run = {"level": level, "policy": name, "seed": seed, "pods": len(tasks),
           "achieved_pct": 100.0 * families.level_of(family, tasks) if family else None,
           "gpu_request": sum(t.gpu_milli for t in tasks) / 1000.0,
           "figures": figures, "wall_seconds": wall, "cpu_seconds": cpu}
    rdir = out / "runs" / level
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / f"{name}_seed{seed}.json").write_text(json.dumps(run, indent=1) + "\n")
    return run


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.2f}..{max(values):.2f}" if len(values) > 1 else ""


def table(runs: Sequence[dict[str, Any]], levels: Sequence[str], names: Sequence[str]) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table of the runs, one row per level, and the rows as data."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault((r["level"], r["policy"]), []).append(r)
    cols = [FAMILY_POLICIES.get(n, n) for n in names]
    head = ["family", "level", "achieved %", "seeds"] + [f"{c} (range)" for c in cols]
    gp, fgd = f"gpupack-{kernel.DEFAULT_POLICY}", "fgd"
    if gp in names and fgd in names:
        head.append("gpupack - FGD")
    head += [f"s/seed {c}" for c in cols] + ["held out"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    rows: list[dict[str, Any]] = []
    for level in levels:
        got = {n: sorted(by.get((level, n), []), key=lambda r: r["seed"]) for n in names}
        if not any(got.values()):
            continue
        seeds = sorted({r["seed"] for rs in got.values() for r in rs})
        med = {n: statistics.median(r["figures"]["unallocated_pct"] for r in rs) for n, rs in got.items() if rs}
        achieved = [r["achieved_pct"] for rs in got.values() for r in rs if r["achieved_pct"] is not None]
        held = level in families.HELD_OUT_LEVELS or any(families.held_out_seed(s) for s in seeds)
        family = families.family_of(level) if level != DEFAULT else DEFAULT
        cells = [family, level, f"{statistics.median(achieved):.1f}" if achieved else "", ",".join(map(str, seeds))]
        for n in names:
            vals = [r["figures"]["unallocated_pct"] for r in got[n]]
            cells.append(f"{med[n]:.2f} ({_span(vals)})" if vals and len(vals) > 1 else (f"{med[n]:.2f}" if vals else ""))
        if gp in names and fgd in names:
            cells.append(f"{med[gp] - med[fgd]:+.2f}" if gp in med and fgd in med else "")
        for n in names:
            cpu = [r["cpu_seconds"] for r in got[n]]
            cells.append(f"{statistics.mean(cpu):.0f}" if cpu else "")
        cells.append("held out" if held else "")
        lines.append("| " + " | ".join(cells) + " |")
        rows.append({"family": family, "level": level, "seeds": seeds, "held_out": held,
                     "achieved_pct": statistics.median(achieved) if achieved else None,
                     "median_unallocated_pct": med,
                     "per_seed": {n: {str(r["seed"]): r["figures"]["unallocated_pct"] for r in got[n]} for n in names},
                     "cpu_seconds_per_seed": {n: statistics.mean(r["cpu_seconds"] for r in got[n])
                                              for n in names if got[n]}})
    return "\n".join(lines), rows


def run_families(a: argparse.Namespace, nodes: str, pods: str) -> int:
    try:
        levels = _levels(a.families, a.levels)
        seeds = simulate.parse_seeds(a.seeds or "42-44")
        names = [n.strip() for n in a.policies.split(",")] if a.policies else list(FAMILY_POLICIES)
        cluster, tasks = trace.load(nodes, pods)
        placers.make([n for n in names if n != BOUND], placers.workload(tasks[:1]))  # refuse unknown names first
        if not a.policies:
            names.append(BOUND)
        if BOUND in names and not _have_scipy():
            if a.policies:
                raise ValueError("the bound needs SciPy: pip install -e '.[bench]'")
            print("bench/packing.py: no bound column: it needs SciPy (pip install -e '.[bench]')", file=sys.stderr)
            names.remove(BOUND)
        pins = families.pin_distribution(trace.load(nodes, a.pins)[1], cluster) if a.pins else None
    except (ValueError, OSError, trace.TraceError, argparse.ArgumentTypeError) as err:
        print(f"bench/packing.py: {err}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    _JOB.update(cluster=cluster, tasks=tasks, pins=pins, xp=a.xp, out=str(out))
    jobs = [(lv, n, s) for s in seeds for lv in levels for n in names]  # a seed over every level first
    runs: list[dict[str, Any]] = []
    todo = []
    for job in jobs:
        f = out / "runs" / job[0] / f"{job[1]}_seed{job[2]}.json"
        if a.reuse and f.exists():
            runs.append(json.loads(f.read_text()))
        else:
            todo.append(job)
    started = time.perf_counter()
    print(f"{len(levels)} levels x {len(names)} policies x seeds {','.join(map(str, seeds))}: "
          f"{len(todo)} runs to do, {len(runs)} reused", file=sys.stderr)

    def done(r: dict[str, Any]) -> None:
        runs.append(r)
        print(f"  {r['level']:12s} {r['policy']:24s} seed {r['seed']}: {r['figures']['unallocated_pct']:.2f} % "
              f"unallocated, {r['cpu_seconds']:.0f} CPU-s ({time.perf_counter() - started:.0f} s so far)",
              file=sys.stderr, flush=True)

    jobs_n = int(a.jobs or 1)
    if jobs_n <= 1 or len(todo) <= 1:
        for job in todo:
            done(_run(job))
    else:
        with multiprocessing.get_context("fork").Pool(min(jobs_n, len(todo))) as pool:
            for r in pool.imap_unordered(_run, todo):
                done(r)
    order = [DEFAULT] + [lv for levels_ in families.FAMILIES.values() for lv in levels_]
    text, rows = table(runs, sorted(levels, key=order.index), names)
    print(text)
    meta = {"input": f"{Path(nodes).name} + {Path(pods).name}", "pins": a.pins and Path(a.pins).name,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "seeds": seeds, "policies": names, "held_out_levels": sorted(families.HELD_OUT_LEVELS),
            "held_out_seeds_from": families.HELD_OUT_SEEDS_FROM,
            "tuning_seeds_extra": [families.TUNING_SEEDS_EXTRA.start, families.TUNING_SEEDS_EXTRA.stop - 1],
            "wall_seconds": round(time.perf_counter() - started, 1)}
    (out / "families.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    (out / "families.md").write_text(text + "\n")
    print(f"wrote {out / 'families.json'}, {out / 'families.md'}", file=sys.stderr)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", help="folder with the openb_* CSV files")
    p.add_argument("--nodes", help="openb_node_list_*.csv")
    p.add_argument("--pods", help="openb_pod_list_*.csv")
    p.add_argument("--seeds", default="", help="default 42-51; 42-44 with --families")
    p.add_argument("--policies", default="")
    p.add_argument("--out", default="bench-out/packing")
    p.add_argument("--jobs", default="")
    p.add_argument("--families", default="", help="all, or some of " + ", ".join(families.FAMILIES))
    p.add_argument("--levels", default="", help="with --families: only these levels (default: the trace as-is)")
    p.add_argument("--pins", default="", help="with --families: a pod list whose gpu_spec lists gpuspec draws from")
    p.add_argument("--reuse", action="store_true", help="with --families: reuse the runs already under --out")
    p.add_argument("--xp", choices=kernel.xp.XP_NAMES, default="numpy")
    a = p.parse_args()
    nodes = a.nodes or (a.folder and str(Path(a.folder) / "openb_node_list_gpu_node.csv"))
    pods = a.pods or (a.folder and str(Path(a.folder) / "openb_pod_list_default.csv"))
    if not nodes or not pods:
        p.error("give the trace folder, or --nodes and --pods")
    if a.families:
        return run_families(a, nodes, pods)
    argv = ["--trace-nodes", nodes, "--trace-pods", pods, "--protocol", "fgd", "--seeds", a.seeds or "42-51",
            "--out", a.out]
    if a.policies:
        argv += ["--policies", a.policies]
    if a.jobs:
        argv += ["--jobs", a.jobs]
    return simulate.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
