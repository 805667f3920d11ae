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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from simulator import example, headline, kinds, placements, placers, progress, protocols, report, trace, variants
from simulator.model import Cluster, Task
from gpupack import kernel

DESCRIPTION = "Replay a workload against a cluster with gpupack's kernel and the baselines, side by side."

# Set in the parent before the pool forks; workers read it (fork start method, no pickling of the trace).
_JOB: dict[str, Any] = {}


#: Seeds one run may take: each is a full run per policy.
MAX_SEEDS = 1000
#: Worker processes: more than any machine's cores, fewer than the OS allows.
MAX_JOBS = 1024
#: ``--scale``: 1000 x the example's 34 nodes and ~1,900 pods, about the size of the largest trace allowed.
MAX_SCALE = 1000
#: Pod decisions one fgd run may need to reach its 130 % (a cluster far larger than its tasks asks millions of clones).
MAX_DECISIONS = 10_000_000


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def parse_seeds(text: str) -> list[int]:
    """``42-51`` or ``42,43,50`` -> seeds, each once, from 0 to 2**32-1, at most :data:`MAX_SEEDS`;
    ``argparse.ArgumentTypeError`` on anything else."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise argparse.ArgumentTypeError(f"{part} is an empty range")
                if len(out) + b - a + 1 > MAX_SEEDS:
                    raise argparse.ArgumentTypeError(f"{text!r} has more than {MAX_SEEDS:,} seeds")
                out.extend(range(a, b + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a seed: give e.g. 42, 42-51 or 1,5,9") from None
    if not out:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}")
    if len(out) > MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"{text!r} has more than {MAX_SEEDS:,} seeds")
    seen: set[int] = set()
    for x in out:
        if not 0 <= x < 2**32:
            raise argparse.ArgumentTypeError(f"seed {x} is out of range 0..{2**32 - 1}")
        if x in seen:
            raise argparse.ArgumentTypeError(f"seed {x} given more than once")
        seen.add(x)
    return out


def _whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range {low}..{high:,}")
        return value

    return parse


def _policies(text: str) -> list[str]:
    """An argparse ``type``: known placer names, comma-separated, each once."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = placers.registry()
    bad = [n for n in names if n not in known]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown policy {bad[0]!r}; choose from {', '.join(known)}")
    if not names:
        raise argparse.ArgumentTypeError(f"no policy names in {text!r}")
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise argparse.ArgumentTypeError(f"{twice[0]} given more than once")
    return names


def parser() -> argparse.ArgumentParser:
    cpus = os.cpu_count() or 1
    p = _Parser(prog="gpupack simulate", description=DESCRIPTION)
    p.add_argument("--trace-nodes", metavar="FILE", help="openb_node_list_*.csv (default: the built-in example)")
    p.add_argument("--trace-pods", metavar="FILE", help="openb_pod_list_*.csv")
    p.add_argument("--protocol", choices=("fgd", "replay"),
                   help="fgd: the FGD paper's (default with a trace); replay: with departures (default for the example)")
    p.add_argument("--policies", metavar="A,B", type=_policies,
                   help=f"placers to compare, comma-separated, from: {', '.join(placers.registry())} "
                        "(default: every baseline and gpupack policy as deployed)")
    p.add_argument("--seeds", metavar="SEEDS", type=parse_seeds,
                   help=f"e.g. 42-51 or 1,5,9; 0 to 2**32-1, at most {MAX_SEEDS:,} (default: 42-51 for fgd, 42 for replay)")
    p.add_argument("--out", metavar="DIR", default="sim-out", help="where the summary, plot and placements go")
    p.add_argument("--xp", choices=kernel.xp.XP_NAMES, default="numpy", help="array namespace for the kernel")
    p.add_argument("--jobs", metavar="N", type=_whole(1, MAX_JOBS), default=cpus,
                   help=f"worker processes, 1 to {MAX_JOBS:,} (default: the CPU count, {cpus} here)")
    p.add_argument("--scale", metavar="N", type=_whole(1, MAX_SCALE), default=1,
                   help=f"built-in example: multiply nodes and services, 1 to {MAX_SCALE:,}")
    p.add_argument("--max-pods", metavar="N", type=_whole(0, trace.MAX_PODS), default=0,
                   help="keep only the first N pods (0: all), for quick or huge runs")
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


