"""Scoring policies: one mapping from name to a pure function ``ScoreInput -> raw score``.

A raw score is a float per node, higher is better; only its order matters, because
:func:`~scheduler_ext.kernel.levels.to_levels` maps it to 0..10. Unknown names are refused
by :func:`get_policy` when the extender is built, never per request.

The default is ``fragmentation``, the winner of the simulator's packing benchmark among
gpupack's policies (docs/simulator.md): on the Alibaba trace with the FGD protocol it leaves
about 4.9 % of GPUs unallocated against 6.3 % for ``binpack`` (FGD as published: 4.77 %), and
on the built-in example it leaves the fewest replicas never placed. ``binpack`` is the
cheapest to compute (about half the kernel time) and keeps the most whole nodes empty for the
cluster autoscaler when the cluster is lightly loaded; ``spread`` is for services that want a
quiet GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType

from scheduler_ext.kernel.policies import binpack, fragmentation, spread
from scheduler_ext.kernel.usage import ScoreInput
from scheduler_ext.kernel.xp import Array

ScoreFn = Callable[[ScoreInput], Array]


@dataclasses.dataclass(frozen=True)
class Policy:
    """A named scoring function; ``uses_mix`` says whether it reads the recent mix of shapes."""

    name: str
    score: ScoreFn
    uses_mix: bool = False


POLICIES: Mapping[str, Policy] = MappingProxyType(
    {
        "binpack": Policy("binpack", binpack.score),
        "spread": Policy("spread", spread.score),
        "fragmentation": Policy("fragmentation", fragmentation.score, uses_mix=True),
    }
)

DEFAULT_POLICY = "fragmentation"


def get_policy(name: str) -> Policy:
    """The policy called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(sorted(POLICIES))}") from None
