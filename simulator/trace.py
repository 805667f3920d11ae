"""Reading the Alibaba GPU trace format (``openb_node_list_*.csv``, ``openb_pod_list_*.csv``).

The trace gives each task a GPU count ``num_gpu`` and a per-GPU request ``gpu_milli``
(thousandths of a GPU; below 1000 a shared GPU). It maps onto the kernel as time-sliced GPUs
with memory hints: every GPU is one slot of the resource ``nvidia.com/gpu.shared`` with
:data:`REPLICAS` shares and :data:`MILLI` "MiB" of memory, one MiB standing for one
milli-GPU; a sharing task asks one share with a memory hint of ``gpu_milli``; a task of
``k`` whole GPUs asks ``k`` shares with a hint of a whole GPU (so each takes a GPU of its
own). The kernel's per-slot rule ``units = min(free shares, free memory // hint)`` is then
exactly the trace's "free milli per GPU >= gpu_milli".

Every input is bounded (:data:`MAX_NODES`, :data:`MAX_PODS`, :data:`MAX_GPUS_PER_NODE`,
:data:`MAX_AMOUNT`, :data:`MAX_SECONDS`) and every refusal is one :class:`TraceError` whose
message names the file, the line and the field. :func:`fingerprint` tells one trace from
another by content, so the report can say when a run is on the FGD paper's own trace.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy

from simulator.model import Cluster, Task, build_slots

#: The resource every trace GPU is advertised as.
RESOURCE = "nvidia.com/gpu.shared"
#: Milli-GPUs in one GPU: the memory of a trace slot.
MILLI = 1000
#: Shares per GPU: more than any GPU can hold tasks, so memory (milli) is what binds.
REPLICAS = 1000

#: Nodes a nodes file may hold: 80 times the paper's 1,213, and the slot arrays stay in memory.
MAX_NODES = 100_000
#: Pods a pods file may hold: 600 times the paper's 8,152.
MAX_PODS = 5_000_000
#: GPUs on one node (and whole GPUs one pod asks): the largest machines have 8 to 16.
MAX_GPUS_PER_NODE = 64
#: CPU millicores or memory MiB of one node or pod: a million cores, about a PiB; far from int64.
MAX_AMOUNT = 10**9
#: Seconds on the trace's clock, either side of zero: about 31,700 years.
MAX_SECONDS = 1e12

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file, line and field."""


def _number(row: dict[str, str], key: str, where: str) -> float | None:
    """The field as a finite number; ``None`` when empty."""
    text = row[key].strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"{where}: {key}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise TraceError(f"{where}: {key}={text!r} is not a finite number")
    return value


def _int(row: dict[str, str], key: str, where: str, high: int, default: int | None = None) -> int:
    """A whole number from 0 to ``high`` (``1000`` and ``1000.0`` alike); ``default`` when empty."""
    value = _number(row, key, where)
    text = row[key].strip()
    if value is None:
        if default is None:
            raise TraceError(f"{where}: {key} is empty")
        return default
    if not value.is_integer():
        raise TraceError(f"{where}: {key}={text!r} is not a whole number")
    if not 0 <= value <= high:
        raise TraceError(f"{where}: {key}={text!r} is out of range 0..{high:,}")
    return int(value)


def _seconds(row: dict[str, str], key: str, where: str, default: float) -> float:
    value = _number(row, key, where)
    if value is None:
        return default
    if abs(value) > MAX_SECONDS:
        raise TraceError(f"{where}: {key}={row[key].strip()!r} is out of range -{MAX_SECONDS:.0e}..{MAX_SECONDS:.0e}")
    return value


def _name(row: dict[str, str], key: str, where: str) -> str:
    name = row[key].strip()
    if not name:
        raise TraceError(f"{where}: {key} is empty")
    return name