def _fgd_decisions(cluster: Cluster, tasks: Sequence[Task]) -> int:
    """About how many pods the fgd protocol's sequence holds: the tasks, then clones of an
    average task until the request reaches ``INFLATE`` x capacity; 0 when no task asks a GPU."""
    total = sum(t.gpu_milli for t in tasks)
    if total == 0:
        return 0
    missing = max(0.0, protocols.INFLATE * cluster.gpu_milli - total)
    return len(tasks) + int(missing * len(tasks) / total)


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # --help (0) or a bad flag (2, its one line printed): a status, as below
        return stop.code if isinstance(stop.code, int) else 2
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
        seeds = args.seeds or parse_seeds("42-51" if protocol == "fgd" else "42")
        names = args.policies or placers.default_names()
        placers.make(names, placers.workload(tasks[:1]))  # refuse unknown names before any work
        if protocol == "fgd":
            decisions = _fgd_decisions(cluster, tasks)
            if decisions == 0:
                raise ValueError(f"{source}: no pod asks for a GPU; the fgd protocol fills GPUs (try --protocol replay)")
            if decisions > MAX_DECISIONS:
                raise ValueError(f"{source}: the fgd protocol would clone about {decisions:,} pods to reach "
                                 f"{protocols.INFLATE:.0%} of {cluster.gpu_milli / 1000:,.0f} GPUs, "
                                 f"more than {MAX_DECISIONS:,}")
        # the column of published figures only on the very trace they were measured on
        published = (protocol == "fgd" and bool(args.trace_nodes)
                     and trace.fingerprint(cluster, tasks) == report.PUBLISHED_TRACE)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        pdir = None if args.no_placements else out / "placements"
        if pdir is not None:
            pdir.mkdir(exist_ok=True)
    except OSError as err:
        print(f"gpupack simulate: {err.filename or args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    except ValueError as err:  # trace.TraceError included
        print(f"gpupack simulate: {err}", file=sys.stderr)
        return 2
    wl = placers.workload(tasks)
    jobs = [(n, s) for n in names for s in seeds]
    per_job = (len(protocols.fgd_sequence(tasks, cluster.gpu_milli, seeds[0])) if protocol == "fgd" else len(tasks))
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("q", 0)
    _JOB.update(cluster=cluster, tasks=tasks, workload=wl, xp=args.xp, protocol=protocol,
                placements_dir=None if pdir is None else str(pdir), counter=counter)
    mode = {"auto": None, "always": "bar", "never": "off"}[args.progress]
    bar = progress.Progress(per_job * len(jobs), what="pod decisions", mode=mode)
    workers = 1 if args.jobs <= 1 or len(jobs) == 1 else min(args.jobs, len(jobs))
    seeds_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}..{seeds[-1]}"
    print(f"{source}: {cluster.nodes} nodes, {cluster.gpu_milli / 1000:.0f} GPUs, {len(tasks)} pods; "
          f"protocol {protocol}, {seeds_text}, {_plural(len(names), 'policy', 'policies')}, "
          f"{_plural(workers, 'worker process', 'worker processes')}",
          file=sys.stderr)
    results: list[protocols.RunResult] = []
    if workers == 1:
        for job in jobs:
            results.append(_run(job))
            bar.update(counter.value)
    else:
        with ctx.Pool(workers) as pool:
            pending = [pool.apply_async(_run, (job,)) for job in jobs]
            while not all(p.ready() for p in pending):
                bar.update(counter.value)
                time.sleep(0.2)
            results = [p.get() for p in pending]
    bar.close()
    summary = report.summarise(results)
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
