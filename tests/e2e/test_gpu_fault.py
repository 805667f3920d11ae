"""Scenario 4: a GPU fault (XID 79, fallen off the bus) and its recovery.

The fake backend's file marks one GPU ``healthy: false``; the plugin reports it Unhealthy in
ListAndWatch; the kubelet's device manager drops it from allocatable; new pods avoid it. When
the file says healthy again, the plugin's probes bring it back and it is used again.
"""

from __future__ import annotations

import pathlib

import pytest
import yaml

from gpupack import contract

from . import cluster as harness
from . import workloads

pytestmark = pytest.mark.e2e


def gpu_healthy(node: object, gpu_id: str) -> bool:
    text = (node.metadata.annotations or {}).get(contract.INVENTORY_ANNOTATION)  # type: ignore[attr-defined]
    return text is not None and any(g.healthy for g in contract.decode_inventory(text).gpus if g.id == gpu_id)


def test_faulty_gpu_is_avoided_and_used_again_after_recovery(
    cluster: harness.Cluster, group: str, namespace: str, tmp_path: pathlib.Path
) -> None:
    config = tmp_path / "plugin.yaml"
    # probe an Unhealthy GPU every 0.2 s, Healthy again after 2 good probes (defaults: 10 s, 3)
    config.write_text(yaml.safe_dump({"version": "v1", "health": {"probeIntervalSeconds": 0.2, "recoveryProbes": 2}}))
    name = f"{group}-a100"
    node = cluster.add_node(name, group, workloads.nvswitch_machine(name), plugin_args=[f"--config={config}"])
    node.wait_allocatable({contract.NVIDIA_GPU: 8})
    faulty = node.gpus[3]["id"]

    node.set_healthy(faulty, False)
    node.wait_allocatable({contract.NVIDIA_GPU: 7}, "the faulty GPU leaves allocatable")
    assert node.cluster.core.read_node(name).status.capacity[contract.NVIDIA_GPU] == "8"  # still there, Unhealthy
    assert faulty not in node.node_record()["healthy"][contract.NVIDIA_GPU]
    cluster.wait_node(name, lambda n: not gpu_healthy(n, faulty), "the inventory annotation shows the fault")

    cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod("seven", group, {contract.NVIDIA_GPU: 7}))
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["seven"]), "seven Running")
    in_use = workloads.check_allocations(cluster, pods.values())
    assert faulty not in in_use[name]
    cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod("one-more", group, {contract.NVIDIA_GPU: 1}))
    cluster.wait_event(namespace, "one-more", "FailedScheduling")  # the only GPU left is the faulty one

    node.set_healthy(faulty, True)
    cluster.wait_node(name, lambda n: gpu_healthy(n, faulty), "the inventory annotation shows the recovery")
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["seven", "one-more"]), "recovered GPU used")
    in_use = workloads.check_allocations(cluster, pods.values())
    assert sorted(in_use[name]) == sorted(g["id"] for g in node.gpus)
    received = workloads.received(cluster, pods[f"{namespace}/one-more"])
    assert received["main"]["deviceIDs"][contract.NVIDIA_GPU] == [faulty]
