"""Which kinds of pods waited: the classification and the counts, on records written by hand."""

from __future__ import annotations

from simulator import kinds
from simulator.model import Task
from simulator.placements import Record

RESOURCES = ("nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "nvidia.com/gpu.shared", "amd.com/gpu", "gpu.intel.com/i915")


def task(resource: int = -1, count: int = 0, models: frozenset[int] = frozenset(), start: float = 0.0) -> Task:
    return Task("t", 1000, 1024, resource, count, models=models, start=start, end=start + 100)


def test_kind_of_every_shape() -> None:
    assert [kinds.kind_of(t, RESOURCES) for t in (
        task(), task(0, 1), task(0, 4), task(1, 1), task(2, 1), task(3, 2), task(4, 1), task(0, 8, frozenset({0})),
    )] == ["CPU only", "1 GPU", "2-8 GPUs", "MIG", "share", "AMD", "Intel", "pinned"]


def test_waited_counts_late_and_never_placed_pods() -> None:
    tasks = [task(0, 1, start=10.0), task(0, 1, start=10.0), task(2, 1, start=5.0), task()]
    records = [
        Record(0, "a", "n1", ((0, 1),), 1000, 1000, 1000, 1024, 10.0, 110.0),  # on arrival
        Record(1, "b", "n1", ((1, 1),), 1000, 1000, 1000, 1024, 40.0, 110.0),  # 30 s late
        Record(2, "c", "", (), 250, 0, 1000, 1024, 5.0, 105.0),  # never
        Record(3, "d", "n2", (), 0, 0, 1000, 1024, 0.0, 100.0),
    ]
    f = kinds.waiting_figures(tasks, records, RESOURCES)
    assert (f["pods:1 GPU"], f["waited:1 GPU"], f["never:1 GPU"]) == (2, 1, 0)
    assert (f["pods:share"], f["waited:share"], f["never:share"]) == (1, 1, 1)
    assert (f["pods:CPU only"], f["waited:CPU only"]) == (1, 0)
    table = kinds.table({"p": {"median": f}})
    assert table.splitlines()[0].split("  ")[1:] == ["1 GPU (2)", "share (1)", "CPU only (1)"]
    assert table.splitlines()[2].split() == ["p", "1", "(0)", "1", "(1)", "0", "(0)"]
