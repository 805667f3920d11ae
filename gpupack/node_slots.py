"""One node's GPUs as a kernel row, and the one rule for which devices a container gets.

Both programs stand on this module:

- the extender's cache turns each node's inventory into slots (:func:`inventory_slots`),
  writes them into its row (:func:`write_slots`) and maps the kernel's column choice back to
  device ids (:func:`device_ids`);
- the device plugin, answering GetPreferredAllocation for a pod that carries no
  ``gpupack.io/devices`` annotation (the extender was down, or another scheduler bound it),
  keeps one :class:`NodeRow` per inventory and asks :meth:`NodeRow.choose`. That is the
  extender's own rule on a one-row copy of the node, with the devices the kubelet does not
  offer counted as in use, so what this node really gives a pod matches what the extender
  assumes for pods it did not place.

Where the kernel finds no fit among the offered devices (the kubelet's view of health differs
from the inventory's), or the node spreads one container's shares over distinct GPUs, the
choice falls back to :mod:`gpupack.topology`. Pure: no I/O, no Kubernetes objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Sequence

import numpy

from gpupack import contract, kernel, topology
from gpupack.kernel import slots as kslots


class Interner:
    """Names to small ints, stable for the process's life (resource names, GPU models)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self.names: list[str] = []

    def id(self, name: str) -> int:
        found = self._ids.get(name)
        if found is None:
            found = self._ids[name] = len(self.names)
            self.names.append(name)
        return found

    def find(self, name: str) -> int | None:
        return self._ids.get(name)


@dataclasses.dataclass(frozen=True)
class SlotInfo:
    """One column of a node's row: the device behind it."""

    device_id: str  # GPU or MIG UUID (no replica suffix)
    resource: str
    replicas: int
    memory_mib: int
    healthy: bool
    weight: float
    model: str
    gpu: int
    numa: int
    nvgroup: int


def nvlink_groups(gpus: Iterable[contract.Gpu]) -> dict[int, int]:
    """GPU index -> NVLink-connected group (the smallest index in it); -1 without links."""
    gpus = tuple(gpus)
    parent = {g.index: g.index for g in gpus}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    linked: set[int] = set()
    for g in gpus:
        for link in g.links:
            if link.nvlinks > 0 and link.peer in parent:
                linked.update((g.index, link.peer))
                a, b = root(g.index), root(link.peer)
                parent[max(a, b)] = min(a, b)
    return {i: (root(i) if i in linked else -1) for i in parent}


def inventory_slots(inv: contract.Inventory) -> tuple[SlotInfo, ...]:
    """The advertised devices of an inventory as slots: whole GPUs, then MIG instances."""
    groups = nvlink_groups(inv.gpus)
    out: list[SlotInfo] = []
    for g in sorted(inv.gpus, key=lambda g: g.index):
        if g.resource:
            out.append(SlotInfo(g.id, g.resource, g.replicas, g.memory_mib, g.healthy, 1.0,
                                g.model, g.index, g.numa_node, groups[g.index]))
        for m in g.mig:
            if m.resource:
                weight = m.memory_mib / g.memory_mib if g.memory_mib > 0 else 0.0
                out.append(SlotInfo(m.id, m.resource, m.replicas, m.memory_mib,
                                    g.healthy and m.healthy, min(weight, 1.0), g.model,
                                    g.index, g.numa_node, -1))
    return tuple(out)


def write_slots(arrays: kslots.Slots, row: int, slots: Sequence[SlotInfo], resources: Interner,
                models: Interner) -> None:
    """Writes what does not change with use (resource, capacity, memory, health, weight, model,
    GPU, NUMA, NVLink group) of ``slots`` into row ``row``; ``free`` is the caller's."""
    a = arrays
    for i, s in enumerate(slots):
        a.resource[row, i] = resources.id(s.resource)
        a.capacity[row, i] = s.replicas
        a.memory_mib[row, i] = s.memory_mib
        a.healthy[row, i] = s.healthy
        a.weight[row, i] = s.weight
        a.model[row, i] = models.id(s.model)
        a.gpu[row, i] = s.gpu
        a.numa[row, i] = s.numa
        a.nvgroup[row, i] = s.nvgroup


def unit_memory(s: SlotInfo, hint: int) -> int:
    """Device memory one unit of slot ``s`` takes: all of a whole device; of a share, the
    pod's memory hint, or its fair part without one."""
    if s.replicas <= 1:
        return s.memory_mib
    return hint if hint > 0 else s.memory_mib // s.replicas


