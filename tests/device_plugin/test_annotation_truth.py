"""The truth after the fact (issue 15): annotations corrected to what the kubelet gave.

The decision (:func:`device_plugin.truth.corrections`) as a table: what PodResources lists,
what the pods' annotations say, which patches come out. Then the I/O around it
(:class:`device_plugin.kube.AnnotationCorrector`) against a fake API: the merge patch with the
resourceVersion precondition, a retry after 409, nothing after 404, the metric and the log line.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
import pytest
from kubernetes.client.exceptions import ApiException

from gpupack import contract

from device_plugin import kube, truth
from device_plugin.metrics import PluginMetrics

GPU = contract.NVIDIA_GPU
SHARED = contract.NVIDIA_GPU_SHARED
MIG = contract.mig_resource("1g.5gb")


def annotated(name: str, assignment: contract.Assignment, rv: str = "7", ns: str = "default") -> truth.AnnotatedPod:
    return truth.AnnotatedPod(ns, name, f"uid-{name}", rv, assignment)


# (id, held by the kubelet, annotated pods, expected: pod -> {container: {resource: ids}} corrected, kinds)
CASES: list[tuple[str, truth.Held, list[truth.AnnotatedPod], dict[str, contract.Assignment], list[str]]] = [
    ("agrees: nothing to do",
     {("default", "a"): {"main": {GPU: ["GPU-0"]}}},
     [annotated("a", {"main": {GPU: ["GPU-0"]}})], {}, []),
    ("same ids in another order: nothing to do",
     {("default", "a"): {"main": {GPU: ["GPU-1", "GPU-0"]}}},
     [annotated("a", {"main": {GPU: ["GPU-0", "GPU-1"]}})], {}, []),
    # the burst swap of docs/e2e.md: a was annotated GPU-0 and got GPU-1, b the other way round
    ("two same-shape pods swapped: both corrected",
     {("default", "a"): {"main": {GPU: ["GPU-1"]}}, ("default", "b"): {"main": {GPU: ["GPU-0"]}}},
     [annotated("a", {"main": {GPU: ["GPU-0"]}}), annotated("b", {"main": {GPU: ["GPU-1"]}})],
     {"a": {"main": {GPU: ["GPU-1"]}}, "b": {"main": {GPU: ["GPU-0"]}}}, ["device", "device"]),
    ("shares on another GPU: a device change",
     {("default", "s"): {"main": {SHARED: ["GPU-1::0"]}}},
     [annotated("s", {"main": {SHARED: ["GPU-0::0"]}})],
     {"s": {"main": {SHARED: ["GPU-1::0"]}}}, ["device"]),
    # the kubelet's exact share ids are kept, so the extender's next free replica is free indeed
    ("another replica of the same GPU: a replica change",
     {("default", "s"): {"main": {SHARED: ["GPU-0::3"]}}},
     [annotated("s", {"main": {SHARED: ["GPU-0::0"]}})],
     {"s": {"main": {SHARED: ["GPU-0::3"]}}}, ["replica"]),
    ("MIG devices swapped",
     {("default", "m"): {"main": {MIG: ["MIG-b"]}}},
     [annotated("m", {"main": {MIG: ["MIG-a"]}})],
     {"m": {"main": {MIG: ["MIG-b"]}}}, ["device"]),
    ("one container of two differs: only it changes, the other stays as annotated",
     {("default", "p"): {"c0": {GPU: ["GPU-0"]}, "c1": {GPU: ["GPU-3"]}}},
     [annotated("p", {"c0": {GPU: ["GPU-0"]}, "c1": {GPU: ["GPU-2"]}})],
     {"p": {"c0": {GPU: ["GPU-0"]}, "c1": {GPU: ["GPU-3"]}}}, ["device"]),
    ("a container the kubelet does not list yet keeps its annotation",
     {("default", "p"): {"c0": {GPU: ["GPU-5"]}}},
     [annotated("p", {"c0": {GPU: ["GPU-4"]}, "c1": {GPU: ["GPU-6"]}})],
     {"p": {"c0": {GPU: ["GPU-5"]}, "c1": {GPU: ["GPU-6"]}}}, ["device"]),
    ("a resource the annotation did not name is added",
     {("default", "p"): {"main": {GPU: ["GPU-0"], MIG: ["MIG-a"]}}},
     [annotated("p", {"main": {GPU: ["GPU-0"]}})],
     {"p": {"main": {GPU: ["GPU-0"], MIG: ["MIG-a"]}}}, ["device"]),
    ("a pod without annotation is never written",
     {("default", "plain"): {"main": {GPU: ["GPU-0"]}}}, [], {}, []),
    ("resources not ours are ignored",
     {("default", "a"): {"main": {"example.com/fpga": ["F-1"], GPU: ["GPU-0"]}}},
     [annotated("a", {"main": {GPU: ["GPU-0"]}})], {}, []),
    ("an annotated pod the kubelet does not list (not admitted yet) keeps its annotation",
     {}, [annotated("a", {"main": {GPU: ["GPU-0"]}})], {}, []),
    ("same name, other namespace: not confused",
     {("team-b", "a"): {"main": {GPU: ["GPU-1"]}}},
     [annotated("a", {"main": {GPU: ["GPU-0"]}})], {}, []),
]


@pytest.mark.parametrize("held,pods,want,kinds", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_corrections(held: truth.Held, pods: list[truth.AnnotatedPod], want: dict[str, contract.Assignment], kinds: list[str]) -> None:
    got = truth.corrections(held, pods)
    assert {c.name: c.assignment for c in got} == want
    assert [ch.kind for c in got for ch in c.changes] == kinds
    for c in got:
        body = c.patch()
        assert body == {"metadata": {"resourceVersion": "7", "annotations": {
            contract.DEVICES_ANNOTATION: contract.encode_assignment(c.assignment)}}}


def test_the_log_line_speaks_of_the_containers_devices() -> None:
    [c] = truth.corrections({("ml", "llm-0"): {"main": {GPU: ["GPU-b"]}}}, [annotated("llm-0", {"main": {GPU: ["GPU-a"]}}, ns="ml")])
    assert truth.describe(c, c.changes[0]) == (
        "pod ml/llm-0: the kubelet gave container main GPU-b, not the annotated GPU-a (nvidia.com/gpu); annotation corrected")


# --- the I/O: a fake API and PodClaims as the watch fills it ----------------------------------------


def pod_json(name: str, assignment: contract.Assignment, rv: str, phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": rv,
                         "annotations": {contract.DEVICES_ANNOTATION: contract.encode_assignment(assignment)}},
            "status": {"phase": phase}}


class Resp:
    def __init__(self, body: Any) -> None:
        self.data = json.dumps(body).encode()


class FakePodsApi:
    """Pods by name; a patch whose resourceVersion is not the stored one gets 409."""

    def __init__(self, pods: dict[str, dict[str, Any]], conflicts: int = 0) -> None:
        self.pods = pods
        self.patches: list[tuple[str, dict[str, Any], str]] = []
        self.conflicts = conflicts  # bump the stored version this many times before a patch

    def patch_namespaced_pod(self, name: str, namespace: str, body: dict[str, Any], **kw: Any) -> Resp:
        self.patches.append((name, body, kw.get("_content_type", "")))
        pod = self.pods.get(name)
        if pod is None:
            raise ApiException(status=404, reason="Not Found")
        if self.conflicts:
            self.conflicts -= 1
            pod["metadata"]["resourceVersion"] = str(int(pod["metadata"]["resourceVersion"]) + 1)
        if body["metadata"]["resourceVersion"] != pod["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        pod["metadata"]["annotations"].update(body["metadata"]["annotations"])
        pod["metadata"]["resourceVersion"] = str(int(pod["metadata"]["resourceVersion"]) + 1)
        return Resp(pod)

    def list_pod_for_all_namespaces(self, **kw: Any) -> Resp:
        return Resp({"items": list(self.pods.values()), "metadata": {"resourceVersion": "99"}})


def corrector(api: FakePodsApi, held: truth.Held) -> tuple[kube.AnnotationCorrector, kube.PodClaims, PluginMetrics]:
    claims = kube.PodClaims(api, "gpu-1")
    claims.refresh()
    metrics = PluginMetrics()
    return kube.AnnotationCorrector(api, claims, lambda: held, metrics, 10.0), claims, metrics


def corrected(metrics: PluginMetrics, resource: str, kind: str) -> float:
    return metrics.registry.get_sample_value(
        "gpupack_plugin_annotation_corrections_total", {"resource": resource, "kind": kind}) or 0.0


def test_a_swap_is_patched_once_with_the_precondition_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    api = FakePodsApi({"a": pod_json("a", {"main": {GPU: ["GPU-0"]}}, "10"), "b": pod_json("b", {"main": {GPU: ["GPU-1"]}}, "11")})
    held = {("default", "a"): {"main": {GPU: ["GPU-1"]}}, ("default", "b"): {"main": {GPU: ["GPU-0"]}}}
    fix, claims, metrics = corrector(api, held)
    with caplog.at_level(logging.INFO, "gpupack.kube"):
        assert fix.pass_once() == 2
    assert [(n, b["metadata"]["resourceVersion"], ct) for n, b, ct in api.patches] == [
        ("a", "10", "application/merge-patch+json"), ("b", "11", "application/merge-patch+json")]
    assert set(api.patches[0][1]["metadata"]) == {"resourceVersion", "annotations"}  # nothing but the annotation
    assert contract.decode_assignment(api.pods["a"]["metadata"]["annotations"][contract.DEVICES_ANNOTATION]) == {"main": {GPU: ["GPU-1"]}}
    assert "pod default/a: the kubelet gave container main GPU-1, not the annotated GPU-0" in caplog.text
    assert corrected(metrics, GPU, "device") == 2
    # the patch's answer updated the view at once: the next pass has nothing to do
    assert fix.pass_once() == 0 and len(api.patches) == 2
    assert {p.name: p.resource_version for p in claims.annotated()} == {"a": "11", "b": "12"}


def test_a_conflict_reads_the_pod_again_and_retries() -> None:
    api = FakePodsApi({"a": pod_json("a", {"main": {GPU: ["GPU-0"]}}, "10")}, conflicts=1)
    fix, _, metrics = corrector(api, {("default", "a"): {"main": {GPU: ["GPU-2"]}}})
    assert fix.pass_once() == 1
    assert [b["metadata"]["resourceVersion"] for _, b, _ in api.patches] == ["10", "11"]
    assert corrected(metrics, GPU, "device") == 1


def test_a_conflict_with_a_pod_now_agreeing_patches_no_more() -> None:
    api = FakePodsApi({"a": pod_json("a", {"main": {GPU: ["GPU-0"]}}, "10")})
    fix, _, metrics = corrector(api, {("default", "a"): {"main": {GPU: ["GPU-2"]}}})
    api.pods["a"] = pod_json("a", {"main": {GPU: ["GPU-2"]}}, "12")  # someone corrected it meanwhile
    assert fix.pass_once() == 0 and len(api.patches) == 1
    assert corrected(metrics, GPU, "device") == 0


def test_a_pod_deleted_meanwhile_is_skipped() -> None:
    api = FakePodsApi({"a": pod_json("a", {"main": {GPU: ["GPU-0"]}}, "10")})
    fix, _, metrics = corrector(api, {("default", "a"): {"main": {GPU: ["GPU-2"]}}})
    del api.pods["a"]
    assert fix.pass_once() == 0
    assert metrics.registry.get_sample_value("gpupack_plugin_annotation_correction_failures_total") == 0


def test_a_kubelet_that_does_not_answer_changes_nothing() -> None:
    class Down(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

    def away() -> truth.Held:
        raise Down()

    api = FakePodsApi({"a": pod_json("a", {"main": {GPU: ["GPU-0"]}}, "10")})
    claims = kube.PodClaims(api, "gpu-1")
    claims.refresh()
    fix = kube.AnnotationCorrector(api, claims, away, PluginMetrics(), 10.0)
    assert fix.pass_once() == 0 and api.patches == []


def test_a_pod_turning_running_asks_for_a_pass() -> None:
    claims = kube.PodClaims(None, "gpu-1")
    pokes: list[int] = []
    claims.on_running = lambda: pokes.append(1)
    claims.apply("ADDED", pod_json("a", {"main": {GPU: ["GPU-0"]}}, "1", phase="Pending"))
    assert pokes == []
    claims.apply("MODIFIED", pod_json("a", {"main": {GPU: ["GPU-0"]}}, "2"))
    claims.apply("MODIFIED", pod_json("a", {"main": {GPU: ["GPU-0"]}}, "3"))  # still Running: once only
    assert pokes == [1]
    claims.apply("MODIFIED", pod_json("a", {"main": {GPU: ["GPU-0"]}}, "4", phase="Succeeded"))
    assert claims.annotated() == []  # a finished pod is not corrected


def test_each_allocate_asks_for_a_pass_and_a_refused_one_does_not(short_dir: Any, a100: Any) -> None:
    from device_plugin.allocate import AllocationError
    from device_plugin.discovery.nvml import NvmlBackend
    from device_plugin.manager import Manager

    pokes: list[int] = []
    m = Manager(NvmlBackend(a100), short_dir, on_allocated=lambda: pokes.append(1))
    _, devices = m.devices(GPU)
    m.allocate(GPU, [devices[0].id])
    assert pokes == [1]
    with pytest.raises(AllocationError):
        m.allocate(GPU, ["GPU-nonexistent"])
    assert pokes == [1]


def test_the_pass_loop_runs_after_a_poke_and_stops() -> None:
    import threading

    passes = threading.Event()
    api = FakePodsApi({})
    claims = kube.PodClaims(api, "gpu-1")

    def held() -> truth.Held:
        passes.set()
        return {}

    fix = kube.AnnotationCorrector(api, claims, held, PluginMetrics(), interval_s=3600.0)
    thread = threading.Thread(target=fix.run, daemon=True)
    thread.start()
    fix.poke()
    assert passes.wait(10)
    fix.stop()
    thread.join(10)
    assert not thread.is_alive()
