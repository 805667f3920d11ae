"""``fragmentation``: the placement that raises the node's expected fragmentation least.

After the FGD rule of Weng et al. (USENIX ATC 2023), extended to MIG instances and
memory-sized shares by working on slots and units (see :mod:`gpupack.kernel.slots`):

    idle(s)     = weight(s) * (1 - used(s))                  for healthy slots, in GPUs
    F_m(node)   = sum_s idle(s)                              if node cannot host shape m
                = sum_s idle(s) * [units_m(s) == 0]          otherwise
    F(node)     = sum_m p_m * F_m(node)                      over the shapes of the recent mix
                                                             that may run on the node
    P(node)     = sum_r min_{g hosted} sum_{s of r} idle(s) * [units_g(s) == 0]
                                                             per GPU resource r, over the GPU
                                                             parts g of r of which the node can
                                                             host some shape (all of r's idle
                                                             capacity where it hosts none)
    raw         = -(F_after - F_before) - W * (P_after - P_before) + 0.001 * u_after

A shape ``m`` is a request: its GPU part (resource, count, memory hint) and its CPU and
node memory. The node "cannot host m" when too few slots have room for m's units, **or when
m's CPU (``cpu_milli``) or memory (``node_memory_mib``) exceeds the node's free CPU or
memory** (``Slots.node_cpu_free``/``node_memory_free``, after the placement for
``F_after``): GPUs beside which a typical pod's CPU no longer fits are stranded just as much
as GPUs too small for it. A CPU-only shape (``count == 0``) strands nothing where its CPU and
memory fit and all the node's idle GPU capacity where they do not. ``units_m(s)`` is how
many of m's units slot ``s`` can host, so a GPU whose memory is mostly claimed by hinted
shares is a fragment for a large-memory share, and a free MIG 1g slice is a fragment for a
3g request. A shape pinned to GPU models (``Request.models``, node affinity on the GPU
product) may run only on nodes with a GPU of one of them, and counts nothing elsewhere: the
GPUs of another model are not fragments *for it*, since nothing placed there could ever
change that (counted, they made every node of a model few shapes want look better to fill,
whatever the placement did to its own fragmentation).

``P`` is the *permanent* strand: idle capacity that no shape of the mix can use on the node
(slots too small for every part the node can host, or everything once its CPU or memory fit
no GPU shape), which no later placement there can take back. ``F`` counts such capacity
once, as it counts capacity that only some shapes cannot use, so by ``F`` alone a placement
that takes a node's last CPU beside 0.4 idle GPUs (stranding them for good) looks better
than one that leaves 0.5 of a fresh GPU usable by half the mix. ``W`` (``PERMANENT_WEIGHT``,
3: of 2, 3 and 4, the weight with the largest worst-case lead over FGD on the simulator's
tuning workloads, docs/simulator.md) weighs the permanent part above the expected one. On a
node whose slots of a resource are alike (one GPU model and sharing setup, the usual node),
the parts of that resource nest (a slot with room for a larger share has room for a smaller
one), so the part that strands least gives exactly the capacity no hosted part can use; on a
node that mixes slot kinds it is an upper bound of it. Parts of other resources (MIG
profiles) have their own slots, hence the sum over resources. A resource none of whose parts
may run on the node (models) counts nothing, as in ``F``.

The small ``u_after`` term breaks ties towards fuller nodes, like FGD's first-fit ties. Without a
recorded mix, the request itself is the only shape. Nodes whose CPU and memory are not
tracked (``UNLIMITED``) fit every shape's CPU and memory.

Shapes that share a GPU part share one pass over the slots; each shape's CPU and memory
test is one comparison per node.
"""

from __future__ import annotations

import numpy

from gpupack.kernel.node_sums import allowed_nodes, before_sums
from gpupack.kernel.slots import UNLIMITED, Mix, Request, Slots, flat_index, parts_fit, unit_memory, units, units_of
from gpupack.kernel.usage import ScoreInput, idle_capacity, idle_of_used, slot_used
from gpupack.kernel.xp import Array, Namespace, row_sum

#: Weight of the permanent strand ``P`` against the expected fragmentation ``F`` (module docstring).
PERMANENT_WEIGHT = 3.0


def _by_gpu_part(mix: Mix) -> dict[Request, list[tuple[Request, float]]]:
    out: dict[Request, list[tuple[Request, float]]] = {}
    for shape, p in mix:
        out.setdefault(shape.gpu, []).append((shape, p))
    return out


