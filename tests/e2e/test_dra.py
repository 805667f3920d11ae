"""DRA mode end to end: the real control plane allocates, the kubelet's DRA manager prepares.

A cluster of its own (module scope, ``Cluster(dra=True)``): kube-controller-manager's resource
claim controller turns each pod's ResourceClaimTemplate into a ResourceClaim, kube-scheduler's
DRA plugin allocates it (the extender, ``--dra``, chooses the node), the node agent's embedded
DRA manager (the kubelet's own ``pkg/kubelet/cm/dra``) calls gpupack-dra-driver over the real
registration and DRAPlugin sockets, and records the CDI device names it would hand the runtime.
Every check compares three sources that are written by different programs: the claim's
allocation (kube-scheduler), the node agent's record (the kubelet's code) and the CDI spec
files (our driver), the last loaded by the CDI project's own Go package (cdicheck).
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

from gpupack import contract
from gpupack import dra_names as names

from . import cluster as harness
from . import workloads

pytestmark = pytest.mark.e2e

CDI_CLASS = f"{names.CDI_VENDOR}/{names.CDI_CLASS}"
REPO = pathlib.Path(__file__).resolve().parents[2]
#: a deletion the node agent finishes (0 would remove the pod from the API at once)
GRACEFUL = 30


@pytest.fixture(scope="module")
def cluster() -> Iterator[harness.Cluster]:
    """Overrides the session's cluster for this module: one with DRA (see the module doc)."""
    with harness.running_cluster(keep=os.environ.get("GPUPACK_E2E_KEEP") == "1", dra=True) as c:
        yield c


