"""Whatever JSON arrives, the extender answers 200 or 400 with a reason: never a 500, never
a changed cache."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_ext.decide import Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.server import ExtenderApp
from scheduler_ext.cache import from_objects

from .conftest import cluster_objects

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8) | st.sampled_from(["1", "2", "n-half", "nvidia.com/gpu"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["metadata", "spec", "containers", "resources", "limits", "requests", "nvidia.com/gpu",
                         "annotations", "gpupack.io/devices", "gpupack.io/gpu-memory", "name", "uid", "items",
                         "Pods", "UID", "NumPDBViolations", "priority", "nodeName"]) | st.text(max_size=5),
        inner, max_size=4),
    max_leaves=20,
)
pod_like = st.builds(
    lambda q, mem, dev, c: {"metadata": {"uid": "fuzz", "annotations": {"gpupack.io/gpu-memory": mem, "gpupack.io/devices": dev}},
                            "spec": {"containers": [{"name": c, "resources": {"limits": {"nvidia.com/gpu": q}}}]}},
    json_values, json_values, json_values, json_values,
)
bodies = st.fixed_dictionaries({}, optional={
    "Pod": json_values | pod_like, "Nodes": json_values, "NodeNames": json_values,
    "NodeNameToVictims": json_values, "NodeNameToMetaVictims": json_values,
    "PodName": json_values, "PodNamespace": json_values, "PodUID": json_values, "Node": json_values,
})

APP = ExtenderApp(cache := from_objects(cluster_objects()), Decider(cache), None, Metrics(cache))


def snapshot() -> Any:
    rows, names = cache.all_rows()
    return names, rows.free.tolist(), rows.free_memory_mib.tolist()


BEFORE = snapshot()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["/filter", "/prioritize", "/bind", "/preempt"]), bodies | json_values)
def test_no_500_and_no_state_change(path: str, body: Any) -> None:
    answer = APP.handle_post(path, json.dumps(body).encode())
    assert answer.status in (200, 400), answer.body
    if answer.status == 200:
        json.loads(answer.body)
    assert snapshot() == BEFORE
