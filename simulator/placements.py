"""The per-pod placements file, and every headline figure recomputed from it alone.

One gzip CSV per (placer, seed): ``seq,pod,node,devices,requested_milli,taken_milli,
cpu_milli,memory_mib,placed_at,end``. ``node`` is empty for a pod that failed (fgd) or never
ran (replay); ``devices`` is ``col:units`` pairs joined by ``;`` (slot columns of the node's
row, in the cluster's column order). ``seq`` is the arrival index (fgd) or task index
(replay); ``placed_at`` is the arrival index (fgd) or the time it started (replay).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import math
from collections.abc import Sequence
from pathlib import Path

COLUMNS = ("seq", "pod", "node", "devices", "requested_milli", "taken_milli", "cpu_milli", "memory_mib",
           "placed_at", "end")


@dataclasses.dataclass(frozen=True)
class Record:
    seq: int
    pod: str
    node: str  # "" = failed / never placed
    devices: tuple[tuple[int, int], ...]
    requested: float  # milli-GPUs the pod asked for
    taken: float  # milli-GPUs it holds (0 when failed)
    cpu_milli: int
    memory_mib: int
    placed_at: float
    end: float


def write(path: Path, records: Sequence[Record]) -> None:
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in records:
            w.writerow([r.seq, r.pod, r.node, ";".join(f"{c}:{n}" for c, n in r.devices), f"{r.requested:g}",
                        f"{r.taken:.6f}", r.cpu_milli, r.memory_mib, f"{r.placed_at:g}",
                        "" if math.isinf(r.end) else f"{r.end:g}"])


def read(path: Path) -> list[Record]:
    out: list[Record] = []
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            devices = tuple((int(c), int(n)) for c, n in (d.split(":") for d in row["devices"].split(";") if d))
            out.append(Record(int(row["seq"]), row["pod"], row["node"], devices, float(row["requested_milli"]),
                              float(row["taken_milli"]), int(row["cpu_milli"]), int(row["memory_mib"]),
                              float(row["placed_at"]), float(row["end"]) if row["end"] else math.inf))
    return out


def fgd_figures(records: Sequence[Record], capacity_milli: float) -> dict[str, float]:
    """Unallocated GPU % and failures when the arrived request first reaches capacity."""
    arrived = allocated = 0.0
    failed = 0
    failed_milli = 0.0
    for r in sorted(records, key=lambda r: r.seq):
        arrived += r.requested
        allocated += r.taken
        if not r.node:
            failed += 1
            failed_milli += r.requested
        if arrived >= capacity_milli:
            break
    return {
        "unallocated_pct": 100.0 - 100.0 * allocated / capacity_milli,
        "failed_tasks": float(failed),
        "failed_gpu_pct": 100.0 * failed_milli / capacity_milli,
    }


def allocated_at(records: Sequence[Record], capacity_milli: float, times: Sequence[float]) -> list[float]:
    """Replay: allocated GPU % at each time, from the pods running then."""
    return [100.0 * sum(r.taken for r in records if r.node and r.placed_at <= t < r.end) / capacity_milli
            for t in times]
