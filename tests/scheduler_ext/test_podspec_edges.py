"""Request parsing (``scheduler_ext.podspec``) as fixed tables, called directly: quantities and
their rounding, the bounds on every number read with the field named, how containers, init
containers and overhead add up, product pins, and the shape check's messages."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from gpupack import contract
from scheduler_ext import podspec
from scheduler_ext.podspec import (
    MAX_CPU_MILLI,
    MAX_DEVICES,
    MAX_GPU_MEMORY_MIB,
    MAX_MEMORY_MIB,
    ContainerAsk,
    ShapeError,
    check_shape,
    cpu_milli,
    memory_mib,
    pinned_products,
    pod_demand,
    pod_requests,
    quantity,
)

GPU = "nvidia.com/gpu"


def test_bounds_are_what_the_docs_say() -> None:
    assert MAX_DEVICES == 1024
    assert podspec.MAX_GPU_RESOURCES == 16
    assert MAX_GPU_MEMORY_MIB == 2**24
    assert MAX_CPU_MILLI == MAX_MEMORY_MIB == 2**62 - 1
    assert podspec.INT64_MAX == 2**63 - 1
    assert (podspec.INT32_MIN, podspec.INT32_MAX) == (-(2**31), 2**31 - 1)
    assert podspec.MAX_QUANTITY_TEXT == 64 and podspec.MAX_EXPONENT == 64


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2", Fraction(2)), (2, Fraction(2)), (1.5, Fraction(3, 2)), (" 3 ", Fraction(3)),
        ("500m", Fraction(1, 2)), ("1n", Fraction(1, 10**9)), ("1u", Fraction(1, 10**6)),
        ("1k", Fraction(1000)), ("1M", Fraction(10**6)), ("1G", Fraction(10**9)),
        ("1T", Fraction(10**12)), ("1P", Fraction(10**15)), ("1E", Fraction(10**18)),
        ("1Ki", Fraction(1024)), ("1Mi", Fraction(2**20)), ("1.5Gi", Fraction(3 * 2**29)),
        ("1Ti", Fraction(2**40)), ("1Pi", Fraction(2**50)), ("1Ei", Fraction(2**60)),
        ("1e3", Fraction(1000)), ("1E3", Fraction(1000)), ("5e-1", Fraction(1, 2)), ("1e+2", Fraction(100)),
        ("1e64", Fraction(10**64)), ("1e-64", Fraction(1, 10**64)),
        ("+2", Fraction(2)), ("-2", Fraction(-2)),
        ("1e65", None), ("1e-65", None), ("1x", None), ("", None), ("Gi", None), ("1..2", None),
        ("1" * 64, Fraction(int("1" * 64))), ("1" * 65, None), ("２", None),
        (True, None), (None, None), ([1], None), ({"a": 1}, None),
    ],
)
def test_quantity(value: Any, expected: Fraction | None) -> None:
    assert quantity(value) == expected


@pytest.mark.parametrize(
    "value, milli",
    [("1", 1000), ("500m", 500), ("0.0001", 1), ("1.0001", 1001), ("1u", 1), ("-1", 0), ("x", 0),
     ("0", 0), ("1e30", MAX_CPU_MILLI), (None, 0)],
)
def test_cpu_milli_rounds_up_and_clamps(value: Any, milli: int) -> None:
    assert cpu_milli(value) == milli


@pytest.mark.parametrize(
    "value, mib",
    [("1Mi", 1), ("1", 1), ("1048577", 2), ("1Gi", 1024), ("1.5Gi", 1536), ("-1Mi", 0), ("x", 0),
     ("0", 0), ("1e40", MAX_MEMORY_MIB), (None, 0)],
)
def test_memory_mib_rounds_up_and_clamps(value: Any, mib: int) -> None:
    assert memory_mib(value) == mib


def _pod(containers: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"containers": containers or []}
    s.update(spec)
    return {"metadata": {"uid": "u", "name": "p", "namespace": "ns"}, "spec": s}


def _c(name: str = "c", requests: dict[str, Any] | None = None, limits: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "resources": {"requests": requests or {}, "limits": limits or {}}}


@pytest.mark.parametrize(
    "spec, cpu, mem",
    [
        ({"containers": [_c(requests={"cpu": "1", "memory": "1Gi"}), _c("d", requests={"cpu": "500m", "memory": "512Mi"})]}, 1500, 1536),
        # limits stand in for a missing request
        ({"containers": [_c(limits={"cpu": "2", "memory": "2Gi"})]}, 2000, 2048),
        ({"containers": [_c(requests={"cpu": "1"}, limits={"cpu": "2", "memory": "1Gi"})]}, 1000, 1024),
        # an init container counts when it is larger than the sum of the containers
        ({"containers": [_c(requests={"cpu": "1", "memory": "1Gi"})],
          "initContainers": [_c("i", requests={"cpu": "3", "memory": "100Mi"}), _c("j", requests={"cpu": "2", "memory": "3Gi"})]},
         3000, 3072),
        ({"containers": [_c(requests={"cpu": "4", "memory": "4Gi"})], "initContainers": [_c("i", requests={"cpu": "3"})]}, 4000, 4096),
        # overhead adds to both
        ({"containers": [_c(requests={"cpu": "1", "memory": "1Gi"})], "overhead": {"cpu": "250m", "memory": "64Mi"}}, 1250, 1088),
        ({"containers": [_c(requests={"cpu": "1"})], "overhead": {"memory": "64Mi"}}, 1000, 64),
        ({"containers": "nope", "initContainers": {"a": 1}}, 0, 0),
        ({}, 0, 0),
    ],
)
def test_pod_requests(spec: dict[str, Any], cpu: int, mem: int) -> None:
    assert pod_requests(spec) == (cpu, mem)


@pytest.mark.parametrize(
    "pod, error",
    [
        (_pod([_c(requests={"cpu": "x"})]), "container 'c' requests.cpu: 'x' is not a quantity"),
        (_pod([_c(limits={"memory": "-1Gi"})]), "container 'c' limits.memory: '-1Gi' is negative"),
        (_pod([_c(requests={"cpu": "9223372036854776"})]),
         "container 'c' requests.cpu: '9223372036854776' is beyond int64 millicores"),
        (_pod([_c(requests={"memory": "9223372036854775808"})]),
         "container 'c' requests.memory: '9223372036854775808' is beyond int64 bytes"),
        (_pod([], initContainers=[_c("i", requests={"cpu": "x"})]), "init container 'i' requests.cpu: 'x' is not a quantity"),
        (_pod([], overhead={"cpu": "-1"}), "overhead.cpu: '-1' is negative"),
        (_pod([], overhead={"memory": "x"}), "overhead.memory: 'x' is not a quantity"),
        (_pod([_c(requests={"cpu": "x" * 50})]), "container 'c' requests.cpu: '" + "x" * 36 + "... is not a quantity"),
        (_pod([_c(limits={GPU: "x"})]), f"container 'c' {GPU}: 'x' is not a whole number of devices"),
        (_pod([_c(limits={GPU: True})]), f"container 'c' {GPU}: True is not a whole number of devices"),
        (_pod([_c(limits={GPU: "1.5"})]), f"container 'c' {GPU}: '1.5' is not a whole number of devices"),
        (_pod([_c(limits={GPU: "²"})]), f"container 'c' {GPU}: '²' is not a whole number of devices"),
        (_pod([_c(limits={GPU: "1025"})]), f"container 'c' {GPU}: '1025' is more than 1024 devices"),
        (_pod([_c(limits={GPU: "9" * 5000})]), f"container 'c' {GPU}: '" + "9" * 36 + "... is more than 1024 devices"),
        (_pod([_c(limits={GPU: "1000"}), _c("d", limits={GPU: "25"})]), f"{GPU}: 1025 over the pod's containers, more than 1024 devices"),
        (_pod([], priority=2**31), "spec.priority: 2147483648 is outside int32"),
        (_pod([], priority=-(2**31) - 1), "spec.priority: -2147483649 is outside int32"),
    ],
)
def test_the_first_unusable_field_is_named(pod: dict[str, Any], error: str) -> None:
    assert pod_demand(pod).error == error


@pytest.mark.parametrize(
    "pod, asks, priority",
    [
        (_pod([_c(limits={GPU: "1024"})]), (ContainerAsk("c", GPU, 1024),), 0),
        (_pod([_c(limits={GPU: "0001"})]), (ContainerAsk("c", GPU, 1),), 0),
        (_pod([_c(limits={GPU: 2})]), (ContainerAsk("c", GPU, 2),), 0),
        (_pod([_c(limits={GPU: "0"})]), (), 0),
        (_pod([_c(limits={GPU: "000"})]), (), 0),
        (_pod([_c(requests={GPU: "1"}, limits={GPU: "2"})]), (ContainerAsk("c", GPU, 2),), 0),  # limits decide
        (_pod([_c(requests={GPU: "3"})]), (ContainerAsk("c", GPU, 3),), 0),
        (_pod([_c(limits={GPU: "1"}), "junk", _c("d", limits={GPU: "1", "cpu": "1"})]),  # type: ignore[list-item]
         (ContainerAsk("c", GPU, 1), ContainerAsk("d", GPU, 1)), 0),
        (_pod([_c(limits={GPU: "512"}), _c("d", limits={GPU: "512"})]), (ContainerAsk("c", GPU, 512), ContainerAsk("d", GPU, 512)), 0),
        (_pod([], priority=2**31 - 1), (), 2**31 - 1),
        (_pod([], priority=-(2**31)), (), -(2**31)),
        (_pod([], priority=True), (), 0),
        (_pod([], priority="5"), (), 0),
    ],
)
def test_accepted_values(pod: dict[str, Any], asks: tuple[ContainerAsk, ...], priority: int) -> None:
    d = pod_demand(pod)
    assert d.error == ""
    assert d.asks == asks and d.priority == priority
    assert d.wants_gpu is bool(asks)


@pytest.mark.parametrize(
    "hint, memory, error",
    [
        ("10Gi", 10240, ""),
        ("16Ti", 2**24, ""),
        ("17Ti", 0, "gpupack.io/gpu-memory: '17Ti' is more than 16777216 MiB per unit"),
        ("lots", 0, "gpupack.io/gpu-memory: 'lots' is not a memory quantity like '10Gi'"),
        ("1" * 65, 0, "gpupack.io/gpu-memory: '" + "1" * 36 + "... is not a memory quantity like '10Gi'"),
    ],
)
def test_memory_hint(hint: str, memory: int, error: str) -> None:
    pod = _pod([_c(limits={GPU: "1"})])
    pod["metadata"]["annotations"] = {contract.GPU_MEMORY_ANNOTATION: hint}
    d = pod_demand(pod)
    assert (d.memory_mib, d.error) == (memory, error)


def test_demand_fields() -> None:
    pod = _pod([_c(requests={"cpu": "1", "memory": "1Gi"}, limits={GPU: "2"})], nodeName="n1", priority=7)
    pod["status"] = {"phase": "Succeeded"}
    d = pod_demand(pod)
    assert (d.uid, d.namespace, d.name, d.node, d.priority, d.finished) == ("u", "ns", "p", "n1", 7, True)
    assert (d.cpu_milli, d.node_memory_mib, d.memory_mib, d.assignment, d.products) == (1000, 1024, 0, None, frozenset())
    assert d.totals() == {GPU: 2}
    bare = pod_demand({})
    assert (bare.uid, bare.namespace, bare.name, bare.node, bare.finished, bare.error) == ("", "default", "", "", False, "")
    for phase, finished in [("Failed", True), ("Running", False), ("Pending", False)]:
        assert pod_demand({"status": {"phase": phase}}).finished is finished


def _term(*exprs: dict[str, Any]) -> dict[str, Any]:
    return {"matchExpressions": list(exprs)}


def _in(*values: Any, key: str = contract.LABEL_PRODUCT, op: str = "In") -> dict[str, Any]:
    return {"key": key, "operator": op, "values": list(values)}


def _affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


@pytest.mark.parametrize(
    "spec, products",
    [
        ({}, set()),
        ({"nodeSelector": {contract.LABEL_PRODUCT: "A100"}}, {"A100"}),
        ({"nodeSelector": {contract.LABEL_PRODUCT: 5}}, set()),
        ({"affinity": _affinity(_term(_in("A100", "H100")))}, {"A100", "H100"}),
        ({"affinity": _affinity(_term(_in("A100")), _term(_in("H100")))}, {"A100", "H100"}),
        ({"affinity": _affinity(_term(_in("A100")), _term(_in("x", key="other")))}, set()),  # one term unpinned
        ({"affinity": _affinity(_term(_in("A100", op="NotIn")))}, set()),
        ({"affinity": _affinity(_term(_in("A100", 5)))}, {"A100"}),
        ({"affinity": _affinity()}, set()),
        ({"nodeSelector": {contract.LABEL_PRODUCT: "A100"}, "affinity": _affinity(_term(_in("A100", "H100")))}, {"A100"}),
        ({"nodeSelector": {contract.LABEL_PRODUCT: "L4"}, "affinity": _affinity(_term(_in("A100", "H100")))}, {""}),
    ],
)
def test_pinned_products(spec: dict[str, Any], products: set[str]) -> None:
    assert pinned_products(spec) == frozenset(products)


@pytest.mark.parametrize(
    "pod, message",
    [
        ("x", "Pod: expected an object, got a string"),
        ({"metadata": "x"}, "Pod.metadata: expected an object, got a string"),
        ({"metadata": {"name": 5}}, "Pod.metadata.name: expected a string, got an integer"),
        ({"metadata": {"uid": True}}, "Pod.metadata.uid: expected a string, got a boolean"),
        ({"metadata": {"annotations": {"a": 1.5}}}, "Pod.metadata.annotations['a']: expected a string, got a number"),
        ({"spec": {"containers": {}}}, "Pod.spec.containers: expected a list, got an object"),
        ({"spec": {"containers": [[]]}}, "Pod.spec.containers[0]: expected an object, got a list"),
        ({"spec": {"initContainers": [{}, {"name": 1}]}}, "Pod.spec.initContainers[1].name: expected a string, got an integer"),
        ({"spec": {"containers": [{"resources": {"limits": {"cpu": []}}}]}},
         "Pod.spec.containers[0].resources.limits['cpu']: expected a quantity (a string), got a list"),
        ({"spec": {"containers": [{"resources": {"requests": {"cpu": False}}}]}},
         "Pod.spec.containers[0].resources.requests['cpu']: expected a quantity (a string), got a boolean"),
        ({"spec": {"overhead": {"cpu": {}}}}, "Pod.spec.overhead['cpu']: expected a quantity (a string), got an object"),
        ({"spec": {"priority": "1"}}, "Pod.spec.priority: expected an integer, got a string"),
        ({"spec": {"priority": True}}, "Pod.spec.priority: expected an integer, got a boolean"),
        ({"spec": {"nodeName": 1}}, "Pod.spec.nodeName: expected a string, got an integer"),
        ({"spec": {"nodeSelector": {"k": None}}}, "Pod.spec.nodeSelector['k']: expected a string, got null"),
        ({"spec": {"affinity": _affinity(_term({"key": 1}))}},
         "Pod.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
         ".matchExpressions[0].key: expected a string, got an integer"),
        ({"spec": {"affinity": _affinity(_term({"operator": 1}))}},
         "Pod.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
         ".matchExpressions[0].operator: expected a string, got an integer"),
        ({"spec": {"affinity": _affinity(_term({"values": ["a", 2]}))}},
         "Pod.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
         ".matchExpressions[0].values[1]: expected a string, got an integer"),
        ({"spec": {"affinity": {"nodeAffinity": "x"}}}, "Pod.spec.affinity.nodeAffinity: expected an object, got a string"),
        ({"status": {"phase": 1}}, "Pod.status.phase: expected a string, got an integer"),
        ({"status": []}, "Pod.status: expected an object, got a list"),
    ],
)
def test_check_shape_names_the_field(pod: Any, message: str) -> None:
    with pytest.raises(ShapeError) as err:
        check_shape(pod)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "pod",
    [
        {},
        {"metadata": None, "spec": None, "status": None},
        _pod([_c(requests={"cpu": "1", "memory": 5}, limits={GPU: 1})], priority=3, nodeName="n"),
        {"spec": {"containers": [{"resources": {"limits": {"cpu": None}}}], "affinity": _affinity(_term(_in("A")))}},
    ],
)
def test_check_shape_accepts(pod: Any) -> None:
    check_shape(pod)


@pytest.mark.parametrize(
    "spec",
    [
        {"containers": [_c(requests={"cpu": "x", "memory": "-1"})]},
        {"containers": [_c(requests={"cpu": "9223372036854776", "memory": "9223372036854775808"})]},
        {"containers": [], "overhead": {"cpu": "-1", "memory": "x"}},
    ],
)
def test_unusable_quantities_count_zero(spec: dict[str, Any]) -> None:
    assert pod_requests(spec) == (0, 0)


@pytest.mark.parametrize(
    "requests, error, cpu, mem",
    [
        ({"cpu": "0", "memory": "0"}, "", 0, 0),  # zero is not negative
        # exactly int64 bytes: read, in MiB rounded up
        ({"memory": "9223372036854775807"}, "", 0, 8796093022208),
        # bytes that would be beyond int64 as millicores are fine as memory
        ({"memory": "9223372036854776"}, "", 0, 8796093023),
        # exactly int64 millicores is not beyond int64, but the sum is beyond the kernel's bound
        ({"cpu": "9223372036854775807m"}, f"CPU requests sum to 9223372036854775807 millicores, more than {MAX_CPU_MILLI}", 0, 0),
        ({"cpu": "4611686018427387903m"}, "", MAX_CPU_MILLI, 0),
        ({"cpu": "4611686018427387904m"}, f"CPU requests sum to 4611686018427387904 millicores, more than {MAX_CPU_MILLI}", 0, 0),
    ],
)
def test_int64_edges(requests: dict[str, Any], error: str, cpu: int, mem: int) -> None:
    d = pod_demand(_pod([_c(requests=requests)]))
    assert (d.error, d.cpu_milli, d.node_memory_mib) == (error, cpu, mem)


@pytest.mark.parametrize(
    "text, shown",
    [
        ("x" * 38, repr("x" * 38)),  # 40 characters with the quotes: shown whole
        ("x" * 39, repr("x" * 39)[:37] + "..."),  # 41: cut to 37 and "..."
    ],
)
def test_long_values_are_cut_at_40_characters(text: str, shown: str) -> None:
    assert pod_demand(_pod([_c(requests={"cpu": text})])).error == f"container 'c' requests.cpu: {shown} is not a quantity"


@pytest.mark.parametrize("pod, kind", [((1,), "tuple"), ({1, 2}, "set"), (None, "null"), (1.5, "a number")])
def test_check_shape_names_other_types(pod: Any, kind: str) -> None:
    with pytest.raises(ShapeError) as err:
        check_shape(pod)
    assert str(err.value) == f"Pod: expected an object, got {kind}"


@pytest.mark.parametrize(
    "pod, message",
    [
        ({"metadata": {"namespace": 1}}, "Pod.metadata.namespace: expected a string, got an integer"),
        ({"metadata": {"annotations": []}}, "Pod.metadata.annotations: expected an object, got a list"),
        ({"metadata": {"annotations": "a=b"}}, "Pod.metadata.annotations: expected an object, got a string"),
    ],
)
def test_check_shape_metadata_fields(pod: Any, message: str) -> None:
    with pytest.raises(ShapeError) as err:
        check_shape(pod)
    assert str(err.value) == message


_NA = "Pod.spec.affinity.nodeAffinity"
_REQ = f"{_NA}.requiredDuringSchedulingIgnoredDuringExecution"


@pytest.mark.parametrize(
    "pod, message",
    [
        ({"spec": []}, "Pod.spec: expected an object, got a list"),
        ({"spec": {"nodeSelector": []}}, "Pod.spec.nodeSelector: expected an object, got a list"),
        ({"spec": {"affinity": []}}, "Pod.spec.affinity: expected an object, got a list"),
        ({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}}}},
         f"{_REQ}: expected an object, got a list"),
        ({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": {}}}}}},
         f"{_REQ}.nodeSelectorTerms: expected a list, got an object"),
        ({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [1]}}}}},
         f"{_REQ}.nodeSelectorTerms[0]: expected an object, got an integer"),
        ({"spec": {"affinity": _affinity({"matchExpressions": {}})}},
         f"{_REQ}.nodeSelectorTerms[0].matchExpressions: expected a list, got an object"),
        ({"spec": {"affinity": _affinity({"matchExpressions": ["x"]})}},
         f"{_REQ}.nodeSelectorTerms[0].matchExpressions[0]: expected an object, got a string"),
        ({"spec": {"affinity": _affinity(_term({"values": "a"}))}},
         f"{_REQ}.nodeSelectorTerms[0].matchExpressions[0].values: expected a list, got a string"),
        ({"spec": {"overhead": []}}, "Pod.spec.overhead: expected an object, got a list"),
        ({"spec": {"containers": [{"resources": []}]}}, "Pod.spec.containers[0].resources: expected an object, got a list"),
        ({"spec": {"containers": [{"resources": {"limits": []}}]}},
         "Pod.spec.containers[0].resources.limits: expected an object, got a list"),
        ({"spec": {"initContainers": [{"resources": {"requests": "x"}}]}},
         "Pod.spec.initContainers[0].resources.requests: expected an object, got a string"),
        ({"spec": {"initContainers": {}}}, "Pod.spec.initContainers: expected a list, got an object"),
        ({"spec": {"containers": [{}, {"resources": {"requests": {"cpu": []}}}]}},
         "Pod.spec.containers[1].resources.requests['cpu']: expected a quantity (a string), got a list"),
    ],
)
def test_check_shape_every_object_field(pod: Any, message: str) -> None:
    with pytest.raises(ShapeError) as err:
        check_shape(pod)
    assert str(err.value) == message


@pytest.mark.parametrize("value, count", [("00001024", 1024), ("000000000001", 1), ("0" * 30, 0)])
def test_leading_zeros_do_not_count_against_the_bound(value: str, count: int) -> None:
    d = pod_demand(_pod([_c(limits={GPU: value})]))
    assert d.error == "" and d.totals() == ({GPU: count} if count else {})


def test_a_container_without_a_name_asks_under_the_empty_name() -> None:
    d = pod_demand(_pod([{"resources": {"limits": {GPU: "1"}}}]))
    assert d.asks == (ContainerAsk("", GPU, 1),)


def test_a_hint_of_exactly_64_characters_is_read() -> None:
    pod = _pod([_c(limits={GPU: "1"})])
    pod["metadata"]["annotations"] = {contract.GPU_MEMORY_ANNOTATION: "0" * 61 + "1Gi"}
    d = pod_demand(pod)
    assert (d.error, d.memory_mib) == ("", 1024)


@pytest.mark.parametrize("kinds, refused", [(podspec.MAX_GPU_RESOURCES, False), (podspec.MAX_GPU_RESOURCES + 1, True)],
                         ids=["sixteen-resources", "seventeen-resources"])
def test_at_most_sixteen_distinct_gpu_resources(kinds: int, refused: bool) -> None:
    # 16 MIG profile names pass, a 17th is refused with the count named
    limits = {f"nvidia.com/mig-{i}g.{5 * i}gb": "1" for i in range(1, kinds + 1)}
    assert all(contract.is_gpu_resource(r) for r in limits)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "namespace": "default", "uid": "u"},
           "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]}}
    d = podspec.pod_demand(pod)
    assert (f"{kinds} GPU resources asked for, more than {podspec.MAX_GPU_RESOURCES}" in d.error) == refused
    assert bool(d.error) == refused


# --- against the surviving mutants of the whole podspec run (docs/testing.md) ---------------


def test_every_unreadable_gpu_count_of_a_container_is_reported() -> None:
    # resources are read in sorted order; after the unreadable amd.com/gpu the loop goes on:
    # the Intel ask is still read (the pod is refused, but its asks are whole)
    d = pod_demand(_pod([_c(requests={GPU: "x", "amd.com/gpu": "y", "gpu.intel.com/i915": "1"})]))
    assert d.error == "container 'c' amd.com/gpu: 'y' is not a whole number of devices"
    assert [a.resource for a in d.asks] == ["gpu.intel.com/i915"]


def test_an_unreadable_assignment_annotation_is_named() -> None:
    p = _pod([_c(requests={GPU: "1"})])
    p["metadata"]["annotations"] = {contract.DEVICES_ANNOTATION: "not an assignment"}
    d = pod_demand(p)
    assert d.error.startswith("devices: not JSON (")
    assert d.assignment is None


def test_a_priority_outside_int32_is_refused_and_counts_zero() -> None:
    d = pod_demand(_pod([_c(requests={GPU: "1"})], priority=2**31))
    assert (d.error, d.priority) == (f"spec.priority: {2**31} is outside int32", 0)


@pytest.mark.parametrize("terms", [5, "In", {"matchExpressions": []}, True], ids=["int", "str", "object", "bool"])
def test_node_selector_terms_that_are_not_a_list_pin_nothing(terms: Any) -> None:
    spec = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}
    assert pinned_products(spec) == frozenset()
