"""kube-scheduler's MostAllocated scoring strategy, with first-fit devices.

    score = floor(mean_r (100 * used_r))        r = CPU, memory, GPU (opaque node-level count)

``used_r`` is the node's used fraction once the pod is placed: the fullest node wins. The
bin-packing setting operators reach for today; it cannot tell a GPU that fits from one that
only adds up on the node, so its device choice is the plugin's first fit.
"""

from __future__ import annotations

import numpy

from simulator.baselines import common


def score(used: list[common.HostArray]) -> common.HostArray:
    out: common.HostArray = numpy.floor((100.0 * numpy.clip(numpy.stack(used), 0.0, 1.0)).mean(axis=0))
    return out


class Placer(common.NodeScoringPlacer):
    name = "most-allocated"
    score = staticmethod(score)
