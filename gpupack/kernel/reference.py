"""A plain-Python reference of the kernel's rule, one node and one slot at a time.

Written from the formulas in the docstrings, not from the array code, so tests can check the
two agree and ``bench/kernel.py`` can measure what vectorising buys. Lists in, lists out.
"""

from __future__ import annotations

from gpupack.kernel.policies.fragmentation import PERMANENT_WEIGHT
from gpupack.kernel.slots import Mix, Request, Slots


def _lists(s: Slots) -> dict[str, list[list[float]]]:
    return {
        "resource": s.resource.tolist(), "cap": s.capacity.tolist(), "free": s.free.tolist(),
        "mem": s.memory_mib.tolist(), "free_mem": s.free_memory_mib.tolist(),
        "healthy": s.healthy.tolist(), "weight": s.weight.tolist(), "model": s.model.tolist(),
    }


def _node(cols: dict[str, list[list[float]]], i: int) -> list[dict[str, float]]:
    keys = list(cols)
    return [dict(zip(keys, values)) for values in zip(*(cols[k][i] for k in keys))]


def _unit_mem(slot: dict[str, float], req: Request) -> int:
    if slot["cap"] <= 1:
        return int(slot["mem"])
    return req.memory_mib if req.memory_mib > 0 else int(slot["mem"]) // int(slot["cap"])


def _units(slot: dict[str, float], req: Request) -> int:
    if slot["resource"] != req.resource or not slot["healthy"]:
        return 0
    if req.models and int(slot["model"]) not in req.models:
        return 0
    if slot["cap"] <= 1 and req.memory_mib > slot["mem"]:
        return 0
    n = min(int(slot["free"]), int(slot["free_mem"]) // max(_unit_mem(slot, req), 1))
    return max(n, 0)


def _used(slot: dict[str, float]) -> float:
    if slot["cap"] <= 0:
        return 0.0
    share = (slot["cap"] - slot["free"]) / slot["cap"]
    mem = (slot["mem"] - slot["free_mem"]) / max(slot["mem"], 1)
    return min(max(share, mem, 0.0), 1.0)


def _util(node: list[dict[str, float]]) -> float:
    total = sum(x["weight"] for x in node if x["cap"] > 0)
    return sum(x["weight"] * _used(x) for x in node) / max(total, 1e-12)


def _place(node: list[dict[str, float]], req: Request) -> list[int]:
    """Units taken per slot: each unit to the slot with the fewest units left, lowest index."""
    left = [_units(x, req) for x in node]
    take = [0] * len(node)
    for _ in range(req.count):
        best = -1
        for j, n in enumerate(left):
            if n > 0 and (best < 0 or n < left[best]):
                best = j
        if best < 0:
            break
        take[best] += 1
        left[best] -= 1
    return take


def _after(node: list[dict[str, float]], take: list[int], req: Request) -> list[dict[str, float]]:
    out = []
    for x, t in zip(node, take):
        y = dict(x)
        y["free"] = x["free"] - t
        y["free_mem"] = x["free_mem"] - t * _unit_mem(x, req)
        out.append(y)
    return out


def _idle(node: list[dict[str, float]]) -> list[float]:
    return [x["weight"] * (1 - _used(x)) if x["healthy"] and x["cap"] > 0 else 0.0 for x in node]


def _hosts(node: list[dict[str, float]], shape: Request, cpu: int, mem: int) -> tuple[bool, list[int]]:
    """Whether the node can host ``shape`` (units, CPU, memory), and its units per slot."""
    u = [_units(x, shape) for x in node]
    cpu_ok = shape.cpu_milli <= 0 or cpu >= shape.cpu_milli  # asking nothing always fits
    mem_ok = shape.node_memory_mib <= 0 or mem >= shape.node_memory_mib
    return sum(u) >= shape.count and cpu_ok and mem_ok, u


def _allowed(node: list[dict[str, float]], shape: Request) -> bool:
    return not shape.models or any(x["cap"] > 0 and int(x["model"]) in shape.models for x in node)


def _permanent(node: list[dict[str, float]], mix: Mix, cpu: int, mem: int) -> float:
    """P(node): per GPU resource the mix asks for, the least idle capacity on the resource's
    slots without room for a GPU part (GPU request without CPU and memory) of which the node
    can host some shape; all of the resource's idle capacity when it hosts none though a part
    may run there; nothing when none may."""
    idle = _idle(node)
    hosted: dict[Request, bool] = {}
    allowed: dict[Request, bool] = {}
    inside: dict[Request, float] = {}
    for shape, _ in mix:
        if shape.count <= 0:
            continue
        ok, u = _hosts(node, shape, cpu, mem)
        g = shape.gpu
        allowed[g] = _allowed(node, shape)
        hosted[g] = hosted.get(g, False) or (ok and allowed[g])
        inside[g] = sum(i for i, n, x in zip(idle, u, node) if n == 0 and x["resource"] == g.resource)
    total = 0.0
    for r in {g.resource for g in hosted}:
        mine = [g for g in hosted if g.resource == r]
        if any(hosted[g] for g in mine):
            total += min(inside[g] for g in mine if hosted[g])
        elif any(allowed[g] for g in mine):
            total += sum(i for i, x in zip(idle, node) if x["resource"] == r)
    return total


def _frag(node: list[dict[str, float]], mix: Mix, cpu: int, mem: int) -> float:
    """F(node): per shape, the idle capacity of the slots without room for it when the node
    can host it (enough units, CPU and memory), all idle capacity when it cannot; a CPU-only
    shape strands nothing where it fits; a shape pinned to GPU models counts only on nodes with
    a GPU of one of them."""
    idle = _idle(node)
    total = 0.0
    for shape, p in mix:
        if not _allowed(node, shape):
            continue
        hosts, u = _hosts(node, shape, cpu, mem)
        if not hosts:
            total += p * sum(idle)
        elif shape.count > 0:
            total += p * sum(i for i, n in zip(idle, u) if n == 0)
    return total


def evaluate(s: Slots, req: Request, policy: str, mix: Mix = ()) -> tuple[list[bool], list[float]]:
    """``(feasible, raw)`` per node, as :func:`gpupack.kernel.evaluate` computes them."""
    feasible: list[bool] = []
    raw: list[float] = []
    cols = _lists(s)
    cpus: list[int] = s.node_cpu_free.tolist()
    mems: list[int] = s.node_memory_free.tolist()
    for i in range(s.shape[0]):
        node = _node(cols, i)
        ok = req.count <= 0 or sum(_units(x, req) for x in node) >= req.count
        feasible.append(ok)
        if not ok:
            raw.append(float("-inf"))
            continue
        take = _place(node, req)
        after = _after(node, take, req)
        if policy == "binpack":
            partly = sum(t for t, x in zip(take, node) if _used(x) > 0)
            raw.append(2.0 * partly / max(sum(take), 1) + _util(after))
        elif policy == "spread":
            raw.append(1.0 - _util(after))
        else:
            m = mix or ((req, 1.0),)
            cpu, mem = cpus[i], mems[i]
            cpu_a, mem_a = cpu - req.cpu_milli, mem - req.node_memory_mib
            f_after = _frag(after, m, cpu_a, mem_a) + PERMANENT_WEIGHT * _permanent(after, m, cpu_a, mem_a)
            f_before = _frag(node, m, cpu, mem) + PERMANENT_WEIGHT * _permanent(node, m, cpu, mem)
            raw.append(-(f_after - f_before) + 0.001 * _util(after))
    return feasible, raw
