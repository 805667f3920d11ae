"""``gpupack explain``: for one pod, every node's verdict, score and reason, as a table.

Reads the cluster from a ``kubectl get nodes,pods -o json`` snapshot, or lists it live with
``--kubeconfig``; decides exactly as the extender would (same cache, kernel and policy).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TextIO

import yaml

from gpupack import kernel
from scheduler_ext.cache import ClusterCache, from_snapshot
from scheduler_ext.decide import Decider, NodeVerdict
from scheduler_ext.podspec import pod_demand
from scheduler_ext.wire import KubeObject


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpupack explain", description=__doc__.splitlines()[0] if __doc__ else None)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--snapshot", help="a `kubectl get nodes,pods -o json` file")
    src.add_argument("--kubeconfig", help="list the live cluster with this kubeconfig")
    p.add_argument("--pod", required=True, help="the pod, as a YAML or JSON file ('-' for stdin)")
    p.add_argument("--policy", default=kernel.DEFAULT_POLICY, choices=sorted(kernel.POLICIES))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _load_pod(path: str) -> KubeObject:
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or doc.get("kind", "Pod") != "Pod":
        raise ValueError(f"{path}: expected a Pod object")
    meta = doc.setdefault("metadata", {})
    meta.setdefault("uid", "explain-" + str(meta.get("name", "pod")))
    return doc


def _live_cache(kubeconfig: str) -> ClusterCache:
    from scheduler_ext.main import _core_v1
    from scheduler_ext.watch import KubeWatchSource

    source = KubeWatchSource(_core_v1(kubeconfig))
    cache = ClusterCache()
    cache.replace_nodes(source.list("Node")[0])
    cache.replace_pods(source.list("Pod")[0])
    return cache


def table(rows: Sequence[NodeVerdict], out: TextIO) -> None:
    ordered = sorted(rows, key=lambda v: (not v.fits, -v.level, -v.raw if v.fits else 0.0, v.node))
    header = ("NODE", "VERDICT", "SCORE", "RAW", "REASON")
    cells = [
        (v.node, "fits" if v.fits else ("never" if v.unresolvable else "not now"),
         str(v.level) if v.fits else "-", f"{v.raw:.4f}" if v.fits else "-", v.reason)
        for v in ordered
    ]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(4)]
    for r in [header, *cells]:
        out.write("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] + "\n")


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        pod = _load_pod(args.pod)
        cache = from_snapshot(args.snapshot) if args.snapshot else _live_cache(args.kubeconfig)
    except (OSError, ValueError, yaml.YAMLError) as err:
        print(f"gpupack explain: {err}", file=sys.stderr)
        return 2
    _, names = cache.all_rows()
    verdicts = Decider(cache, args.policy).verdicts(pod_demand(pod), names, detail=True)
    if args.json:
        json.dump([{"node": v.node, "fits": v.fits, "unresolvable": v.unresolvable, "score": v.level,
                    "raw": v.raw if v.fits else None, "reason": v.reason} for v in verdicts], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        table(verdicts, sys.stdout)
    return 0 if any(v.fits for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
