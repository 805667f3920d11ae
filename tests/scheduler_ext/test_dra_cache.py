"""DRA awareness: slices -> rows, claims -> usage, claims -> demand, and the same verdicts.

The slices are built by the DRA driver's own builder (device_plugin/dra/slices.py) and the
annotation by the device plugin's own code (device_plugin.resources.plan + the contract's
encoder), from one discovered inventory, so the two paths are compared, not written twice.
The DRA driver plans MIG strategy "none" (it publishes MIG devices as they are); the device
plugin's equivalent is "mixed" with time-sliced shares renamed (``nvidia.com/gpu.shared``),
which is what the DeviceClasses' extendedResourceNames name.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import pytest
import yaml

from device_plugin import resources
from gpupack import dra_names as plugin_names
from device_plugin.dra import slices as dra_slices
from gpupack import contract
from scheduler_ext import dra
from scheduler_ext.cache import ClusterCache
from scheduler_ext.decide import Decider
from scheduler_ext.podspec import pod_demand
from tests.fixtures import A100_MIB, gpu, node, pod

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARING = resources.Sharing(rules=(resources.ShareRule(contract.NVIDIA_GPU, 4),), rename_by_default=True)
CLASSES = [d for d in yaml.safe_load_all((ROOT / "deploy/dra/deviceclasses.yaml").read_text()) if d]


def mig(node_name: str, i: int, profile: str, start: int, size: int, mib: int) -> contract.MigDevice:
    return contract.MigDevice(f"MIG-{node_name}-{i}-{start}", profile, start, size, mib)


def raw_gpus(kind: str, name: str) -> tuple[contract.Gpu, ...]:
    """What discovery finds: an 8-GPU NVLink node (two groups of 4, NUMA 0 and 1), a MIG node
    (GPU 0: 3g.20gb + 2g.10gb + 1g.5gb; GPU 1 whole), a node whose 2 GPUs are time-sliced."""
    if kind == "8gpu":
        return tuple(gpu(name, i, resource="", numa=i // 4, links=tuple(p for p in range(i // 4 * 4, i // 4 * 4 + 4) if p != i))
                     for i in range(8))
    if kind == "mig":
        migs = (mig(name, 0, "3g.20gb", 0, 4, 20096), mig(name, 0, "2g.10gb", 4, 2, 9856), mig(name, 0, "1g.5gb", 6, 1, 4864))
        return (gpu(name, 0, mig=migs), gpu(name, 1, resource=""))
    return tuple(gpu(name, i, resource="") for i in range(2))


def annotated_node(kind: str, name: str, unhealthy: frozenset[int] = frozenset()) -> dict[str, Any]:
    found = tuple(dataclasses.replace(g, healthy=g.index not in unhealthy) for g in raw_gpus(kind, name))
    planned = resources.plan(found, "mixed", SHARING if kind == "shared" else resources.Sharing())
    return node(name, list(planned))


def published(kind: str, name: str, unhealthy: frozenset[int] = frozenset(), generation: int = 1) -> list[dict[str, Any]]:
    found = tuple(dataclasses.replace(g, healthy=g.index not in unhealthy) for g in raw_gpus(kind, name))
    planned = resources.plan(found, "none", SHARING if kind == "shared" else resources.Sharing())
    faults = {g.id: dra_slices.Fault("xid-79", "NoExecute") for g in planned if not g.healthy}
    return [dict(s) for s in dra_slices.build(name, planned, faults, generation=generation)]


def bare_node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": {}}, "status": {}}


def dra_cache(nodes: list[str], slice_objs: list[dict[str, Any]], claims: list[dict[str, Any]] = (),  # type: ignore[assignment]
              templates: list[dict[str, Any]] = (), pods: list[dict[str, Any]] = ()) -> ClusterCache:  # type: ignore[assignment]
    cache = ClusterCache(dra=True)
    cache.replace_kind("DeviceClass", CLASSES)
    cache.replace_kind("ResourceSlice", slice_objs)
    cache.replace_kind("ResourceClaimTemplate", list(templates))
    cache.replace_kind("ResourceClaim", list(claims))
    cache.replace_all([bare_node(n) for n in nodes], list(pods))
    return cache


def annotation_cache(nodes: list[dict[str, Any]], pods: list[dict[str, Any]] = ()) -> ClusterCache:  # type: ignore[assignment]
    cache = ClusterCache()
    cache.replace_all(nodes, list(pods))
    return cache


def claim(name: str, results: list[dict[str, Any]], ns: str = "default", spec: dict[str, Any] | None = None) -> dict[str, Any]:
    status = {"allocation": {"devices": {"results": results}}} if results else {}
    return {"apiVersion": dra.API_VERSION, "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-claim-{name}"},
            "spec": spec or {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.gpupack.io"}}]}},
            "status": status}


def result(pool: str, device: str, memory: str = "", share: str = "") -> dict[str, Any]:
    r: dict[str, Any] = {"request": "gpu", "driver": dra.DRIVER, "pool": pool, "device": device}
    if memory:
        r["consumedCapacity"] = {dra.MEMORY: memory, dra.SHARES: "1"}
    if share:
        r["shareID"] = share
    return r


def template(name: str, request: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": dra.API_VERSION, "kind": "ResourceClaimTemplate", "metadata": {"name": name, "namespace": ns},
            "spec": {"spec": {"devices": {"requests": [{"name": "r0", **request}]}}}}


def claim_pod(name: str, templ: str = "", claim_name: str = "", node_name: str = "") -> dict[str, Any]:
    p = pod(name, node=node_name)
    ref = {"name": "gpus", "resourceClaimTemplateName": templ} if templ else {"name": "gpus", "resourceClaimName": claim_name}
    p["spec"]["resourceClaims"] = [ref]
    p["spec"]["containers"][0]["resources"] = {"claims": [{"name": "gpus"}]}
    return p


# --- what blocks a device -------------------------------------------------------------------------


def test_the_taints_the_driver_writes_block_devices() -> None:
    # the names themselves are one module, gpupack/dra_names.py, for the driver and the extender
    assert dra.BLOCKING_EFFECTS == {plugin_names.NO_SCHEDULE, plugin_names.NO_EXECUTE}


# --- slices -> rows -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, unhealthy", [
    ("8gpu", frozenset()),  # 8 x nvidia.com/gpu, NVLink groups {0..3} and {4..7}
    ("8gpu", frozenset({5})),  # GPU 5 tainted NoExecute: its slot unhealthy on both paths
    ("mig", frozenset()),  # 3 MIG slots (weights 20096/40960, 9856/40960, 4864/40960) + 1 whole GPU
    ("shared", frozenset()),  # 2 x nvidia.com/gpu.shared with 4 replicas each
], ids=["8gpu", "8gpu-tainted", "mig", "shared"])
def test_slices_give_the_rows_the_annotation_gives(kind: str, unhealthy: frozenset[int]) -> None:
    by_annotation = annotation_cache([annotated_node(kind, "n", unhealthy)])
    by_slices = dra_cache(["n"], published(kind, "n", unhealthy))
    a, b = by_annotation.node("n"), by_slices.node("n")
    assert a is not None and b is not None and a.error == b.error == ""
    assert b.slots == a.slots
    assert by_slices.is_dra_node("n") and not by_annotation.is_dra_node("n")
    rows_a, _ = by_annotation.all_rows()
    rows_b, _ = by_slices.all_rows()
    for f in dataclasses.fields(rows_a):
        assert (getattr(rows_a, f.name) == getattr(rows_b, f.name)).all(), f.name


def test_only_the_newest_complete_generation_counts() -> None:
    old = published("8gpu", "n", generation=1)
    new = published("8gpu", "n", unhealthy=frozenset({0}), generation=2)
    cache = dra_cache(["n"], old + new)
    st = cache.node("n")
    assert st is not None and not st.slots[0].healthy  # generation 2 wins over 1
    # generation 3 announced as 2 slices, only 1 there: the node is not scored on a half pool
    half = [dict(s, spec=dict(s["spec"], pool=dict(s["spec"]["pool"], generation=3, resourceSliceCount=2)))
            for s in published("8gpu", "n")][:1]
    cache.apply_event({"type": "ADDED", "object": dict(half[0], metadata={"name": "extra"})}, "ResourceSlice")
    assert cache.node("n").slots == () and "not all ResourceSlices of pool n generation 3" in cache.node_error("n")  # type: ignore[union-attr]


def test_a_tainted_device_is_not_free() -> None:
    cache = dra_cache(["n"], published("8gpu", "n", unhealthy=frozenset({5})))
    d = Decider(cache, "binpack")
    # 8 GPUs, one tainted NoExecute: 7 healthy, so 8 cannot fit, 7 can
    (v8,) = d.verdicts(pod_demand(pod("p8", gpus={contract.NVIDIA_GPU: 8})), ["n"])
    (v7,) = d.verdicts(pod_demand(pod("p7", gpus={contract.NVIDIA_GPU: 7})), ["n"])
    assert not v8.fits and "only 7 healthy" in v8.reason
    assert v7.fits


# --- claims -> usage ----------------------------------------------------------------------------------


def test_claims_hold_devices_like_annotated_pods() -> None:
    slices_ = published("8gpu", "n") + published("shared", "s")
    claims = [
        claim("whole", [result("n", "gpu-0"), result("n", "gpu-1")]),  # 2 of n's 8 GPUs
        claim("share-a", [result("s", "gpu-0", "10Gi", "share-a")]),  # 1 of 4 shares, 10 GiB of 40
        claim("share-b", [result("s", "gpu-0", "10Gi", "share-b")]),
        claim("pending", []),  # not allocated: holds nothing
        claim("other-driver", [dict(result("n", "gpu-2"), driver="nic.example.com")]),  # not ours
    ]
    cache = dra_cache(["n", "s"], slices_, claims)
    n, s = cache.node("n"), cache.node("s")
    assert n is not None and s is not None
    rows, names = cache.all_rows()
    rn, rs = names.index("n"), names.index("s")
    # n: GPUs 0 and 1 taken, 2..7 free
    assert rows.free[rn, :8].tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    # s: GPU 0 has 4 - 2 = 2 shares free and 40960 - 2 x 10240 = 20480 MiB; GPU 1 untouched
    assert rows.free[rs, :2].tolist() == [2, 4]
    assert rows.free_memory_mib[rs, :2].tolist() == [A100_MIB - 20480, A100_MIB]
    assert set(s.used[0]) == {0, 1}  # distinct replicas for the two shares
    # a claim goes: its devices are free again, the other share keeps its replica
    cache.apply_event({"type": "DELETED", "object": claims[1]}, "ResourceClaim")
    rows, _ = cache.all_rows()
    assert rows.free[rs, 0] == 3 and set(cache.node("s").used[0]) == {1}  # type: ignore[union-attr]
    # the pod list does not drop what claims hold (claims have their own list)
    cache.replace_pods([])
    rows, _ = cache.all_rows()
    assert rows.free[rn, :2].tolist() == [0, 0]


def test_a_claim_allocated_before_its_slices_counts_once_they_come() -> None:
    cache = ClusterCache(dra=True)
    cache.replace_kind("DeviceClass", CLASSES)
    cache.replace_kind("ResourceClaim", [claim("early", [result("n", "gpu-3")])])
    cache.replace_all([bare_node("n")], [])
    assert cache.node("n").slots == ()  # type: ignore[union-attr]
    cache.replace_kind("ResourceSlice", published("8gpu", "n"))
    rows, _ = cache.all_rows()
    assert rows.free[0, :8].tolist() == [1, 1, 1, 0, 1, 1, 1, 1]


def test_a_bound_pod_on_a_dra_node_counts_through_its_claim_only() -> None:
    # nvidia.com/gpu: 1 served by DRA: the pod's limit and its claim are the same GPU
    bound = pod("bound", gpus={contract.NVIDIA_GPU: 1}, node="n", phase="Running")
    bound["status"]["extendedResourceClaimStatus"] = {"resourceClaimName": "bound-gpu", "requestMappings": []}
    cache = dra_cache(["n"], published("8gpu", "n"), [claim("bound-gpu", [result("n", "gpu-0")])], pods=[bound])
    rows, _ = cache.all_rows()
    assert int(rows.free[0, :8].sum()) == 7  # 8 - 1, not 8 - 2


def test_a_pod_gate_mode_placed_on_a_dra_node_holds_what_its_claims_ask_until_bound() -> None:
    """Placed (pinned, placed-on) but not bound, its claims not allocated yet: the GPUs its
    template asks stay counted on that node, so the next placement does not take them."""
    placed = claim_pod("p", templ="two")
    placed["metadata"]["annotations"][contract.PLACED_ANNOTATION] = "n"
    placed["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}]}}}
    templates = [template("two", {"exactly": {"deviceClassName": "gpu.gpupack.io", "count": 2}})]
    cache = dra_cache(["n"], published("8gpu", "n"), templates=templates, pods=[placed])
    rows, _ = cache.all_rows()
    assert int(rows.free[0, :8].sum()) == 6
    # bound, its claim allocated: counted through the claim alone
    bound = claim_pod("p", claim_name="p-gpus", node_name="n")
    cache.replace_kind("ResourceClaim", [claim("p-gpus", [result("n", "gpu-0"), result("n", "gpu-1")])])
    cache.apply_event({"type": "MODIFIED", "object": bound}, "Pod")
    rows, _ = cache.all_rows()
    assert int(rows.free[0, :8].sum()) == 6


# --- claims -> demand -----------------------------------------------------------------------------------


@pytest.mark.parametrize("request_, want", [
    ({"exactly": {"deviceClassName": "gpu.gpupack.io"}}, {contract.NVIDIA_GPU: 1}),
    ({"exactly": {"deviceClassName": "gpu.gpupack.io", "count": 2}}, {contract.NVIDIA_GPU: 2}),
    ({"exactly": {"deviceClassName": "mig-1g.5gb.gpupack.io"}}, {"nvidia.com/mig-1g.5gb": 1}),
    ({"exactly": {"deviceClassName": "mig.gpupack.io", "selectors": [
        {"cel": {"expression": 'device.attributes["gpu.gpupack.io"].migProfile == "3g.20gb"'}}]}},
     {"nvidia.com/mig-3g.20gb": 1}),
    ({"exactly": {"deviceClassName": "gpu-shared.gpupack.io", "capacity": {"requests": {dra.MEMORY: "10Gi"}}}},
     {contract.NVIDIA_GPU_SHARED: 1}),
    # firstAvailable: the first subrequest, what the pod prefers
    ({"firstAvailable": [{"name": "big", "deviceClassName": "gpu.gpupack.io"},
                         {"name": "small", "deviceClassName": "mig-1g.5gb.gpupack.io"}]}, {contract.NVIDIA_GPU: 1}),
    ({"exactly": {"deviceClassName": "gpu.gpupack.io", "allocationMode": "All"}}, {}),  # node-dependent: not counted
    ({"exactly": {"deviceClassName": "nic.example.com"}}, {}),  # another driver's class
], ids=["gpu", "2gpu", "mig-class", "mig-by-selector", "share-10gi", "first-available", "all", "other-class"])
def test_a_pods_claim_template_is_its_demand(request_: dict[str, Any], want: dict[str, int]) -> None:
    cache = dra_cache(["n"], published("8gpu", "n"), templates=[template("t", request_)])
    d = cache.resolve_claims(pod_demand(claim_pod("p", templ="t")))
    assert d.error == "" and d.totals() == want and d.claims == ()
    if "capacity" in str(request_):
        assert d.memory_mib == 10240  # 10 GiB per unit, as the gpupack.io/gpu-memory hint would say


def test_an_allocated_named_claim_asks_nothing_new() -> None:
    allocated = claim("mine", [result("n", "gpu-0")])
    cache = dra_cache(["n"], published("8gpu", "n"), [allocated, claim("fresh", [])])
    assert cache.resolve_claims(pod_demand(claim_pod("p", claim_name="mine"))).totals() == {}
    assert cache.resolve_claims(pod_demand(claim_pod("q", claim_name="fresh"))).totals() == {contract.NVIDIA_GPU: 1}


BAD = dra.MAX_REQUESTS + 1


@pytest.mark.parametrize("request_, field", [
    ({"exactly": {"deviceClassName": "gpu.gpupack.io", "count": 0}}, "requests[0].exactly.count"),
    ({"exactly": {"deviceClassName": "gpu.gpupack.io", "count": 1025}}, "requests[0].exactly.count"),
    ({"exactly": {"deviceClassName": "gpu.gpupack.io", "count": "2"}}, "requests[0].exactly.count"),
    ({"exactly": {"deviceClassName": "gpu-shared.gpupack.io", "capacity": {"requests": {dra.MEMORY: "lots"}}}},
     "capacity.requests['gpu.gpupack.io/memory']"),
    ({"exactly": {"deviceClassName": "gpu-shared.gpupack.io", "capacity": {"requests": {dra.MEMORY: "1Ei"}}}},
     "capacity.requests['gpu.gpupack.io/memory']"),
    ({"exactly": {"deviceClassName": "mig.gpupack.io"}}, "requests[0].exactly.selectors"),
    ({"exactly": {"deviceClassName": "gpu.gpupack.io", "allocationMode": "Some"}}, "allocationMode"),
    ({}, "requests[0]: expected exactly or firstAvailable"),
    ({"firstAvailable": []}, "firstAvailable: expected at least one"),
    ({"exactly": {}}, "requests[0].exactly.deviceClassName"),
], ids=["count-0", "count-1025", "count-string", "memory-text", "memory-huge", "mig-no-profile", "mode", "empty",
        "no-subrequest", "no-class"])
def test_malformed_claims_name_the_field(request_: dict[str, Any], field: str) -> None:
    cache = dra_cache(["n"], published("8gpu", "n"), templates=[template("t", request_)])
    d = cache.resolve_claims(pod_demand(claim_pod("p", templ="t")))
    assert field in d.error and "spec.resourceClaims[0] (gpus)" in d.error
    (v,) = Decider(cache).verdicts(d, ["n"])
    assert not v.fits and v.unresolvable and field in v.reason


def test_bounds_and_missing_objects() -> None:
    many = {"devices": {"requests": [{"name": f"r{i}", "exactly": {"deviceClassName": "gpu.gpupack.io"}} for i in range(BAD)]}}
    with pytest.raises(dra.DraError, match=f"requests: {BAD} entries, more than {dra.MAX_REQUESTS}"):
        dra.claim_asks(many, dra.class_resources(CLASSES), "ResourceClaim spec")
    over = {"devices": {"requests": [{"name": f"r{i}", "exactly": {"deviceClassName": "gpu.gpupack.io", "count": 1000}}
                                     for i in range(2)]}}
    cache = dra_cache(["n"], published("8gpu", "n"), [claim("two", [], spec=over)])
    assert "2000 over the pod's containers and claims" in cache.resolve_claims(pod_demand(claim_pod("p", claim_name="two"))).error
    assert "ResourceClaimTemplate default/nope is not known" in cache.resolve_claims(pod_demand(claim_pod("p", templ="nope"))).error
    p = claim_pod("p", templ="t")
    p["spec"]["resourceClaims"].append({"name": "both", "resourceClaimName": "a", "resourceClaimTemplateName": "b"})
    assert "spec.resourceClaims[1]: expected exactly one of" in pod_demand(p).error
    with pytest.raises(dra.DraError, match=r"results\[0\].device"):
        dra.allocations(claim("c", [{"request": "gpu", "driver": dra.DRIVER, "pool": "n"}]))
    with pytest.raises(dra.DraError, match=r"results\[0\].consumedCapacity"):
        dra.allocations(claim("c", [dict(result("n", "gpu-0"), consumedCapacity={dra.MEMORY: "x"})]))


def test_unreadable_slices_name_the_slice_and_field() -> None:
    bad = published("8gpu", "n")
    bad[0]["spec"]["devices"][2]["attributes"][dra.INDEX] = {"int": -1}
    cache = dra_cache(["n"], bad)
    error = cache.node_error("n")
    assert "unreadable ResourceSlices" in error and "spec.devices[2].attributes['gpu.gpupack.io/index'].int" in error
    (v,) = Decider(cache).verdicts(pod_demand(pod("p", gpus={contract.NVIDIA_GPU: 1})), ["n"])
    assert not v.fits and "unreadable ResourceSlices" in v.reason


# --- same kernel, same figures ------------------------------------------------------------------------


def test_the_verdicts_on_a_dra_cluster_equal_those_in_annotation_mode() -> None:
    # n1: 8 GPUs, 3 used (0, 1, 2); n2: 8 GPUs, 1 used (4); s: 2 shared GPUs, GPU 0 has 2 of 4 shares
    # (10 GiB each) taken. Annotation mode says so in pods' gpupack.io/devices; DRA in claims.
    used = {"n1": [0, 1, 2], "n2": [4]}
    pods_ = [pod(f"u-{n}-{i}", gpus={contract.NVIDIA_GPU: 1}, node=n, phase="Running",
                 devices={"c0": {contract.NVIDIA_GPU: [f"GPU-{n}-{i}"]}}) for n, idx in used.items() for i in idx]
    pods_ += [pod(f"share-{r}", gpus={contract.NVIDIA_GPU_SHARED: 1}, node="s", phase="Running", memory="10Gi",
                  devices={"c0": {contract.NVIDIA_GPU_SHARED: [f"GPU-s-0::{r}"]}}) for r in range(2)]
    by_annotation = annotation_cache([annotated_node("8gpu", "n1"), annotated_node("8gpu", "n2"),
                                      annotated_node("shared", "s")], pods_)
    claims = [claim(f"u-{n}-{i}", [result(n, f"gpu-{i}")]) for n, idx in used.items() for i in idx]
    claims += [claim(f"share-{r}", [result("s", "gpu-0", "10Gi", f"sh-{r}")]) for r in range(2)]
    by_slices = dra_cache(["n1", "n2", "s"], published("8gpu", "n1") + published("8gpu", "n2") + published("shared", "s"),
                          claims)
    names = ["n1", "n2", "s"]
    asks = [pod("one", gpus={contract.NVIDIA_GPU: 1}), pod("six", gpus={contract.NVIDIA_GPU: 6}),
            pod("eight", gpus={contract.NVIDIA_GPU: 8}), pod("sh", gpus={contract.NVIDIA_GPU_SHARED: 1}, memory="10Gi"),
            pod("sh-big", gpus={contract.NVIDIA_GPU_SHARED: 1}, memory="30Gi")]
    for policy in ("binpack", "fragmentation", "spread"):
        for p in asks:
            a = Decider(by_annotation, policy).verdicts(pod_demand(p), names)
            b = Decider(by_slices, policy).verdicts(pod_demand(p), names)
            assert a == b, (policy, p["metadata"]["name"])
    # binpack: one GPU goes to n1 (3 used of 8: fullest), 6 only to n2 (7 free), 8 nowhere
    d = Decider(by_slices, "binpack")
    assert [v.fits for v in d.verdicts(pod_demand(asks[1]), names)] == [False, True, False]
    one = d.verdicts(pod_demand(asks[0]), names)
    assert one[0].level == 10 and one[0].fits
    # and a pod asking through a claim template is scored as the same pod asking by limits
    templ = template("t1", {"exactly": {"deviceClassName": "gpu.gpupack.io"}})
    by_slices.replace_kind("ResourceClaimTemplate", [templ])
    via_claim = d.verdicts(pod_demand(claim_pod("one", templ="t1")), names)
    assert [(v.fits, v.level, v.raw) for v in via_claim] == [(v.fits, v.level, v.raw) for v in one]
