"""kube-scheduler's default scoring, with the device plugin's first-fit device choice.

    least     = floor(mean_r (100 * (1 - used_r)))        r = CPU, memory, GPU
    balanced  = floor(100 * (1 - std_r(used_r)))
    score     = least + balanced

``used_r`` is the node's used fraction of resource ``r`` once the pod is placed. The GPU is
an opaque node-level count (kube-scheduler sees how much of the extended resource is
allocated, never which device); NodeResourcesFit's default LeastAllocated and
BalancedAllocation plugins, both weight 1, with the GPU resource added to their lists as an
operator would. The filter is granted per-device truth (a pod never lands where its devices
cannot fit), which only flatters this baseline. Devices: the lowest-index ones with room.
"""

from __future__ import annotations

import numpy

from simulator.baselines import common


def score(used: list[common.HostArray]) -> common.HostArray:
    u = numpy.clip(numpy.stack(used), 0.0, 1.0)
    least = numpy.floor((100.0 * (1.0 - u)).mean(axis=0))
    balanced = numpy.floor(100.0 * (1.0 - u.std(axis=0)))
    out: common.HostArray = least + balanced
    return out


class Placer(common.NodeScoringPlacer):
    name = "kube-default"
    score = staticmethod(score)
