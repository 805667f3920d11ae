"""Every request shape through the cache and the decider: whole GPUs, time-sliced shares with
memory hints, MIG profiles, AMD and Intel devices; then bind and check the chosen ids."""

from __future__ import annotations

import pytest

from gpupack import contract
from gpupack import kernel
from scheduler_ext.cache import from_objects
from scheduler_ext.decide import Decider
from scheduler_ext.podspec import pod_demand

from tests.fixtures import gpu, node, pod

MIG_1G = contract.mig_resource("1g.10gb")
MIG_3G = contract.mig_resource("3g.40gb")


def mig_gpu(name: str, i: int, layout: list[str]) -> contract.Gpu:
    sizes = {"1g.10gb": (1, 9984), "3g.40gb": (4, 40192)}
    migs, start = [], 0
    for j, profile in enumerate(layout):
        size, mem = sizes[profile]
        migs.append(contract.MigDevice(f"MIG-{name}-{i}-{j}", profile, start, size, mem, resource=contract.mig_resource(profile)))
        start += size
    return gpu(name, i, mig=tuple(migs), memory=81920)


def cluster() -> list[dict[str, object]]:
    return [
        node("a100", n=4),
        node("shared", [gpu("shared", i, resource=contract.NVIDIA_GPU_SHARED, replicas=4) for i in range(2)]),
        node("mig", [mig_gpu("mig", 0, ["3g.40gb", "1g.10gb", "1g.10gb"])]),
        node("mi300", [gpu("mi300", i, vendor="amd", resource=contract.AMD_GPU, model="AMD Instinct MI300X", memory=196608)
                       for i in range(8)]),
        node("arc", [gpu("arc", i, vendor="intel", resource=contract.INTEL_XE, model="Intel Data Center GPU Max 1100")
                     for i in range(2)]),
        # one share on shared GPU 0 holds 30 GiB of its 40 GiB
        pod("big-share", gpus={contract.NVIDIA_GPU_SHARED: 1}, node="shared", memory="30Gi", phase="Running",
            devices={"c0": {contract.NVIDIA_GPU_SHARED: [contract.share_id("GPU-shared-0", 0)]}}),
        pod("mig-user", gpus={MIG_1G: 1}, node="mig", phase="Running", devices={"c0": {MIG_1G: ["MIG-mig-0-1"]}}),
    ]


NAMES = ["a100", "shared", "mig", "mi300", "arc"]


@pytest.mark.parametrize(
    "gpus,memory,fits",
    [
        pytest.param({contract.NVIDIA_GPU: 4}, "", ["a100"], id="whole-4"),
        pytest.param({contract.NVIDIA_GPU_SHARED: 1}, "8Gi", ["shared"], id="share-8Gi"),
        # GPU 0 has 10 GiB left, GPU 1 40 GiB: 2 x 16 GiB fit only as 2 shares of GPU 1
        pytest.param({contract.NVIDIA_GPU_SHARED: 2}, "16Gi", ["shared"], id="two-shares-16Gi"),
        # 3 x 16 GiB: GPU 1 holds 2 (40 // 16), GPU 0 none (10 // 16 = 0)
        pytest.param({contract.NVIDIA_GPU_SHARED: 3}, "16Gi", [], id="three-shares-16Gi-do-not-fit"),
        pytest.param({MIG_1G: 1}, "", ["mig"], id="mig-1g"),
        pytest.param({MIG_1G: 2}, "", [], id="mig-1g-x2-busy"),
        pytest.param({MIG_3G: 1}, "", ["mig"], id="mig-3g"),
        pytest.param({contract.AMD_GPU: 8}, "", ["mi300"], id="amd-8"),
        pytest.param({contract.INTEL_XE: 1}, "", ["arc"], id="intel-xe"),
        pytest.param({contract.INTEL_I915: 1}, "", [], id="intel-i915-none"),
    ],
)
@pytest.mark.parametrize("policy", sorted(kernel.POLICIES))
def test_shapes(gpus: dict[str, int], memory: str, fits: list[str], policy: str) -> None:
    cache = from_objects(cluster())
    d = Decider(cache, policy)
    demand = pod_demand(pod("want", gpus=gpus, memory=memory))
    verdicts = d.verdicts(demand, NAMES)
    assert [v.node for v in verdicts if v.fits] == fits
    for v in verdicts:
        if not v.fits:
            assert v.reason and v.level == 0
    for name in fits:
        assignment = cache.assign(demand, name, d.policy)
        assert assignment is not None
        ids = assignment["c0"][next(iter(gpus))]
        assert len(ids) == sum(gpus.values()) and len(set(ids)) == len(ids)


def test_share_ids_and_mig_ids_chosen() -> None:
    cache = from_objects(cluster())
    d = Decider(cache)
    share = pod_demand(pod("s", gpus={contract.NVIDIA_GPU_SHARED: 1}, memory="8Gi"))
    # best fit: GPU 0 (10 GiB left: 1 unit) before GPU 1 (40 GiB: 3 shares, 5 units by memory)
    assert cache.assign(share, "shared", d.policy) == {"c0": {contract.NVIDIA_GPU_SHARED: [contract.share_id("GPU-shared-0", 1)]}}
    mig = pod_demand(pod("m", gpus={MIG_1G: 1}))
    assert cache.assign(mig, "mig", d.policy) == {"c0": {MIG_1G: ["MIG-mig-0-2"]}}
    # now both 1g slices are taken
    assert not d.verdicts(pod_demand(pod("m2", gpus={MIG_1G: 1})), ["mig"])[0].fits


