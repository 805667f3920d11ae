"""GPU machines (fake inventories) and pods for the end-to-end tests, plus checks on what ran.

Machines follow real ones: a DGX A100 (8x A100-SXM4-40GB, NVSwitch, two NUMA nodes) and an
HGX H100 board; device ids are stable UUID-shaped strings so failures are readable.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from gpupack import contract

from . import cluster as harness

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"  # never pulled: the node agent runs no containers


def gpu_uuid(node: str, index: int) -> str:
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"gpupack-e2e/{node}/{index}"))


def nvswitch_machine(node: str, model: str = "NVIDIA A100-SXM4-40GB", memory_mib: int = 40960, count: int = 8) -> dict[str, Any]:
    """A fake inventory of ``count`` GPUs behind NVSwitch (12 NVLinks each, as a DGX A100),
    half on NUMA node 0 and half on NUMA node 1."""
    gpus = []
    for i in range(count):
        gpus.append(
            {
                "id": gpu_uuid(node, i),
                "index": i,
                "vendor": "nvidia",
                "model": model,
                "memoryMiB": memory_mib,
                "numaNode": 0 if i < count // 2 else 1,
                "pciBusId": f"00000000:{0x10 + 8 * i:02X}:00.0",
                "healthy": True,
                "migEnabled": False,
            }
        )
    return {"version": contract.INVENTORY_VERSION, "nvswitch": 12, "gpus": gpus}


def host_share(resources: Mapping[str, int]) -> dict[str, str]:
    """CPU and memory as inference pods ask them: 4 cores and 16 GiB per whole GPU, 1 core and
    4 GiB per MIG slice or time-sliced share (100m and 64Mi without GPUs). kube-scheduler's
    MostAllocated score sees pods it has placed but not yet bound through these; the extender
    learns of a placement only at bind."""
    cores = sum(n * (1 if contract.mig_profile_of(r) or r.endswith(contract.SHARED_SUFFIX) else 4)
                for r, n in resources.items())
    if cores == 0:
        return {"cpu": "100m", "memory": "64Mi"}
    return {"cpu": str(cores), "memory": f"{4 * cores}Gi"}


def gpu_pod(
    name: str,
    group: str,
    resources: Mapping[str, int],
    containers: int = 1,
    annotations: Mapping[str, str] | None = None,
    node_name: str | None = None,
) -> dict[str, Any]:
    """A pod asking ``resources`` in each of ``containers`` containers, kept to ``group``'s nodes."""
    spec: dict[str, Any] = {
        "nodeSelector": {harness.GROUP_LABEL: group},
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {
                "name": f"c{i}" if containers > 1 else "main",
                "image": PAUSE_IMAGE,
                "resources": {
                    "requests": {**host_share(resources), **{r: str(n) for r, n in resources.items()}},
                    "limits": {r: str(n) for r, n in resources.items()},
                },
            }
            for i in range(containers)
        ],
    }
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": dict(annotations or {})}, "spec": spec}


def phase_of(pods: Mapping[str, Any], names: Iterable[str]) -> dict[str, str | None]:
    return {n: (pods[n].status.phase if n in pods else None) for n in names}


def all_running(namespace: str, names: Iterable[str]) -> Any:
    """A watch predicate: every named pod is Running (fails loudly on a Failed admission)."""
    wanted = [f"{namespace}/{n}" for n in names]

    def done(pods: Mapping[str, Any]) -> Any:
        for key in wanted:
            pod = pods.get(key)
            if pod is not None and pod.status.phase == "Failed":
                raise AssertionError(f"{key} failed: {pod.status.reason}: {pod.status.message}")
        if all(key in pods and pods[key].status.phase == "Running" for key in wanted):
            return {key: pods[key] for key in wanted}
        return None

    return done


def received(cluster: harness.Cluster, pod: Any) -> dict[str, Any]:
    """The node agent's record of what each container of a Running pod received."""
    node = cluster.nodes[pod.spec.node_name]
    record = node.pod_record(pod.metadata.uid)
    assert record["admitted"], record
    return dict(record["containers"])


