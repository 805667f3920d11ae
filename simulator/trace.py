"""Reading the Alibaba GPU trace format (``openb_node_list_*.csv``, ``openb_pod_list_*.csv``).

The trace gives each task a GPU count ``num_gpu`` and a per-GPU request ``gpu_milli``
(thousandths of a GPU; below 1000 a shared GPU). It maps onto the kernel as time-sliced GPUs
with memory hints: every GPU is one slot of the resource ``nvidia.com/gpu.shared`` with
:data:`REPLICAS` shares and :data:`MILLI` "MiB" of memory, one MiB standing for one
milli-GPU; a sharing task asks one share with a memory hint of ``gpu_milli``; a task of
``k`` whole GPUs asks ``k`` shares with a hint of a whole GPU (so each takes a GPU of its
own). The kernel's per-slot rule ``units = min(free shares, free memory // hint)`` is then
exactly the trace's "free milli per GPU >= gpu_milli".
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path

import numpy

from simulator.model import Cluster, Task, build_slots

#: The resource every trace GPU is advertised as.
RESOURCE = "nvidia.com/gpu.shared"
#: Milli-GPUs in one GPU: the memory of a trace slot.
MILLI = 1000
#: Shares per GPU: more than any GPU can hold tasks, so memory (milli) is what binds.
REPLICAS = 1000


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file, line and field."""


def _int(row: dict[str, str], key: str, where: str, default: int | None = None) -> int:
    text = (row.get(key) or "").strip()
    if not text and default is not None:
        return default
    try:
        return int(float(text))
    except ValueError:
        raise TraceError(f"{where}: {key}={text!r} is not a number") from None


def _rows(path: Path, needed: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in needed if k not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path}: missing columns {', '.join(missing)}")
        return [(f"{path}:{i + 2}", row) for i, row in enumerate(reader)]


def load(nodes_path: str | Path, pods_path: str | Path) -> tuple[Cluster, list[Task]]:
    """The trace's GPU nodes as a cluster and its pods as tasks, in file order."""
    models: dict[str, int] = {}
    names: list[str] = []
    cpu: list[int] = []
    mem: list[int] = []
    gpus: list[list[tuple[int, int, int, float, int, int]]] = []
    for where, row in _rows(Path(nodes_path), ("sn", "cpu_milli", "memory_mib", "gpu", "model")):
        n = _int(row, "gpu", where)
        model = models.setdefault(row["model"].strip(), len(models))
        names.append(row["sn"].strip())
        cpu.append(_int(row, "cpu_milli", where))
        mem.append(_int(row, "memory_mib", where))
        gpus.append([(0, REPLICAS, MILLI, 1.0, model, g) for g in range(n)])
    width = max((len(g) for g in gpus), default=0)
    cluster = Cluster(
        names=tuple(names),
        cpu_milli=numpy.asarray(cpu, dtype=numpy.int64),
        memory_mib=numpy.asarray(mem, dtype=numpy.int64),
        slots=build_slots(gpus, max(width, 1)),
        resources=(RESOURCE,),
        models=tuple(models),
    )
    tasks: list[Task] = []
    cols = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
    for where, row in _rows(Path(pods_path), cols):
        k = _int(row, "num_gpu", where)
        milli = _int(row, "gpu_milli", where, 0)
        if k < 0 or not 0 <= milli <= MILLI or (k > 1 and milli != MILLI):
            raise TraceError(f"{where}: num_gpu={k}, gpu_milli={milli}: not a whole-GPU or shared request")
        spec = [m.strip() for m in (row.get("gpu_spec") or "").split("|") if m.strip()]
        allowed = frozenset(models[m] for m in spec if m in models)
        if spec and not allowed:
            allowed = frozenset({-2})  # asks only for models the cluster lacks: fits nowhere
        gpu = k > 0 and milli > 0
        start = float(_int(row, "creation_time", where, 0))
        end_text = (row.get("deletion_time") or "").strip()
        tasks.append(Task(
            name=row["name"].strip(),
            cpu_milli=_int(row, "cpu_milli", where),
            memory_mib=_int(row, "memory_mib", where),
            resource=0 if gpu else -1,
            count=k if gpu else 0,
            gpu_memory_mib=milli if gpu else 0,
            models=allowed if gpu else frozenset(),
            gpu_milli=k * milli if gpu else 0,
            start=start,
            end=float(end_text) if end_text else math.inf,
        ))
    return cluster, tasks