def device_ids(slots: Sequence[SlotInfo], used: Sequence[Collection[int]],
               picks: Iterable[tuple[int, int]]) -> list[str]:
    """The device ids of the kernel's ``((column, units), ...)``: a whole device's id, or for
    a shared slot the lowest replicas not in ``used`` (``<uuid>::<replica>``)."""
    ids: list[str] = []
    taken: dict[int, set[int]] = {}
    for col, n in picks:
        info = slots[col]
        for _ in range(n):
            if info.replicas <= 1:
                ids.append(info.device_id)
            else:
                mine = taken.setdefault(col, set())
                r = next(i for i in range(info.replicas) if i not in used[col] and i not in mine)
                mine.add(r)
                ids.append(contract.share_id(info.device_id, r))
    return ids


@dataclasses.dataclass(frozen=True)
class Choice:
    """The devices chosen for one container and the rule that chose them: ``packing`` (the
    kernel), ``topology`` (the kernel found no fit among the offered devices) or
    ``distinct-shares`` (the node spreads a container's shares over distinct GPUs)."""

    ids: list[str]
    rule: str


class NodeRow:
    """One node's inventory as a one-row kernel state, built once (per inventory version) and
    asked many times; :meth:`choose` copies the row per call, so concurrent calls share nothing
    they write."""

    def __init__(self, inventory: contract.Inventory) -> None:
        self.slots = inventory_slots(inventory)
        self.col_of = {s.device_id: i for i, s in enumerate(self.slots)}
        self.resources = Interner()
        self.models = Interner()
        self._base = kslots.empty_slots(numpy, 1, max(len(self.slots), 1))
        write_slots(self._base, 0, self.slots, self.resources, self.models)
        for i, s in enumerate(self.slots):
            self._base.free[0, i] = s.replicas
            self._base.free_memory_mib[0, i] = s.memory_mib
        self._gpu_of = {g.id: p for p, g in enumerate(inventory.gpus)}
        self._gpu_of.update({m.id: self._gpu_of[g.id] for g in inventory.gpus for m in g.mig})
        pos = {g.index: p for p, g in enumerate(inventory.gpus)}
        self._topology = topology.Topology.build(
            [g.numa_node for g in inventory.gpus],
            [(p, pos[link.peer], link.nvlinks) for p, g in enumerate(inventory.gpus)
             for link in g.links if link.peer in pos],
            {},
        )

    def choose(self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int,
               memory_mib: int = 0, distinct_shares: bool = False) -> Choice:
        """``size`` device ids of ``resource`` from ``available`` (kubelet ids: UUIDs or share
        ids), ``must_include`` first. Raises :class:`~gpupack.topology.PreferenceError` for
        ids this node does not have or sizes that do not fit."""
        unknown = [d for d in available if contract.physical_id(d) not in self._gpu_of]
        if unknown:
            raise topology.PreferenceError(f"unknown device ids: {', '.join(unknown)}")
        if distinct_shares and any(self._replicas(d) > 1 for d in available):
            ids = topology.choose_shares(
                available, must_include, size,
                {d: contract.physical_id(d) for d in available},
                {contract.physical_id(d): self._replicas(d) for d in available},
                distinct=True,
            )
            return Choice(ids, "distinct-shares")
        chosen = self._packed(resource, available, must_include, size, memory_mib)
        if len(chosen) == size:
            return Choice(chosen, "packing")
        gpu_of = {d: self._gpu_of[contract.physical_id(d)] for d in available}
        ids = topology.choose(available, must_include, size, dataclasses.replace(self._topology, gpu_of=gpu_of))
        return Choice(ids, "topology")

    def _replicas(self, device: str) -> int:
        col = self.col_of.get(contract.physical_id(device))
        return self.slots[col].replicas if col is not None else 1

    def _packed(self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int,
                memory_mib: int) -> list[str]:
        """The kernel's choice with every device not offered (and every ``must_include`` one)
        counted as in use; fewer than ``size`` ids when the kernel finds no fit."""
        want = size - len(must_include)
        if want <= 0:
            return list(must_include)[:size]
        offered = set(available) | set(must_include)
        used: list[set[int]] = [set() for _ in self.slots]
        row = self._base.rows(numpy.asarray([0]))
        for col, s in enumerate(self.slots):
            if s.resource != resource:
                continue
            ids = [s.device_id] if s.replicas <= 1 else [contract.share_id(s.device_id, r) for r in range(s.replicas)]
            for r, i in enumerate(ids):
                if i not in offered or i in must_include:
                    used[col].add(r if s.replicas > 1 else 0)
                    row.free_memory_mib[0, col] = max(int(row.free_memory_mib[0, col]) - unit_memory(s, memory_mib), 0)
            row.free[0, col] = max(s.replicas - len(used[col]), 0)
        resource_id = self.resources.find(resource)
        if resource_id is None:  # no slot of this resource on the node
            return list(must_include)
        req = kernel.Request(resource_id, want, memory_mib)
        picks = kernel.choose_devices(row, 0, req, numpy)
        if not picks:
            return list(must_include)
        return list(must_include) + device_ids(self.slots, used, picks)
