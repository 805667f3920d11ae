"""The kernel's data: cluster state as ``(nodes x slots)`` arrays, and one pod's request.

A *slot* is one schedulable device of a node: a whole GPU advertised under a resource, or
one MIG instance. Each slot is advertised as ``capacity`` shares (1 = a whole device,
>1 = time-sliced replicas). A *unit* is what one request unit takes: one share of a slot
(the whole slot when ``capacity`` is 1). Unused columns have ``resource == -1`` and
``capacity == 0``.

Memory: a whole-device unit takes all of the slot's memory; a share takes the pod's memory
hint, or, without one, the fair part ``memory_mib // capacity`` (time-slicing has no memory
isolation, so an unhinted share is assumed to use its part).

Two arrays are per node, not per slot (shape ``(nodes,)``): the node's free CPU (millicores)
and free memory (MiB), what its allocatable leaves after the requests of the pods bound to
it. They do not decide feasibility (kube-scheduler's NodeResourcesFit filters CPU and
memory); ``fragmentation`` reads them to tell whether a shape's CPU and memory still fit
beside the node's idle GPUs. :data:`UNLIMITED` stands for "not tracked": always fits.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

from gpupack.kernel.xp import Array, Namespace

#: Marks an unused slot column in ``Slots.resource``.
NO_RESOURCE = -1
#: Free CPU or memory of a node that is not tracked: every request fits in it.
UNLIMITED = 2**62


@dataclasses.dataclass(frozen=True)
class Slots:
    """Per node (rows) and slot (columns): the arrays have the ``(nodes, slots)`` shape, except
    ``node_cpu_free`` and ``node_memory_free``, one value per node (``(nodes,)``)."""

    resource: Array  # int32 resource id (interned by the caller), -1 = no slot
    capacity: Array  # int32 shares advertised (replicas); 0 = no slot
    free: Array  # int32 shares not in use or reserved
    memory_mib: Array  # int32 memory of the device (GPU, or MIG instance)
    free_memory_mib: Array  # int32 memory not claimed by the shares in use
    healthy: Array  # bool
    weight: Array  # float64 fraction of a physical GPU this slot stands for (MIG: its memory share)
    model: Array  # int32 GPU model id (interned by the caller)
    gpu: Array  # int32 index of the physical GPU within its node
    numa: Array  # int32 NUMA node, -1 unknown
    nvgroup: Array  # int32 NVLink-connected group of GPUs within the node, -1 none
    node_cpu_free: Array  # int64 (nodes,) free CPU of the node, millicores; UNLIMITED = not tracked
    node_memory_free: Array  # int64 (nodes,) free memory of the node, MiB; UNLIMITED = not tracked

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.resource.shape[0]), int(self.resource.shape[1]))

    def columns(self, cols: Array, xp: Namespace) -> Slots:
        """The same nodes restricted to the slot columns ``cols`` (``(nodes, k)`` indices, one
        row of them per node); the per-node arrays are kept as they are."""
        flat = flat_index(cols, self.shape[1], xp)
        out: dict[str, Array] = {}
        for f in dataclasses.fields(self):
            a = getattr(self, f.name)
            out[f.name] = a if a.ndim == 1 else xp.ravel(a).take(flat)
        return Slots(**out)

    def rows(self, index: Array) -> Slots:
        """The same arrays for a subset of nodes (a copy, in ``index`` order)."""
        # take() is several times faster than fancy indexing for whole rows
        return Slots(**{f.name: getattr(self, f.name).take(index, axis=0) for f in dataclasses.fields(self)})


def flat_index(cols: Array, width: int, xp: Namespace) -> Array:
    """Indices into a raveled ``(nodes, width)`` array of the ``(nodes, k)`` columns ``cols``:
    ``a.ravel().take(flat)`` is ``take_along_axis(a, cols, axis=1)``, several times faster."""
    return xp.arange(cols.shape[0])[:, None] * width + cols


def empty_slots(xp: Namespace, nodes: int, slots: int) -> Slots:
    """Arrays for ``nodes`` nodes without any slot yet."""
    shape = (nodes, slots)
    return Slots(
        resource=xp.full(shape, NO_RESOURCE, dtype=xp.int32),
        capacity=xp.zeros(shape, dtype=xp.int32),
        free=xp.zeros(shape, dtype=xp.int32),
        memory_mib=xp.zeros(shape, dtype=xp.int32),
        free_memory_mib=xp.zeros(shape, dtype=xp.int32),
        healthy=xp.zeros(shape, dtype=bool),
        weight=xp.zeros(shape, dtype=xp.float64),
        model=xp.full(shape, -1, dtype=xp.int32),
        gpu=xp.full(shape, -1, dtype=xp.int32),
        numa=xp.full(shape, -1, dtype=xp.int32),
        nvgroup=xp.full(shape, -1, dtype=xp.int32),
        node_cpu_free=xp.full(nodes, UNLIMITED, dtype=xp.int64),
        node_memory_free=xp.full(nodes, UNLIMITED, dtype=xp.int64),
    )


@dataclasses.dataclass(frozen=True)
class Request:
    """What one pod asks of one resource: ``count`` units, each with ``memory_mib`` of device
    memory (0 = no hint); and of the node, ``cpu_milli`` CPU and ``node_memory_mib`` memory
    (0 = none or unknown). CPU and node memory never decide feasibility here; they tell
    ``fragmentation`` what the placement leaves of the node and whether a shape still fits.
    A shape with ``count == 0`` is a CPU-only pod."""

    resource: int
    count: int
    memory_mib: int = 0
    cpu_milli: int = 0
    node_memory_mib: int = 0
    models: frozenset[int] = frozenset()  # GPU model ids it may run on (node affinity); empty: any

    @property
    def gpu(self) -> Request:
        """The GPU part alone (CPU and node memory 0; the allowed models kept)."""
        if self.cpu_milli == 0 and self.node_memory_mib == 0:
            return self
        return Request(self.resource, self.count, self.memory_mib, models=self.models)


#: The recent mix of request shapes with their frequencies (summing to 1), for ``fragmentation``.
Mix = tuple[tuple[Request, float], ...]


class Reason(enum.IntEnum):
    """Why a node cannot take a request; the first four cannot be cured by preemption."""

    FITS = 0
    NO_RESOURCE = 1  # the node advertises no device of this resource
    TOO_SMALL = 2  # even empty, its devices hold fewer units (or too little memory per device)
    UNHEALTHY = 3  # enough devices exist, but too few are healthy
    BUSY = 4  # enough healthy devices, but too few free units now

    @property
    def unresolvable(self) -> bool:
        return self in (Reason.NO_RESOURCE, Reason.TOO_SMALL, Reason.UNHEALTHY)


def unit_memory(s: Slots, req: Request, xp: Namespace) -> Array:
    """Memory one unit of ``req`` takes on each slot (MiB): all of a whole device, else the hint
    or the fair part ``memory_mib // capacity``."""
    if req.memory_mib > 0:
        return xp.where(s.capacity <= 1, s.memory_mib, req.memory_mib).astype(s.memory_mib.dtype, copy=False)
    return xp.where(s.capacity <= 1, s.memory_mib, s.memory_mib // xp.maximum(s.capacity, 1))


#: Up to this many models, :func:`of_models` compares with each (``isin`` costs more on few rows).
FEW_MODELS = 8


def of_models(s: Slots, models: frozenset[int], xp: Namespace) -> Array:
    """Per slot: its GPU model is one of ``models``."""
    if len(models) > FEW_MODELS:
        return xp.isin(s.model, xp.asarray(sorted(models), dtype=s.model.dtype))
    out = xp.zeros(s.model.shape, dtype=bool)
    for m in models:
        out |= s.model == m
    return out


def units(
    s: Slots,
    req: Request,
    xp: Namespace,
    free: Array | None = None,
    free_memory_mib: Array | None = None,
    healthy_only: bool = True,
) -> Array:
    """Units of ``req`` each slot can host: ``min(free, free_memory // unit_memory)`` on healthy
    slots of the requested resource, 0 elsewhere. ``free``/``free_memory_mib`` default to now."""
    return units_of(unit_fit(s, req, xp, healthy_only), s.free if free is None else free,
                    s.free_memory_mib if free_memory_mib is None else free_memory_mib, xp)


def unit_fit(s: Slots, req: Request, xp: Namespace, healthy_only: bool = True) -> tuple[Array, Array]:
    """What :func:`units` reads of ``req`` and the slots apart from their free shares and memory:
    ``(ok, per_unit)``, the slots that may host it at all and the memory one unit takes (at
    least 1). For a caller that counts units on the same slots in two states."""
    ok, per_unit = parts_fit(s, (req,), xp, healthy_only)
    return ok[0], per_unit[0]


def parts_fit(s: Slots, reqs: Sequence[Request], xp: Namespace, healthy_only: bool = True) -> tuple[Array, Array]:
    """:func:`unit_fit` of several requests at once, stacked: ``ok`` of shape ``(len(reqs),
    nodes, slots)``, ``[i]`` for ``reqs[i]``, and ``per_unit`` of that shape or, when no request
    has a memory hint, of ``(nodes, slots)`` for all of them (a few array operations for all
    the requests, instead of a few for each)."""
    one = len(reqs) == 1  # then plain numbers: cheaper than broadcasting arrays of one
    rid: Any = reqs[0].resource if one else xp.asarray([r.resource for r in reqs], dtype=s.resource.dtype)[:, None, None]
    hint: Any = reqs[0].memory_mib if one else xp.asarray([r.memory_mib for r in reqs],
                                                          dtype=s.memory_mib.dtype)[:, None, None]
    whole = s.capacity <= 1
    ok = s.resource == rid
    if healthy_only:
        ok &= s.healthy
    hinted = [r.memory_mib > 0 for r in reqs]
    if any(hinted):
        # a hint larger than a whole device's memory makes that device useless for the request
        too_small = whole & (s.memory_mib < hint)
        ok &= ~too_small if all(hinted) else ~((hint > 0) & too_small)
    for i, r in enumerate(reqs):
        if r.models:
            if one:
                ok &= of_models(s, r.models, xp)
            else:
                ok[i] &= of_models(s, r.models, xp)
    # unit_memory, for every request (each array worked out only where some request needs it)
    if all(hinted):
        part = hint
    else:
        fair = s.memory_mib // xp.maximum(s.capacity, 1)
        part = xp.where(hint > 0, hint, fair) if any(hinted) else fair
    per_unit = xp.maximum(xp.where(whole, s.memory_mib, part), 1)
    return (ok[None], per_unit[None]) if one else (ok, per_unit)


def units_of(fit: tuple[Array, Array], free: Array, free_memory_mib: Array, xp: Namespace) -> Array:
    """:func:`units` with the slots' ``fit`` (:func:`unit_fit`, or :func:`parts_fit`: then the
    units of every part, stacked) and these free shares and memory."""
    ok, per_unit = fit
    n = xp.minimum(free, free_memory_mib // per_unit)
    if n.shape == ok.shape:
        n *= ok
    else:  # one per_unit for every part (none has a memory hint): the parts differ in ok alone
        n = n * ok
    return xp.maximum(n, 0).astype(xp.int32, copy=False)


def take_plan(s: Slots, req: Request, xp: Namespace, avail: Array | None = None) -> Array:
    """Units of ``req`` each slot would give on every node, packed: each unit goes to the slot
    with the fewest units left (best fit), ties to the lowest column. Nodes that cannot host
    all ``req.count`` units get what they can; callers mask them with feasibility."""
    left = units(s, req, xp) if avail is None else avail.copy()
    take = xp.zeros_like(left)
    if req.count <= 0 or left.shape[1] == 0:
        return take
    rows = xp.arange(left.shape[0])
    big = xp.iinfo(xp.int32).max
    # past the most units any node has, a step takes nothing: a count of 10^18 costs no more
    steps = min(req.count, int(left.sum(axis=1).max())) if left.shape[0] else 0
    for _ in range(steps):
        key = xp.where(left > 0, left, big)
        col = xp.argmin(key, axis=1)
        got = (left[rows, col] > 0).astype(xp.int32)
        take[rows, col] += got
        left[rows, col] -= got
    return take
