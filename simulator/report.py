"""What a run shows: the terminal table, the JSON summary, the PNG plot."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simulator.protocols import RunResult

#: The policies the replay plot draws (kube-default, the two best simple rules, gpupack's default).
PLOTTED = ("kube-default", "best-fit", "fgd", "gpupack-fragmentation")

#: FGD paper, unallocated GPU % at 100 % arrived, median of 10 seeds, on the default trace.
PUBLISHED = {"random": 13.75, "best-fit": 7.09, "fgd": 4.77}
#: :func:`simulator.trace.fingerprint` of that trace (``openb_node_list_gpu_node.csv`` +
#: ``openb_pod_list_default.csv``, 1,213 nodes, 8,152 pods) as loaded, tasks untouched: the
#: column of :data:`PUBLISHED` figures is shown on this trace only, whatever its files are called.
PUBLISHED_TRACE = "47e948756aa5e48fca098e661f780eaa9e5a93555a1033d016e5f8296105c0d3"

COLUMNS = {
    "fgd": (("unallocated_pct", "unalloc %"), ("fragmented_pct", "frag %"), ("failed_tasks", "failed"),
            ("failed_gpu_pct", "failed GPU %"), ("allocated_end_pct", "alloc@130 %")),
    "replay": (("placed", "placed"), ("never_placed", "never placed"), ("waited", "waited"),
               ("waited_gpus_idle", "waited, GPUs idle"), ("peak_pending", "peak pending"),
               ("mean_idle_pct", "GPU idle %"), ("mean_fragmented_pct", "frag %"), ("mean_free_nodes", "free nodes")),
}


def summarise(results: Sequence[RunResult]) -> dict[str, dict[str, Any]]:
    """Per placer: the median of each figure over seeds, the per-seed figures, the time."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        e = out.setdefault(r.placer, {"median": {}, "seeds": {}, "seconds": 0.0})
        e["seeds"][str(r.seed)] = r.figures
        e["seconds"] += r.seconds
    for e in out.values():
        keys = next(iter(e["seeds"].values())).keys()
        e["median"] = {k: statistics.median(f[k] for f in e["seeds"].values()) for k in keys}
    return out


def table(protocol: str, summary: Mapping[str, Mapping[str, Any]], published: bool) -> str:
    cols = COLUMNS[protocol]
    head = ["policy"] + [c[1] for c in cols] + (["published"] if published else []) + ["seconds"]
    rows = [head]
    for name, e in summary.items():
        m = e["median"]
        row = [name] + [f"{m[k]:.2f}" if "pct" in k else f"{m[k]:.0f}" for k, _ in cols]
        if published:
            row.append(f"{PUBLISHED[name]:.2f}" if name in PUBLISHED else "")
        row.append(f"{e['seconds']:.1f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, meta: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    path.write_text(json.dumps({**meta, "placers": summary}, indent=2, sort_keys=False) + "\n")


def plot(path: Path, protocol: str, results: Sequence[RunResult], title: str) -> bool:
    """The PNG; ``False`` (and no file) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    first: dict[str, RunResult] = {}
    for r in results:
        first.setdefault(r.placer, r)
    if protocol == "fgd":
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, r in first.items():
            ax.plot(r.curves["arrived_pct"], r.curves["allocated_pct"], label=name, lw=1.2)
        ax.plot([0, 130], [0, 130], color="grey", lw=0.6, ls=":")
        ax.axvline(100, color="grey", lw=0.6)
        ax.set_xlabel("arrived GPU request, % of cluster GPU capacity")
        ax.set_ylabel("allocated GPU, % of capacity")
        ax.set_xlim(60, 130)
        ax.set_ylim(60, 100)
        ax.legend(fontsize=7)
        axes = [ax]
    else:
        # four lines a person tells apart at a glance; the table has every policy
        shown = [n for n in PLOTTED if n in first] or list(first)[:4]
        keys = (("idle_pct", "GPU capacity idle, %"), ("free_nodes", "nodes entirely free"), ("pending", "pods pending"))
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharex=True)
        for name in shown:
            r = first[name]
            for ax, (key, _) in zip(axes, keys):
                ax.plot(r.curves["time_h"], r.curves[key], label=name, lw=1.6 if name.startswith("gpupack") else 1.1)
        for ax, (_, label) in zip(axes, keys):
            ax.set_xlabel("hours")
            ax.set_title(label, fontsize=9)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(shown), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07 if protocol == "replay" else 0, 1, 1))  # room for the legend below
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
