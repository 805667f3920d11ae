"""Scenario 3: the extender stops and comes back.

deploy/'s KubeSchedulerConfiguration says ``ignorable: false`` (the reasons are in the file):
while no extender answers, pods that ask for GPU resources wait, and are retried; pods that
do not are scheduled as usual. A pod bound without the scheduler (spec.nodeName) carries no
annotation, and the plugin chooses its devices itself. When the extender comes back its
cache is rebuilt from the API: the waiting pod is placed, and a restarted extender never
hands out a device that a running pod holds. Whatever happens, the kubelet's device manager
never gives a device twice; the checks also hold the extender's annotations to what each
container received.
"""

from __future__ import annotations

import pytest

from gpupack import contract

from . import cluster as harness
from . import workloads

pytestmark = pytest.mark.e2e


def test_gpu_pods_wait_for_the_extender_and_nothing_is_given_twice(
    cluster: harness.Cluster, group: str, namespace: str
) -> None:
    name = f"{group}-a100"
    node = cluster.add_node(name, group, workloads.nvswitch_machine(name))
    node.wait_allocatable({contract.NVIDIA_GPU: 8})

    cluster.stop_extender()
    try:
        cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod("waits", group, {contract.NVIDIA_GPU: 2}))
        cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod("cpu-only", group, {}))
        cluster.wait_pods(namespace, workloads.all_running(namespace, ["cpu-only"]), "the pod without GPUs Running")
        failed = cluster.wait_event(namespace, "waits", "FailedScheduling")
        assert "extender" in failed.message or "connection refused" in failed.message, failed.message
        assert cluster.core.read_namespaced_pod("waits", namespace).spec.node_name is None

        # bound without the scheduler: no annotation, the plugin chooses by itself
        cluster.core.create_namespaced_pod(
            namespace, workloads.gpu_pod("direct", group, {contract.NVIDIA_GPU: 3}, node_name=name))
        direct = cluster.wait_pods(namespace, workloads.all_running(namespace, ["direct"]), "direct Running")
        pod = direct[f"{namespace}/direct"]
        assert contract.DEVICES_ANNOTATION not in (pod.metadata.annotations or {})
        in_use = workloads.check_allocations(cluster, [pod], expect_annotation=False)
        assert len(in_use[name]) == 3
        # its devices are the plugin's own choice, which no one else can name: remove it before
        # the extender comes back, so what follows checks annotations against what is received
        cluster.core.delete_namespaced_pod("direct", namespace)
        cluster.wait_pods(namespace, lambda pods: f"{namespace}/direct" not in pods, "direct deleted")
    finally:
        cluster.start_extender()

    # back: the waiting pod is placed with an annotation (retried within the scheduler's backoff)
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["waits"]), "waits Running")
    workloads.check_allocations(cluster, pods.values())

    # a restarted extender rebuilds its cache from the API: the other 6 GPUs are all it may give
    cluster.stop_extender()
    cluster.start_extender()
    cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod("after", group, {contract.NVIDIA_GPU: 6}))
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["waits", "after"]), "after Running")
    in_use = workloads.check_allocations(cluster, pods.values())
    assert sorted(in_use[name]) == sorted(g["id"] for g in node.gpus)

    # and nothing is left: one more GPU pod waits, refused (no free GPU)
    cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod("no-room", group, {contract.NVIDIA_GPU: 1}))
    refused = cluster.wait_event(namespace, "no-room", "FailedScheduling")
    assert cluster.core.read_namespaced_pod("no-room", namespace).spec.node_name is None, refused.message


def test_extender_annotates_around_a_pod_without_annotation(
    cluster: harness.Cluster, group: str, namespace: str
) -> None:
    """A pod without annotation holds devices the extender can only infer (the plugin's own
    choice follows the extender's kernel rule); the next pod must still receive what it was
    annotated. Found two races when written (the plugin's pod watch lagging the kubelet), fixed
    in the plugin by a fresh read of the node's pods on a miss."""
    name = f"{group}-a100"
    node = cluster.add_node(name, group, workloads.nvswitch_machine(name))
    node.wait_allocatable({contract.NVIDIA_GPU: 8})
    cluster.core.create_namespaced_pod(
        namespace, workloads.gpu_pod("direct", group, {contract.NVIDIA_GPU: 3}, node_name=name))
    cluster.wait_pods(namespace, workloads.all_running(namespace, ["direct"]), "direct Running")
    cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod("next", group, {contract.NVIDIA_GPU: 2}))
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["direct", "next"]), "next Running")
    workloads.check_allocations(cluster, [pods[f"{namespace}/next"]])
    workloads.check_allocations(cluster, pods.values(), expect_annotation=False)
