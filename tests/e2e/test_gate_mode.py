"""Gate mode (``--placement gate``, chart ``extender.placement=gate``) on the real control plane.

The chart's MutatingAdmissionPolicy (rendered by Helm with ``extender.placement=gate``) gives
new GPU pods of this test's scheduler the ``gpupack.io/placement`` gate, applied by the real
kube-apiserver. A gpupack-extender in gate mode, with the chart's ServiceAccount token, RBAC
and ValidatingAdmissionPolicy applied for real, pins each to its node and devices and removes
the gate; a kube-scheduler without extenders binds it; the kubelet's device manager (the node
agent) gives it devices through the device plugin.

1. A wave of GPU pods packs onto one node (binpack), every container gets exactly its annotated devices,
   and each pod is bound where it was pinned; a CPU-only pod is pinned too, with no devices.
2. A pod that fits nowhere waits gated, then after the patience is handed to kube-scheduler as
   it is (no pin), which reports FailedScheduling.
3. The admission policy lets the extender's account remove the gate only with a pin to the
   node its placed-on annotation names, and change nothing else of the spec.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gpupack import contract

from . import accounts
from . import cluster as harness
from . import workloads

pytestmark = pytest.mark.e2e

PATIENCE_S = 3
GATE = contract.PLACEMENT_GATE


def render_gate_policy(scheduler_name: str) -> list[dict[str, Any]]:
    """The chart's gate-mode admission policy for pods of ``scheduler_name``, as Helm renders it."""
    docs = [d for d in accounts.rendered_docs("--set", "extender.placement=gate", "--set", f"scheduler.name={scheduler_name}")
            if d["kind"].startswith("MutatingAdmissionPolicy")]
    assert [d["kind"] for d in docs] == ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"]
    return docs


@contextlib.contextmanager
def gate_policy(cluster: harness.Cluster, namespace: str, scheduler_name: str) -> Iterator[None]:
    docs = render_gate_policy(scheduler_name)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    try:
        probe = workloads.gpu_pod("probe", "none", {contract.NVIDIA_GPU: 1})
        probe["spec"]["schedulerName"] = scheduler_name

        def gated() -> bool:  # a dry run returns the pod as admission left it
            made = cluster.core.create_namespaced_pod(namespace, probe, dry_run="All")
            return any(g.name == GATE for g in made.spec.scheduling_gates or [])

        accounts.mutated(gated)
        yield
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all(docs))


@contextlib.contextmanager
def gate_extender(cluster: harness.Cluster, group: str, dra: bool = False) -> Iterator[harness.Process]:
    """gpupack-extender in gate mode as the chart's ServiceAccount (its RBAC and policy applied),
    with the binpack policy, whose placement of the wave is one answer (full first). With
    ``dra``: DRA awareness, as the cluster admin (the default manifests grant no DRA kinds)."""
    with contextlib.ExitStack() as stack:
        if dra:
            kubeconfig = cluster.admin_kubeconfig
        else:
            accounts.apply_access_objects(cluster)
            token = stack.enter_context(accounts.pod_token(cluster, "gpupack-extender", f"{group}-gate-extender"))
            kubeconfig = accounts.token_kubeconfig(cluster, token, cluster.work / f"{group}-gate-extender.kubeconfig")
        port = harness.free_port()
        proc = harness.Process(f"gpupack-extender-gate-{group}", [
            harness.console_script("gpupack-extender"), f"--kubeconfig={kubeconfig}", f"--listen=127.0.0.1:{port}",
            "--allow-unauthenticated", "--placement=gate", "--policy=binpack", f"--placement-patience-seconds={PATIENCE_S}",
            *(["--dra"] if dra else []), f"--ledger-namespace={accounts.NAMESPACE}"], cluster.logs)
        cluster.processes.append(proc)
        stack.callback(cluster.processes.remove, proc)
        stack.callback(proc.stop)
        proc.start()
        harness.wait_ready(proc, lambda: harness.http_ok(f"http://127.0.0.1:{port}/readyz"), "gate-mode extender /readyz")
        yield proc


@contextlib.contextmanager
def plain_scheduler(cluster: harness.Cluster, name: str) -> Iterator[harness.Process]:
    """kube-scheduler with the shipped profile, no extenders (gate mode's), for pods of ``name``."""
    config = cluster.scheduler_config()
    del config["extenders"]
    for profile in config["profiles"]:
        profile["schedulerName"] = name
    path = cluster.work / f"kube-scheduler-{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = harness.free_port()
    proc = harness.Process(f"kube-scheduler-{name}", [
        str(cluster.bin / "kube-scheduler"), f"--config={path}", "--bind-address=127.0.0.1",
        f"--secure-port={port}", f"--cert-dir={cluster.work / f'scheduler-{name}-certs'}", "--v=2"], cluster.logs)
    cluster.processes.append(proc)
    proc.start()
    try:
        harness.wait_self_signed(proc, f"https://127.0.0.1:{port}/readyz")
        yield proc
    finally:
        proc.stop()
        cluster.processes.remove(proc)


