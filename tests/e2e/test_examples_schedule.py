"""Issue 7: the inference examples in ``examples/`` schedule on a real fleet.

No controller-manager runs here, so Deployments make no pods: each example Deployment's pod
template becomes its ``replicas`` pods, as the ReplicaSet controller would make them, kept to
this test's nodes and sent to this cluster's scheduler (which runs our KubeSchedulerConfiguration
under the default name; the examples name ``gpupack-scheduler``, the chart's second scheduler).
The fleet offers what the examples need: H100s with 1g.10gb MIG slices (mixed strategy), H100
shares renamed ``nvidia.com/gpu.shared``, and whole H100s.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import pytest
import yaml

from gpupack import contract

from . import cluster as harness
from . import workloads

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXAMPLES = harness.REPO / "examples"
H100 = ("NVIDIA H100 80GB HBM3", 81559)


def example_pods(group: str) -> list[dict[str, Any]]:
    pods = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "Deployment":
                continue
            template = doc["spec"]["template"]
            for n in range(int(doc["spec"].get("replicas", 1))):
                spec = copy.deepcopy(template["spec"])
                spec["schedulerName"] = "default-scheduler"
                spec["nodeSelector"] = {**spec.get("nodeSelector", {}), harness.GROUP_LABEL: group}
                spec["terminationGracePeriodSeconds"] = 0
                for c in spec["containers"]:  # quantities as the API's strings (YAML reads 1 as a number)
                    for part in ("requests", "limits"):
                        c["resources"][part] = {k: str(v) for k, v in c["resources"].get(part, {}).items()}
                pods.append({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"{doc['metadata']['name']}-{n}", "labels": template["metadata"].get("labels", {}),
                                 "annotations": template["metadata"].get("annotations", {})},
                    "spec": spec,
                })
    return pods


def test_every_example_schedules_and_gets_its_devices(
    cluster: harness.Cluster, group: str, namespace: str, tmp_path: pathlib.Path
) -> None:
    mig = workloads.nvswitch_machine(f"{group}-mig", *H100)
    for g in mig["gpus"][:2]:
        g.update(migEnabled=True, mig=[{"profile": "1g.10gb"}] * 7)
    sharing = tmp_path / "shares.yaml"
    sharing.write_text(yaml.safe_dump({"version": "v1", "sharing": {"timeSlicing": {
        "renameByDefault": True, "resources": [{"name": contract.NVIDIA_GPU, "replicas": 4, "devices": [0, 1]}]}}}))
    mig_node = cluster.add_node(f"{group}-mig", group, mig, ["--mig-strategy=mixed"])
    share_node = cluster.add_node(f"{group}-shr", group, workloads.nvswitch_machine(f"{group}-shr", *H100), [f"--config={sharing}"])
    mig_node.wait_allocatable({contract.mig_resource("1g.10gb"): 14, contract.NVIDIA_GPU: 6})
    share_node.wait_allocatable({contract.NVIDIA_GPU_SHARED: 8, contract.NVIDIA_GPU: 6})

    pods = example_pods(group)
    asked = {r for p in pods for c in p["spec"]["containers"] for r in c["resources"].get("limits", {}) if contract.is_gpu_resource(r)}
    assert asked == {contract.NVIDIA_GPU, contract.NVIDIA_GPU_SHARED, contract.mig_resource("1g.10gb")}
    for pod in pods:
        cluster.core.create_namespaced_pod(namespace, pod)
    names = [p["metadata"]["name"] for p in pods]
    running = cluster.wait_pods(namespace, workloads.all_running(namespace, names), "example pods Running", timeout_s=240)
    workloads.check_allocations(cluster, [running[f"{namespace}/{n}"] for n in names], exact=False)
    # the shared pods' memory hints (24Gi each, 4 per 80 GB H100 would be 96Gi) keep them to 3 a GPU
    shared = [running[f"{namespace}/{n}"] for n in names if n.startswith("chat-shared")]
    per_gpu: dict[str, int] = {}
    for pod in shared:
        ids = contract.decode_assignment(pod.metadata.annotations[contract.DEVICES_ANNOTATION])["server"][contract.NVIDIA_GPU_SHARED]
        for i in ids:
            per_gpu[contract.physical_id(i)] = per_gpu.get(contract.physical_id(i), 0) + 1
    assert max(per_gpu.values()) <= 3, per_gpu
