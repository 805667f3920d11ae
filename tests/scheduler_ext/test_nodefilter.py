"""kube-scheduler's node filters as gate mode applies them (scheduler_ext/nodefilter.py)."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler_ext.nodefilter import NodeFacts, allows, node_facts, pod_constraints

NODE = NodeFacts({"zone": "a", "gpus": "8", "pool": "inference"}, (), False)


def term(*exprs: dict[str, Any], fields: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": list(exprs), "matchFields": list(fields)}]}}}}


@pytest.mark.parametrize("op, values, want", [
    ("In", ["a", "b"], True), ("In", ["b"], False), ("NotIn", ["b"], True), ("NotIn", ["a"], False),
    ("Exists", [], True), ("DoesNotExist", [], False),
])
def test_match_expressions(op: str, values: list[str], want: bool) -> None:
    assert allows(pod_constraints(term({"key": "zone", "operator": op, "values": values})), "n", NODE) is want


@pytest.mark.parametrize("op, bound, want", [("Gt", "4", True), ("Gt", "8", False), ("Lt", "9", True), ("Lt", "x", False)])
def test_numeric_operators(op: str, bound: str, want: bool) -> None:
    assert allows(pod_constraints(term({"key": "gpus", "operator": op, "values": [bound]})), "n", NODE) is want


def test_a_missing_label_and_terms_ored_and_fields() -> None:
    assert not allows(pod_constraints(term({"key": "rack", "operator": "In", "values": ["1"]})), "n", NODE)
    assert allows(pod_constraints(term({"key": "rack", "operator": "DoesNotExist"})), "n", NODE)
    ored = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}]}}}}
    assert allows(pod_constraints(ored), "n", NODE) and not allows(pod_constraints(ored), "m", NODE)
    assert not allows(pod_constraints({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{}]}}}}), "n", NODE)  # an empty term matches nothing
    assert allows(pod_constraints({"nodeSelector": {"pool": "inference"}}), "n", NODE)
    assert not allows(pod_constraints({"nodeSelector": {"pool": "training"}}), "n", NODE)


@pytest.mark.parametrize("toleration, want", [
    (None, False),
    ({"key": "gpu", "operator": "Exists"}, True),
    ({"operator": "Exists"}, True),  # tolerates everything
    ({"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}, True),
    ({"key": "gpu", "operator": "Equal", "value": "false"}, False),
    ({"key": "gpu", "operator": "Exists", "effect": "NoExecute"}, False),  # another effect
])
def test_taints_and_tolerations(toleration: dict[str, Any] | None, want: bool) -> None:
    facts = node_facts({"metadata": {"name": "n"}, "spec": {"taints": [
        {"key": "gpu", "value": "true", "effect": "NoSchedule"}, {"key": "soft", "effect": "PreferNoSchedule"}]}})
    spec = {"tolerations": [toleration]} if toleration else {}
    assert allows(pod_constraints(spec), "n", facts) is want


def test_a_cordoned_node_takes_only_pods_that_tolerate_it() -> None:
    facts = node_facts({"metadata": {"name": "n"}, "spec": {"unschedulable": True}})
    assert not allows(pod_constraints({}), "n", facts)
    assert allows(pod_constraints({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists",
                                                     "effect": "NoSchedule"}]}), "n", facts)