def pod_for(name: str, group: str, scheduler: str, gpus: int) -> dict[str, Any]:
    body = workloads.gpu_pod(name, group, {contract.NVIDIA_GPU: gpus} if gpus else {})
    body["spec"]["schedulerName"] = scheduler
    return body


def test_gated_pods_are_placed_packed_and_bound_where_pinned(cluster: harness.Cluster, group: str,
                                                             namespace: str) -> None:
    scheduler = f"{group}-gate"
    nodes = [cluster.add_node(f"{group}-n{i}", group, workloads.nvswitch_machine(f"{group}-n{i}", count=4))
             for i in range(2)]
    for n in nodes:
        n.wait_allocatable({contract.NVIDIA_GPU: 4})
    with gate_policy(cluster, namespace, scheduler), gate_extender(cluster, group), plain_scheduler(cluster, scheduler):
        wave = [("w2", 2), ("w1a", 1), ("w1b", 1)]
        for name, gpus in wave:
            cluster.core.create_namespaced_pod(namespace, pod_for(name, group, scheduler, gpus))
        cluster.core.create_namespaced_pod(namespace, pod_for("cpu", group, scheduler, 0))
        names = [n for n, _ in wave]
        pods = cluster.wait_pods(namespace, workloads.all_running(namespace, [*names, "cpu"]),
                                 "the wave and the CPU pod Running", timeout_s=120)
        cpu = pods[f"{namespace}/cpu"]  # gated and pinned too, with no devices
        assert not cpu.spec.scheduling_gates and cpu.metadata.annotations[contract.PLACED_ANNOTATION] == cpu.spec.node_name
        assert contract.DEVICES_ANNOTATION not in cpu.metadata.annotations
        gpu_pods = [pods[f"{namespace}/{n}"] for n in names]
        workloads.check_allocations(cluster, gpu_pods)  # each container got exactly its annotated GPUs
        for pod in gpu_pods:
            assert pod.metadata.annotations[contract.PLACED_ANNOTATION] == pod.spec.node_name
            terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
            assert [[f.values for f in t.match_fields] for t in terms] == [[[pod.spec.node_name]]]
            assert not pod.spec.scheduling_gates
        placed = workloads.annotated_by_node(gpu_pods)
        assert [len(r[contract.NVIDIA_GPU]) for r in placed.values()] == [4], placed  # packed: one node full

        # fits nowhere: waits gated, then is handed over as it is after the patience
        cluster.core.create_namespaced_pod(namespace, pod_for("too-big", group, scheduler, 5))
        event = cluster.wait_event(namespace, "too-big", "FailedScheduling", timeout_s=60)
        assert "nvidia.com/gpu" in event.message
        big = cluster.core.read_namespaced_pod("too-big", namespace)
        assert not big.spec.scheduling_gates and big.spec.affinity is None and big.spec.node_name is None


def test_the_extender_may_only_ungate_with_a_pin_to_the_placed_node(cluster: harness.Cluster, group: str,
                                                                    namespace: str) -> None:
    accounts.apply_access_objects(cluster)
    body = pod_for("held", group, "nobody", 1)
    body["spec"]["schedulingGates"] = [{"name": GATE}, {"name": "e2e.gpupack.io/hold"}]
    pod = cluster.core.create_namespaced_pod(namespace, body)
    from scheduler_ext.placement import pin_patch

    raw = cluster.core.api_client.sanitize_for_serialization(pod)
    with accounts.pod_token(cluster, "gpupack-extender", f"{group}-vap") as token:
        as_extender = accounts.client_for(cluster, token)

        def patch(ops: list[dict[str, Any]]) -> Any:
            return as_extender.patch_namespaced_pod("held", namespace, ops, dry_run="All",
                                                    _content_type="application/json-patch+json")

        good = pin_patch(raw, "node-a", {"main": {contract.NVIDIA_GPU: ["GPU-x"]}})
        patch(good)  # what the controller sends: admitted
        wrong_node = [op if op["path"] != "/metadata/annotations" else
                      {**op, "value": {**op["value"], contract.PLACED_ANNOTATION: "node-b"}} for op in good]
        wrong_node = [op if not op["path"].endswith("placed-on") else {**op, "value": "node-b"} for op in wrong_node]
        status, message = accounts.refusal(lambda: patch(wrong_node))
        assert status == 403 and "only to place a pod gated by gpupack.io/placement" in message, message
        image = [*good, {"op": "replace", "path": "/spec/containers/0/image", "value": "evil:latest"}]
        status, message = accounts.refusal(lambda: patch(image))
        assert status == 403, message
        other_gate = [{"op": "replace", "path": "/spec/schedulingGates", "value": [{"name": GATE}]}]
        status, message = accounts.refusal(lambda: patch(other_gate))  # someone else's gate is not ours to lift
        assert status == 403, message
