"""The truth after the fact (issue 15): every ``gpupack.io/devices`` annotation ends equal to
what the kubelet really gave, learnt by the plugin from the PodResources API.

- A burst of same-shape pods (one time-sliced share each) that differ in their
  ``gpupack.io/gpu-memory`` hints, through kube-scheduler and the extender onto one node: the
  kubelet may hand two of them each other's annotated shares (GetPreferredAllocation names no
  pod); at the end each annotation names exactly the share ids its container holds.
- Deterministic: a pod bound by ``spec.nodeName`` whose annotation names a GPU another pod
  already holds (a stale choice) gets another GPU from the kubelet; the plugin corrects the
  annotation, says so in its log and counts it. A pod without annotation and a CPU-only pod
  are left alone.
"""

from __future__ import annotations

import pathlib
import urllib.request
from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gpupack import contract

from . import cluster as harness
from . import workloads

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

H100 = ("NVIDIA H100 80GB HBM3", 81559)
SHARED = contract.NVIDIA_GPU_SHARED


def plugin_metric(node: harness.SimNode, name: str) -> float:
    with urllib.request.urlopen(node.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_a_burst_of_shares_with_different_memory_hints_ends_with_true_annotations(
    cluster: harness.Cluster, group: str, namespace: str, tmp_path: pathlib.Path
) -> None:
    sharing = tmp_path / "h100.yaml"
    sharing.write_text(yaml.safe_dump({
        "version": "v1",
        "sharing": {"timeSlicing": {"renameByDefault": True,
                                    "resources": [{"name": contract.NVIDIA_GPU, "replicas": 4, "devices": [0, 1, 2, 3]}]}},
    }))
    name = f"{group}-h100"
    node = cluster.add_node(name, group, workloads.nvswitch_machine(name, *H100, count=4), [f"--config={sharing}"])
    node.wait_allocatable({SHARED: 16})
    # 12 pods of one shape (1 share) in a burst; memory 32+16+8+8 = 64 GiB per four, 192 GiB
    # in all on 4 x 79.6 GiB: the extender packs by the hints, so which pod holds which share matters
    hints = ["32Gi", "16Gi", "8Gi", "8Gi"] * 3
    names = [f"share-{i}" for i in range(len(hints))]
    for pod, hint in zip(names, hints):
        cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod(
            pod, group, {SHARED: 1}, annotations={contract.GPU_MEMORY_ANNOTATION: hint}))
    pods = cluster.wait_pods(namespace, workloads.truthful(cluster, namespace, names), "every annotation true", timeout_s=180)
    workloads.check_allocations(cluster, pods.values(), exact=True)
    assert plugin_metric(node, "gpupack_plugin_annotation_correction_failures_total") == 0


def test_a_stale_annotation_is_corrected_and_others_are_left_alone(
    cluster: harness.Cluster, group: str, namespace: str
) -> None:
    name = f"{group}-a100"
    node = cluster.add_node(name, group, workloads.nvswitch_machine(name))
    node.wait_allocatable({contract.NVIDIA_GPU: 8})
    gpu5 = node.gpus[5]["id"]
    pinned = contract.encode_assignment({"main": {contract.NVIDIA_GPU: [gpu5]}})

    def create(pod: str, resources: dict[str, int], annotations: dict[str, str]) -> None:
        cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod(
            pod, group, resources, annotations=annotations, node_name=name))

    create("holder", {contract.NVIDIA_GPU: 1}, {contract.DEVICES_ANNOTATION: pinned})
    cluster.wait_pods(namespace, workloads.truthful(cluster, namespace, ["holder"]), "holder Running on GPU 5")
    before = plugin_metric(node, "gpupack_plugin_annotation_corrections_total")
    # GPU 5 is taken: the kubelet does not offer it, the plugin chooses another one itself
    create("stale", {contract.NVIDIA_GPU: 1}, {contract.DEVICES_ANNOTATION: pinned})
    create("plain", {contract.NVIDIA_GPU: 1}, {})
    create("cpu-only", {}, {})
    names = ["holder", "stale", "plain", "cpu-only"]
    cluster.wait_pods(namespace, workloads.all_running(namespace, names), "all Running")
    pods = cluster.wait_pods(namespace, workloads.truthful(cluster, namespace, ["holder", "stale"]), "stale corrected")
    stale = pods[f"{namespace}/stale"]
    got = contract.decode_assignment(stale.metadata.annotations[contract.DEVICES_ANNOTATION])["main"][contract.NVIDIA_GPU]
    assert got != [gpu5] and len(got) == 1
    # the plugin counts a correction after the API server answered its patch, so our watch
    # can see the annotation first: wait for the count with a deadline (as for readiness)
    harness.wait_ready(node.plugin, lambda: plugin_metric(node, "gpupack_plugin_annotation_corrections_total") > before,
                       "the correction counted in gpupack_plugin_annotation_corrections_total", timeout_s=30)
    assert plugin_metric(node, "gpupack_plugin_annotation_corrections_total") == before + 1
    log = node.plugin.log.read_text(errors="replace")
    assert f"pod {namespace}/stale: the kubelet gave container main {got[0]}, not the annotated {gpu5}" in log, log[-3000:]
    # a pod without annotation (the extender's guess follows the same rule) and a pod without
    # GPUs are never written; the holder was right all along
    for pod in ("plain", "cpu-only"):
        assert contract.DEVICES_ANNOTATION not in (cluster.core.read_namespaced_pod(pod, namespace).metadata.annotations or {})
    holder = cluster.core.read_namespaced_pod("holder", namespace)
    assert holder.metadata.annotations[contract.DEVICES_ANNOTATION] == pinned
    workloads.check_allocations(cluster, pods.values(), exact=True)
