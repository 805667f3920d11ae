"""``gpupack simulate``: parse the flags, run every (placer, seed) pair, write the outputs.

Runs go to worker processes (``--jobs``, default: the CPU count), each writing its own
placements file; the parent draws the progress bar from a shared counter of tasks done.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulator import example, headline, kinds, placements, placers, progress, protocols, report, trace, variants
from simulator.model import Cluster, Task
from gpupack import kernel

DESCRIPTION = "Replay a workload against a cluster with gpupack's kernel and the baselines, side by side."

# Set in the parent before the pool forks; workers read it (fork start method, no pickling of the trace).
_JOB: dict[str, Any] = {}


def parse_seeds(text: str) -> list[int]:
    """``42-51`` or ``42,43,50`` -> seeds; ``ValueError`` on anything else."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    if not out:
        raise ValueError(f"no seeds in {text!r}")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpupack simulate", description=DESCRIPTION)
    p.add_argument("--trace-nodes", metavar="FILE", help="openb_node_list_*.csv (default: the built-in example)")
    p.add_argument("--trace-pods", metavar="FILE", help="openb_pod_list_*.csv")
    p.add_argument("--protocol", choices=("fgd", "replay"),
                   help="fgd: the FGD paper's (default with a trace); replay: with departures (default for the example)")
    p.add_argument("--policies", metavar="A,B", help="placers to compare (default: every baseline and gpupack policy)")
    p.add_argument("--seeds", metavar="SEEDS", help="e.g. 42-51 (default: 42-51 for fgd, 42 for replay)")
    p.add_argument("--out", metavar="DIR", default="sim-out", help="where the summary, plot and placements go")
    p.add_argument("--xp", choices=kernel.xp.XP_NAMES, default="numpy", help="array namespace for the kernel")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--scale", type=int, default=1, help="built-in example: multiply nodes and services")
    p.add_argument("--max-pods", type=int, default=0, help="keep only the first N pods (0: all), for quick or huge runs")
    p.add_argument("--variant", choices=tuple(variants.VARIANTS), default="as-is",
                   help="with a trace: rewrite its tasks into another shape of workload (simulator/variants.py)")
    p.add_argument("--no-placements", action="store_true", help="skip the per-pod placements files")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="auto: a bar in a terminal, a line every few seconds otherwise; always: the bar; never: silent")
    return p


def _run(args: tuple[str, int]) -> protocols.RunResult:
    name, seed = args
    cluster: Cluster = _JOB["cluster"]
    tasks: list[Task] = _JOB["tasks"]
    wl = dataclasses.replace(_JOB["workload"], seed=seed)
    xp = kernel.namespace(_JOB["xp"])
    placer = placers.make([name], wl)[0]
    counter = _JOB.get("counter")

    def tick(n: int) -> None:
        if counter is not None:
            with counter.get_lock():
                counter.value += n

    run = protocols.run_fgd if _JOB["protocol"] == "fgd" else protocols.run_replay
    t0 = time.perf_counter()
    result = run(cluster, tasks, placer, wl, seed, xp, tick)
    result.seconds = time.perf_counter() - t0
    if _JOB["placements_dir"] is not None:
        placements.write(Path(_JOB["placements_dir"]) / f"{name}_seed{seed}.csv.gz", result.records)
    result.records = []
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    started = time.perf_counter()
    try:
        kernel.namespace(args.xp)
        if bool(args.trace_nodes) != bool(args.trace_pods):
            raise ValueError("--trace-nodes and --trace-pods go together")
        if args.trace_nodes:
            cluster, tasks = trace.load(args.trace_nodes, args.trace_pods)
            source = f"trace {Path(args.trace_nodes).name} + {Path(args.trace_pods).name}"
            if args.variant != "as-is":
                tasks = variants.apply(args.variant, tasks, cluster)
                source += f", variant {args.variant}"
        elif args.variant != "as-is":
            raise ValueError("--variant rewrites a trace: give --trace-nodes and --trace-pods")
        else:
            cluster, tasks = example.fleet(args.scale), example.workload(scale=args.scale)
            source = f"built-in example (scale {args.scale})"
        if args.max_pods > 0:
            tasks = tasks[: args.max_pods]
        protocol = args.protocol or ("fgd" if args.trace_nodes else "replay")
        seeds = parse_seeds(args.seeds or ("42-51" if protocol == "fgd" else "42"))
        names = [n.strip() for n in args.policies.split(",")] if args.policies else placers.default_names()
        placers.make(names, placers.workload(tasks[:1]))  # refuse unknown names before any work
    except (ValueError, OSError, trace.TraceError) as err:
        print(f"gpupack simulate: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pdir = None if args.no_placements else out / "placements"
    if pdir is not None:
        pdir.mkdir(exist_ok=True)
    wl = placers.workload(tasks)
    jobs = [(n, s) for n in names for s in seeds]
    per_job = (len(protocols.fgd_sequence(tasks, cluster.gpu_milli, seeds[0])) if protocol == "fgd" else len(tasks))
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("q", 0)
    _JOB.update(cluster=cluster, tasks=tasks, workload=wl, xp=args.xp, protocol=protocol,
                placements_dir=None if pdir is None else str(pdir), counter=counter)
    mode = {"auto": None, "always": "bar", "never": "off"}[args.progress]
    bar = progress.Progress(per_job * len(jobs), what="pod decisions", mode=mode)
    print(f"{source}: {cluster.nodes} nodes, {cluster.gpu_milli / 1000:.0f} GPUs, {len(tasks)} pods; "
          f"protocol {protocol}, seeds {seeds[0]}..{seeds[-1]}, {len(names)} policies, {min(args.jobs, len(jobs))} jobs",
          file=sys.stderr)
    results: list[protocols.RunResult] = []
    if args.jobs <= 1 or len(jobs) == 1:
        for job in jobs:
            results.append(_run(job))
            bar.update(counter.value)
    else:
        with ctx.Pool(min(args.jobs, len(jobs))) as pool:
            pending = [pool.apply_async(_run, (job,)) for job in jobs]
            while not all(p.ready() for p in pending):
                bar.update(counter.value)
                time.sleep(0.2)
            results = [p.get() for p in pending]
    bar.close()
    summary = report.summarise(results)
    published = protocol == "fgd" and bool(args.trace_nodes)
    text = report.table(protocol, summary, published)
    if protocol == "replay":
        from simulator import baselines

        text += "\n\n" + kinds.table(summary)
        said = headline.lines(summary, f"gpupack-{kernel.DEFAULT_POLICY}", tuple(baselines.BASELINES))
        text += ("\n\n" + "\n".join(said)) if said else ""
    print(text)
    meta = {
        "protocol": protocol, "input": source, "nodes": cluster.nodes, "gpu_capacity_milli": cluster.gpu_milli,
        "pods": len(tasks), "seeds": seeds, "xp": args.xp,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    report.write_json(out / "summary.json", meta, summary)
    (out / "table.txt").write_text(text + "\n")
    title = f"{source}, protocol {protocol}, seed {seeds[0]}"
    plotted = report.plot(out / "plot.png", protocol, results, title)
    print(f"wrote {out / 'summary.json'}, {out / 'table.txt'}" + (f", {out / 'plot.png'}" if plotted else "")
          + (f", {pdir}/" if pdir else "") + f" in {meta['wall_seconds']:.1f}s", file=sys.stderr)
    return 0
