"""The extender/v1 protocol over real HTTP on loopback, with bodies as kube-scheduler sends them."""

from __future__ import annotations

import http.client
import json
from typing import Any

from gpupack import contract
from scheduler_ext.cache import ClusterCache, from_objects
from scheduler_ext.decide import Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.server import ExtenderApp, serve

from .conftest import Client, FakePodApi
from tests.fixtures import node

# A Pod as Go's encoding/json writes a v1.Pod: zero timestamps as null, omitted empties.
POD_WANT2 = """{"metadata":{"name":"want2","namespace":"default","uid":"uid-want2","resourceVersion":"1",
"creationTimestamp":null,"annotations":null},"spec":{"containers":[{"name":"c0","image":"x",
"resources":{"limits":{"nvidia.com/gpu":"2"},"requests":{"nvidia.com/gpu":"2"}}}],
"schedulerName":"default-scheduler","priority":0},"status":{"phase":"Pending"}}"""

NAMES = ["n-full", "n-half", "n-empty", "n-cpu", "n-ghost"]


def cache_capable_args(pod: str = POD_WANT2) -> str:
    return '{"Pod":' + pod + ',"Nodes":null,"NodeNames":' + json.dumps(NAMES) + "}"


def full_nodes_args(pod: str = POD_WANT2) -> str:
    items = [node(n, n=0) for n in NAMES]  # the objects' content is not read, only their names
    return '{"Pod":' + pod + ',"Nodes":{"metadata":{},"items":' + json.dumps(items) + '},"NodeNames":null}'


def test_filter_node_names_mode(client: Client) -> None:
    status, body = client.post("/filter", cache_capable_args())
    assert status == 200
    assert body["Nodes"] is None and body["Error"] == ""
    # every node that fits, never narrowed to one
    assert body["NodeNames"] == ["n-half", "n-empty"]
    assert body["FailedNodes"]["n-full"] == "gpupack: needs 2 nvidia.com/gpu; 0 free now of 2"
    assert "not in the extender's cache" in body["FailedNodes"]["n-ghost"]
    assert "no such device" in body["FailedAndUnresolvableNodes"]["n-cpu"]


def test_filter_full_nodes_mode(client: Client) -> None:
    status, body = client.post("/filter", full_nodes_args())
    assert status == 200
    assert body["NodeNames"] is None
    assert [n["metadata"]["name"] for n in body["Nodes"]["items"]] == ["n-half", "n-empty"]


def test_prioritize_bare_list_both_modes(client: Client) -> None:
    for args in (cache_capable_args(), full_nodes_args()):
        status, body = client.post("/prioritize", args)
        assert status == 200
        assert isinstance(body, list)
        scores = {h["Host"]: h["Score"] for h in body}
        # binpack: n-half after = 4/4 used -> best (10); n-empty 2/4 -> 0; others cannot fit
        assert scores == {"n-full": 0, "n-half": 10, "n-empty": 0, "n-cpu": 0, "n-ghost": 0}
        assert all(isinstance(h["Score"], int) and 0 <= h["Score"] <= 10 for h in body)


def test_pod_without_gpu_passes_everything(client: Client) -> None:
    plain = '{"metadata":{"name":"web","namespace":"default","uid":"u-web"},"spec":{"containers":[{"name":"c","image":"x","resources":{}}]},"status":{}}'
    status, body = client.post("/filter", cache_capable_args(plain))
    assert status == 200 and body["NodeNames"] == NAMES and body["FailedNodes"] == {}


def test_bind_writes_annotation_then_binding(client: Client, app_parts: tuple[ClusterCache, FakePodApi, ExtenderApp]) -> None:
    _, api, _ = app_parts
    status, body = client.post("/bind", {"PodName": "want2", "PodNamespace": "default", "PodUID": "uid-want2", "Node": "n-half"})
    assert (status, body) == (200, {"Error": ""})
    stored = api.read_pod("default", "want2")
    devices = contract.decode_assignment(stored["metadata"]["annotations"][contract.DEVICES_ANNOTATION])
    assert devices == {"c0": {contract.NVIDIA_GPU: ["GPU-n-half-2", "GPU-n-half-3"]}}
    assert api.bindings == [("default", "want2", "n-half")]
    # the reservation holds: n-half is now full for the next pod
    status, body = client.post("/filter", cache_capable_args())
    assert "n-half" in body["FailedNodes"]


def test_bind_errors_are_reported_not_raised(client: Client) -> None:
    status, body = client.post("/bind", {"PodName": "nope", "PodNamespace": "default", "PodUID": "x", "Node": "n-half"})
    assert status == 200 and "reading pod default/nope" in body["Error"]
    status, body = client.post("/bind", {"PodName": "want2", "PodNamespace": "default", "PodUID": "uid-want2", "Node": "n-full"})
    assert status == 200 and "no room left on n-full" in body["Error"]


