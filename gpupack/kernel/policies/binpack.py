"""``binpack``: fill partly used GPUs first, then partly used nodes; keep empty nodes empty.

    raw = 2 * g + u_after

``g`` is the fraction of the request's units placed on slots already partly in use
(0..1), ``u_after`` the node's GPU-weighted utilisation once the pod is placed
(:func:`~gpupack.kernel.usage.node_utilisation`, 0..1). The factor 2 makes ``g``
dominate: a share that fits beside others on a used GPU beats opening a fresh GPU on a
fuller node. An empty node has ``g = 0`` and the lowest ``u_after``, so it comes last.
"""

from __future__ import annotations

from gpupack.kernel.usage import ScoreInput, node_utilisation
from gpupack.kernel.xp import Array, row_sum


def score(inp: ScoreInput) -> Array:
    xp, s = inp.xp, inp.before
    partly = (s.free < s.capacity) | (s.free_memory_mib < s.memory_mib)
    taken = row_sum(inp.take, xp)
    g = row_sum(inp.take * partly, xp) / xp.maximum(taken, 1)
    free, free_mem = inp.after()
    return 2.0 * g + node_utilisation(s, free, free_mem, xp)
