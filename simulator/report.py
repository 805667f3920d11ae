"""What a run shows: the terminal table, the JSON summary, the PNG plot, the progress bar."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from simulator.protocols import RunResult

#: FGD paper, unallocated GPU % at 100 % arrived, median of 10 seeds, on the default trace.
PUBLISHED = {"random": 13.75, "best-fit": 7.09, "fgd": 4.77}

COLUMNS = {
    "fgd": (("unallocated_pct", "unalloc %"), ("fragmented_pct", "frag %"), ("failed_tasks", "failed"),
            ("failed_gpu_pct", "failed GPU %"), ("allocated_end_pct", "alloc@130 %")),
    "replay": (("mean_idle_pct", "idle %"), ("mean_fragmented_pct", "frag %"), ("mean_free_nodes", "free nodes"),
               ("peak_pending", "peak pending"), ("never_placed", "never placed")),
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
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for name, r in first.items():
            line, = axes[0].plot(r.curves["time_h"], r.curves["idle_pct"], label=name, lw=1.2)
            axes[0].plot(r.curves["time_h"], r.curves["fragmented_pct"], lw=0.8, ls="--", color=line.get_color())
            axes[1].plot(r.curves["time_h"], r.curves["free_nodes"], label=name, lw=1.2)
        axes[0].set_xlabel("hours")
        axes[0].set_ylabel("idle GPU % (solid), fragmented % (dashed)")
        axes[1].set_xlabel("hours")
        axes[1].set_ylabel("nodes entirely free")
        axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


class Progress:
    """A one-line bar on stderr, redrawn at most a few times a second; silent when not a tty
    unless forced."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, enabled: bool | None = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        self.done = done
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.25):
            return
        self._last = now
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        self.stream.write(f"\r[{bar}] {100 * frac:5.1f}%  {elapsed:5.0f}s elapsed, ~{eta:4.0f}s left ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.update(self.total, force=True)
            self.stream.write("\n")
            self.stream.flush()