def check_allocations(
    cluster: harness.Cluster, pods: Iterable[Any], expect_annotation: bool = True, exact: bool = True
) -> dict[str, list[str]]:
    """For Running pods, per container and GPU resource it asks for:

    - the device manager gave exactly the requested number of device ids;
    - NVIDIA: ``NVIDIA_VISIBLE_DEVICES`` names exactly the physical GPU or MIG UUIDs behind
      them (a share ``<uuid>::<n>`` shows as its GPU); AMD and Intel: one render node each;
    - with ``expect_annotation`` the pod carries ``gpupack.io/devices``; where a pod has one,
      the ids received are exactly those annotated (for time-sliced shares: the same GPUs, as
      the replica numbers of one GPU are interchangeable). With ``exact=False`` (pods admitted
      in a burst) this holds for each node and resource as a whole: together the containers
      received exactly the annotated devices, but two containers asking the same resource and
      count may have swapped theirs. The kubelet's GetPreferredAllocation names no pod, so
      the plugin has to guess which pending pod a call is for; the kubelet admits in arrival
      order, which need not be the order of creation or binding;
    - no device id is given twice on a node.

    Returns node -> device ids in use."""
    in_use: dict[str, list[str]] = collections.defaultdict(list)
    mismatches: list[str] = []
    wanted_on: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    got_on: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp):
        containers = received(cluster, pod)
        annotated: contract.Assignment | None = None
        text = (pod.metadata.annotations or {}).get(contract.DEVICES_ANNOTATION)
        if expect_annotation:
            assert text, f"{pod.metadata.name}: no {contract.DEVICES_ANNOTATION} annotation"
        if text:
            annotated = contract.decode_assignment(text)
        for c in pod.spec.containers:
            got = containers[c.name]
            where = f"{pod.metadata.name}/{c.name}"
            wanted = {r: int(n) for r, n in (c.resources.limits or {}).items() if contract.is_gpu_resource(r)}
            nvidia: set[str] = set()
            for resource, count in wanted.items():
                ids = got["deviceIDs"].get(resource, [])
                assert len(ids) == count, f"{where}: asked {count} {resource}, received {ids}"
                if resource.startswith("nvidia.com/"):
                    nvidia |= {contract.physical_id(i) for i in ids}
                else:
                    renders = {d["containerPath"] for d in got["devices"] if "/renderD" in d["containerPath"]}
                    assert len(renders) >= count, f"{where}: {count} {resource} but render nodes {sorted(renders)}"
                if annotated is not None:
                    want = sorted(annotated.get(c.name, {}).get(resource, []))
                    got_ids = sorted(ids)
                    if any(contract.replica_of(i) is not None for i in want + got_ids):
                        # shares of one GPU are interchangeable: what must match is the GPU
                        want = sorted(contract.physical_id(i) for i in want)
                        got_ids = sorted(contract.physical_id(i) for i in got_ids)
                    wanted_on[(pod.spec.node_name, resource)] += want
                    got_on[(pod.spec.node_name, resource)] += got_ids
                    if want != got_ids:
                        mismatches.append(f"{where}: annotated {want}, received {got_ids} ({resource})")
                in_use[pod.spec.node_name] += ids
            if nvidia:
                visible = set(got["env"].get("NVIDIA_VISIBLE_DEVICES", "").split(","))
                assert visible == nvidia, f"{where}: NVIDIA_VISIBLE_DEVICES {sorted(visible)}, devices {sorted(nvidia)}"
    if exact:
        assert not mismatches, f"{len(mismatches)} container(s) did not receive the annotated devices:\n" + "\n".join(mismatches)
    for key, want in wanted_on.items():
        assert sorted(want) == sorted(got_on[key]), (
            f"{key}: the containers together did not receive the annotated devices:\n" + "\n".join(mismatches))
    for node, ids in in_use.items():
        twice = [i for i, n in collections.Counter(ids).items() if n > 1]
        assert not twice, f"{node}: devices given twice: {twice}"
    return dict(in_use)


def annotated_by_node(pods: Iterable[Any]) -> dict[str, dict[str, list[str]]]:
    """node -> resource -> device ids, as the extender placed them (``gpupack.io/devices``).
    Packing is judged on this: it is the kernel's placement; whether containers received
    exactly it is checked by :func:`check_allocations`."""
    out: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for pod in pods:
        text = (pod.metadata.annotations or {}).get(contract.DEVICES_ANNOTATION)
        assert text, f"{pod.metadata.name}: no {contract.DEVICES_ANNOTATION} annotation"
        for resources in contract.decode_assignment(text).values():
            for resource, ids in resources.items():
                out[pod.spec.node_name][resource] += ids
    return out


def truthful(cluster: harness.Cluster, namespace: str, names: list[str]) -> Any:
    """A watch predicate: every named pod is Running and its annotation names exactly, per
    container and GPU resource, the device ids the node agent recorded for it."""
    running = all_running(namespace, names)

    def done(pods: Mapping[str, Any]) -> Any:
        got = running(pods)
        if not got:
            return None
        for pod in got.values():
            if annotation_vs_kubelet(cluster, pod) is not None:
                return None
        return got

    return done


def annotation_vs_kubelet(cluster: harness.Cluster, pod: Any) -> str | None:
    """None when the annotation equals what the kubelet gave, else the difference in words."""
    text = (pod.metadata.annotations or {}).get(contract.DEVICES_ANNOTATION)
    annotated = contract.decode_assignment(text) if text else {}
    given = {c: {r: sorted(ids) for r, ids in rec["deviceIDs"].items() if contract.is_gpu_resource(r) and ids}
             for c, rec in received(cluster, pod).items()}
    given = {c: res for c, res in given.items() if res}
    want = {c: {r: sorted(ids) for r, ids in res.items()} for c, res in annotated.items()}
    return None if want == given else f"{pod.metadata.name}: annotated {want}, kubelet gave {given}"
