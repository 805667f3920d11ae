"""The examples parse, use gpupack-scheduler, and request resources the contract knows."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from gpupack import contract

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yaml") if p.name != "fake-node-a100.yaml")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses(path: pathlib.Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs and all(d["apiVersion"] and d["kind"] and d["metadata"]["name"] for d in docs)
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        pod = d["spec"]["template"]
        assert pod["spec"]["schedulerName"] == "gpupack-scheduler"
        for c in pod["spec"]["containers"]:
            gpu = [r for r in c["resources"]["limits"] if contract.is_gpu_resource(r)]
            assert gpu, f"{path.name}: {c['name']} requests no GPU resource"
        hint = pod["metadata"].get("annotations", {}).get(contract.GPU_MEMORY_ANNOTATION)
        if hint is not None:
            assert contract.memory_mib(hint) > 0


def test_examples_cover_whole_mig_shared_and_hpa() -> None:
    text = {p.name: p.read_text() for p in EXAMPLES}
    joined = "\n".join(text.values())
    for needed in ("nvidia.com/gpu: 1", "nvidia.com/mig-1g.10gb: 1", "nvidia.com/gpu.shared: 1",
                   "gpupack.io/gpu-memory", "HorizontalPodAutoscaler", "gpupack_gpu_utilization_ratio"):
        assert needed in joined
