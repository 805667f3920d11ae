"""GPU utilisation per pod, from NVML readings and the kubelet's PodResources API over gRPC."""

from __future__ import annotations

import concurrent.futures
import pathlib
from collections.abc import Iterator

import grpc
import prometheus_client
import pytest

from device_plugin import resources, usage
from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.fakes import nvml as fake_nvml
from gpupack import contract
from gpupack.kubeletapi import podresources_v1_pb2 as prpb
from gpupack.kubeletapi import podresources_v1_pb2_grpc as prpb_grpc


class Lister(prpb_grpc.PodResourcesListerServicer):
    def __init__(self, response: prpb.ListPodResourcesResponse) -> None:
        self.response = response

    def List(self, request: prpb.ListPodResourcesRequest, context: grpc.ServicerContext) -> prpb.ListPodResourcesResponse:
        return self.response


@pytest.fixture
def machine() -> tuple[fake_nvml.FakeNvml, NvmlBackend, tuple[contract.Gpu, ...]]:
    nvml = fake_nvml.h100_pcie_pairs("usage-node")
    nvml.set_mig(7, ["3g.40gb", "3g.40gb"])
    nvml.gpus[0].utilization, nvml.gpus[0].memory_used_mib = 75, 30000
    nvml.gpus[1].utilization, nvml.gpus[1].memory_used_mib = 40, 12000
    backend = NvmlBackend(nvml)
    return nvml, backend, resources.plan(backend.discover(), "mixed")


@pytest.fixture
def kubelet_pod_resources(short_dir: pathlib.Path, machine: tuple[fake_nvml.FakeNvml, NvmlBackend, tuple[contract.Gpu, ...]]) -> Iterator[str]:
    nvml = machine[0]
    u0, u1, mig = nvml.gpus[0].uuid, nvml.gpus[1].uuid, nvml.gpus[7].migs[1].uuid
    response = prpb.ListPodResourcesResponse(pod_resources=[
        prpb.PodResources(name="llm", namespace="ml", containers=[prpb.ContainerResources(name="server", devices=[
            prpb.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=[u0]),
            prpb.ContainerDevices(resource_name="example.com/nic", device_ids=["nic-0"]),
        ])]),
        prpb.PodResources(name="chat-a", namespace="ml", containers=[prpb.ContainerResources(name="app", devices=[
            prpb.ContainerDevices(resource_name="nvidia.com/gpu.shared", device_ids=[f"{u1}::0"])])]),
        prpb.PodResources(name="chat-b", namespace="ml", containers=[prpb.ContainerResources(name="app", devices=[
            prpb.ContainerDevices(resource_name="nvidia.com/gpu.shared", device_ids=[f"{u1}::2"])])]),
        prpb.PodResources(name="embed", namespace="search", containers=[prpb.ContainerResources(name="e", devices=[
            prpb.ContainerDevices(resource_name="nvidia.com/mig-3g.40gb", device_ids=[mig])])]),
    ])
    sock = short_dir / "pod-resources.sock"
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prpb_grpc.add_PodResourcesListerServicer_to_server(Lister(response), server)
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    yield str(sock)
    server.stop(None).wait()


def scrape(collector: usage.UsageCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = prometheus_client.CollectorRegistry()
    registry.register(collector)
    out = {}
    for family in registry.collect():
        for s in family.samples:
            keep = tuple(sorted((k, v) for k, v in s.labels.items() if k in ("gpu", "pod", "container", "mig_profile")))
            out[(s.name, keep)] = s.value
    return out


def test_usage_is_attributed_to_the_containers_holding_each_gpu(machine, kubelet_pod_resources: str) -> None:  # type: ignore[no-untyped-def]
    _, backend, gpus = machine
    got = scrape(usage.UsageCollector(backend, lambda: gpus, "usage-node", kubelet_pod_resources))
    key = lambda gpu, pod, container, profile="": (("container", container), ("gpu", gpu), ("mig_profile", profile), ("pod", pod))  # noqa: E731
    assert got[("gpupack_gpu_utilization_ratio", key("0", "llm", "server"))] == 0.75
    assert got[("gpupack_gpu_memory_used_bytes", key("0", "llm", "server"))] == 30000 * 2**20
    # a time-sliced GPU: both pods on it see the whole GPU's figure
    assert got[("gpupack_gpu_utilization_ratio", key("1", "chat-a", "app"))] == 0.40
    assert got[("gpupack_gpu_utilization_ratio", key("1", "chat-b", "app"))] == 0.40
    # nobody holds GPU 2: exported with empty pod labels, so idle GPUs show
    assert got[("gpupack_gpu_utilization_ratio", key("2", "", ""))] == 0.0
    # MIG: memory for the slice's holder, no utilisation (NVML gives none in MIG mode)
    assert got[("gpupack_gpu_memory_total_bytes", key("7", "embed", "e", "3g.40gb"))] == 40192 * 2**20
    assert ("gpupack_gpu_utilization_ratio", key("7", "embed", "e", "3g.40gb")) not in got


def test_a_kubelet_that_does_not_answer_leaves_pods_unnamed(machine, short_dir: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    _, backend, gpus = machine
    got = scrape(usage.UsageCollector(backend, lambda: gpus, "usage-node", str(short_dir / "absent.sock")))
    assert got[("gpupack_gpu_utilization_ratio", (("container", ""), ("gpu", "0"), ("mig_profile", ""), ("pod", "")))] == 0.75
    assert "did not answer" in caplog.text