def expected_fragmentation(
    s: Slots,
    free: Array,
    free_memory_mib: Array,
    mix: Mix,
    xp: Namespace,
    cpu_free: Array | None = None,
    memory_free: Array | None = None,
) -> Array:
    """``F(node)`` for the given free shares and memory, per node, in GPUs; the node's free
    CPU and memory default to ``s.node_cpu_free``/``s.node_memory_free``."""
    cpu = s.node_cpu_free if cpu_free is None else cpu_free
    mem = s.node_memory_free if memory_free is None else memory_free
    idle = idle_capacity(s, free, free_memory_mib, xp)
    total_idle = row_sum(idle, xp)
    out = xp.zeros(s.shape[0], dtype=xp.float64)
    for gpu, shapes in _by_gpu_part(mix).items():
        if gpu.count <= 0:
            fits = xp.ones(s.shape[0], dtype=bool)
            stranded = xp.zeros(s.shape[0], dtype=xp.float64)
        else:
            u = units(s, gpu, xp, free=free, free_memory_mib=free_memory_mib)
            fits = row_sum(u, xp) >= gpu.count
            stranded = row_sum(idle * (u == 0), xp)
        allowed = allowed_nodes(s, gpu, xp)
        for shape, p in shapes:
            out += p * xp.where(allowed, xp.where(_fits_cpu(shape, fits, cpu, mem), stranded, total_idle), 0.0)
    return out


def touched_columns(take: Array, xp: Namespace) -> Array:
    """``(nodes, k)`` distinct column indices that include every slot ``take`` uses on each
    node, ``k = min(units taken, slots)`` (a placement changes no other column)."""
    n, width = int(take.shape[0]), int(take.shape[1])
    k = min(int(take.sum(axis=1).max()) if n and width else 0, width)
    if k == 0:
        return xp.zeros((n, 0), dtype=xp.int64)
    if k == 1:
        return xp.argmax(take, axis=1)[:, None]
    return xp.argsort(-take, axis=1, kind="stable")[:, :k]


def _fits_cpu(shape: Request, fits: Array, cpu: Array, mem: Array) -> Array:
    ok = fits
    if shape.cpu_milli > 0:
        ok = ok & (cpu >= shape.cpu_milli)
    if shape.node_memory_mib > 0:
        ok = ok & (mem >= shape.node_memory_mib)
    return ok