def test_bind_retries_a_conflict(app_parts: tuple[ClusterCache, FakePodApi, ExtenderApp]) -> None:
    _, api, app = app_parts
    api.conflicts = 2
    assert app.binder is not None
    err = app.binder.bind({"PodName": "want1", "PodNamespace": "default", "PodUID": "uid-want1", "Node": "n-half"})
    assert err == "" and api.patches == 1
    api.conflicts = 5
    err = app.binder.bind({"PodName": "want1b", "PodNamespace": "default", "PodUID": "uid-want1b", "Node": "n-empty"})
    assert "gave up after 3 conflicts" in err
    assert api.bindings == [("default", "want1", "n-half")]


def test_bind_uses_the_pod_filter_saw_and_reads_it_only_when_it_changed(
    client: Client, app_parts: tuple[ClusterCache, FakePodApi, ExtenderApp]
) -> None:
    _, api, app = app_parts
    want = api.read_pod("default", "want1")
    api.reads = 0
    status, _ = client.post("/filter", {"Pod": want, "Nodes": None, "NodeNames": NAMES})
    assert status == 200
    status, body = client.post("/bind", {"PodName": "want1", "PodNamespace": "default", "PodUID": "uid-want1", "Node": "n-half"})
    assert (status, body) == (200, {"Error": ""}) and api.reads == 0 and api.patches == 1  # 4 API calls, not 5
    assert api.bindings == [("default", "want1", "n-half")]
    # the pod changed after filter saw it: the conditional patch conflicts, the pod is read, patched again
    other = api.read_pod("default", "want1b")
    client.post("/filter", {"Pod": other, "Nodes": None, "NodeNames": NAMES})
    api.pods[("default", "want1b")]["metadata"]["resourceVersion"] = "7"
    api.reads = 0
    status, body = client.post("/bind", {"PodName": "want1b", "PodNamespace": "default", "PodUID": "uid-want1b", "Node": "n-empty"})
    assert body == {"Error": ""} and api.reads == 1 and api.patches == 2
    # a seen pod is used once, and only for the same name, namespace and uid
    assert app.binder is not None
    seen = api.read_pod("default", "want2")
    api.reads = 0
    for wrong in ({"uid": "uid-other"}, {"name": "want1"}, {"namespace": "kube-system"}, {"resourceVersion": ""}):
        bad = json.loads(json.dumps(seen))
        bad["metadata"].update(wrong)
        app.binder.bind({"PodName": "want2", "PodNamespace": "default", "PodUID": "uid-want2", "Node": "n-full"}, bad)
    assert api.reads == 4


def test_preempt_returns_victims_that_free_the_shape(client: Client) -> None:
    # the scheduler proposes no victim on n-full (it cannot see GPUs); pod "a" holds both GPUs
    # and has lower priority than the preemptor (100 > 0)
    pod = POD_WANT2.replace('"priority":0', '"priority":100')
    args = ('{"Pod":' + pod + ',"NodeNameToVictims":null,"NodeNameToMetaVictims":'
            '{"n-full":{"Pods":[],"NumPDBViolations":0},"n-cpu":{"Pods":null,"NumPDBViolations":0}}}')
    status, body = client.post("/preempt", args)
    assert status == 200
    assert body == {"NodeNameToMetaVictims": {"n-full": {"Pods": [{"UID": "uid-a"}], "NumPDBViolations": 0}}}


def test_preempt_full_victims_mode(client: Client) -> None:
    pod = POD_WANT2.replace('"priority":0', '"priority":100')
    victim: dict[str, Any] = {"metadata": {"name": "a", "namespace": "default", "uid": "uid-a"}, "spec": {}, "status": {}}
    args = '{"Pod":' + pod + ',"NodeNameToVictims":{"n-full":{"Pods":[' + json.dumps(victim) + '],"NumPDBViolations":1}},"NodeNameToMetaVictims":null}'
    status, body = client.post("/preempt", args)
    assert body == {"NodeNameToMetaVictims": {"n-full": {"Pods": [{"UID": "uid-a"}], "NumPDBViolations": 1}}}


def test_malformed_bodies_get_400_and_oversized_413(client: Client) -> None:
    for path, body, reason in [
        ("/filter", b"{not json", "body is not JSON"),
        ("/filter", b"[1,2]", "expected a JSON object"),
        ("/filter", b'{"Pod":null,"Nodes":null,"NodeNames":[]}', "Pod: missing or null"),
        ("/prioritize", b'{"Pod":{},"Nodes":null,"NodeNames":[1]}', "NodeNames: expected a list of strings"),
        ("/bind", b'{"PodName":"x"}', "PodNamespace: expected a string"),
        ("/preempt", b'{"Pod":{},"NodeNameToMetaVictims":{"n":{"Pods":[{"X":1}]}}}', "no uid"),
        ("/filter", b"\xff\xfe", "body is not JSON"),
    ]:
        status, text = client.post(path, body)
        assert status == 400, (path, body)
        assert reason in text
    # an oversized body is refused from its Content-Length, before it is read: 413
    conn = http.client.HTTPConnection(str(client.host), int(client.port), timeout=30)
    conn.putrequest("POST", "/filter")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and b"exceeds" in resp.read()
    conn.close()
    # still serving, state unharmed
    status, body = client.post("/filter", cache_capable_args())
    assert status == 200 and body["NodeNames"] == ["n-half", "n-empty"]


