"""Scoring policies: one mapping from name to a pure function ``ScoreInput -> raw score``.

A raw score is a float per node, higher is better; only its order matters, because
:func:`~gpupack.kernel.levels.to_levels` maps it to 0..10. Unknown names are refused
by :func:`get_policy` when the extender is built, never per request.

The default is ``fragmentation``, the one that leaves the fewest GPUs unallocated among
gpupack's policies in the simulator's packing benchmark (figures in docs/simulator.md).
``binpack`` is the
cheapest to compute (about half the kernel time) and keeps the most whole nodes empty for the
cluster autoscaler when the cluster is lightly loaded; ``spread`` is for services that want a
quiet GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType

from gpupack.kernel.policies import binpack, fragmentation, spread
from gpupack.kernel.slots import Mix, Request
from gpupack.kernel.usage import ScoreInput
from gpupack.kernel.xp import Array

ScoreFn = Callable[[ScoreInput], Array]
#: ``(request, mix) -> (cpu, memory)``: the node's free CPU and memory amounts at which the
#: policy's score can change (see :func:`fragmentation.node_cuts`).
CutsFn = Callable[[Request, Mix], tuple[tuple[int, ...], tuple[int, ...]]]


def reads_no_node_resources(req: Request, mix: Mix) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A policy whose score does not read the node's free CPU and memory at all."""
    return (), ()


@dataclasses.dataclass(frozen=True)
class Policy:
    """A named scoring function; ``uses_mix`` says whether it reads the recent mix of shapes,
    ``lead`` whether its levels name one node (the first by name of the top two levels,
    see :func:`~gpupack.kernel.levels.with_lead`): packing policies fill one node after
    another, a spreading one must not. ``node_cuts`` says which amounts of a node's free CPU
    and memory its score can turn on (none: it does not read them), so that verdicts can be
    kept by a node's state (:mod:`gpupack.kernel.verdict_memo`)."""

    name: str
    score: ScoreFn
    uses_mix: bool = False
    lead: bool = False
    node_cuts: CutsFn = reads_no_node_resources

    def leads(self, gpus: int) -> bool:
        """Whether the levels of a request for ``gpus`` units name one node: for packing
        policies and requests with GPUs. A CPU-only pod has no GPU to pack; filling one node
        after another with them uses up the CPU beside idle GPUs (docs/simulator.md)."""
        return self.lead and gpus > 0


POLICIES: Mapping[str, Policy] = MappingProxyType(
    {
        "binpack": Policy("binpack", binpack.score, lead=True),
        "spread": Policy("spread", spread.score),
        "fragmentation": Policy("fragmentation", fragmentation.score, uses_mix=True, lead=True,
                                node_cuts=fragmentation.node_cuts),
    }
)

DEFAULT_POLICY = "fragmentation"


def get_policy(name: str) -> Policy:
    """The policy called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(sorted(POLICIES))}") from None
