"""Scenario 5: the node agent (the kubelet's device manager) restarts, as a kubelet would.

The device manager cleans the plugin folder and serves a new kubelet.sock; our plugin must
notice, serve again and register again, and the Node's capacity must come back. Allocation
through the re-registered plugin proves the new connection works, and a pod admitted before
the restart keeps its devices (the device manager's checkpoint): nothing is given twice.
Pods are bound by spec.nodeName: this is about the kubelet and the plugin, not the scheduler.
"""

from __future__ import annotations

import signal

import pytest

from gpupack import contract

from . import cluster as harness
from . import workloads

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_plugin_registers_again_after_node_agent_restart(
    cluster: harness.Cluster, group: str, namespace: str, sig: int
) -> None:
    name = f"{group}-a100"
    node = cluster.add_node(name, group, workloads.nvswitch_machine(name))
    node.wait_allocatable({contract.NVIDIA_GPU: 8}, "plugin registered")

    cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod("before", group, {contract.NVIDIA_GPU: 2}, node_name=name))
    before = cluster.wait_pods(namespace, workloads.all_running(namespace, ["before"]), "pod before restart Running")
    old_pid = node.node_record()["agentPID"]

    node.agent.stop(sig)
    node.start_agent()  # cleans the folder: the plugin's sockets are gone; waits for its first state

    # the restarted device manager has the plugin's devices again: the plugin registered anew
    node.wait_agent(lambda s: s["allocatable"].get(contract.NVIDIA_GPU) == 8, "plugin registered again")
    node.wait_allocatable({contract.NVIDIA_GPU: 8}, "capacity back after restart")
    record = node.node_record()
    assert record["agentPID"] != old_pid
    assert len(record["healthy"][contract.NVIDIA_GPU]) == 8
    assert any(p.suffix == ".sock" and p.name != "kubelet.sock" for p in node.plugin_dir.iterdir()), (
        "the plugin did not serve its socket again")

    # Allocation goes through the re-registered plugin; the pod from before keeps its devices.
    cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod("after", group, {contract.NVIDIA_GPU: 6}, node_name=name))
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["before", "after"]), "pod after restart Running")
    in_use = workloads.check_allocations(cluster, pods.values(), expect_annotation=False)
    assert sorted(in_use[name]) == sorted(g["id"] for g in node.gpus)
    assert list(before.values())[0].metadata.uid == pods[f"{namespace}/before"].metadata.uid
