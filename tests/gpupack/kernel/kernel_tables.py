"""Compact builders of kernel arrays for table-driven tests."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from gpupack.kernel.slots import Slots, empty_slots


@dataclasses.dataclass(frozen=True)
class S:
    """One slot: resource id, shares, free shares, memory, free memory (None: proportional)."""

    resource: int = 0
    cap: int = 1
    free: int = 1
    mem: int = 40960
    free_mem: int | None = None
    healthy: bool = True
    weight: float = 1.0
    nvgroup: int = -1
    numa: int = 0
    model: int = 0


def slots(rows: list[list[S]], xp: Any = np, cpu: list[int] | None = None, mem: list[int] | None = None) -> Slots:
    """Arrays for ``rows``; ``cpu``/``mem``: each node's free CPU (millicores) and memory (MiB),
    untracked (UNLIMITED) when not given."""
    width = max([len(r) for r in rows] + [1])
    s = empty_slots(np, len(rows), width)
    if cpu is not None:
        s.node_cpu_free[:] = cpu
    if mem is not None:
        s.node_memory_free[:] = mem
    for i, row in enumerate(rows):
        for j, x in enumerate(row):
            s.resource[i, j] = x.resource
            s.capacity[i, j] = x.cap
            s.free[i, j] = x.free
            s.memory_mib[i, j] = x.mem
            s.free_memory_mib[i, j] = x.free_mem if x.free_mem is not None else x.mem * x.free // max(x.cap, 1)
            s.healthy[i, j] = x.healthy
            s.weight[i, j] = x.weight
            s.gpu[i, j] = j
            s.numa[i, j] = x.numa
            s.nvgroup[i, j] = x.nvgroup
            s.model[i, j] = x.model
    if xp is np:
        return s
    return Slots(**{f.name: xp.asarray(getattr(s, f.name)) for f in dataclasses.fields(s)})


FREE = S()
USED = S(free=0)
