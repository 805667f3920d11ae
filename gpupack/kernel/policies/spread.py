"""``spread``: put the pod where the most GPU capacity stays free (least allocated).

    raw = 1 - u_after

``u_after`` is the node's GPU-weighted utilisation once the pod is placed
(:func:`~gpupack.kernel.usage.node_utilisation`). For latency-sensitive services that
prefer a quiet GPU; it fragments the cluster and defeats the autoscaler, so it is never the
default.
"""

from __future__ import annotations

from gpupack.kernel.usage import ScoreInput, node_utilisation
from gpupack.kernel.xp import Array


def score(inp: ScoreInput) -> Array:
    free, free_mem = inp.after()
    return 1.0 - node_utilisation(inp.before, free, free_mem, inp.xp)