def node_cuts(req: Request, mix: Mix) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The free CPU (millicores) and node memory (MiB) amounts at which :func:`score` of
    ``req`` under ``mix`` can change: a node's free CPU enters the score only through
    ``cpu >= m.cpu_milli`` (before) and ``cpu - req.cpu_milli >= m.cpu_milli`` (after) for each
    shape ``m``, so two nodes alike in every slot score alike when their free CPU reaches the
    same of these amounts (and likewise memory). Sorted, without repeats."""
    shapes = [m for m, _ in (mix or ((req, 1.0),))]
    cpu = {c for m in shapes if (c := m.cpu_milli) > 0} | {req.cpu_milli + c for m in shapes if (c := m.cpu_milli) > 0}
    mem = {c for m in shapes if (c := m.node_memory_mib) > 0} | {req.node_memory_mib + c for m in shapes
                                                                   if (c := m.node_memory_mib) > 0}
    # no node has more than UNLIMITED free: larger amounts are all "more than any node has"
    return tuple(sorted({min(c, UNLIMITED + 1) for c in cpu})), tuple(sorted({min(c, UNLIMITED + 1) for c in mem}))


def score(inp: ScoreInput) -> Array:
    """``-(F_after - F_before)`` plus the tie term, per node.

    ``F_before`` and the node's use before need every slot: they come from
    :func:`~gpupack.kernel.node_sums.before_sums` (or the caller's memo of them, kept
    across requests). ``F_after`` and the use after differ from them only on the columns the
    placement touches, so they are the sums before corrected on those columns (``k`` per node
    instead of all)."""
    xp, s, req = inp.xp, inp.before, inp.request
    mix = inp.mix or ((req, 1.0),)
    n = s.shape[0]
    parts = _by_gpu_part(mix)
    sums = inp.memo.get(s, parts, xp) if inp.memo is not None else before_sums(s, parts, xp)
    cols = touched_columns(inp.take, xp)
    c = s.columns(cols, xp)
    take_c = xp.ravel(inp.take).take(flat_index(cols, s.shape[1], xp))
    free_a_c = c.free - take_c
    mem_a_c = c.free_memory_mib - take_c * unit_memory(c, req, xp)
    used_b_c = slot_used(c, c.free, c.free_memory_mib, xp)
    used_a_c = slot_used(c, free_a_c, mem_a_c, xp)
    idle_b_c, idle_a_c = idle_of_used(c, used_b_c, xp), idle_of_used(c, used_a_c, xp)
    total_b = sums.total_idle
    total_a = total_b - row_sum(idle_b_c, xp) + row_sum(idle_a_c, xp)
    cpu_a, node_mem_a = inp.node_after()
    # every GPU part at once: row i of the stacked arrays is part gpus[i]; the last row stands
    # for CPU-only shapes (no part: fits everywhere, strands nothing)
    gpus = [g for g in parts if g.count > 0]
    fit = parts_fit(c, gpus, xp)
    u_b_c = units_of(fit, c.free, c.free_memory_mib, xp)
    u_a_c = units_of(fit, free_a_c, mem_a_c, xp)
    count_b = xp.stack([sums.parts[g][0] for g in gpus] + [xp.zeros(n, dtype=xp.int32)])
    stranded_b = xp.stack([sums.parts[g][1] for g in gpus] + [xp.zeros(n, dtype=xp.float64)])
    allowed = xp.stack([sums.parts[g][2] for g in gpus] + [xp.ones(n, dtype=bool)])
    count_a, stranded_a = count_b.copy(), stranded_b.copy()
    if gpus:
        count_a[:-1] += row_sum(u_a_c, xp) - row_sum(u_b_c, xp)
        stranded_a[:-1] = stranded_b[:-1] - row_sum(idle_b_c * (u_b_c == 0), xp) + row_sum(idle_a_c * (u_a_c == 0), xp)
    need = xp.asarray([g.count for g in gpus] + [0], dtype=xp.int64)[:, None]
    fits_b, fits_a = count_b >= need, count_a >= need
    # one row per shape, in the mix's order (the sum below adds them up in that order)
    row_of = {g: i for i, g in enumerate(gpus)}
    shapes = [(row_of.get(gpu, len(gpus)), shape, p) for gpu, group in parts.items() for shape, p in group]
    at = xp.asarray([r for r, _, _ in shapes], dtype=xp.int64)
    low = numpy.iinfo(numpy.int64).min  # no CPU or memory asked: every node fits it
    cpu_m = xp.asarray([m.cpu_milli if m.cpu_milli > 0 else low for _, m, _ in shapes], dtype=xp.int64)[:, None]
    mem_m = xp.asarray([m.node_memory_mib if m.node_memory_mib > 0 else low for _, m, _ in shapes],
                       dtype=xp.int64)[:, None]
    ok_b = fits_b[at] & (s.node_cpu_free >= cpu_m) & (s.node_memory_free >= mem_m)
    ok_a = fits_a[at] & (cpu_a >= cpu_m) & (node_mem_a >= mem_m)
    p_m = xp.asarray([p for _, _, p in shapes], dtype=xp.float64)[:, None]
    d = p_m * (xp.where(ok_a, stranded_a[at], total_a) - xp.where(ok_b, stranded_b[at], total_b))
    pinned = xp.asarray([bool(m.gpu.models) for _, m, _ in shapes])[:, None]
    d = xp.where(~pinned | allowed[at], d, 0.0)
    delta = xp.zeros(n, dtype=xp.float64)
    for row in d:
        delta += row
    if gpus:
        # which GPU parts the node can host some shape of, before and after (a part's shapes
        # differ in CPU and memory only), and each part's own resource's idle capacity
        first: dict[int, int] = {}
        end: dict[int, int] = {}
        for k, (r, _, _) in enumerate(shapes):  # a part's shapes are consecutive
            first.setdefault(r, k)
            end[r] = k + 1
        spans = [(first[i], end[i]) for i in range(len(gpus))]
        hosted_b = _any_of_part(ok_b & allowed[at], spans, xp)
        hosted_a = _any_of_part(ok_a & allowed[at], spans, xp)
        # the parts of each resource, in resource order
        resources = sorted({g.resource for g in gpus})
        of_resource = [xp.asarray([g.resource == r for g in gpus]) for r in resources]
        own_b = xp.stack([sums.parts[g][3] for g in gpus])
        own_a = own_b.copy()
        for r, on_r in zip(resources, of_resource):
            own_a[on_r] += row_sum((idle_a_c - idle_b_c) * (c.resource == r), xp)
        p_a = _permanent(hosted_a, stranded_a[:-1], own_a, allowed[:-1], total_a, of_resource, xp)
        p_b = _permanent(hosted_b, stranded_b[:-1], own_b, allowed[:-1], total_b, of_resource, xp)
        delta += PERMANENT_WEIGHT * (p_a - p_b)
    used_a = sums.used_weight - row_sum(c.weight * used_b_c, xp) + row_sum(c.weight * used_a_c, xp)
    return -delta + 0.001 * used_a / xp.maximum(sums.total_weight, 1e-12)


def _any_of_part(ok: Array, spans: list[tuple[int, int]], xp: Namespace) -> Array:
    """Per part (its shapes at rows ``a:b`` of ``ok``, one span per part) and node: any of them ok."""
    return xp.stack([xp.any(ok[a:b], axis=0) for a, b in spans])


def _permanent(hosted: Array, stranded: Array, own: Array, allowed: Array, total: Array, of_resource: list[Array],
               xp: Namespace) -> Array:
    """``P(node)`` from per-part rows (one per GPU part; ``of_resource``: a mask of the parts of
    each resource): per resource, the least idle capacity of its slots that a hosted part of it
    cannot use; all of it where a part of it may run on the node (``allowed``) but none is
    hosted; nothing where none may run there."""
    out = xp.zeros(total.shape[0], dtype=xp.float64)
    for on_r in of_resource:
        own_r = own[on_r][0]
        inside = stranded[on_r] - (total - own_r)[None, :]  # a part's stranded capacity on its resource
        none_hosted = xp.where(xp.any(allowed[on_r], axis=0), own_r, 0.0)
        out += xp.min(xp.where(hosted[on_r], inside, none_hosted[None, :]), axis=0)
    return out
