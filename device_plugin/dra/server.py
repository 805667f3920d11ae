"""The gRPC edge of the DRA driver: the DRAPlugin service and the plugin registration service.

Two Unix sockets, as the kubelet's DRA manager expects them (``kubeletplugin`` in
k8s.io/dynamic-resource-allocation does the same):

- registration: ``<registry dir>/gpu.gpupack.io-reg.sock`` (the kubelet's plugin watcher
  looks in ``/var/lib/kubelet/plugins_registry/``). ``GetInfo`` answers type ``DRAPlugin``,
  the driver name, the DRA socket's path and the services served (``v1.DRAPlugin``); the
  kubelet then calls ``NotifyRegistrationStatus`` with the outcome;
- DRA: ``<plugin data dir>/dra.sock`` (``/var/lib/kubelet/plugins/gpu.gpupack.io/dra.sock``),
  serving ``NodePrepareResources`` and ``NodeUnprepareResources``.

The servicers only convert between protobuf and the :class:`~device_plugin.dra.prepare.Preparer`;
a claim's failure is in its entry of the answer, never a gRPC error (which would make the
kubelet drop the answers of every claim in the call).
"""

from __future__ import annotations

from collections.abc import Callable
import logging
import os
import pathlib
import threading

import grpc

from gpupack.kubeletapi import dra_v1_pb2 as dra_pb
from gpupack.kubeletapi import dra_v1_pb2_grpc as dra_grpc
from gpupack.kubeletapi import pluginregistration_v1_pb2 as reg_pb
from gpupack.kubeletapi import pluginregistration_v1_pb2_grpc as reg_grpc

from gpupack import dra_names as names
from device_plugin.dra.prepare import ClaimRef, Preparer
from device_plugin.server import serve_on_socket

log = logging.getLogger("gpupack.dra.server")

DRA_SOCKET = "dra.sock"


def registration_socket_name(driver: str = names.DRIVER) -> str:
    return f"{driver}-reg.sock"


def _refs(claims: object) -> list[ClaimRef]:
    return [ClaimRef(c.namespace, c.uid, c.name) for c in claims]  # type: ignore[attr-defined]


class DraServicer(dra_grpc.DRAPluginServicer):
    def __init__(self, preparer: Preparer) -> None:
        self.preparer = preparer

    def NodePrepareResources(
        self, request: dra_pb.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_pb.NodePrepareResourcesResponse:
        out = dra_pb.NodePrepareResourcesResponse()
        for uid, outcome in self.preparer.prepare(_refs(request.claims)).items():
            entry = out.claims[uid]
            if outcome.error:
                entry.error = outcome.error
                continue
            for d in outcome.devices:
                dev = entry.devices.add(request_names=list(d.requests), pool_name=d.pool, device_name=d.device,
                                        cdi_device_ids=list(d.cdi_ids))
                if d.share_id is not None:
                    dev.share_id = d.share_id
        return out

    def NodeUnprepareResources(
        self, request: dra_pb.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_pb.NodeUnprepareResourcesResponse:
        out = dra_pb.NodeUnprepareResourcesResponse()
        for uid, error in self.preparer.unprepare(_refs(request.claims)).items():
            out.claims[uid].error = error
        return out


class RegistrationServicer(reg_grpc.RegistrationServicer):
    def __init__(self, driver: str, endpoint: pathlib.Path) -> None:
        self.driver = driver
        self.endpoint = endpoint
        self.status: reg_pb.RegistrationStatus | None = None  # the kubelet's last word
        self.registered = threading.Event()

    def GetInfo(self, request: reg_pb.InfoRequest, context: grpc.ServicerContext) -> reg_pb.PluginInfo:
        return reg_pb.PluginInfo(type=names.PLUGIN_TYPE, name=self.driver, endpoint=str(self.endpoint),
                                 supported_versions=[names.DRA_SERVICE])

    def NotifyRegistrationStatus(
        self, request: reg_pb.RegistrationStatus, context: grpc.ServicerContext
    ) -> reg_pb.RegistrationStatusResponse:
        self.status = request
        if request.plugin_registered:
            log.info("the kubelet registered DRA driver %s (endpoint %s)", self.driver, self.endpoint)
            self.registered.set()
        else:
            log.error("the kubelet refused DRA driver %s: %s", self.driver, request.error)
            self.registered.clear()
        return reg_pb.RegistrationStatusResponse()


class _SocketServer:
    """One gRPC server on one Unix socket; the socket file is removed on stop if still ours."""

    def __init__(self, path: pathlib.Path, add: Callable[[grpc.Server], None], what: str) -> None:
        self.path = path
        self._add = add
        self._what = what
        self._server: grpc.Server | None = None
        self._inode = 0

    def start(self) -> None:
        self.stop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server, self._inode = serve_on_socket(self.path, self._add, workers=8, thread_prefix="grpc-dra")
        log.info("serving %s on %s", self._what, self.path)

    def serving(self) -> bool:
        try:
            return self._server is not None and os.stat(self.path).st_ino == self._inode
        except OSError:
            return False

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop(grace=0.5).wait()
        self._server = None
        try:
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except OSError:
            pass


class DraServer:
    """The DRA socket and the registration socket of one driver.

    The DRA socket comes first: the kubelet dials the endpoint as soon as it has read GetInfo.
    """

    def __init__(self, preparer: Preparer, plugin_data_dir: pathlib.Path, registry_dir: pathlib.Path,
                 driver: str = names.DRIVER) -> None:
        self.dra_path = plugin_data_dir / DRA_SOCKET
        self.registration = RegistrationServicer(driver, self.dra_path)
        servicer = DraServicer(preparer)
        self._dra = _SocketServer(
            self.dra_path, lambda s: dra_grpc.add_DRAPluginServicer_to_server(servicer, s), "DRA")  # type: ignore[no-untyped-call]
        self._reg = _SocketServer(
            registry_dir / registration_socket_name(driver),
            lambda s: reg_grpc.add_RegistrationServicer_to_server(self.registration, s),  # type: ignore[no-untyped-call]
            "plugin registration",
        )

    @property
    def registration_path(self) -> pathlib.Path:
        return self._reg.path

    def start(self) -> None:
        self._dra.start()
        self._reg.start()

    def ensure_serving(self) -> None:
        """Serves again on a socket file that was removed (a kubelet cleaning up its folders)."""
        for s in (self._dra, self._reg):
            if not s.serving():
                log.info("socket %s was removed; serving again", s.path)
                s.start()

    def stop(self) -> None:
        self._reg.stop()  # the kubelet sees the driver go before its endpoint does
        self._dra.stop()
