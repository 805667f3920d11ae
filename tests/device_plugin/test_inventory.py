"""The node inventory and labels, the node patch, and honouring the extender's annotation."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from device_plugin import kube, resources
from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.fakes import nvml as fake_nvml
from device_plugin.manager import Manager
from gpupack import contract
from gpupack_cli.kubelet_standin import KubeletStandIn
from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb


class FakeNodesApi:
    """Records patch_node calls; can be told to fail like an API server that went away."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.failing = False

    def patch_node(self, name: str, body: dict[str, Any]) -> None:
        if self.failing:
            raise ConnectionRefusedError("connection refused")
        self.patches.append((name, json.loads(json.dumps(body))))


def mixed_node() -> tuple[fake_nvml.FakeNvml, tuple[contract.Gpu, ...]]:
    nvml = fake_nvml.a100_sxm4_8x("inv-node")
    nvml.set_mig(0, ["3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb"])
    return nvml, NvmlBackend(nvml).discover()


def test_inventory_round_trips_through_the_contract() -> None:
    _, gpus = mixed_node()
    planned = resources.plan(gpus, "mixed", resources.Sharing((resources.ShareRule("nvidia.com/gpu", 4, devices=("7",)),)))
    inv = contract.Inventory("inv-node", planned, "mixed", "time-slicing")
    assert contract.decode_inventory(contract.encode_inventory(inv)) == inv
    raw = json.loads(contract.encode_inventory(inv))
    assert raw["version"] == 1 and raw["gpus"][7]["replicas"] == 4 and raw["gpus"][0]["mig"][0]["profile"] == "3g.20gb"
    assert raw["gpus"][0]["links"][0] == {"peer": 1, "nvlinks": 12}


def test_node_patch_body_is_exactly_the_annotation_and_labels() -> None:
    _, gpus = mixed_node()
    inv = contract.Inventory("inv-node", resources.plan(gpus, "mixed"), "mixed", "none")
    assert kube.node_patch(inv) == {
        "metadata": {
            "annotations": {"gpupack.io/inventory": contract.encode_inventory(inv)},
            "labels": {
                "gpupack.io/gpu.vendor": "nvidia",
                "gpupack.io/gpu.product": "NVIDIA-A100-SXM4-40GB",
                "gpupack.io/gpu.count": "8",
                "gpupack.io/gpu.memory": "40960",
                "gpupack.io/gpu.mig-capable": "true",
                "gpupack.io/gpu.sharing-strategy": "none",
                "gpupack.io/mig.strategy": "mixed",
            },
        }
    }


def test_publisher_patches_only_on_change_and_retries_after_a_failure(kubelet: KubeletStandIn, start_manager: Callable[..., Manager]) -> None:
    api = FakeNodesApi()
    nvml = fake_nvml.a100_sxm4_8x("pub-node")
    m = start_manager(nvml, kubelet.folder, publisher=kube.NodePublisher(api, "pub-node"), node_name="pub-node")
    assert len(api.patches) == 1 and api.patches[0][0] == "pub-node"
    m.probe_once()  # nothing changed: no patch
    m.publisher.flush()
    assert len(api.patches) == 1
    api.failing = True
    nvml.lose(3)
    m.apply_event(m.backend.wait_event(1.0))  # type: ignore[arg-type]
    assert len(api.patches) == 1  # the API server is away
    api.failing = False
    m.publisher.flush()  # the probe loop's retry
    assert len(api.patches) == 2
    published = contract.decode_inventory(api.patches[1][1]["metadata"]["annotations"][contract.INVENTORY_ANNOTATION])
    assert [g.healthy for g in published.gpus] == [True, True, True, False, True, True, True, True]


def pod(uid: str, name: str, rv: str, ids: list[str], resource: str = "nvidia.com/gpu", phase: str = "Pending") -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": name, "namespace": "ml", "creationTimestamp": "2026-01-01T00:00:00Z",
                     "resourceVersion": rv,
                     "annotations": {contract.DEVICES_ANNOTATION: contract.encode_assignment({"server": {resource: ids}})}},
        "status": {"phase": phase},
    }


def test_claims_are_read_from_pod_annotations() -> None:
    claims = kube.claims_of(pod("u1", "llm", "7", ["GPU-a", "GPU-b"]))
    assert [(c.pod, c.container, c.resource, c.ids, c.created) for c in claims] == [
        ("ml/llm", "server", "nvidia.com/gpu", ("GPU-a", "GPU-b"), "2026-01-01T00:00:00Z")
    ]
    assert kube.claims_of(pod("u2", "done", "t", ["GPU-a"], phase="Succeeded")) == []
    bad = pod("u3", "bad", "t", [])
    bad["metadata"]["annotations"][contract.DEVICES_ANNOTATION] = "{not json"
    assert kube.claims_of(bad) == []


def test_preferred_allocation_honours_the_annotation_for_two_pending_pods_of_one_size(
    kubelet: KubeletStandIn, start_manager: Callable[..., Manager]
) -> None:
    nvml = fake_nvml.a100_sxm4_8x("claim-node")
    u = [g.uuid for g in nvml.gpus]
    pods = kube.PodClaims(api=None, node_name="claim-node")
    # Created in the same second; the extender bound "first" (resourceVersion 105) before
    # "second" (109), and the kubelet admits them in that order. Both asked for 2 GPUs on NUMA
    # node 1, a choice the plugin would not make by itself (it would pick GPUs 0 and 1).
    pods.replace([
        pod("u-second", "second", "109", [u[6], u[7]]),
        pod("u-first", "first", "105", [u[4], u[5]]),
    ])
    start_manager(nvml, kubelet.folder, claims=pods)
    channel, stub = kubelet.plugin(kubelet.next_registration().endpoint)

    def ask(available: list[str]) -> list[str]:
        resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
            pb.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=2)
        ]))
        return list(resp.container_responses[0].deviceIDs)

    assert ask(u) == [u[4], u[5]]  # earliest arrival first
    assert ask([d for d in u if d not in (u[4], u[5])]) == [u[6], u[7]]
    pods.apply("DELETED", {"metadata": {"uid": "u-first"}})
    pods.apply("DELETED", {"metadata": {"uid": "u-second"}})
    assert ask(u) == [u[0], u[1]]  # no annotation: the plugin's own topology choice
    channel.close()


class FakePodsApi:
    """Answers the plugin's pod list like the API server: the pods bound to the node."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.lists = 0

    def list_pod_for_all_namespaces(self, field_selector: str, _preload_content: bool) -> Any:
        self.lists += 1
        assert field_selector == "spec.nodeName=lag-node"
        return type("Resp", (), {"data": json.dumps({"items": self.items, "metadata": {"resourceVersion": "1"}}).encode()})()


def test_a_pod_the_watch_has_not_delivered_yet_is_found_by_a_fresh_list(
    kubelet: KubeletStandIn, start_manager: Callable[..., Manager]
) -> None:
    nvml = fake_nvml.a100_sxm4_8x("lag-node")
    u = [g.uuid for g in nvml.gpus]
    api = FakePodsApi([pod("u-new", "new", "200", [u[5], u[7]])])
    pods = kube.PodClaims(api, "lag-node")  # the watch has delivered nothing yet
    start_manager(nvml, kubelet.folder, claims=pods, refresh_claims=pods.refresh)
    channel, stub = kubelet.plugin(kubelet.next_registration().endpoint)
    resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
        pb.ContainerPreferredAllocationRequest(available_deviceIDs=u, allocation_size=2)
    ]))
    assert list(resp.container_responses[0].deviceIDs) == [u[5], u[7]]
    assert api.lists == 1
    channel.close()
