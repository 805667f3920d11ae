"""Pods without GPUs through the real kube-scheduler: the score-only extender entry of
deploy/scheduler/kube-scheduler-config.yaml sends them to gpupack-extender, which puts their
CPU where it strands the fewest idle GPUs."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest

from gpupack import contract

from . import cluster as harness
from . import workloads

pytestmark = pytest.mark.e2e

DECISIONS = 'gpupack_extender_decisions_total{result="ok",verb="prioritize-cpu-only"}'


def cpu_only_decisions(cluster: harness.Cluster) -> float:
    with urllib.request.urlopen(f"{cluster.extender_url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(DECISIONS + " "):
                return float(line.split()[-1])
    return 0.0


def test_a_cpu_heavy_pod_goes_where_it_strands_fewest_gpus(cluster: harness.Cluster, group: str, namespace: str) -> None:
    # Two nodes alike for kube-scheduler's own scores (128 CPUs, 1 TiB each, empty), one with 8
    # idle GPUs and one with 1. A pod taking 120 of the 128 CPUs strands the GPUs of the node it
    # lands on for every shape that needs more than 8 CPUs (itself included): 1 GPU, not 8.
    many, one = f"{group}-gpu8", f"{group}-gpu1"
    cluster.add_node(many, group, workloads.nvswitch_machine(many)).wait_allocatable({contract.NVIDIA_GPU: 8})
    cluster.add_node(one, group, workloads.nvswitch_machine(one, count=1)).wait_allocatable({contract.NVIDIA_GPU: 1})
    before = cpu_only_decisions(cluster)

    pod = workloads.gpu_pod("cpu-heavy", group, {})
    pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "120", "memory": "8Gi"}}
    cluster.core.create_namespaced_pod(namespace, pod)

    def bound(pods: dict[str, Any]) -> Any:
        p = pods.get(f"{namespace}/cpu-heavy")
        return p if p is not None and p.spec.node_name else None

    placed = cluster.wait_pods(namespace, bound, "cpu-heavy bound to a node")
    assert placed.spec.node_name == one
    assert not (placed.metadata.annotations or {}).get(contract.DEVICES_ANNOTATION)  # the default binder bound it
    assert cpu_only_decisions(cluster) >= before + 1
