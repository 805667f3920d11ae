"""GPU utilisation per pod: NVML readings attributed to containers through the PodResources API.

On every Prometheus scrape the collector asks the kubelet's PodResources API (``List`` on
``/var/lib/kubelet/pod-resources/kubelet.sock``) which container holds which of our device
ids, reads each GPU's utilisation and memory through the backend, and exports one sample per
(GPU, container), so an HPA can scale an inference service on GPU use the way dcgm-exporter
users do:

- ``gpupack_gpu_utilization_ratio``: fraction of time a kernel ran on the GPU (0..1). A
  time-sliced GPU is shared: every container on it sees the whole GPU's figure.
- ``gpupack_gpu_memory_used_bytes`` and ``gpupack_gpu_memory_total_bytes``.

GPUs that no container holds are exported with empty pod labels, so idle GPUs show too. MIG
devices report memory only (NVML gives no utilisation in MIG mode). A kubelet that does not
answer leaves the pod labels empty and logs why; the scrape still succeeds.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import grpc
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gpupack import contract
from gpupack.kubeletapi import podresources_v1_pb2 as prpb
from gpupack.kubeletapi import podresources_v1_pb2_grpc as prpb_grpc

from device_plugin.discovery.backend import Reading

log = logging.getLogger("gpupack.usage")

DEFAULT_POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


@dataclasses.dataclass(frozen=True)
class Holder:
    namespace: str
    pod: str
    container: str


class Reader(Protocol):
    def read_usage(self, visible_id: str) -> Reading: ...


def list_holders(socket: str, timeout_s: float = 2.0) -> dict[str, list[Holder]]:
    """Device id -> the containers holding it, from the kubelet's PodResources List."""
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = prpb_grpc.PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
        response = stub.List(prpb.ListPodResourcesRequest(), timeout=timeout_s)
    out: dict[str, list[Holder]] = {}
    for pod in response.pod_resources:
        for c in pod.containers:
            for dev in c.devices:
                if contract.is_gpu_resource(dev.resource_name):
                    for device_id in dev.device_ids:
                        out.setdefault(device_id, []).append(Holder(pod.namespace, pod.name, c.name))
    return out


def list_held(socket: str, timeout_s: float = 2.0) -> dict[tuple[str, str], dict[str, dict[str, list[str]]]]:
    """(namespace, pod) -> container -> gpupack resource -> device ids, from the kubelet's
    PodResources List (what :func:`device_plugin.truth.corrections` compares annotations with).
    Raises grpc.RpcError when the kubelet does not answer."""
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = prpb_grpc.PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
        response = stub.List(prpb.ListPodResourcesRequest(), timeout=timeout_s)
    out: dict[tuple[str, str], dict[str, dict[str, list[str]]]] = {}
    for pod in response.pod_resources:
        for c in pod.containers:
            for dev in c.devices:
                if contract.is_gpu_resource(dev.resource_name) and dev.device_ids:
                    ids = out.setdefault((pod.namespace, pod.name), {}).setdefault(c.name, {}).setdefault(dev.resource_name, [])
                    # the kubelet lists one entry per device and NUMA node: keep each id once
                    ids.extend(i for i in dev.device_ids if i not in ids)
    return out


def attribute(
    gpus: Sequence[contract.Gpu], holders: Mapping[str, list[Holder]], node: str
) -> list[tuple[dict[str, str], str]]:
    """(labels, visible id) per sample: each GPU or MIG device once per container holding any
    of its device ids (a share ``<uuid>::<n>`` belongs to ``<uuid>``), or once with empty pod
    labels when nobody holds it. Pure."""
    by_visible: dict[str, list[Holder]] = {}
    for device_id, hs in holders.items():
        for h in hs:
            bucket = by_visible.setdefault(contract.physical_id(device_id), [])
            if h not in bucket:
                bucket.append(h)
    samples = []
    for g in gpus:
        units = [(g.id, "")] + [(m.id, m.profile) for m in g.mig]
        for visible, profile in units:
            base = {"node": node, "gpu": str(g.index), "uuid": visible, "model": g.model, "mig_profile": profile}
            holding = by_visible.get(visible) or [Holder("", "", "")]
            for h in holding:
                samples.append(({**base, "namespace": h.namespace, "pod": h.pod, "container": h.container}, visible))
    return samples


LABELS = ["node", "gpu", "uuid", "model", "mig_profile", "namespace", "pod", "container"]


class UsageCollector(Collector):
    """A Prometheus collector that reads usage at scrape time."""

    def __init__(self, reader: Reader, gpus: Any, node: str, socket: str = DEFAULT_POD_RESOURCES_SOCKET) -> None:
        self.reader = reader
        self.gpus = gpus  # a callable returning the current GPUs
        self.node = node
        self.socket = socket

    def collect(self) -> Iterator[GaugeMetricFamily]:
        util = GaugeMetricFamily("gpupack_gpu_utilization_ratio", "Fraction of time a kernel ran on the GPU", labels=LABELS)
        used = GaugeMetricFamily("gpupack_gpu_memory_used_bytes", "GPU memory in use", labels=LABELS)
        total = GaugeMetricFamily("gpupack_gpu_memory_total_bytes", "GPU memory in all", labels=LABELS)
        try:
            holders = list_holders(self.socket)
        except grpc.RpcError as err:
            log.warning("PodResources API at %s did not answer (%s): GPU usage is not attributed to pods", self.socket, err.code())
            holders = {}
        readings: dict[str, Reading] = {}
        for labels, visible in attribute(self.gpus(), holders, self.node):
            if visible not in readings:
                readings[visible] = self.reader.read_usage(visible)
            r = readings[visible]
            values = [labels[k] for k in LABELS]
            if r.utilization is not None:
                util.add_metric(values, r.utilization)
            if r.memory_used is not None:
                used.add_metric(values, r.memory_used)
            if r.memory_total is not None:
                total.add_metric(values, r.memory_total)
        yield util
        yield used
        yield total