def _rows(path: Path, needed: Iterable[str], most: int, what: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``("FILE:LINE", row)`` for each row; a :class:`TraceError` for anything not a bounded CSV."""
    try:
        f = path.open(newline="", encoding="utf-8-sig")  # a BOM, as spreadsheets write it, is not a column
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TraceError(f"{path}: is a directory, not a CSV file") from None
    except OSError as err:
        raise TraceError(f"{path}: cannot open: {err.strerror or err}") from None
    with f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise TraceError(f"{path}: empty, no header line (wants {', '.join(needed)})")
            missing = [k for k in needed if k not in header]
            if missing:
                raise TraceError(f"{path}:1: missing columns {', '.join(missing)}")
            twice = sorted({k for k in header if header.count(k) > 1})
            if twice:
                raise TraceError(f"{path}:1: column {', '.join(twice)} more than once in the header")
            count = 0
            for fields in reader:
                where = f"{path}:{reader.line_num}"
                if not fields:
                    continue  # a blank line
                if len(fields) != len(header):
                    raise TraceError(f"{where}: {len(fields)} fields, the header has {len(header)}")
                count += 1
                if count > most:
                    raise TraceError(f"{path}: more than {most:,} {what}, the most a trace may hold")
                yield where, dict(zip(header, fields))
        except UnicodeDecodeError as err:
            raise TraceError(f"{path}: not a UTF-8 CSV text file (byte {err.object[err.start]:#04x} "
                             f"near line {reader.line_num + 1})") from None
        except csv.Error as err:
            raise TraceError(f"{path}:{reader.line_num}: not CSV: {err}") from None


def load(nodes_path: str | Path, pods_path: str | Path) -> tuple[Cluster, list[Task]]:
    """The trace's GPU nodes as a cluster and its pods as tasks, in file order."""
    nodes_path, pods_path = Path(nodes_path), Path(pods_path)
    models: dict[str, int] = {}
    first: dict[str, str] = {}  # node name -> where it was first seen
    cpu: list[int] = []
    mem: list[int] = []
    gpus: list[list[tuple[int, int, int, float, int, int]]] = []
    for where, row in _rows(nodes_path, NODE_COLUMNS, MAX_NODES, "nodes"):
        sn = _name(row, "sn", where)
        if sn in first:
            raise TraceError(f"{where}: sn={sn!r} again (first at {first[sn]})")
        first[sn] = where
        n = _int(row, "gpu", where, MAX_GPUS_PER_NODE)
        cpu.append(_int(row, "cpu_milli", where, MAX_AMOUNT))
        mem.append(_int(row, "memory_mib", where, MAX_AMOUNT))
        model = models.setdefault(row["model"].strip(), len(models))
        gpus.append([(0, REPLICAS, MILLI, 1.0, model, g) for g in range(n)])
    if not gpus:
        raise TraceError(f"{nodes_path}: no nodes (a header and no rows)")
    if not any(gpus):
        raise TraceError(f"{nodes_path}: no node has a GPU (every gpu is 0)")
    width = max(len(g) for g in gpus)
    cluster = Cluster(
        names=tuple(first),
        cpu_milli=numpy.asarray(cpu, dtype=numpy.int64),
        memory_mib=numpy.asarray(mem, dtype=numpy.int64),
        slots=build_slots(gpus, width),
        resources=(RESOURCE,),
        models=tuple(models),
    )
    tasks: list[Task] = []
    for where, row in _rows(pods_path, POD_COLUMNS, MAX_PODS, "pods"):
        name = _name(row, "name", where)
        k = _int(row, "num_gpu", where, MAX_GPUS_PER_NODE)
        milli = _int(row, "gpu_milli", where, MILLI, 0)
        if k > 1 and milli != MILLI:
            raise TraceError(f"{where}: num_gpu={k}, gpu_milli={milli}: not a whole-GPU or shared request")
        spec = [m.strip() for m in (row.get("gpu_spec") or "").split("|") if m.strip()]
        allowed = frozenset(models[m] for m in spec if m in models)
        if spec and not allowed:
            allowed = frozenset({-2})  # asks only for models the cluster lacks: fits nowhere
        gpu = k > 0 and milli > 0
        start = _seconds(row, "creation_time", where, 0.0) if "creation_time" in row else 0.0
        end = _seconds(row, "deletion_time", where, math.inf) if "deletion_time" in row else math.inf
        if end < start:
            raise TraceError(f"{where}: deletion_time={row['deletion_time'].strip()!r} is before "
                             f"creation_time={row['creation_time'].strip()!r}")
        tasks.append(Task(
            name=name,
            cpu_milli=_int(row, "cpu_milli", where, MAX_AMOUNT),
            memory_mib=_int(row, "memory_mib", where, MAX_AMOUNT),
            resource=0 if gpu else -1,
            count=k if gpu else 0,
            gpu_memory_mib=milli if gpu else 0,
            models=allowed if gpu else frozenset(),
            gpu_milli=k * milli if gpu else 0,
            start=start,
            end=end,
        ))
    if not tasks:
        raise TraceError(f"{pods_path}: no pods (a header and no rows)")
    return cluster, tasks


def fingerprint(cluster: Cluster, tasks: Sequence[Task]) -> str:
    """SHA-256 (hex) of what a run is given, whatever the files were called: per node its name,
    CPU, memory and each GPU slot (model, capacity, memory, weight); per task, in order, every
    field, its GPU models by name. A changed row, a rewritten task (``--variant``) or a cut
    (``--max-pods``) gives another fingerprint."""
    h = hashlib.sha256()
    s = cluster.slots
    present = (numpy.asarray(s.capacity) > 0).tolist()
    cols = [numpy.asarray(a).tolist() for a in (s.model, s.capacity, s.memory_mib, s.weight)]

    def model(m: int) -> str:
        return cluster.models[m] if 0 <= m < len(cluster.models) else f"#{m}"

    for i, name in enumerate(cluster.names):
        slots = [[model(cols[0][i][j]), cols[1][i][j], cols[2][i][j], cols[3][i][j]]
                 for j, here in enumerate(present[i]) if here]
        line = ["node", name, int(cluster.cpu_milli[i]), int(cluster.memory_mib[i]), slots]
        h.update(json.dumps(line).encode() + b"\n")
    for t in tasks:
        line = ["task", t.name, t.cpu_milli, t.memory_mib, t.resource, t.count, t.gpu_memory_mib, t.gpu_milli,
                sorted(model(m) for m in t.models), repr(t.start), repr(t.end)]
        h.update(json.dumps(line).encode() + b"\n")
    return h.hexdigest()
