"""Scenarios 1 and 2 on a mixed fleet: MIG (mixed strategy), time-sliced shares, AMD, Intel.

Four nodes, each a real gpupack-device-plugin (fake backend) under the kubelet's device manager:

- ``a100``: 8x A100-SXM4-40GB, ``--mig-strategy mixed``; GPUs 0-3 split into 7x ``1g.5gb``,
  GPUs 4-5 into 2x ``3g.20gb``, GPUs 6-7 whole;
- ``h100``: 8x H100 80GB; GPUs 0-3 time-sliced into 16 shares each, advertised renamed as
  ``nvidia.com/gpu.shared``; GPUs 4-7 whole;
- ``amd``: 8x MI300X (``amd.com/gpu``);
- ``intel``: 4x Flex on i915 (``gpu.intel.com/i915``).

Then 81 inference pods go through kube-scheduler and the extender. Packing, by hand (every
class of request lives on one node, so each class packs on its own):

- ``1g.5gb``: 19 single + 1 two-container pod = 21 slices = 3 GPUs x 7 -> 1 of 4 untouched;
- ``3g.20gb``: 2 slices = 1 GPU x 2 -> 1 of 2 untouched;
- shares: 48 pods x 1 share (memory hint 4Gi; 16 x 4Gi = 64Gi <= 80Gi) = 3 GPUs x 16 -> 1 of 4
  untouched;
- whole NVIDIA: the 4-GPU pod takes the H100's 4 whole GPUs, the 2-GPU pod the A100's 2;
- AMD: 5 x 1 + 1 x 2 = 7 of 8 -> 1 untouched; Intel: 3 x 1 of 4 -> 1 untouched.
"""

from __future__ import annotations

import collections
import pathlib
import uuid
from typing import Any

import pytest
import yaml

from gpupack import contract

from . import cluster as harness
from . import workloads

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MIG_1G = contract.mig_resource("1g.5gb")
MIG_3G = contract.mig_resource("3g.20gb")
H100 = ("NVIDIA H100 80GB HBM3", 81559)


def a100_mig(name: str) -> dict[str, Any]:
    machine = workloads.nvswitch_machine(name)
    for g in machine["gpus"][:4]:
        g.update(migEnabled=True, mig=[{"profile": "1g.5gb"}] * 7)
    for g in machine["gpus"][4:6]:
        g.update(migEnabled=True, mig=[{"profile": "3g.20gb"}] * 2)
    return machine


