"""Random: a uniformly random node among those that fit (seeded), first-fit devices.

    node ~ Uniform(feasible nodes)

The floor any rule should beat; the FGD paper's "Random" baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy

from simulator.baselines import common
from simulator.model import IntArray, State, Task

if TYPE_CHECKING:
    from simulator.placers import Choice, Workload


class Placer:
    name = "random"

    def __init__(self, wl: Workload) -> None:
        self.wl = wl
        self.rng = numpy.random.default_rng(wl.seed)

    def choose(self, st: State, task: Task, rows: IntArray) -> Choice:
        if rows.shape[0] == 0:
            return None
        _, units, feasible = common.view(st, task, rows)
        ok = numpy.nonzero(feasible)[0]
        if ok.shape[0] == 0:
            return None
        i = int(ok[int(self.rng.integers(ok.shape[0]))])
        return int(rows[i]), common.first_fit(units[i], task.count)
