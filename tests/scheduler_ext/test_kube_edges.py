"""The thin adapters over the kubernetes client, with a fake CoreV1Api: the bodies they send
and how they map API errors (409 -> Conflict, 410 -> Gone)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from scheduler_ext.binder import Conflict, KubePodApi
from scheduler_ext.watch import Gone, KubeWatchSource


class Resp:
    def __init__(self, obj: Any) -> None:
        self.data = json.dumps(obj).encode()


class FakeCore:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.patch_status = 0

    def read_namespaced_pod(self, name: str, namespace: str, **kw: Any) -> Resp:
        return Resp({"metadata": {"name": name, "namespace": namespace, "resourceVersion": "7"}})

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **kw: Any) -> Resp:
        self.calls.append(("patch", (name, namespace, body)))
        if self.patch_status:
            raise ApiException(status=self.patch_status, reason="Conflict")
        return Resp({})

    def create_namespaced_binding(self, namespace: str, body: Any, **kw: Any) -> Resp:
        self.calls.append(("bind", (namespace, body)))
        return Resp({})

    def list_node(self, **kw: Any) -> Resp:
        return Resp({"metadata": {"resourceVersion": "42"}, "items": [{"metadata": {"name": "n1"}}]})

    def list_pod_for_all_namespaces(self, **kw: Any) -> Resp:
        if kw.get("watch"):
            raise ApiException(status=410, reason="Gone")
        return Resp({"metadata": {"resourceVersion": "43"}, "items": []})


def test_pod_api_bodies_and_conflict() -> None:
    core = FakeCore()
    api = KubePodApi(core)
    assert api.read_pod("ns", "p")["metadata"]["resourceVersion"] == "7"
    api.patch_pod_annotations("ns", "p", "7", {"gpupack.io/devices": "{}"})
    assert core.calls[-1] == ("patch", ("p", "ns", {"metadata": {"resourceVersion": "7", "annotations": {"gpupack.io/devices": "{}"}}}))
    api.create_binding("ns", "p", "uid-1", "n1")
    assert core.calls[-1] == ("bind", ("ns", {
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p", "namespace": "ns", "uid": "uid-1"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}))
    core.patch_status = 409
    with pytest.raises(Conflict):
        api.patch_pod_annotations("ns", "p", "6", {})
    core.patch_status = 500
    with pytest.raises(ApiException):
        api.patch_pod_annotations("ns", "p", "6", {})


def test_watch_source_list_and_gone() -> None:
    source = KubeWatchSource(FakeCore())
    assert source.list("Node") == ([{"metadata": {"name": "n1"}}], "42")
    assert source.list("Pod") == ([], "43")
    with pytest.raises(Gone):
        list(source.watch("Pod", "43"))