def amd_machine(name: str) -> dict[str, Any]:
    return {
        "version": contract.INVENTORY_VERSION,
        "gpus": [
            {"id": "GPU-" + uuid.uuid5(uuid.NAMESPACE_URL, f"gpupack-e2e/{name}/{i}").hex[:16], "index": i,
             "vendor": "amd", "numaNode": i // 4}
            for i in range(8)
        ],
    }


def intel_machine(name: str) -> dict[str, Any]:
    return {
        "version": contract.INVENTORY_VERSION,
        "gpus": [{"index": i, "vendor": "intel", "driver": "i915", "numaNode": i // 2} for i in range(4)],
    }


def physical_gpus_touched(ids: list[str], node: harness.SimNode, resource_ids: dict[str, str]) -> set[str]:
    """GPU UUIDs behind kubelet device ids (a share shows its GPU, a MIG device its parent)."""
    return {resource_ids.get(contract.physical_id(i), contract.physical_id(i)) for i in ids}


@pytest.fixture
def fleet(cluster: harness.Cluster, group: str, tmp_path: pathlib.Path) -> dict[str, harness.SimNode]:
    sharing = tmp_path / "h100.yaml"
    sharing.write_text(yaml.safe_dump({
        "version": "v1",
        "sharing": {"timeSlicing": {"renameByDefault": True,
                                    "resources": [{"name": contract.NVIDIA_GPU, "replicas": 16, "devices": [0, 1, 2, 3]}]}},
    }))
    nodes = {
        "a100": cluster.add_node(f"{group}-a100", group, a100_mig(f"{group}-a100"), ["--mig-strategy=mixed"]),
        "h100": cluster.add_node(f"{group}-h100", group, workloads.nvswitch_machine(f"{group}-h100", *H100),
                                 [f"--config={sharing}"]),
        "amd": cluster.add_node(f"{group}-amd", group, amd_machine(f"{group}-amd")),
        "intel": cluster.add_node(f"{group}-intel", group, intel_machine(f"{group}-intel")),
    }
    nodes["a100"].wait_allocatable({MIG_1G: 28, MIG_3G: 4, contract.NVIDIA_GPU: 2})
    nodes["h100"].wait_allocatable({contract.NVIDIA_GPU_SHARED: 64, contract.NVIDIA_GPU: 4})
    nodes["amd"].wait_allocatable({contract.AMD_GPU: 8})
    nodes["intel"].wait_allocatable({contract.INTEL_I915: 4})
    return nodes


def inventory_of(cluster: harness.Cluster, node: harness.SimNode) -> contract.Inventory:
    n = cluster.wait_node(node.name, lambda n: (n.metadata.annotations or {}).get(contract.INVENTORY_ANNOTATION),
                          "inventory published", timeout_s=30)
    return contract.decode_inventory(n.metadata.annotations[contract.INVENTORY_ANNOTATION])


def test_mixed_fleet_advertises_and_publishes(cluster: harness.Cluster, fleet: dict[str, harness.SimNode]) -> None:
    a100 = inventory_of(cluster, fleet["a100"])
    assert a100.mig_strategy == "mixed"
    assert sorted(m.profile for g in a100.gpus for m in g.mig) == ["1g.5gb"] * 28 + ["3g.20gb"] * 4
    assert [g.resource for g in a100.gpus[6:]] == [contract.NVIDIA_GPU] * 2
    h100 = inventory_of(cluster, fleet["h100"])
    assert [g.replicas for g in h100.gpus] == [16] * 4 + [1] * 4
    assert {g.memory_mib for g in h100.gpus} == {H100[1]}
    amd = inventory_of(cluster, fleet["amd"])
    assert [g.vendor for g in amd.gpus] == ["amd"] * 8
    intel = inventory_of(cluster, fleet["intel"])
    assert [g.resource for g in intel.gpus] == [contract.INTEL_I915] * 4
    labels = {k: cluster.core.read_node(n.name).metadata.labels for k, n in fleet.items()}
    assert labels["a100"][contract.LABEL_MIG_STRATEGY] == "mixed"
    assert labels["h100"][contract.LABEL_SHARING] == "time-slicing"
    assert labels["amd"][contract.LABEL_VENDOR] == "amd"
    assert labels["intel"][contract.LABEL_COUNT] == "4"


def test_a_hundred_inference_pods(
    cluster: harness.Cluster, fleet: dict[str, harness.SimNode], group: str, namespace: str
) -> None:
    share_hint = {contract.GPU_MEMORY_ANNOTATION: "4Gi"}
    pods: list[tuple[str, dict[str, int], int, dict[str, str]]] = [
        ("whole-4", {contract.NVIDIA_GPU: 4}, 1, {}),
        ("whole-2", {contract.NVIDIA_GPU: 2}, 1, {}),
        ("mig-pair", {MIG_1G: 1}, 2, {}),
        *[(f"mig1g-{i}", {MIG_1G: 1}, 1, {}) for i in range(19)],
        *[(f"mig3g-{i}", {MIG_3G: 1}, 1, {}) for i in range(2)],
        *[(f"share-{i}", {contract.NVIDIA_GPU_SHARED: 1}, 1, share_hint) for i in range(48)],
        *[(f"amd-{i}", {contract.AMD_GPU: 1}, 1, {}) for i in range(5)],
        ("amd-pair", {contract.AMD_GPU: 2}, 1, {}),
        *[(f"intel-{i}", {contract.INTEL_I915: 1}, 1, {}) for i in range(3)],
    ]
    assert len(pods) == 81
    for name, resources, containers, annotations in pods:
        cluster.core.create_namespaced_pod(
            namespace, workloads.gpu_pod(name, group, resources, containers=containers, annotations=annotations))
    running = cluster.wait_pods(namespace, workloads.all_running(namespace, [p[0] for p in pods]),
                                "81 pods Running", timeout_s=400)

    # every class packed as computed in the module docstring (judged on the extender's placement)
    a100, h100 = (inventory_of(cluster, fleet[k]) for k in ("a100", "h100"))
    parent = {m.id: g.id for g in a100.gpus for m in g.mig}
    by_resource: dict[str, list[str]] = collections.defaultdict(list)
    for placed in workloads.annotated_by_node(running.values()).values():
        for resource, ids in placed.items():
            by_resource[resource] += ids
    touched = {r: physical_gpus_touched(ids, fleet["a100"], parent) for r, ids in by_resource.items()}
    assert len(touched[MIG_1G]) == 3, touched[MIG_1G]
    assert len(touched[MIG_3G]) == 1, touched[MIG_3G]
    assert len(touched[contract.NVIDIA_GPU_SHARED]) == 3, collections.Counter(
        contract.physical_id(i) for i in by_resource[contract.NVIDIA_GPU_SHARED])
    assert len(touched[contract.AMD_GPU]) == 7 and len(touched[contract.INTEL_I915]) == 3
    whole = {pod: contract.decode_assignment(
                 running[f"{namespace}/{pod}"].metadata.annotations[contract.DEVICES_ANNOTATION])["main"][contract.NVIDIA_GPU]
             for pod in ("whole-4", "whole-2")}
    assert set(whole["whole-4"]) == {g.id for g in h100.gpus[4:]}
    assert set(whole["whole-2"]) == {g.id for g in a100.gpus[6:]}
    # then the truth: where the kubelet gave other devices in the burst, the plugin corrects
    # the annotation (PodResources), so each container ends with exactly its annotated devices
    truth = cluster.wait_pods(namespace, workloads.truthful(cluster, namespace, [p[0] for p in pods]),
                              "every annotation equal to what the kubelet gave", timeout_s=120)
    in_use = workloads.check_allocations(cluster, truth.values(), exact=True)
    assert sum(len(v) for v in in_use.values()) == 4 + 2 + 21 + 2 + 48 + 7 + 3


def test_a_burst_of_same_size_pods_uses_exactly_the_annotated_devices(
    cluster: harness.Cluster, fleet: dict[str, harness.SimNode], group: str, namespace: str
) -> None:
    """Twelve identical pods at once. Together they get exactly the slices the extender chose;
    which of them gets which may differ from the first annotations (GetPreferredAllocation does
    not say which pod it is for), and the plugin then corrects them: in the end each pod's
    annotation is exactly what it received."""
    # Created in the reverse of name order: a plugin that orders pods bound in the same second
    # by name (as it once did, with 1 s bind times) loses track of which slices are taken.
    names = [f"burst-{chr(ord('z') - i)}" for i in range(12)]
    for name in names:
        cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod(name, group, {MIG_1G: 1}))
    running = cluster.wait_pods(namespace, workloads.all_running(namespace, names), "burst Running")
    workloads.check_allocations(cluster, running.values(), exact=False)
    truth = cluster.wait_pods(namespace, workloads.truthful(cluster, namespace, names),
                              "every annotation equal to what the kubelet gave", timeout_s=120)
    workloads.check_allocations(cluster, truth.values(), exact=True)