@pytest.fixture(scope="module")
def cdicheck() -> pathlib.Path:
    """The CDI project's Go package as a program (tools/cdicheck_build.sh, cached)."""
    proc = subprocess.run([str(REPO / "tools" / "cdicheck_build.sh")], stdout=subprocess.PIPE, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, f"tools/cdicheck_build.sh failed (exit {proc.returncode})"
    return pathlib.Path(proc.stdout.strip().splitlines()[-1])


# --- what pods ask ------------------------------------------------------------------------------


def claim_template(namespace: str, name: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """A ResourceClaimTemplate with one request ``gpu`` of ``request`` (an ``exactly`` body)."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": dict(request)}]}}},
    }


def claim_pod(name: str, group: str, template: str) -> dict[str, Any]:
    """A pod whose one container uses the claim made from ``template`` (1 core, 4 GiB besides)."""
    pod = workloads.gpu_pod(name, group, {})
    pod["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": template}]
    container = pod["spec"]["containers"][0]
    container["resources"] = {"requests": {"cpu": "1", "memory": "4Gi"}, "claims": [{"name": "gpu"}]}
    return pod


WHOLE = {"deviceClassName": "gpu.gpupack.io", "count": 1}
MIG_3G = {"deviceClassName": "mig.gpupack.io", "count": 1, "selectors": [
    {"cel": {"expression": 'device.attributes["gpu.gpupack.io"].migProfile == "3g.20gb"'}}]}
SHARE_10G = {"deviceClassName": "gpu-shared.gpupack.io", "count": 1,
             "capacity": {"requests": {names.MEMORY: "10Gi"}}}


# --- what the node got ------------------------------------------------------------------------------


def pod_claims(cluster: harness.Cluster, pod: Any) -> list[Any]:
    """The ResourceClaims of a Running pod: from its templates and its extended-resource claim."""
    ns = pod.metadata.namespace
    claim_names = [s.resource_claim_name for s in pod.status.resource_claim_statuses or [] if s.resource_claim_name]
    if pod.status.extended_resource_claim_status is not None:
        claim_names.append(pod.status.extended_resource_claim_status.resource_claim_name)
    return [cluster.resource.read_namespaced_resource_claim(n, ns) for n in claim_names]


def allocated(claim: Any) -> list[Any]:
    """The allocation results of a claim (kube-scheduler's choice)."""
    assert claim.status is not None and claim.status.allocation is not None, f"{claim.metadata.name} not allocated"
    return list(claim.status.allocation.devices.results)


def expected_cdi(claims: list[Any]) -> list[str]:
    """The CDI names the driver must give for these claims: one per allocated device."""
    return sorted(f"{CDI_CLASS}={c.metadata.uid}-{r.device}" for c in claims for r in allocated(c))


def check_pods(cluster: harness.Cluster, pods: Mapping[str, Any]) -> dict[str, list[tuple[str, Any]]]:
    """For each Running pod: its container's CDI devices (the node agent's record, from the
    kubelet's DRA manager) are exactly its claims' allocations, every device is on the pod's
    node, and no device unit is given twice. Returns node -> [(device, result)] in use."""
    by_node: dict[str, list[tuple[str, Any]]] = collections.defaultdict(list)
    for key, pod in pods.items():
        claims = pod_claims(cluster, pod)
        assert claims, f"{key} has no claim"
        got = sorted(workloads.received(cluster, pod)["main"]["cdiDevices"])
        assert got == expected_cdi(claims), f"{key}: container CDI devices {got} != its claims' allocation"
        for claim in claims:
            reserved = [r.uid for r in claim.status.reserved_for or []]
            assert reserved == [pod.metadata.uid], f"{key}: claim {claim.metadata.name} reserved for {reserved}"
            for r in allocated(claim):
                assert r.driver == names.DRIVER and r.pool == pod.spec.node_name, (key, r)
                by_node[pod.spec.node_name].append((r.device, r))
    for node, used in by_node.items():
        whole = [d for d, r in used if not r.share_id]
        assert len(whole) == len(set(whole)), f"{node}: a device allocated twice: {sorted(whole)}"
    return by_node


def cdi_edits(cdicheck: pathlib.Path, node: harness.SimNode, cdi_names: list[str]) -> dict[str, Any]:
    """What a CDI-aware runtime would inject for ``cdi_names`` from the node's spec folder."""
    args = [str(cdicheck), "-spec-dir", str(node.cdi_dir), "-simulate-missing-host-nodes", *cdi_names]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def env_of(report: Mapping[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in report.get("env") or [])


def prepared_uids(node: harness.SimNode) -> set[str]:
    """Claim uids in the driver's checkpoint (what it would answer after a restart)."""
    data = json.loads((node.dra_data_dir / "checkpoint.json").read_text())
    return set(data["claims"])


# --- machines ------------------------------------------------------------------------------------


def mixed_a100(name: str) -> dict[str, Any]:
    """4x A100-SXM4-40GB: GPUs 0-1 whole, GPU 2 in MIG mode (2x 3g.20gb), GPU 3 time-sliced."""
    machine = workloads.nvswitch_machine(name, count=4)
    machine["gpus"][2].update(migEnabled=True, mig=[{"profile": "3g.20gb"}] * 2)
    return machine


def sharing_config(tmp_path: pathlib.Path, devices: list[int], replicas: int = 4) -> pathlib.Path:
    path = tmp_path / "driver.yaml"
    path.write_text(yaml.safe_dump({"version": "v1", "sharing": {"timeSlicing": {
        "resources": [{"name": contract.NVIDIA_GPU, "replicas": replicas, "devices": devices}]}}}))
    return path


# --- scenarios -----------------------------------------------------------------------------------


def test_whole_gpu_mig_share_and_plain_extended_resource(
    cluster: harness.Cluster, group: str, namespace: str, tmp_path: pathlib.Path, cdicheck: pathlib.Path
) -> None:
    """One pod of each kind on one node; each gets exactly the device its claim names, and the
    CDI spec of that claim names that device's UUID and device node and nothing else."""
    name = f"{group}-a100"
    node = cluster.add_dra_node(name, group, mixed_a100(name), [f"--config={sharing_config(tmp_path, [3])}"])
    devices = node.slices()
    assert {"gpu-0", "gpu-1", "gpu-2", "gpu-3"} <= set(devices)
    assert sorted(d for d in devices if "-mig-" in d) == ["gpu-2-mig-0-3g20gb", "gpu-2-mig-4-3g20gb"]

    for tname, request in (("whole", WHOLE), ("mig", MIG_3G), ("share", SHARE_10G)):
        cluster.resource.create_namespaced_resource_claim_template(namespace, claim_template(namespace, tname, request))
        cluster.core.create_namespaced_pod(namespace, claim_pod(tname, group, tname))
    cluster.core.create_namespaced_pod(namespace, workloads.gpu_pod("plain", group, {contract.NVIDIA_GPU: 1}))
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["whole", "mig", "share", "plain"]),
                             "one pod of each kind Running")
    used = check_pods(cluster, pods)
    # each pod has one claim with one device: kube-scheduler's choice, checked against the class
    on = {}
    for key, pod in pods.items():
        (claim,) = pod_claims(cluster, pod)
        (on[key.split("/")[1]],) = allocated(claim)
    assert {on["whole"].device, on["plain"].device} == {"gpu-0", "gpu-1"}  # whole: not MIG, not shared
    assert on["mig"].device in ("gpu-2-mig-0-3g20gb", "gpu-2-mig-4-3g20gb")
    assert on["share"].device == "gpu-3" and on["share"].share_id, "a share of a consumable-capacity device"
    assert on["share"].consumed_capacity[names.MEMORY] == "10Gi"
    assert sorted(d for d, _ in used[name]) == sorted(r.device for r in on.values())

    uuid_of = {d: devices[d].attributes[names.UUID].string for d in devices}
    for pod_name, result in on.items():
        cdi_names = workloads.received(cluster, pods[f"{namespace}/{pod_name}"])["main"]["cdiDevices"]
        report = cdi_edits(cdicheck, node, cdi_names)
        env = env_of(report)
        assert env["NVIDIA_VISIBLE_DEVICES"] == uuid_of[result.device], (pod_name, env)
        assert report["errors"] == [] and report["unresolved"] == [], report
        gpu_nodes = [n for n in report["deviceNodes"] if n.removeprefix("/dev/nvidia").isdigit()]
        assert gpu_nodes == [f"/dev/nvidia{devices[result.device].attributes[names.INDEX].int}"], (pod_name, report)
        assert "/dev/nvidiactl" in report["deviceNodes"]

    # the pods go (gracefully: the node agent finishes the deletion once the kubelet's DRA
    # manager has unprepared their claims); the driver removes exactly their specs
    cluster.core.delete_collection_namespaced_pod(namespace, grace_period_seconds=GRACEFUL)
    cluster.wait_pods(namespace, lambda pods: not pods, "every pod deleted (claims unprepared first)")
    assert prepared_uids(node) == set()
    assert [p.name for p in node.cdi_dir.glob(f"{names.CDI_VENDOR}-{names.CDI_CLASS}_*.json")] == []


def test_a_burst_of_forty_gets_exactly_what_was_allocated(
    cluster: harness.Cluster, group: str, namespace: str
) -> None:
    """40 same-shape pods at once on 6 nodes of 8 GPUs: every container's CDI devices equal its
    claim's allocation (the swap of device-plugin mode cannot happen: the kubelet is told the
    devices, it does not choose them), no GPU twice, and the pods packed onto 5 nodes."""
    nodes = {}
    for i in range(6):
        name = f"{group}-n{i}"
        nodes[name] = cluster.add_dra_node(name, group, workloads.nvswitch_machine(name))
    cluster.resource.create_namespaced_resource_claim_template(namespace, claim_template(namespace, "one", WHOLE))
    names_ = [f"p{i:02d}" for i in range(40)]
    for pod_name in names_:
        cluster.core.create_namespaced_pod(namespace, claim_pod(pod_name, group, "one"))
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, names_), "40 pods Running", timeout_s=300)
    used = check_pods(cluster, pods)
    assert sum(len(v) for v in used.values()) == 40
    assert sorted(len(v) for v in used.values()) == [8] * 5, {n: len(v) for n, v in used.items()}


