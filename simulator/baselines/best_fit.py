"""Best fit, as in the FGD paper's baselines: the node left with the least free resources.

    score = floor(100 * (1 - (free_cpu / cap_cpu + free_gpu / cap_gpu) / 2))

``free_r`` is what is left of resource ``r`` on the node once the pod is placed (GPU in
milli-GPUs over all the node's GPUs). Within the node a share goes to the GPU with the
least idle capacity that still fits it; whole GPUs to the lowest-index free ones.
"""

from __future__ import annotations

import numpy

from simulator.baselines import common
from simulator.model import Devices, State, Task
from gpupack.kernel import Slots
from gpupack.kernel.usage import idle_capacity
from gpupack.kernel.xp import to_host


def score(used: list[common.HostArray]) -> common.HostArray:
    cpu, _, gpu = (numpy.clip(u, 0.0, 1.0) for u in used)
    return numpy.floor(100.0 * (1.0 - ((1.0 - cpu) + (1.0 - gpu)) / 2.0))


class Placer(common.NodeScoringPlacer):
    name = "best-fit"
    score = staticmethod(score)

    def devices(self, st: State, task: Task, sub: Slots, units: common.HostArray, i: int) -> Devices:
        """One unit: the slot with the least idle capacity that fits; more: first fit."""
        if task.count == 1 and task.wants_gpu:
            idle = to_host(idle_capacity(sub, sub.free, sub.free_memory_mib, st.xp))[i]
            return common.tightest(units[i], idle)
        return common.first_fit(units[i], task.count)
