"""The gRPC edge: one DevicePlugin server per resource on a Unix socket, and registration.

The servicer only converts between protobuf and the :class:`Source` it is given (the
manager); decisions live elsewhere. An Allocate answer carries environment, device specs
and CDI device names, as the :class:`~device_plugin.allocate.Grant` has them. Refusals map
to gRPC status codes: an unknown or unhealthy device id is INVALID_ARGUMENT with the ids in
the message.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import grpc

from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb
from gpupack.kubeletapi import deviceplugin_v1beta1_pb2_grpc as pb_grpc

from device_plugin.allocate import AllocationError, Grant
from device_plugin.metrics import PluginMetrics
from gpupack.topology import PreferenceError
from device_plugin.resources import Device

log = logging.getLogger("gpupack.server")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"


class Source(Protocol):
    """What a resource's server needs to know; implemented by the manager."""

    def devices(self, resource: str) -> tuple[int, tuple[Device, ...]]:
        """The current version number and device list of a resource."""
        ...

    def wait_change(self, version: int, timeout_s: float) -> int:
        """Blocks until the version differs from ``version`` or the timeout passes; returns it."""
        ...

    def preferred(self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int) -> list[str]: ...

    def allocate(self, resource: str, ids: Sequence[str]) -> Grant: ...


def socket_name(resource: str) -> str:
    """``nvidia.com/gpu`` -> ``gpupack-nvidia.com_gpu.sock``."""
    return "gpupack-" + resource.replace("/", "_") + ".sock"


class DevicePluginServicer(pb_grpc.DevicePluginServicer):
    def __init__(self, resource: str, source: Source, metrics: PluginMetrics, stopping: threading.Event) -> None:
        self.resource = resource
        self.source = source
        self.metrics = metrics
        self.stopping = stopping

    def GetDevicePluginOptions(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    def ListAndWatch(self, request: pb.Empty, context: grpc.ServicerContext) -> Iterator[pb.ListAndWatchResponse]:
        version, devices = self.source.devices(self.resource)
        yield _list(devices)
        while context.is_active() and not self.stopping.is_set():
            new = self.source.wait_change(version, 0.5)
            if new == version:
                continue
            version, devices = self.source.devices(self.resource)
            yield _list(devices)

    def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> pb.PreferredAllocationResponse:
        start = time.perf_counter()
        response = pb.PreferredAllocationResponse()
        for creq in request.container_requests:
            try:
                ids = self.source.preferred(
                    self.resource, list(creq.available_deviceIDs), list(creq.must_include_deviceIDs), creq.allocation_size
                )
            except PreferenceError as err:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{self.resource}: {err}")
            response.container_responses.add(deviceIDs=ids)
        self.metrics.preferred_seconds.labels(self.resource).observe(time.perf_counter() - start)
        return response

    def Allocate(self, request: pb.AllocateRequest, context: grpc.ServicerContext) -> pb.AllocateResponse:
        start = time.perf_counter()
        response = pb.AllocateResponse()
        for creq in request.container_requests:
            try:
                given = self.source.allocate(self.resource, list(creq.devices_ids))
            except AllocationError as err:
                reason = "unknown" if "unknown" in str(err) else "unhealthy"
                self.metrics.allocate_errors.labels(self.resource, reason).inc()
                log.warning("refused Allocate for %s: %s", self.resource, err)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{self.resource}: {err}")
            c = response.container_responses.add()
            c.envs.update(given.envs)
            for path in given.device_nodes:
                c.devices.add(container_path=path, host_path=path, permissions="rw")
            for name in given.cdi_devices:
                c.cdi_devices.add(name=name)
            self.metrics.allocations.labels(self.resource).inc()
            log.info("allocated %s to a container: %s", self.resource, ", ".join(creq.devices_ids))
        self.metrics.allocate_seconds.labels(self.resource).observe(time.perf_counter() - start)
        return response

    def PreStartContainer(self, request: pb.PreStartContainerRequest, context: grpc.ServicerContext) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


def _list(devices: tuple[Device, ...]) -> pb.ListAndWatchResponse:
    out = pb.ListAndWatchResponse()
    for d in devices:
        dev = out.devices.add(ID=d.id, health=d.health)
        if d.numa_node >= 0:
            dev.topology.nodes.add(ID=d.numa_node)
    return out


class PluginServer:
    """A DevicePlugin gRPC server for one resource on ``<plugin_dir>/<socket_name>``."""

    def __init__(self, resource: str, plugin_dir: pathlib.Path, source: Source, metrics: PluginMetrics) -> None:
        self.resource = resource
        self.path = plugin_dir / socket_name(resource)
        self.source = source
        self.metrics = metrics
        self._server: grpc.Server | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self.stop()
        self._stopping = threading.Event()
        servicer = DevicePluginServicer(self.resource, self.source, self.metrics, self._stopping)
        self._server, self._inode = serve_on_socket(
            self.path, lambda server: pb_grpc.add_DevicePluginServicer_to_server(servicer, server),  # type: ignore[no-untyped-call]
            workers=16, thread_prefix="grpc")
        log.info("serving %s on %s", self.resource, self.path)

    def serving(self) -> bool:
        """True while our socket file is still the one we created."""
        try:
            return self._server is not None and os.stat(self.path).st_ino == self._inode
        except OSError:
            return False

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.stop(grace=0.5).wait()
            self._server = None
            try:
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()
            except OSError:
                pass

    def register(self, kubelet_socket: pathlib.Path, timeout_s: float = 5.0) -> None:
        """Registers with the kubelet; raises grpc.RpcError or OSError when it is not there."""
        if not kubelet_socket.exists():
            raise OSError(f"{kubelet_socket} does not exist (is the kubelet running?)")
        with grpc.insecure_channel(f"unix://{kubelet_socket}") as channel:
            pb_grpc.RegistrationStub(channel).Register(  # type: ignore[no-untyped-call]
                pb.RegisterRequest(
                    version=API_VERSION,
                    endpoint=self.path.name,
                    resource_name=self.resource,
                    options=pb.DevicePluginOptions(get_preferred_allocation_available=True),
                ),
                timeout=timeout_s,
                wait_for_ready=True,
            )
        self.metrics.registrations.labels(self.resource).inc()
        log.info("registered %s with the kubelet (endpoint %s)", self.resource, self.path.name)


def serve_on_socket(path: pathlib.Path, add: Callable[[grpc.Server], None], workers: int,
                    thread_prefix: str) -> tuple[grpc.Server, int]:
    """A gRPC server started on Unix socket ``path`` (a file left there is removed first), with
    the services ``add`` puts on it, and the socket file's inode: ``serving()`` compares it,
    since the kubelet removes the sockets in its folder when it restarts."""
    if path.exists() or path.is_symlink():
        path.unlink()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_prefix))
    add(server)
    if server.add_insecure_port(f"unix://{path}") == 0:
        raise OSError(f"cannot listen on {path}")
    server.start()
    return server, os.stat(path).st_ino
