"""Small hand-made traces in the Alibaba CSV format, written to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

NODE_HEAD = "sn,cpu_milli,memory_mib,gpu,model\n"
POD_HEAD = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"


def write_trace(folder: Path, nodes: list[str], pods: list[str]) -> tuple[Path, Path]:
    n, p = folder / "openb_node_list_t.csv", folder / "openb_pod_list_t.csv"
    n.write_text(NODE_HEAD + "".join(line + "\n" for line in nodes))
    p.write_text(POD_HEAD + "".join(line + "\n" for line in pods))
    return n, p


@pytest.fixture
def small_trace(tmp_path: Path) -> tuple[Path, Path]:
    """12 nodes of 2, 4 and 8 GPUs; 150 pods of every shape the trace has, with life spans."""
    nodes = [f"n{i},32000,131072,{g},{m}" for i, (g, m) in enumerate([(2, "T4"), (4, "V100M16"), (8, "G2")] * 4)]
    shapes = [(0, 0), (1, 1000), (1, 500), (1, 250), (1, 800), (2, 1000), (4, 1000), (8, 1000)]
    pods = []
    for i in range(150):
        k, milli = shapes[(i * 7) % len(shapes)]
        spec = "T4|V100M16" if i % 11 == 0 and k == 1 else ""
        pods.append(f"p{i},{2000 + 500 * (i % 5)},8192,{k},{milli},{spec},LS,Running,{i * 60},{i * 60 + 3000 + 97 * i},{i * 60}")
    return write_trace(tmp_path, nodes, pods)
