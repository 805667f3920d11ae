"""The replay run's three-line headline, from a summary written by hand."""

from __future__ import annotations

from simulator import headline


def entry(placed: float, never: float, peak: float, idle: float, free: float) -> dict[str, object]:
    return {"median": {"placed": placed, "never_placed": never, "peak_pending": peak,
                       "mean_idle_pct": idle, "mean_free_nodes": free}}


def test_the_default_the_best_baseline_per_figure_and_kube_default() -> None:
    summary = {
        "kube-default": entry(90, 10, 7, 44.0, 1),
        "best-fit": entry(95, 5, 9, 37.5, 9),
        "fgd": entry(96, 4, 9, 38.0, 7),
        "gpupack-fragmentation": entry(96, 4, 6, 38.0, 8),
    }
    got = headline.lines(summary, "gpupack-fragmentation", ("kube-default", "best-fit", "fgd", "random"))
    assert got == [
        "gpupack-fragmentation (gpupack's default): placed 96, never placed 4, peak pending 6, GPU idle 38.00 %, nodes free 8",
        "best baseline on each figure: placed 96 (fgd); never placed 4 (fgd); peak pending 7 (kube-default); "
        "GPU idle 37.50 % (best-fit); nodes free 9 (best-fit)",
        "kube-default (Kubernetes alone): placed 90, never placed 10, peak pending 7, GPU idle 44.00 %, nodes free 1",
    ]


def test_policies_not_run_leave_their_lines_out() -> None:
    assert headline.lines({"gpupack-binpack": entry(1, 0, 0, 1.0, 0)}, "gpupack-fragmentation", ("fgd",)) == []
