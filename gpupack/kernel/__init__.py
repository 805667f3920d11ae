"""The placement kernel: pure functions over ``(nodes x slots)`` arrays, for NumPy or CuPy.

No I/O, no Kubernetes objects, no HTTP or gRPC. The extender, the device plugin's own
choice and the simulator all call these same functions:

- :class:`~gpupack.kernel.slots.Slots`: the arrays, one row per node, one column per
  schedulable device (a whole GPU, or a MIG instance), each advertised as one resource with
  ``capacity`` shares;
- :func:`~gpupack.kernel.evaluate.evaluate`: feasibility, reason and 0..10 score of one
  request on many nodes at once;
- :func:`~gpupack.kernel.choose.choose_devices`: the concrete slots for the chosen node;
- :data:`~gpupack.kernel.policies.POLICIES`: scoring policies by name.
"""

from gpupack.kernel.node_sums import NodeSumsMemo
from gpupack.kernel.choose import choose_devices
from gpupack.kernel.evaluate import Verdicts, evaluate, idle_and_fragmented
from gpupack.kernel.levels import best_first, lead_node, named, to_levels, top_band, with_lead
from gpupack.kernel.policies import DEFAULT_POLICY, POLICIES, Policy, get_policy
from gpupack.kernel.slots import Mix, Reason, Request, Slots
from gpupack.kernel.xp import namespace

__all__ = [
    "NodeSumsMemo",
    "DEFAULT_POLICY",
    "POLICIES",
    "Mix",
    "Policy",
    "Reason",
    "Request",
    "Slots",
    "Verdicts",
    "best_first",
    "choose_devices",
    "evaluate",
    "get_policy",
    "idle_and_fragmented",
    "lead_node",
    "named",
    "namespace",
    "to_levels",
    "top_band",
    "with_lead",
]