def test_gate_mode_pins_claim_pods_and_kube_scheduler_allocates_there(
    cluster: harness.Cluster, group: str, namespace: str
) -> None:
    """Gate mode on DRA nodes: the chart's admission policy gates claim pods, gpupack (``--dra``,
    binpack) pins each to a node and ungates it, a kube-scheduler without extenders allocates
    its claim there; the pods pack (4 + 2 on nodes of 4) and every container's CDI devices are
    exactly its claim's allocation."""
    from .test_gate_mode import gate_extender, gate_policy, plain_scheduler

    scheduler = f"{group}-gate"
    nodes = [cluster.add_dra_node(f"{group}-n{i}", group, workloads.nvswitch_machine(f"{group}-n{i}", count=4))
             for i in range(2)]
    for n in nodes:
        n.wait_slices(lambda d: len(d) == 4, "4 GPUs in the slices")
    cluster.resource.create_namespaced_resource_claim_template(namespace, claim_template(namespace, "one", WHOLE))
    with gate_policy(cluster, namespace, scheduler), gate_extender(cluster, group, dra=True), \
            plain_scheduler(cluster, scheduler):
        names_ = [f"g{i}" for i in range(6)]
        for pod_name in names_:
            body = claim_pod(pod_name, group, "one")
            body["spec"]["schedulerName"] = scheduler
            cluster.core.create_namespaced_pod(namespace, body)
        pods = cluster.wait_pods(namespace, workloads.all_running(namespace, names_), "6 gated claim pods Running",
                                 timeout_s=180)
    used = check_pods(cluster, pods)
    assert sorted(len(v) for v in used.values()) == [2, 4], {n: len(v) for n, v in used.items()}
    for pod in pods.values():
        annotations = pod.metadata.annotations or {}
        assert annotations[contract.PLACED_ANNOTATION] == pod.spec.node_name
        assert contract.DEVICES_ANNOTATION not in annotations  # kube-scheduler's allocation is the truth


