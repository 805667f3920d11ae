"""The placement kernel: pure functions over ``(nodes x slots)`` arrays, for NumPy or CuPy.

No I/O, no Kubernetes objects, no HTTP or gRPC. The extender, the device plugin's own
choice and the simulator all call these same functions:

- :class:`~scheduler_ext.kernel.slots.Slots`: the arrays, one row per node, one column per
  schedulable device (a whole GPU, or a MIG instance), each advertised as one resource with
  ``capacity`` shares;
- :func:`~scheduler_ext.kernel.evaluate.evaluate`: feasibility, reason and 0..10 score of one
  request on many nodes at once;
- :func:`~scheduler_ext.kernel.choose.choose_devices`: the concrete slots for the chosen node;
- :data:`~scheduler_ext.kernel.policies.POLICIES`: scoring policies by name.
"""

from scheduler_ext.kernel.before import BeforeMemo
from scheduler_ext.kernel.choose import choose_devices
from scheduler_ext.kernel.evaluate import Verdicts, evaluate, idle_and_fragmented
from scheduler_ext.kernel.levels import named, to_levels, with_lead
from scheduler_ext.kernel.policies import DEFAULT_POLICY, POLICIES, Policy, get_policy
from scheduler_ext.kernel.slots import Mix, Reason, Request, Slots
from scheduler_ext.kernel.xp import namespace

__all__ = [
    "BeforeMemo",
    "DEFAULT_POLICY",
    "POLICIES",
    "Mix",
    "Policy",
    "Reason",
    "Request",
    "Slots",
    "Verdicts",
    "choose_devices",
    "evaluate",
    "get_policy",
    "idle_and_fragmented",
    "named",
    "namespace",
    "to_levels",
    "with_lead",
]
