"""GPU use per pod: the plugin's /metrics attributes each GPU to the container holding it,
through the kubelet's PodResources API (served by the node agent with the kubelet's code)."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpupack import contract

from . import cluster as harness
from . import workloads

pytestmark = pytest.mark.e2e


def test_metrics_name_the_pod_holding_each_gpu(cluster: harness.Cluster, group: str, namespace: str) -> None:
    name = f"{group}-a100"
    node = cluster.add_node(name, group, workloads.nvswitch_machine(name))
    node.wait_allocatable({contract.NVIDIA_GPU: 8})
    cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod("infer", group, {contract.NVIDIA_GPU: 2}))
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["infer"]), "infer Running")
    held = set(workloads.received(cluster, pods[f"{namespace}/infer"])["main"]["deviceIDs"][contract.NVIDIA_GPU])

    with urllib.request.urlopen(node.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    samples = [s for f in text_string_to_metric_families(text) if f.name == "gpupack_gpu_memory_total_bytes" for s in f.samples]
    holders = {s.labels["uuid"]: (s.labels["namespace"], s.labels["pod"], s.labels["container"]) for s in samples}
    assert set(holders) == {g["id"] for g in node.gpus}
    for uuid, holder in holders.items():
        assert holder == ((namespace, "infer", "main") if uuid in held else ("", "", "")), (uuid, holder)
