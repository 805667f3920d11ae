"""Packing benchmark: the FGD paper's protocol on an Alibaba GPU trace, every policy, a table.

    .venv/bin/python bench/packing.py /work/shared/data/alibaba-gpu-v2023 [--seeds 42-51] [--policies a,b]

The argument is the folder holding ``openb_node_list_gpu_node.csv`` and
``openb_pod_list_default.csv`` (or ``--nodes FILE --pods FILE``). The trace is read from
there, never copied. Prints the table of medians over the seeds with the published figures,
and writes the summary, plot and placements under ``--out`` (default ``bench-out/packing``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator import main as simulate  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", help="folder with the openb_* CSV files")
    p.add_argument("--nodes", help="openb_node_list_*.csv")
    p.add_argument("--pods", help="openb_pod_list_*.csv")
    p.add_argument("--seeds", default="42-51")
    p.add_argument("--policies", default="")
    p.add_argument("--out", default="bench-out/packing")
    p.add_argument("--jobs", default="")
    a = p.parse_args()
    nodes = a.nodes or (a.folder and str(Path(a.folder) / "openb_node_list_gpu_node.csv"))
    pods = a.pods or (a.folder and str(Path(a.folder) / "openb_pod_list_default.csv"))
    if not nodes or not pods:
        p.error("give the trace folder, or --nodes and --pods")
    argv = ["--trace-nodes", nodes, "--trace-pods", pods, "--protocol", "fgd", "--seeds", a.seeds, "--out", a.out]
    if a.policies:
        argv += ["--policies", a.policies]
    if a.jobs:
        argv += ["--jobs", a.jobs]
    return simulate.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
