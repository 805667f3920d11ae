"""Scenarios 1 and 2, NVIDIA whole GPUs: nodes advertise, pods of 1, 2 and 4 GPUs get placed.

Every pod goes through the real kube-scheduler with deploy/'s configuration, which calls
gpupack-extender (filter, prioritize, bind: it writes ``gpupack.io/devices``); the node agent
admits it with the kubelet's device manager, which calls our plugin's GetPreferredAllocation
and Allocate. The checks read what each container received.
"""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpupack import contract

from . import cluster as harness
from . import workloads

pytestmark = pytest.mark.e2e


def test_nodes_advertise_gpus(cluster: harness.Cluster, group: str) -> None:
    names = [f"{group}-a100-{i}" for i in range(2)]
    nodes = [cluster.add_node(n, group, workloads.nvswitch_machine(n)) for n in names]
    for node in nodes:
        got = node.wait_allocatable({contract.NVIDIA_GPU: 8})
        assert got.status.capacity[contract.NVIDIA_GPU] == "8"


def test_nodes_publish_inventory_and_labels(cluster: harness.Cluster, group: str) -> None:
    name = f"{group}-a100"
    node = cluster.add_node(name, group, workloads.nvswitch_machine(name))

    def published(n: object) -> object:
        meta = n.metadata  # type: ignore[attr-defined]
        return (meta.annotations or {}).get(contract.INVENTORY_ANNOTATION) and meta.labels.get(contract.LABEL_COUNT)

    n = cluster.wait_node(name, published, "inventory annotation and labels", timeout_s=20)
    inventory = contract.decode_inventory(n.metadata.annotations[contract.INVENTORY_ANNOTATION])
    assert inventory.node == name
    assert [g.id for g in inventory.gpus] == [g["id"] for g in node.gpus]
    assert all(g.resource == contract.NVIDIA_GPU and g.healthy and g.model == "NVIDIA A100-SXM4-40GB" for g in inventory.gpus)
    assert {link.peer for link in inventory.gpus[0].links} == set(range(1, 8))
    assert n.metadata.labels[contract.LABEL_COUNT] == "8"
    assert n.metadata.labels[contract.LABEL_PRODUCT] == "NVIDIA-A100-SXM4-40GB"
    assert n.metadata.labels[contract.LABEL_MEMORY] == "40960"


# 16 GPUs in arrival order on three 8-GPU nodes. Packed, the first node fills up: 4+2+1+1 = 8.
# Then the policies part ways: binpack puts 4+2+(1+1) on a second node and leaves the third
# untouched; fragmentation (the default) keeps room for the 4-GPU shape the mix has seen, so
# w2b and w11 go beside nothing rather than into the second node's last 4 GPUs: 8, 4, 4. Either
# way a 4-GPU pod still fits twice; spreading (6, 5, 5) would leave it nowhere.
WAVE = [("w4a", 4, 1), ("w2a", 2, 1), ("w1a", 1, 1), ("w1b", 1, 1), ("w4b", 4, 1), ("w2b", 2, 1), ("w11", 1, 2)]


def test_pods_are_placed_packed_and_get_their_annotated_devices(
    cluster: harness.Cluster, group: str, namespace: str
) -> None:
    names = [f"{group}-a100-{i}" for i in range(3)]
    nodes = [cluster.add_node(n, group, workloads.nvswitch_machine(n)) for n in names]
    for node in nodes:
        node.wait_allocatable({contract.NVIDIA_GPU: 8})

    binds_before = extender_binds(cluster)
    for pod, gpus, containers in WAVE:
        cluster.core.create_namespaced_pod(
            namespace, workloads.gpu_pod(pod, group, {contract.NVIDIA_GPU: gpus}, containers=containers)
        )
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, [p for p, _, _ in WAVE]), "the wave Running")
    # kube-scheduler, adding its own scores to the extender's (weight 5), bound every pod on
    # the node gpupack named at prioritize: the named node's lead holds against the real sum
    binds = {k: v - binds_before.get(k, 0.0) for k, v in extender_binds(cluster).items()}
    assert binds.get("held-node") == len(WAVE) and not binds.get("other-node"), binds

    in_use = workloads.check_allocations(cluster, pods.values(), exact=False)  # a burst: see check_allocations
    assert sum(len(ids) for ids in in_use.values()) == 16
    placed = workloads.annotated_by_node(pods.values())
    used = {n: len(placed.get(n, {}).get(contract.NVIDIA_GPU, [])) for n in names}
    assert max(used.values()) == 8, f"no node filled: {used}"
    assert sum((8 - u) // 4 for u in used.values()) >= 2, f"no room left for two 4-GPU pods: {used}"

    # a pod that fits nowhere waits; it is not forced onto a node
    cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod("too-big", group, {contract.NVIDIA_GPU: 9}))
    event = cluster.wait_event(namespace, "too-big", "FailedScheduling")
    assert "nvidia.com/gpu" in event.message
    assert cluster.core.read_namespaced_pod("too-big", namespace).spec.node_name is None


