"""Shared fixtures: an extender served over real HTTP on loopback."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from gpupack import contract
from scheduler_ext.binder import Binder
from scheduler_ext.cache import ClusterCache, from_objects
from scheduler_ext.decide import Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.server import ExtenderApp, ExtenderHTTPServer, serve

from tests.fixtures import node, pod


class FakePodApi:
    """An API server of pods for the binder: resourceVersions, 409 on a stale one, bindings."""

    def __init__(self, pods: list[dict[str, Any]], conflicts: int = 0) -> None:
        self.pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): json.loads(json.dumps(p)) for p in pods}
        self.conflicts = conflicts  # how many patches to refuse with 409 first
        self.bindings: list[tuple[str, str, str]] = []
        self.patches = 0
        self.reads = 0

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        self.reads += 1
        found = self.pods.get((namespace, name))
        if found is None:
            raise LookupError(f'pods "{name}" not found')
        return json.loads(json.dumps(found))

    def patch_pod_annotations(self, namespace: str, name: str, resource_version: str, annotations: dict[str, str]) -> None:
        from scheduler_ext.binder import Conflict

        p = self.pods[(namespace, name)]
        meta = p["metadata"]
        if self.conflicts > 0:
            self.conflicts -= 1
            meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)  # someone else wrote
        if resource_version != meta["resourceVersion"]:
            raise Conflict("the object has been modified")
        meta.setdefault("annotations", {}).update(annotations)
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        self.patches += 1

    def create_binding(self, namespace: str, name: str, uid: str, node: str) -> None:
        p = self.pods[(namespace, name)]
        if p["spec"].get("nodeName"):
            raise RuntimeError("pod is already assigned")
        p["spec"]["nodeName"] = node
        self.bindings.append((namespace, name, node))


class Client:
    def __init__(self, srv: ExtenderHTTPServer) -> None:
        self.host, self.port = srv.server_address[:2]

    def post(self, path: str, body: bytes | str | Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
        conn = http.client.HTTPConnection(str(self.host), int(self.port), timeout=30)
        conn.request("POST", path, data, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, (json.loads(raw) if ctype.startswith("application/json") else raw.decode())

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection(str(self.host), int(self.port), timeout=30)
        conn.request("GET", path)
        resp = conn.getresponse()
        out = resp.status, resp.read().decode()
        conn.close()
        return out


def cluster_objects() -> list[dict[str, Any]]:
    """n-full: 2 GPUs both used; n-half: 4 GPUs, 2 used; n-empty: 4 free; n-cpu: no GPUs."""
    return [
        node("n-full", n=2), node("n-half", n=4), node("n-empty", n=4), node("n-cpu"),
        pod("a", gpus={contract.NVIDIA_GPU: 2}, node="n-full", phase="Running",
            devices={"c0": {contract.NVIDIA_GPU: ["GPU-n-full-0", "GPU-n-full-1"]}}),
        pod("b", gpus={contract.NVIDIA_GPU: 2}, node="n-half", phase="Running",
            devices={"c0": {contract.NVIDIA_GPU: ["GPU-n-half-0", "GPU-n-half-1"]}}),
    ]


@pytest.fixture
def app_parts() -> tuple[ClusterCache, FakePodApi, ExtenderApp]:
    objs = cluster_objects()
    pending = [pod("want2", gpus={contract.NVIDIA_GPU: 2}), pod("want1", gpus={contract.NVIDIA_GPU: 1}),
               pod("want1b", gpus={contract.NVIDIA_GPU: 1})]
    cache = from_objects(objs)
    api = FakePodApi([o for o in objs if o["kind"] == "Pod"] + pending)
    decider = Decider(cache, "binpack")
    return cache, api, ExtenderApp(cache, decider, Binder(api, cache, decider.policy), Metrics(cache))


@pytest.fixture
def client(app_parts: tuple[ClusterCache, FakePodApi, ExtenderApp]) -> Iterator[Client]:
    srv, thread = serve(app_parts[2], "127.0.0.1", 0, max_body=1 << 20)
    yield Client(srv)
    srv.shutdown()
    srv.server_close()
    thread.join()
