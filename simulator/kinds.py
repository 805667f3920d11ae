"""Which kinds of pods a policy kept waiting: whole and multi-GPU, MIG slices, shares with
memory hints, pods pinned to GPU models, AMD, Intel, CPU-only. The figures behind the
demo's second table, from one replay run's records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from simulator.model import Task
from simulator.placements import Record

#: The kinds, in the order the table shows them.
KINDS = ("1 GPU", "2-8 GPUs", "MIG", "share", "pinned", "AMD", "Intel", "CPU only")


def kind_of(task: Task, resources: Sequence[str]) -> str:
    """The kind of ``task`` (its GPU model pin first: pinned pods are the hard case)."""
    if not task.wants_gpu:
        return "CPU only"
    if task.models:
        return "pinned"
    name = resources[task.resource]
    if name.startswith("amd.com/"):
        return "AMD"
    if name.startswith("gpu.intel.com/"):
        return "Intel"
    if "/mig-" in name:
        return "MIG"
    if name.endswith(".shared"):
        return "share"
    return "1 GPU" if task.count == 1 else "2-8 GPUs"


def waiting_figures(tasks: Sequence[Task], records: Sequence[Record], resources: Sequence[str]) -> dict[str, float]:
    """Per kind: ``pods:<kind>``, ``waited:<kind>`` (placed later than it arrived, or never)
    and ``never:<kind>``, and ``waited`` over all kinds, as figures of a run (floats, so seeds
    take medians)."""
    out = {f"{what}:{k}": 0.0 for k in KINDS for what in ("pods", "waited", "never")}
    out["waited"] = 0.0
    for rec in records:
        task = tasks[rec.seq]
        k = kind_of(task, resources)
        out[f"pods:{k}"] += 1
        if not rec.node:
            out[f"never:{k}"] += 1
            out[f"waited:{k}"] += 1
        elif rec.placed_at > task.start:
            out[f"waited:{k}"] += 1
    out["waited"] = sum(out[f"waited:{k}"] for k in KINDS)
    return out


def table(summary: Mapping[str, Mapping[str, object]]) -> str:
    """Policies down, kinds across: pods that waited, and in brackets those never placed.
    Kinds no pod of the workload has are left out."""
    first = next(iter(summary.values()), None)
    if first is None:
        return ""
    med0 = first["median"]
    assert isinstance(med0, Mapping)
    kinds = [k for k in KINDS if med0.get(f"pods:{k}", 0) > 0]
    head = ["pods that waited (never placed)"] + [f"{k} ({med0[f'pods:{k}']:.0f})" for k in kinds]
    rows = [head]
    for name, e in summary.items():
        m = e["median"]
        assert isinstance(m, Mapping)
        rows.append([name] + [f"{m[f'waited:{k}']:.0f} ({m[f'never:{k}']:.0f})" for k in kinds])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