def test_two_containers_split_devices() -> None:
    cache = from_objects([node("n", n=4)])
    d = Decider(cache)
    demand = pod_demand(pod("two", gpus={contract.NVIDIA_GPU: 2}, containers=2))
    assignment = cache.assign(demand, "n", d.policy)
    assert assignment is not None
    assert [len(assignment[c][contract.NVIDIA_GPU]) for c in ("c0", "c1")] == [2, 2]
    assert len({i for c in assignment.values() for i in c[contract.NVIDIA_GPU]}) == 4


def test_pod_cpu_and_memory_requests() -> None:
    from scheduler_ext.podspec import cpu_milli, memory_mib, pod_requests

    assert [cpu_milli(q) for q in ("500m", "2", "0.25", "1e3", "bad")] == [500, 2000, 250, 1000000, 0]
    assert [memory_mib(q) for q in ("1Gi", "512Mi", "1048576", "1M", "1e6")] == [1024, 512, 1, 1, 1]
    spec = {
        # containers: 1 + 0.5 CPU, 1 GiB + limits-only 2 GiB; init: 2 CPUs (the larger); overhead 100m, 64Mi
        "containers": [{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                       {"resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "2Gi"}}}],
        "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}],
        "overhead": {"cpu": "100m", "memory": "64Mi"},
    }
    assert pod_requests(spec) == (2100, 3136)


def _expr(*values: str, key: str = contract.LABEL_PRODUCT, op: str = "In") -> dict[str, object]:
    return {"matchExpressions": [{"key": key, "operator": op, "values": list(values)}]}


@pytest.mark.parametrize(
    "spec,products",
    [
        pytest.param({}, set(), id="no-pin"),
        pytest.param({"nodeSelector": {contract.LABEL_PRODUCT: "NVIDIA-H100"}}, {"NVIDIA-H100"}, id="selector"),
        pytest.param({"nodeSelector": {"zone": "a"}}, set(), id="other-label"),
        pytest.param({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [_expr("A", "B"), _expr("C")]}}}}, {"A", "B", "C"}, id="terms-ored"),
        # one term without a product pin: the pod may run anywhere that term allows
        pytest.param({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [_expr("A"), _expr("x", key="zone")]}}}}, set(), id="one-term-unpinned"),
        pytest.param({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [_expr("A", op="NotIn")]}}}}, set(), id="not-in-left-to-kube-scheduler"),
        pytest.param({"nodeSelector": {contract.LABEL_PRODUCT: "A"}, "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [_expr("A", "B")]}}}},
            {"A"}, id="selector-and-affinity"),
        pytest.param({"nodeSelector": {contract.LABEL_PRODUCT: "A"}, "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [_expr("B")]}}}},
            {""}, id="contradiction-pins-to-nothing"),
        pytest.param({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": None}}}, set(),
                     id="null-fields"),
    ],
)
def test_gpu_product_pins_are_read(spec: dict[str, object], products: set[str]) -> None:
    from scheduler_ext.podspec import NO_PINS, pinned_products

    got = pinned_products(spec)
    assert got == products
    if not products:
        assert got is NO_PINS  # one shared object: the cache keeps a demand per pod (150,000: 30 MB)


def test_a_pinned_pod_uses_only_its_product_and_its_shape_is_pinned_in_the_mix() -> None:
    h100 = "NVIDIA H100 80GB HBM3"
    both = node("both", [gpu("both", 0), gpu("both", 1, model=h100)])  # one A100, one H100
    cache = from_objects([both])
    d = Decider(cache, "fragmentation")
    p = pod("want-h100", gpus={contract.NVIDIA_GPU: 1})
    p["spec"]["nodeSelector"] = {contract.LABEL_PRODUCT: contract.label_value(h100)}
    demand = pod_demand(p)
    assert d.filter(demand, ["both"]).fitting_names == ["both"]
    assert cache.assign(demand, "both", d.policy) == {"c0": {contract.NVIDIA_GPU: ["GPU-both-1"]}}
    ((shape, _),) = cache.mix()
    assert shape.models == frozenset({cache.models.find(h100)})
    # a second H100 pod no longer fits: the A100 is not its
    p2 = pod("want-h100-b", gpus={contract.NVIDIA_GPU: 1})
    p2["spec"]["nodeSelector"] = {contract.LABEL_PRODUCT: contract.label_value(h100)}
    assert d.filter(pod_demand(p2), ["both"]).fitting_names == []


def test_cpu_only_pods_shape_the_mix_only_when_they_may_land_beside_gpus() -> None:
    cache = from_objects([node("gpu", n=2), node("web-0"), node("web-1")])
    d = Decider(cache, "fragmentation")

    def cpu_pod(name: str) -> dict[str, object]:
        p = pod(name)
        p["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "2"}  # type: ignore[index]
        return p

    # GPU nodes tainted away: the candidates are CPU nodes only; all alike, the mix unchanged
    assert d.prioritize(pod_demand(cpu_pod("web")), ["web-0", "web-1"]).tolist() == [10, 10]
    assert cache.mix() == ()
    # a pod that may land on the GPU node is scored against it and joins the mix
    d.prioritize(pod_demand(cpu_pod("batch")), ["gpu", "web-0"])
    ((shape, _),) = cache.mix()
    assert shape.count == 0 and shape.cpu_milli == 2000
