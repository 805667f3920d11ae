"""Scoring policies: one mapping from name to a pure function ``ScoreInput -> raw score``.

A raw score is a float per node, higher is better; only its order matters, because
:func:`~scheduler_ext.kernel.levels.to_levels` maps it to 0..10. Unknown names are refused
by :func:`get_policy` when the extender is built, never per request.

The default is ``binpack``: predictable, the cheapest to compute, and it keeps empty nodes
empty for the cluster autoscaler. It is provisional: the simulator's packing benchmark
(issue 5) compares ``binpack`` and ``fragmentation`` and settles the default. On the Alibaba
trace with the FGD protocol, CPU- and memory-aware ``fragmentation`` leaves 4.85 % of GPUs
unallocated (median of 10 seeds) and ``binpack`` 6.29 %, against FGD's 4.77 %: the default
moves to ``fragmentation`` once it beats FGD (docs/simulator.md).
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

DEFAULT_POLICY = "binpack"


def get_policy(name: str) -> Policy:
    """The policy called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(sorted(POLICIES))}") from None