def extender_binds(cluster: harness.Cluster) -> dict[str, float]:
    """``gpupack_extender_binds_total`` by ``on``, from the extender's /metrics."""
    with urllib.request.urlopen(f"{cluster.extender_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {s.labels["on"]: s.value for family in text_string_to_metric_families(text)
            if family.name == "gpupack_extender_binds" for s in family.samples if s.name.endswith("_total")}


def test_plugin_prefers_the_annotated_devices(cluster: harness.Cluster, group: str, namespace: str) -> None:
    """A pod bound straight to a node (no scheduler) with an annotation naming GPUs 5 and 7,
    which the plugin's own packing would not pick on an empty node, gets exactly those."""
    name = f"{group}-a100"
    node = cluster.add_node(name, group, workloads.nvswitch_machine(name))
    node.wait_allocatable({contract.NVIDIA_GPU: 8})
    chosen = [node.gpus[5]["id"], node.gpus[7]["id"]]
    annotation = contract.encode_assignment({"main": {contract.NVIDIA_GPU: chosen}})
    cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod(
        "pinned", group, {contract.NVIDIA_GPU: 2}, annotations={contract.DEVICES_ANNOTATION: annotation}, node_name=name))
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["pinned"]), "pinned Running")
    workloads.check_allocations(cluster, pods.values())


def test_a_pod_pinned_to_a_gpu_product_gets_only_gpus_of_that_model(
    cluster: harness.Cluster, group: str, namespace: str
) -> None:
    """A node with 4 A100s (GPUs 0-3) and 4 H100s: its product label names the A100 (the
    device plugin labels by the first GPU), so a pod pinned to it with nodeSelector passes
    kube-scheduler's NodeAffinity; the extender reads the pin, so 5 GPUs do not fit (only 4 are
    A100s) and 4 GPUs are all A100s."""
    name = f"{group}-mixed"
    machine = workloads.nvswitch_machine(name)
    for g in machine["gpus"][4:]:
        g["model"], g["memoryMiB"] = "NVIDIA H100 80GB HBM3", 81559
    node = cluster.add_node(name, group, machine)
    node.wait_allocatable({contract.NVIDIA_GPU: 8})
    cluster.wait_node(name, lambda n: (n.metadata.labels or {}).get(contract.LABEL_PRODUCT), "product label")
    a100 = contract.label_value("NVIDIA A100-SXM4-40GB")
    a100_ids = {g["id"] for g in machine["gpus"][:4]}

    def pinned(pod_name: str, gpus: int) -> dict[str, Any]:
        pod = workloads.gpu_pod(pod_name, group, {contract.NVIDIA_GPU: gpus})
        pod["spec"]["nodeSelector"][contract.LABEL_PRODUCT] = a100
        return pod

    cluster.core.create_namespaced_pod(namespace, pinned("five", 5))
    event = cluster.wait_event(namespace, "five", "FailedScheduling")
    assert "gpupack" in event.message and "nvidia.com/gpu" in event.message, event.message

    cluster.core.delete_namespaced_pod("five", namespace, grace_period_seconds=0)
    cluster.core.create_namespaced_pod(namespace, pinned("four", 4))
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["four"]), "four Running")
    workloads.check_allocations(cluster, pods.values())
    placed = workloads.annotated_by_node(pods.values())
    assert set(placed[name][contract.NVIDIA_GPU]) == a100_ids
