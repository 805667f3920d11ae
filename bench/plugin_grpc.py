"""Allocate and GetPreferredAllocation latency over the plugin's real gRPC Unix socket.

Runs the device plugin manager on a modelled node (8 GPUs: DGX A100; 64 GPUs: 32 bridged
pairs on 8 NUMA nodes), registers it with the kubelet stand-in, and times N calls of each kind
from a client on the socket, as the kubelet makes them. Prints p50/p99 per case.

    .venv/bin/python bench/plugin_grpc.py [--calls 10000]
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import platform
import statistics
import tempfile
import time

from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.fakes import nvml as fake_nvml
from device_plugin.manager import Manager
from gpupack_cli.kubelet_standin import KubeletStandIn
from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb


def machine(n: int) -> fake_nvml.FakeNvml:
    if n == 8:
        return fake_nvml.a100_sxm4_8x("bench")
    raw = {"gpus": [
        {"model": "NVIDIA H100 PCIe", "memoryMiB": 81559, "numaNode": i // 8, "links": [{"peer": i ^ 1, "nvlinks": 4}]}
        for i in range(n)
    ]}
    return fake_nvml.from_inventory(raw, seed="bench64")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(n_devices: int, calls: int) -> list[tuple[str, int, int, float, float]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="gp-bench-", dir="/tmp") as tmp:
        folder = pathlib.Path(tmp)
        kubelet = KubeletStandIn(folder)
        kubelet.start()
        nvml = machine(n_devices)
        manager = Manager(NvmlBackend(nvml), folder)
        manager.start()
        try:
            reg = kubelet.next_registration()
            channel, stub = kubelet.plugin(reg.endpoint)
            ids = [g.uuid for g in nvml.gpus]
            for size in (1, 4):
                req = pb.PreferredAllocationRequest(container_requests=[
                    pb.ContainerPreferredAllocationRequest(available_deviceIDs=ids, allocation_size=size)
                ])
                samples = []
                for _ in range(calls):
                    t = time.perf_counter()
                    stub.GetPreferredAllocation(req)
                    samples.append(time.perf_counter() - t)
                rows.append(("GetPreferredAllocation", n_devices, size, percentile(samples, 0.5), percentile(samples, 0.99)))
            for size in (1, 4):
                req2 = pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=ids[:size])])
                samples = []
                for _ in range(calls):
                    t = time.perf_counter()
                    stub.Allocate(req2)
                    samples.append(time.perf_counter() - t)
                rows.append(("Allocate", n_devices, size, percentile(samples, 0.5), percentile(samples, 0.99)))
            channel.close()
        finally:
            manager.stop()
            kubelet.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
          f"{len(__import__('os').sched_getaffinity(0))} cores; {args.calls} calls per row")
    print(f"{'call':<24}{'devices':>8}{'size':>6}{'p50 ms':>10}{'p99 ms':>10}")
    for n in (8, 64):
        for call, devices, size, p50, p99 in run(n, args.calls):
            print(f"{call:<24}{devices:>8}{size:>6}{p50 * 1000:>10.3f}{p99 * 1000:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
