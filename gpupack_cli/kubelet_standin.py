"""A stand-in for the kubelet's side of the device plugin API, for the demo and the tests.

It serves the real ``Registration`` gRPC service on ``<folder>/kubelet.sock``, records every
``RegisterRequest``, and talks to registered plugins over their own sockets with the real
``DevicePlugin`` client stub, exactly as the kubelet's device manager does. :meth:`restart`
behaves like a kubelet restart: it removes every socket in the folder and serves kubelet.sock
anew.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import queue
import stat

import grpc

from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb
from gpupack.kubeletapi import deviceplugin_v1beta1_pb2_grpc as pb_grpc

KUBELET_SOCKET = "kubelet.sock"



#: Seconds a ListAndWatch stream may stay open in the demo and the tests: a stream read that
#: waits for an update that never comes fails with DEADLINE_EXCEEDED instead of hanging.
STREAM_DEADLINE_S = 20.0

class _Registration(pb_grpc.RegistrationServicer):
    def __init__(self, inbox: queue.Queue[pb.RegisterRequest]) -> None:
        self.inbox = inbox

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Empty:
        if request.version != "v1beta1":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported API version {request.version}")
        self.inbox.put(request)
        return pb.Empty()


class KubeletStandIn:
    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.registrations: queue.Queue[pb.RegisterRequest] = queue.Queue()
        self._server: grpc.Server | None = None

    @property
    def socket(self) -> pathlib.Path:
        return self.folder / KUBELET_SOCKET

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_RegistrationServicer_to_server(_Registration(self.registrations), server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        if self.socket.exists():
            self.socket.unlink()

    def restart(self) -> None:
        """Like a kubelet restart: stop, remove every socket in the folder, serve again."""
        self.stop()
        for entry in os.scandir(self.folder):
            if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                os.unlink(entry.path)
        self.start()

    def next_registration(self, timeout_s: float = 10.0) -> pb.RegisterRequest:
        return self.registrations.get(timeout=timeout_s)

    def plugin(self, endpoint: str) -> tuple[grpc.Channel, pb_grpc.DevicePluginStub]:
        """A channel and stub to a registered plugin's endpoint (socket name in the folder)."""
        channel = grpc.insecure_channel(f"unix://{self.folder / endpoint}")
        return channel, pb_grpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
