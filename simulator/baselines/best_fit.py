"""Best fit, as in the FGD paper's baselines: the node left with the least free resources.

    score = floor(100 * (1 - (free_cpu / cap_cpu + free_gpu / cap_gpu) / 2))

``free_r`` is what is left of resource ``r`` on the node once the pod is placed (GPU in
milli-GPUs over all the node's GPUs). Within the node a share goes to the GPU with the
least idle capacity that still fits it; whole GPUs to the lowest-index free ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy

from simulator.baselines import common
from simulator.model import IntArray, State, Task
from gpupack.kernel.usage import idle_capacity
from gpupack.kernel.xp import to_host

if TYPE_CHECKING:
    from simulator.placers import Choice, Workload


def score(used: list[common.HostArray]) -> common.HostArray:
    cpu, _, gpu = (numpy.clip(u, 0.0, 1.0) for u in used)
    return numpy.floor(100.0 * (1.0 - ((1.0 - cpu) + (1.0 - gpu)) / 2.0))


class Placer:
    name = "best-fit"

    def __init__(self, wl: Workload) -> None:
        self.wl = wl

    def choose(self, st: State, task: Task, rows: IntArray) -> Choice:
        if rows.shape[0] == 0:
            return None
        sub, units, feasible = common.view(st, task, rows)
        i = common.pick(score(common.fractions_after(st, task, rows, sub)), feasible)
        if i is None:
            return None
        if task.count == 1 and task.wants_gpu:
            idle = to_host(idle_capacity(sub, sub.free, sub.free_memory_mib, st.xp))[i]
            return int(rows[i]), common.tightest(units[i], idle)
        return int(rows[i]), common.first_fit(units[i], task.count)
