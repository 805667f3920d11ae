"""DRA pods over real HTTP: /filter and /prioritize answer, /bind posts a plain Binding; and the
watch lists the DRA kinds only with DRA awareness, refusing an API server without them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gpupack import contract
from scheduler_ext import watch
from scheduler_ext.binder import Binder
from scheduler_ext.cache import ClusterCache
from scheduler_ext.decide import Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.server import ExtenderApp, serve
from tests.fixtures import pod
from tests.scheduler_ext.conftest import Client, FakePodApi
from tests.scheduler_ext.test_dra_cache import CLASSES, bare_node, claim, claim_pod, dra_cache, published, result, template


class RecordingLedger:
    def __init__(self) -> None:
        self.claims: list[str] = []

    def claim(self, node: str, uid: str, pod: str, devices: contract.Assignment, memory_mib: int,
              superseded: Any = None) -> Any:
        self.claims.append(uid)
        raise AssertionError("a DRA pod claims nothing in the ledger")

    def release(self, node: str, uid: str) -> None:
        self.claims.append(f"release {uid}")


@pytest.fixture
def dra_app() -> Iterator[tuple[Client, FakePodApi, ClusterCache, RecordingLedger]]:
    # n1: 8 GPUs, GPUs 0..2 held by a claim; n2: 8 GPUs free (both DRA nodes)
    pending = [pod("by-limit", gpus={contract.NVIDIA_GPU: 1}), claim_pod("by-claim", templ="one-gpu")]
    cache = dra_cache(["n1", "n2"], published("8gpu", "n1") + published("8gpu", "n2"),
                      [claim("held", [result("n1", f"gpu-{i}") for i in range(3)])],
                      templates=[template("one-gpu", {"exactly": {"deviceClassName": "gpu.gpupack.io"}})])
    api = FakePodApi(pending)
    ledger = RecordingLedger()
    decider = Decider(cache, "binpack", holds=True)
    app = ExtenderApp(cache, decider, Binder(api, cache, decider.policy, ledger), Metrics(cache))
    srv, thread = serve(app, "127.0.0.1", 0, max_body=1 << 20)
    yield Client(srv), api, cache, ledger
    srv.shutdown()
    srv.server_close()
    thread.join()


def args(p: dict[str, Any]) -> dict[str, Any]:
    return {"Pod": p, "Nodes": None, "NodeNames": ["n1", "n2"]}


@pytest.mark.parametrize("name", ["by-limit", "by-claim"])
def test_filter_prioritize_bind_for_a_dra_pod(dra_app: tuple[Client, FakePodApi, ClusterCache, RecordingLedger],
                                              name: str) -> None:
    client, api, cache, ledger = dra_app
    p = api.read_pod("default", name)
    status, body = client.post("/filter", args(p))
    assert status == 200 and body["NodeNames"] == ["n1", "n2"] and body["FailedNodes"] == {}
    # binpack: n1 (3 of 8 used) is fuller than n2, so it is the named node
    status, body = client.post("/prioritize", args(p))
    assert status == 200 and {h["Host"]: h["Score"] for h in body}["n1"] == 10
    assert cache.held(p["metadata"]["uid"]) == "n1"  # the burst's hold, as for any GPU pod
    status, body = client.post("/bind", {"PodName": name, "PodNamespace": "default", "PodUID": p["metadata"]["uid"],
                                         "Node": "n1"})
    assert status == 200 and body == {"Error": ""}
    # the Binding alone: no gpupack.io/devices annotation, no ledger claim, the hold dropped
    assert api.bindings == [("default", name, "n1")] and api.patches == 0
    assert contract.DEVICES_ANNOTATION not in api.read_pod("default", name)["metadata"]["annotations"]
    assert ledger.claims == [] and cache.held(p["metadata"]["uid"]) == ""


def test_a_claim_pod_is_scored_by_the_every_pod_entry(dra_app: tuple[Client, FakePodApi, ClusterCache, RecordingLedger]) -> None:
    # kube-scheduler sends a pod that names no managed resource (claims only) to the score-only
    # entry: it is scored there as the GPU pod it is
    client, api, _, _ = dra_app
    _, by_claim = client.post("/prioritize-cpu-only", args(api.read_pod("default", "by-claim")))
    _, by_limit = client.post("/prioritize", args(api.read_pod("default", "by-limit")))
    assert by_claim == by_limit


# --- the watch ------------------------------------------------------------------------------------


class FakeSource:
    def __init__(self, lists: dict[str, list[dict[str, Any]]]) -> None:
        self.lists = lists
        self.listed: list[str] = []

    def list(self, kind: str) -> tuple[list[dict[str, Any]], str]:
        self.listed.append(kind)
        return self.lists.get(kind, []), "1"

    def watch(self, kind: str, resource_version: str) -> Iterator[dict[str, Any]]:
        raise RuntimeError("the test's watch ends here")  # the syncer waits (below: stops)


def test_the_dra_kinds_are_listed_only_with_dra_awareness() -> None:
    lists = {"Node": [bare_node("n")], "ResourceSlice": published("8gpu", "n"), "DeviceClass": CLASSES}
    cache = ClusterCache(dra=True)
    source = FakeSource(lists)
    syncer = watch.Syncer(cache, source, wait=lambda stop, _s: stop.set(), kinds=watch.KINDS + watch.DRA_KINDS)
    assert syncer.relists == dict.fromkeys(watch.KINDS + watch.DRA_KINDS, 0)
    for kind in ("Node", "Pod", "ResourceSlice"):
        syncer.run_kind(kind, threading.Event())  # list, watch fails, the wait stops it
    assert source.listed == ["Node", "Pod", "ResourceSlice"]
    assert not cache.synced  # claims, templates and classes not listed yet
    for kind in ("ResourceClaim", "ResourceClaimTemplate", "DeviceClass"):
        items, _ = source.list(kind)
        cache.replace_kind(kind, items)
    assert cache.synced and len(cache.node("n").slots) == 8  # type: ignore[union-attr]
    plain = ClusterCache()
    plain.replace_kind("ResourceSlice", published("8gpu", "n"))  # ignored without DRA awareness
    plain.replace_all([bare_node("n")], [])
    assert plain.synced and plain.node("n").slots == () and not plain.is_dra_node("n")  # type: ignore[union-attr]


class ApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status, self.reason = status, "Not Found" if status == 404 else "Forbidden"


class FakeResourceApi:
    def __init__(self, status: int) -> None:
        self.status = status

    def __getattr__(self, name: str) -> Any:
        def call(**kw: Any) -> Any:
            raise ApiError(self.status)
        return call


@pytest.mark.parametrize("status, text", [
    (404, "--dra: the API server does not serve resource.k8s.io/v1"),
    (403, "--dra: not allowed to list ResourceSlices"),
    (500, "--dra: listing ResourceSlices (resource.k8s.io/v1) failed: 500"),
])
def test_an_api_server_without_dra_is_one_clear_line(status: int, text: str) -> None:
    with pytest.raises(ValueError) as err:
        watch.KubeWatchSource(object(), FakeResourceApi(status)).check_dra()
    assert str(err.value).startswith(text) and "\n" not in str(err.value)


def test_the_flag_and_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from scheduler_ext import main

    assert main.parser().parse_args([]).dra is False
    assert main.parser().parse_args(["--dra"]).dra is True
    monkeypatch.setenv("GPUPACK_EXTENDER_DRA", "true")
    assert main.parser().parse_args([]).dra is True
    assert main.parser().parse_args(["--no-dra"]).dra is False
    monkeypatch.setenv("GPUPACK_EXTENDER_DRA", "maybe")
    with pytest.raises(SystemExit, match="GPUPACK_EXTENDER_DRA='maybe': expected true or false"):
        main.parser()
