"""``gpupack explain``: for one pod, every node's verdict, score and reason, as a table.

Reads the cluster from a ``kubectl get nodes,pods -o json`` snapshot, or lists it live with
``--kubeconfig``; decides exactly as the extender would (same cache, kernel and policy).
Files it cannot use are refused in one line naming the file and the field (exit 2); a table
where no node fits ends with a line that counts why (exit 1). ``examples/explain/`` holds a
snapshot and pods to try it on.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

from gpupack import kernel
from scheduler_ext import podspec
from scheduler_ext.cache import SNAPSHOT_HOWTO, ClusterCache, from_snapshot
from scheduler_ext.decide import Decider, NodeVerdict
from scheduler_ext.podspec import PodDemand, pod_demand
from scheduler_ext.wire import KubeObject

#: Largest pod file read (bytes), 10 MiB; a larger one is refused unread. The API server takes
#: no request body over 3 MiB and etcd keeps objects of at most 1.5 MiB, so no real Pod is near.
MAX_POD_BYTES = 10 * 2**20

#: Kinds whose ``spec.template`` is a Pod template, for the message that refuses them.
_TEMPLATE_AT = {"Deployment": "spec.template", "StatefulSet": "spec.template", "DaemonSet": "spec.template",
                "ReplicaSet": "spec.template", "ReplicationController": "spec.template", "Job": "spec.template",
                "CronJob": "spec.jobTemplate.spec.template"}

_EPILOG = (
    "exit status: 0 when some node fits, 1 when none does (the last line counts why), "
    "2 when a file cannot be used (one line names the file and the field). "
    "To try it: gpupack explain --snapshot examples/explain/cluster.json --pod examples/explain/pod-whole-gpu.yaml"
)


def _policy_help() -> str:
    """Each policy with the first line of its module's docstring, the summary of its formula."""
    parts = []
    for name in sorted(kernel.POLICIES):
        doc = (sys.modules[kernel.POLICIES[name].score.__module__].__doc__ or "").strip()
        summary = doc.splitlines()[0].split(": ", 1)[-1].rstrip(".") if doc else ""
        parts.append(f"{name}: {summary}" if summary else name)
    return ("scoring policy, as the extender's --policy. " + ". ".join(parts).replace("%", "%%")
            + ". Default: %(default)s")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpupack explain", description=__doc__.splitlines()[0].replace("``", "") if __doc__ else None,
                                epilog=_EPILOG)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--snapshot", help="a `kubectl get nodes,pods -A -o json` file (-A: the pods of every namespace)")
    src.add_argument("--kubeconfig", help="list the live cluster with this kubeconfig")
    p.add_argument("--pod", required=True, help="the pod, as a YAML or JSON file ('-' for stdin)")
    p.add_argument("--policy", default=kernel.DEFAULT_POLICY, choices=sorted(kernel.POLICIES), help=_policy_help())
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _read(path: str, limit: int) -> bytes:
    """The bytes of ``path`` ('-': stdin), at most ``limit``; ValueError naming it otherwise."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size  # a regular file's; 0 for a pipe, read below
                if size > limit:
                    raise ValueError(f"{path}: {size} bytes, more than a Pod needs ({limit})")
                data = f.read(limit + 1)
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror or err})") from err
    if len(data) > limit:
        raise ValueError(f"{path}: more than {limit} bytes, more than a Pod needs")
    return data


def _parse(path: str, data: bytes) -> Any:
    """The one YAML (or JSON) document in ``data``; ValueError naming the file, and the line and
    column where the parser stopped."""
    try:  # UTF-8, or UTF-16 with its byte-order mark (PowerShell's `>`), as YAML allows
        text = data.decode("utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not text (byte {err.start} is 0x{data[err.start]:02x}); give the Pod as YAML or JSON") from err
    if path.endswith(".json"):  # JSON's own parser says where it stopped, in its words; YAML reads the rest
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON: line {err.lineno} column {err.colno}: {err.msg}") from err
        except RecursionError as err:
            raise ValueError(f"{path}: not JSON this program can read: nested too deeply") from err
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        raise ValueError(f"{path}: not YAML: {where}{' '.join(str(err.problem or err.context).split())}") from err
    except yaml.reader.ReaderError as err:  # a control character, as in a binary file
        char = f"U+{err.character:04X}" if isinstance(err.character, int) else repr(err.character)
        raise ValueError(f"{path}: not YAML: {char} at offset {err.position}: {err.reason}") from err
    except (yaml.YAMLError, ValueError, OverflowError) as err:  # e.g. `date: 2024-13-45`
        raise ValueError(f"{path}: not YAML this program can read: {' '.join(str(err).split())}") from err
    except RecursionError as err:
        raise ValueError(f"{path}: not YAML this program can read: nested too deeply") from err
    if not docs:
        raise ValueError(f"{path}: empty; give a Pod as YAML or JSON")
    if len(docs) > 1:
        kinds = ", ".join(str(d.get("kind", "?")) if isinstance(d, dict) else type(d).__name__ for d in docs)
        raise ValueError(f"{path}: {len(docs)} YAML documents ({kinds}); give one Pod")
    return docs[0]


def _load_pod(path: str) -> tuple[KubeObject, PodDemand]:
    """The Pod in ``path`` and what the extender reads from it; ValueError, one line naming the
    file and the field, for anything the extender would refuse or could not read."""
    doc = _parse(path, _read(path, MAX_POD_BYTES))
    kind = doc.get("kind", "Pod") if isinstance(doc, dict) else "Pod"
    if not isinstance(kind, str):
        raise ValueError(f"{path}: kind: expected a string, got {kind!r}")
    if kind in ("List", "PodList"):
        raise ValueError(f"{path}: is a {kind}; give one Pod (e.g. `kubectl get pod NAME -o yaml`)")
    if kind != "Pod":
        template = _TEMPLATE_AT.get(kind)
        raise ValueError(f"{path}: is a {kind}; give a Pod" + (f" (e.g. its {template} as a Pod)" if template else ""))
    try:
        podspec.check_shape(doc)  # the extender's HTTP edge answers 400 to these
    except podspec.ShapeError as err:
        raise ValueError(f"{path}: {err}") from err
    if not (doc.get("spec") or {}).get("containers"):
        raise ValueError(f"{path}: Pod.spec.containers: missing; a Pod has at least one container")
    meta = doc.get("metadata") or {}
    doc["metadata"] = meta
    meta.setdefault("uid", "explain-" + str(meta.get("name", "pod")))
    demand = pod_demand(doc)
    if demand.error:
        raise ValueError(f"{path}: the extender cannot read this pod's request: {demand.error}")
    return doc, demand


def _live_cache(kubeconfig: str) -> ClusterCache:
    from scheduler_ext.main import _core_v1
    from scheduler_ext.watch import KubeWatchSource

    source = KubeWatchSource(_core_v1(kubeconfig))
    cache = ClusterCache()
    cache.replace_nodes(source.list("Node")[0])
    cache.replace_pods(source.list("Pod")[0])
    return cache


def _one_line(err: Exception) -> str:
    """An API client's error in one line (``ApiException`` prints its headers and body)."""
    status = getattr(err, "status", None)
    if status:
        return f"HTTP {status} {getattr(err, 'reason', '')}".rstrip()
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def table(rows: Sequence[NodeVerdict], out: TextIO) -> None:
    # the nodes that fit, best first; then those that could once pods finish; then the others
    ordered = sorted(rows, key=lambda v: (not v.fits, v.unresolvable, -v.level, -v.raw if v.fits else 0.0, v.node))
    header = ("NODE", "VERDICT", "SCORE", "RAW", "REASON")
    cells = [
        (v.node, "fits" if v.fits else ("never" if v.unresolvable else "not now"),
         str(v.level) if v.fits else "-", f"{v.raw:.4f}" if v.fits else "-", v.reason)
        for v in ordered
    ]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(4)]
    for r in [header, *cells]:
        out.write("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] + "\n")


def none_fits(rows: Sequence[NodeVerdict]) -> str:
    """The line under a table where no node fits: how many could later, how many never can."""
    later = sum(1 for v in rows if not v.unresolvable)
    never = len(rows) - later
    parts = []
    if later:
        parts.append(f"{later} {'has' if later == 1 else 'have'} too few free devices now")
    if never:
        parts.append(f"{never} never can")
    return "no node fits this pod: " + ", ".join(parts)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        pod, demand = _load_pod(args.pod)
        cache = from_snapshot(args.snapshot) if args.snapshot else None
    except ValueError as err:
        print(f"gpupack explain: {err}", file=sys.stderr)
        return 2
    if cache is None:
        try:
            cache = _live_cache(args.kubeconfig)
        except Exception as err:  # the API client's many errors (config, connection, HTTP), in one line
            print(f"gpupack explain: cannot list the cluster of {args.kubeconfig}: {_one_line(err)}", file=sys.stderr)
            return 2
    _, names = cache.all_rows()
    if not names:
        what = f"{args.snapshot}: the snapshot holds no nodes; {SNAPSHOT_HOWTO}" if args.snapshot \
            else f"the cluster of {args.kubeconfig} lists no nodes"
        print(f"gpupack explain: {what}", file=sys.stderr)
        return 2
    verdicts = Decider(cache, args.policy).verdicts(demand, names, detail=True)
    fits = any(v.fits for v in verdicts)
    try:
        if args.json:
            json.dump([{"node": v.node, "fits": v.fits, "unresolvable": v.unresolvable, "score": v.level,
                        "raw": v.raw if v.fits else None, "reason": v.reason} for v in verdicts], sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            table(verdicts, sys.stdout)
        if not fits:  # on stdout under the table; on stderr with --json, whose stdout stays JSON
            print(none_fits(verdicts), file=sys.stderr if args.json else sys.stdout)
        elif not demand.wants_gpu:
            print(f"{pod['metadata'].get('name', 'this pod')} asks for no GPU: every node fits as far as gpupack is "
                  "concerned (CPU and memory are kube-scheduler's)", file=sys.stderr if args.json else sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