def test_bad_pod_gpu_fields_fail_per_node(client: Client) -> None:
    bad = POD_WANT2.replace('"annotations":null', '"annotations":{"gpupack.io/gpu-memory":"lots"}')
    status, body = client.post("/filter", cache_capable_args(bad))
    assert status == 200 and body["NodeNames"] == []
    assert all("cannot be read" in v for v in body["FailedAndUnresolvableNodes"].values())


def test_health_ready_metrics(client: Client) -> None:
    assert client.get("/healthz") == (200, "ok\n")
    assert client.get("/readyz")[0] == 200
    client.post("/filter", cache_capable_args())
    status, text = client.get("/metrics")
    assert status == 200
    assert 'gpupack_extender_request_seconds_count{verb="filter"}' in text
    assert 'gpupack_extender_node_failures_total{reason="busy"}' in text
    # idle: n-half 2 + n-empty 4 = 6 GPUs
    assert "gpupack_cluster_idle_gpus 6.0" in text
    assert client.get("/nope")[0] == 404


def test_not_ready_before_sync() -> None:
    from scheduler_ext.decide import Decider
    from scheduler_ext.metrics import Metrics

    cache = ClusterCache()
    app = ExtenderApp(cache, Decider(cache), None, Metrics(cache))
    assert app.handle_get("/readyz").status == 503
    cache.replace_nodes([])
    cache.replace_pods([])
    assert app.handle_get("/readyz").status == 200


def _cpu_pod(name: str, cpu: str) -> str:
    return json.dumps({"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "annotations": None},
                       "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]},
                       "status": {"phase": "Pending"}})


def test_prioritize_cpu_only_scores_cpu_pods_where_they_strand_fewest_gpus() -> None:
    """The second extender entry (no managedResources): a CPU-only pod that takes most of a
    node's CPU goes where that strands the fewest idle GPUs; GPU pods get a flat 0 there."""
    nodes = [node("gpu8", n=8), node("gpu1", n=1), node("plain")]
    for n in nodes:
        n["status"]["allocatable"] = {"cpu": "16", "memory": "64Gi"}
    cache = from_objects(nodes)
    app = ExtenderApp(cache, Decider(cache, "fragmentation"), None, Metrics(cache))
    srv, thread = serve(app, "127.0.0.1", 0, max_body=1 << 20)
    try:
        client = Client(srv)
        names = json.dumps(["gpu8", "gpu1", "plain", "ghost"])
        status, body = client.post("/prioritize-cpu-only", '{"Pod":' + _cpu_pod("big", "15") + ',"Nodes":null,"NodeNames":' + names + "}")
        assert status == 200
        scores = {h["Host"]: h["Score"] for h in body}
        assert scores["plain"] == 10 and scores["gpu8"] < scores["gpu1"] < 10 and scores["ghost"] == 0
        # a GPU pod: the first entry scores it, this one stays out of the way
        status, body = client.post("/prioritize-cpu-only", '{"Pod":' + POD_WANT2 + ',"Nodes":null,"NodeNames":' + names + "}")
        assert status == 200 and {h["Score"] for h in body} == {0} and len(body) == 4
        status, text = client.post("/prioritize-cpu-only", b'{"Pod": 7}')
        assert status == 400 and "Pod" in text
        _, metrics = client.get("/metrics")
        assert 'gpupack_extender_decisions_total{result="ok",verb="prioritize-cpu-only"} 2.0' in metrics
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_prioritize_reads_a_changed_pod_afresh(client: Client) -> None:
    """The Pod filter read is kept for its prioritize; a Pod that differs in anything (here
    the same uid asking for more GPUs than any node has) is read again, never answered from
    the kept one."""
    client.post("/filter", cache_capable_args())
    status, body = client.post("/prioritize", cache_capable_args(POD_WANT2.replace('"2"', '"9"')))
    assert status == 200
    assert {h["Host"]: h["Score"] for h in body} == dict.fromkeys(NAMES, 0)
    status, body = client.post("/prioritize", cache_capable_args())
    assert {h["Host"]: h["Score"] for h in body}["n-half"] == 10


def test_a_pod_equal_only_in_python_is_read_afresh(client: Client) -> None:
    """``1 == 1.0 == True`` in Python, but a GPU count of ``1.0`` is not a whole number: the
    Pod kept from filter is reused only when its JSON is the same."""
    status, body = client.post("/filter", cache_capable_args(POD_WANT2.replace('"2"', "2")))
    assert body["NodeNames"] == ["n-half", "n-empty"]  # a JSON number of GPUs reads as a count
    status, body = client.post("/prioritize", cache_capable_args(POD_WANT2.replace('"2"', "2.0")))
    assert status == 200
    assert {h["Host"]: h["Score"] for h in body} == dict.fromkeys(NAMES, 0)
