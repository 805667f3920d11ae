"""The replay run in three lines: gpupack's default policy, the best baseline on each figure,
and kube-default (what Kubernetes does alone). Pure: from the summary only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: (figure, label, higher is better, format)
FIGURES = (
    ("placed", "placed", True, "{:.0f}"),
    ("never_placed", "never placed", False, "{:.0f}"),
    ("waited", "waited", False, "{:.0f}"),
    ("waited_gpus_idle", "waited with GPUs idle", False, "{:.0f}"),
    ("peak_pending", "peak pending", False, "{:.0f}"),
    ("mean_idle_pct", "GPU idle", False, "{:.2f} %"),
    ("mean_free_nodes", "nodes free", True, "{:.0f}"),
)


def _describe(m: Mapping[str, float]) -> str:
    return ", ".join(f"{label} {fmt.format(m[key])}" for key, label, _, fmt in FIGURES if key in m)


def lines(summary: Mapping[str, Mapping[str, Any]], default: str, baselines: tuple[str, ...]) -> list[str]:
    """Up to three lines; a line is left out when its policies were not run."""
    out: list[str] = []
    if default in summary:
        out.append(f"{default} (gpupack's default): {_describe(summary[default]['median'])}")
    ran = [b for b in baselines if b in summary]
    if ran:
        best = []
        for key, label, higher, fmt in FIGURES:
            values = {b: summary[b]["median"][key] for b in ran if key in summary[b]["median"]}
            if not values:
                continue
            top = max(values.values()) if higher else min(values.values())
            who = ", ".join(b for b, v in values.items() if v == top)
            best.append(f"{label} {fmt.format(top)} ({who})")
        out.append("best baseline on each figure: " + "; ".join(best))
    if "kube-default" in summary and "kube-default" != default:
        out.append(f"kube-default (Kubernetes alone): {_describe(summary['kube-default']['median'])}")
    return out
