"""kube-scheduler's node filters as gate mode applies them (scheduler_ext/nodefilter.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scheduler_ext.nodefilter import (UNSCHEDULABLE_TAINT, FactsColumns, NodeFacts, allows, allows_all, node_facts,
                                     pod_constraints)

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


_KEYS = ("zone", "pool", "gpus")
_label_sets = st.dictionaries(st.sampled_from(_KEYS), st.sampled_from(("a", "b", "8")), min_size=1, max_size=3)
_taints = st.lists(st.tuples(st.sampled_from(("gpu", "spot")), st.sampled_from(("", "yes")),
                             st.sampled_from(("NoSchedule", "NoExecute"))), max_size=2).map(tuple)
_facts = st.builds(NodeFacts, _label_sets, _taints, st.booleans())
_expression = st.fixed_dictionaries({
    "key": st.sampled_from(_KEYS), "operator": st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")),
    "values": st.lists(st.sampled_from(("a", "b", "4", "8")), max_size=2)})
_field = st.fixed_dictionaries({"key": st.just("metadata.name"), "operator": st.sampled_from(("In", "NotIn")),
                                "values": st.lists(st.sampled_from(("n0", "n1", "n2")), max_size=2)})
_spec = st.fixed_dictionaries({
    "nodeSelector": st.dictionaries(st.sampled_from(_KEYS), st.sampled_from(("a", "b")), max_size=2),
    "tolerations": st.lists(st.fixed_dictionaries({"key": st.sampled_from(("gpu", "spot", UNSCHEDULABLE_TAINT)),
                                                   "operator": st.sampled_from(("Exists", "Equal")),
                                                   "value": st.just("yes")}), max_size=2),
    "affinity": st.fixed_dictionaries({"nodeAffinity": st.fixed_dictionaries({
        "requiredDuringSchedulingIgnoredDuringExecution": st.fixed_dictionaries({"nodeSelectorTerms": st.lists(
            st.fixed_dictionaries({"matchExpressions": st.lists(_expression, max_size=2),
                                   "matchFields": st.lists(_field, max_size=1)}), max_size=2)})})}),
})


@settings(max_examples=300, deadline=None)
@example(fleet=[NodeFacts({"pool": "a", "zone": "b"}, (), False), NodeFacts({"pool": "a", "zone": "a"}, (), False)],
         unknown=[False] * 12, spec={"nodeSelector": {"pool": "a", "zone": "b"}})
@example(fleet=[NODE, NODE], unknown=[False] * 12, spec=term(fields=({"key": "metadata.name", "operator": "In",
                                                                      "values": ["n0"]},)))
@given(fleet=st.lists(_facts, min_size=1, max_size=12), unknown=st.lists(st.booleans(), min_size=12, max_size=12),
       spec=_spec)
def test_the_whole_fleet_at_once_answers_as_each_node_alone(fleet: list[NodeFacts], unknown: list[bool],
                                                            spec: dict[str, Any]) -> None:
    """allows_all works each distinct set of facts out once; it must answer for every node as
    allows does for that node (names read by matchFields included; a name without facts: no)."""
    names = [f"n{i}" for i in range(len(fleet))]
    facts = {n: f for n, f, gone in zip(names, fleet, unknown) if not gone}
    c = pod_constraints(spec)
    want = [n in facts and allows(c, n, facts[n]) for n in names]
    assert allows_all(c, FactsColumns(names, facts)).tolist() == want
    warmed = FactsColumns(names, facts)
    warmed.warm()  # every label numbered ahead, as the extender's warm-up does
    assert allows_all(c, warmed).tolist() == want