def test_a_gpu_fault_taints_the_device_and_new_claims_avoid_it(
    cluster: harness.Cluster, group: str, namespace: str, tmp_path: pathlib.Path
) -> None:
    config = tmp_path / "driver.yaml"
    config.write_text(yaml.safe_dump({"version": "v1", "health": {"probeIntervalSeconds": 0.2, "recoveryProbes": 2}}))
    name = f"{group}-pair"
    node = cluster.add_dra_node(name, group, workloads.nvswitch_machine(name, count=2), [f"--config={config}"])
    node.set_healthy(node.gpus[0]["id"], False)
    devices = node.wait_slices(lambda d: bool(d["gpu-0"].taints), "gpu-0 tainted")
    taint = devices["gpu-0"].taints[0]
    # the fake backend's healthy: false is a GPU gone from the bus (as XID 79): NoExecute
    assert (taint.key, taint.effect) == (names.UNHEALTHY_TAINT, "NoExecute") and taint.value
    assert not devices["gpu-1"].taints

    cluster.resource.create_namespaced_resource_claim_template(namespace, claim_template(namespace, "one", WHOLE))
    cluster.core.create_namespaced_pod(namespace, claim_pod("first", group, "one"))
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["first"]), "first Running")
    assert [r.device for _, r in check_pods(cluster, pods)[name]] == ["gpu-1"]
    cluster.core.create_namespaced_pod(namespace, claim_pod("second", group, "one"))
    cluster.wait_event(namespace, "second", "FailedScheduling")  # the only GPU left is tainted

    node.set_healthy(node.gpus[0]["id"], True)
    node.wait_slices(lambda d: not d["gpu-0"].taints, "gpu-0's taint removed on recovery")
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["first", "second"]), "second Running")
    assert sorted(r.device for _, r in check_pods(cluster, pods)[name]) == ["gpu-0", "gpu-1"]


def test_a_driver_restart_keeps_prepared_claims(cluster: harness.Cluster, group: str, namespace: str) -> None:
    name = f"{group}-one"
    node = cluster.add_dra_node(name, group, workloads.nvswitch_machine(name, count=2))
    cluster.resource.create_namespaced_resource_claim_template(namespace, claim_template(namespace, "one", WHOLE))
    cluster.core.create_namespaced_pod(namespace, claim_pod("before", group, "one"))
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["before"]), "before Running")
    (claim,) = pod_claims(cluster, pods[f"{namespace}/before"])
    spec = node.cdi_dir / f"{names.CDI_VENDOR}-{names.CDI_CLASS}_{claim.metadata.uid}.json"
    assert prepared_uids(node) == {claim.metadata.uid} and spec.exists()

    assert node.stop_plugin() == 0  # SIGTERM: a clean exit
    assert prepared_uids(node) == {claim.metadata.uid} and spec.exists(), "a stop must not unprepare"
    node.start_plugin()  # registers again with the kubelet's plugin manager
    # the restarted driver prepares anew...
    cluster.core.create_namespaced_pod(namespace, claim_pod("after", group, "one"))
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["before", "after"]), "after Running")
    assert sorted(r.device for _, r in check_pods(cluster, pods)[name]) == ["gpu-0", "gpu-1"]
    (after,) = pod_claims(cluster, pods[f"{namespace}/after"])
    assert prepared_uids(node) == {claim.metadata.uid, after.metadata.uid}
    # ...and unprepares the claim it prepared before the restart, from its checkpoint
    cluster.core.delete_namespaced_pod("before", namespace, grace_period_seconds=GRACEFUL)
    cluster.wait_pods(namespace, lambda p: f"{namespace}/before" not in p, "before deleted (claim unprepared)")
    assert prepared_uids(node) == {after.metadata.uid} and not spec.exists()
