"""Shared measures of how used slots and nodes are, for the policies and the metrics."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from gpupack.kernel.slots import Mix, Request, Slots, unit_memory
from gpupack.kernel.xp import Array, Namespace, row_sum

if TYPE_CHECKING:
    from gpupack.kernel.node_sums import NodeSumsProvider


@dataclasses.dataclass(frozen=True)
class ScoreInput:
    """Everything a policy may look at: the state before, the units the placement would take
    from each slot (``take``, from :func:`~gpupack.kernel.slots.take_plan`), the
    request, the recent mix of shapes, and the namespace."""

    before: Slots
    take: Array
    request: Request
    mix: Mix
    xp: Namespace
    memo: NodeSumsProvider | None = None  # sums of ``before`` kept across requests, if the caller keeps them

    def after(self) -> tuple[Array, Array]:
        """``(free, free_memory_mib)`` once the placement is made."""
        per_unit = unit_memory(self.before, self.request, self.xp)
        return (
            self.before.free - self.take,
            self.before.free_memory_mib - self.take * per_unit,
        )

    def node_after(self) -> tuple[Array, Array]:
        """``(node_cpu_free, node_memory_free)`` once the placement is made: the request's CPU
        and memory taken from every node (only feasible nodes' values are ever used)."""
        s, r = self.before, self.request
        return s.node_cpu_free - r.cpu_milli, s.node_memory_free - r.node_memory_mib


def slot_used(s: Slots, free: Array, free_memory_mib: Array, xp: Namespace) -> Array:
    """Fraction of each slot in use: ``max(shares used / capacity, memory used / memory)``;
    0 for unused columns."""
    free_share = free / xp.maximum(s.capacity, 1)
    free_mem = free_memory_mib / xp.maximum(s.memory_mib, 1)
    used = 1.0 - xp.minimum(free_share, free_mem)
    xp.clip(used, 0.0, 1.0, out=used)
    used *= s.capacity > 0
    return used


def node_utilisation(s: Slots, free: Array, free_memory_mib: Array, xp: Namespace) -> Array:
    """GPU-weighted used fraction of each node: ``sum(weight * used) / sum(weight)``, 0 for a
    node without slots."""
    used = slot_used(s, free, free_memory_mib, xp)
    total = row_sum(s.weight * (s.capacity > 0), xp)
    return row_sum(s.weight * used, xp) / xp.maximum(total, 1e-12)


def idle_capacity(s: Slots, free: Array, free_memory_mib: Array, xp: Namespace) -> Array:
    """Idle GPU capacity of each healthy slot, in GPUs: ``weight * (1 - used)``."""
    return idle_of_used(s, slot_used(s, free, free_memory_mib, xp), xp)


def idle_of_used(s: Slots, used: Array, xp: Namespace) -> Array:
    """:func:`idle_capacity` from :func:`slot_used`'s answer."""
    return xp.where(s.healthy & (s.capacity > 0), s.weight * (1.0 - used), 0.0)
