"""Feasibility, reason and score of one request on many nodes at once."""

from __future__ import annotations

import dataclasses

from gpupack.kernel import pairing
from gpupack.kernel.node_sums import NodeSumsProvider
from gpupack.kernel.levels import to_levels
from gpupack.kernel.policies import Policy
from gpupack.kernel.slots import Mix, Reason, Request, Slots, take_plan, units
from gpupack.kernel.usage import ScoreInput, idle_capacity
from gpupack.kernel.policies.fragmentation import expected_fragmentation
from gpupack.kernel.xp import Array, Namespace, row_sum


@dataclasses.dataclass(frozen=True)
class Verdicts:
    """Per node, in the order of the evaluated rows."""

    feasible: Array  # bool
    reason: Array  # int8 Reason codes
    free_units: Array  # int32 units of the request the node can host now
    total_units: Array  # int32 units its healthy devices could host when empty (infeasible nodes only)
    raw: Array  # float64 policy score, -inf where infeasible
    level: Array  # int64 0..10
    keeps: Array  # bool: a share that fits and keeps to a pattern on one of the node's GPUs (kernel.pairing)


def feasibility(s: Slots, req: Request, xp: Namespace) -> tuple[Array, Array, Array, Array, Array]:
    """``(feasible, reason, free_units, total_units)`` per node, and the units per slot now.
    Reasons and totals are worked out for the infeasible nodes only (FITS and 0 elsewhere):
    the common case pays for one pass."""
    u = units(s, req, xp)
    free_units = row_sum(u, xp).astype(xp.int32, copy=False)
    if req.count <= 0:  # a CPU-only pod: its (absent) GPU part fits everywhere
        return xp.ones(free_units.shape, dtype=bool), xp.zeros(free_units.shape, dtype=xp.int8), \
            free_units, xp.zeros(free_units.shape, dtype=xp.int32), u
    feasible = free_units >= req.count
    reason = xp.zeros(free_units.shape, dtype=xp.int8)
    total_healthy = xp.zeros(free_units.shape, dtype=xp.int32)
    bad = xp.nonzero(~feasible)[0]
    if bad.shape[0]:
        f = s.rows(bad)
        empty = units(f, req, xp, free=f.capacity, free_memory_mib=f.memory_mib, healthy_only=False)
        total_all = row_sum(empty, xp).astype(xp.int32, copy=False)
        healthy = row_sum(empty * f.healthy, xp).astype(xp.int32, copy=False)
        r = xp.full(bad.shape, int(Reason.BUSY), dtype=xp.int8)
        r[healthy < req.count] = int(Reason.UNHEALTHY)
        r[total_all < req.count] = int(Reason.TOO_SMALL)
        r[row_sum(f.resource == req.resource, xp) == 0] = int(Reason.NO_RESOURCE)
        reason[bad] = r
        total_healthy[bad] = healthy
    return feasible, reason, free_units, total_healthy, u


def evaluate(
    s: Slots,
    req: Request,
    policy: Policy,
    xp: Namespace,
    mix: Mix = (),
    score: bool = True,
    memo: NodeSumsProvider | None = None,
    levels: bool = True,
    shares: pairing.ShareMix = pairing.NO_SHARES,
) -> Verdicts:
    """Feasibility and, when ``score``, the policy's raw score and 0..10 level of ``req`` on
    every row of ``s``. The hypothetical placement behind the score is the packed
    :func:`~gpupack.kernel.slots.take_plan`, the same rule device choice uses. A
    CPU-only request (``count == 0``) fits every node and takes no slot; its score is what
    its CPU and memory do to the node (``fragmentation``: the GPUs they strand). ``memo``: the
    per-node sums of ``s`` kept by a caller that evaluates request after request on the same
    rows (:class:`~gpupack.kernel.node_sums.NodeSumsMemo`, NumPy only). ``levels=False``
    leaves the 0..10 levels at 0, for a caller that ranks a subset later. ``shares``: the share
    mix; a share is then scored on the GPU :mod:`~gpupack.kernel.pairing` picks, as
    ``choose_devices`` places it."""
    feasible, reason, free_units, total_units, u = feasibility(s, req, xp)
    n = s.shape[0]
    if not score or n == 0:
        zeros = xp.zeros(n, dtype=xp.float64)
        return Verdicts(feasible, reason, free_units, total_units, zeros, xp.zeros(n, dtype=xp.int64),
                        xp.zeros(n, dtype=bool))
    plan = pairing.share_plan(s, req, u, shares, xp)
    take = take_plan(s, req, xp, avail=u) if plan is None else plan[0]
    keeps = xp.zeros(n, dtype=bool) if plan is None else plan[1] & feasible
    raw = policy.score(ScoreInput(s, take, req, mix if policy.uses_mix else (), xp, memo))
    raw = xp.where(feasible, raw, -xp.inf)
    level = to_levels(raw, feasible, xp) if levels else xp.zeros(n, dtype=xp.int64)
    return Verdicts(feasible, reason, free_units, total_units, raw, level, keeps)


def idle_and_fragmented(s: Slots, mix: Mix, xp: Namespace) -> tuple[float, float]:
    """Cluster-wide idle GPU capacity and the part of it fragmented under ``mix``, in GPUs."""
    idle = float(idle_capacity(s, s.free, s.free_memory_mib, xp).sum())
    if not mix:
        return idle, 0.0
    frag = float(expected_fragmentation(s, s.free, s.free_memory_mib, mix, xp).sum())
    return idle, frag
