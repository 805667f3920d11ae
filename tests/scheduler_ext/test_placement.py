"""Gate mode (scheduler_ext/placement.py): gated pods pinned to a node and devices, then ungated.

A fake API server of pods applies the controller's JSON patches as RFC 6902 says (a failed
``test`` refuses the whole patch) and plays each change back to every replica's watch; a
"kube-scheduler" binds an ungated pod to the one node its affinity allows.
"""

from __future__ import annotations

import copy
import itertools
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupack import contract
from gpupack.kernel import verdict_memo
from scheduler_ext import ledger as ledger_mod
from scheduler_ext import placement
from scheduler_ext.binder import Binder, Conflict
from scheduler_ext.cache import KEEP_ROWS_FROM, ClusterCache
from scheduler_ext.decide import Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.podspec import pinned_products, pod_demand
from tests.fixtures import node, pod

from .test_ledger import FakeLedgerApi

GATE = contract.PLACEMENT_GATE
GPU = contract.NVIDIA_GPU


def gated_pod(name: str, **kw: Any) -> dict[str, Any]:
    p = pod(name, **kw)
    p["spec"]["schedulingGates"] = [{"name": GATE}]
    return p


def _walk(doc: Any, path: str) -> tuple[Any, str]:
    keys = [k.replace("~1", "/").replace("~0", "~") for k in path.split("/")[1:]]
    for k in keys[:-1]:
        doc = doc[int(k)] if isinstance(doc, list) else doc[k]
    return doc, keys[-1]


def apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 for objects (what the controller sends): add, remove, replace, test."""
    out = copy.deepcopy(doc)
    for op in ops:
        parent, key = _walk(out, op["path"])
        if op["op"] == "test":
            if parent.get(key) != op["value"]:
                raise Conflict(f"test of {op['path']} failed")
        elif op["op"] == "remove":
            del parent[key]
        elif op["op"] == "replace":
            if key not in parent:
                raise ValueError(f"replace of missing {op['path']}")
            parent[key] = copy.deepcopy(op["value"])
        elif op["op"] == "add" and isinstance(parent, list):
            parent.insert(len(parent) if key == "-" else int(key), copy.deepcopy(op["value"]))
        elif op["op"] == "add":
            parent[key] = copy.deepcopy(op["value"])
        else:
            raise ValueError(op)
    return out


class FakeCluster:
    """Pods by (namespace, name), each change played to every subscribed sink as a watch event."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.sinks: list[Any] = []
        self.patches = 0
        self.lock = threading.RLock()
        self.before_patch: Any = None  # a hook that changes the pod first (a racing writer)
        self.lagging = False  # events wait in each sink's queue until deliver() (slow watches)
        self.queues: dict[int, list[dict[str, Any]]] = {}

    def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        for sink in self.sinks:
            event = {"type": kind, "object": copy.deepcopy(obj)}
            if self.lagging:
                self.queues.setdefault(id(sink), []).append(event)
            else:
                sink.apply_event(event, "Pod")

    def deliver(self, sink: Any = None, count: int | None = None) -> None:
        """Delivers the first ``count`` (default: all) queued events to ``sink`` (default: every sink)."""
        for s in [sink] if sink is not None else self.sinks:
            queue = self.queues.get(id(s), [])
            n = len(queue) if count is None else count
            for event in queue[:n]:
                s.apply_event(event, "Pod")
            del queue[:n]

    def create(self, obj: dict[str, Any]) -> None:
        with self.lock:
            self.pods[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = copy.deepcopy(obj)
            self._emit("ADDED", obj)

    def delete(self, namespace: str, name: str) -> None:
        with self.lock:
            self._emit("DELETED", self.pods.pop((namespace, name)))

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.pods[(namespace, name)])

    def json_patch_pod(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        with self.lock:
            if self.before_patch is not None:
                self.before_patch(self, namespace, name)
            old = self.pods[(namespace, name)]
            new = apply_json_patch(old, ops)
            if new["spec"].get("schedulingGates") is not None and not new["spec"]["schedulingGates"]:
                raise ValueError("the API server stores no empty gate list: remove it")
            new["metadata"]["resourceVersion"] = str(int(old["metadata"]["resourceVersion"]) + 1)
            self.pods[(namespace, name)] = new
            self.patches += 1
            self._emit("MODIFIED", new)

    def schedule(self) -> list[tuple[str, str]]:
        """kube-scheduler: binds each ungated pod pinned to one node (by metadata.name) there."""
        out = []
        with self.lock:
            for (ns, name), p in self.pods.items():
                spec = p["spec"]
                if spec.get("nodeName") or spec.get("schedulingGates"):
                    continue
                from scheduler_ext.podspec import pinned_to

                nodes = pinned_to(spec)
                if nodes is not None and len(nodes) == 1:
                    spec["nodeName"] = next(iter(nodes))
                    p["metadata"]["resourceVersion"] = str(int(p["metadata"]["resourceVersion"]) + 1)
                    out.append((name, spec["nodeName"]))
                    self._emit("MODIFIED", p)
        return out


class Replica:
    """One extender replica in gate mode: its own cache, decider, binder and controller."""

    def __init__(self, cluster: FakeCluster, nodes: list[dict[str, Any]], ledger_api: FakeLedgerApi | None,
                 name: str = "r1", patience: float = 30.0, clock: Any = None, keep_rows_from: int = KEEP_ROWS_FROM) -> None:
        self.cache = ClusterCache(keep_rows_from=keep_rows_from)
        self.cache.replace_nodes(nodes)
        self.decider = Decider(self.cache, "binpack")
        ledger = ledger_mod.Ledger(ledger_api, name) if ledger_api is not None else None
        self.binder = Binder(cluster, self.cache, self.decider.policy, ledger)  # type: ignore[arg-type]
        self.controller = placement.PlacementController(self.cache, self.decider, self.binder, cluster,
                                                        patience=patience, clock=clock or (lambda: 0.0))
        self.tee = placement.Tee(self.cache, self.controller)
        with cluster.lock:
            self.tee.replace_pods(copy.deepcopy(p) for p in cluster.pods.values())  # read once, as a paged list is
            cluster.sinks.append(self.tee)


def devices_of(cluster: FakeCluster) -> dict[str, list[str]]:
    out = {}
    for (_, name), p in cluster.pods.items():
        raw = (p["metadata"].get("annotations") or {}).get(contract.DEVICES_ANNOTATION)
        if raw:
            out[name] = sorted(d for per in contract.decode_assignment(raw).values() for ids in per.values() for d in ids)
    return out


# --- the patch itself -------------------------------------------------------------------------


def test_pin_patch_pins_annotates_and_ungates() -> None:
    p = gated_pod("a", gpus={GPU: 1})
    p["spec"]["schedulingGates"].insert(0, {"name": "other.io/wait"})
    devices = {"c0": {GPU: ["GPU-n1-1"]}}
    out = apply_json_patch(p, placement.pin_patch(p, "n1", devices))
    assert out["spec"]["schedulingGates"] == [{"name": "other.io/wait"}]  # only ours removed
    ann = out["metadata"]["annotations"]
    assert contract.decode_assignment(ann[contract.DEVICES_ANNOTATION]) == devices
    assert ann[contract.PLACED_ANNOTATION] == "n1"
    terms = out["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]
    assert pod_demand(out).node == "n1"  # counted on n1 before kube-scheduler binds it
    assert pod_demand(out).assignment == devices


def test_pin_patch_narrows_every_own_term_and_keeps_the_model_pin() -> None:
    p = gated_pod("a", gpus={GPU: 1})
    del p["metadata"]["annotations"]  # no annotations at all: the map is added whole
    product = contract.label_value("NVIDIA H100 80GB HBM3")
    p["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": contract.LABEL_PRODUCT, "operator": "In", "values": [product]}]},
        {"matchExpressions": [{"key": contract.LABEL_PRODUCT, "operator": "In", "values": ["x"]}],
         "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n9"]}]},
    ]}}, "podAntiAffinity": {"kept": True}}
    out = apply_json_patch(p, placement.pin_patch(p, "n2", None))  # a DRA node: no devices written
    assert "schedulingGates" not in out["spec"]
    assert contract.DEVICES_ANNOTATION not in out["metadata"]["annotations"]
    terms = out["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert [t["matchFields"][-1]["values"] for t in terms] == [["n2"], ["n2"]]
    assert terms[1]["matchFields"][0]["operator"] == "NotIn"  # its own field kept
    assert out["spec"]["affinity"]["podAntiAffinity"] == {"kept": True}
    assert pinned_products(out["spec"]) == pinned_products(p["spec"])
    assert pod_demand(out).node == "n2"


def test_a_patch_on_a_changed_pod_fails_whole() -> None:
    p = gated_pod("a", gpus={GPU: 1})
    ops = placement.pin_patch(p, "n1", {"c0": {GPU: ["GPU-n1-0"]}})
    ungated_meanwhile = apply_json_patch(p, placement.ungate_patch(p))
    with pytest.raises(Conflict):
        apply_json_patch(ungated_meanwhile, ops)


@pytest.mark.parametrize("annotation, affinity_nodes", [
    ("n1", None),  # annotation but nothing pins it: any node may take it
    ("n1", ["n1", "n2"]),  # pinned to two
    ("n1", ["n2"]),  # pinned elsewhere
])
def test_placed_on_is_believed_only_with_a_pin_to_that_node_alone(annotation: str, affinity_nodes: list[str] | None) -> None:
    p = pod("a", gpus={GPU: 1})
    p["metadata"]["annotations"][contract.PLACED_ANNOTATION] = annotation
    if affinity_nodes is not None:
        p["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": affinity_nodes}]}]}}}
    assert pod_demand(p).node == ""


# --- the controller ---------------------------------------------------------------------------


def test_gated_pods_pack_and_kube_scheduler_binds_them_where_pinned() -> None:
    cluster = FakeCluster()
    nodes = [node("n1", n=4), node("n2", n=4)]
    cluster.create(pod("running", gpus={GPU: 2}, node="n2", phase="Running", devices={"c0": {GPU: ["GPU-n2-0", "GPU-n2-1"]}}))
    ledger_api = FakeLedgerApi()
    r = Replica(cluster, nodes, ledger_api)
    r.controller.metrics = metrics = Metrics(r.cache)
    for i in range(4):
        cluster.create(gated_pod(f"g{i}", gpus={GPU: 1}))
    stats = r.controller.place_ready()
    assert stats.placed == 4 and r.controller.waiting() == 0
    text = metrics.exposition().decode()
    assert 'gpupack_placements_total{outcome="placed"} 4.0' in text
    assert "gpupack_placement_decision_seconds_count 4.0" in text
    assert "gpupack_placement_decision_cpu_seconds_count 4.0" in text
    bound = dict(cluster.schedule())
    # binpack: the two free GPUs of the used node first, then the empty node
    assert sorted(bound.values()) == ["n1", "n1", "n2", "n2"]
    assert [bound["g0"], bound["g1"]] == ["n2", "n2"]
    got = devices_of(cluster)
    every = [d for ids in got.values() for d in ids]
    assert len(every) == len(set(every)) == 6
    assert ledger_api.writes == 2  # one write per node for the whole pass


def test_a_pod_without_room_waits_then_gets_the_freed_gpu() -> None:
    cluster = FakeCluster()
    now = [0.0]
    cluster.create(pod("big", gpus={GPU: 2}, node="n1", phase="Running", devices={"c0": {GPU: ["GPU-n1-0", "GPU-n1-1"]}}))
    r = Replica(cluster, [node("n1", n=2)], FakeLedgerApi(), clock=lambda: now[0])
    cluster.create(gated_pod("g", gpus={GPU: 1}))
    assert r.controller.place_ready().waiting == 1
    assert r.controller.place_ready().waiting == 1  # nothing changed, and not a second yet: not tried
    assert cluster.pods[("default", "g")]["spec"]["schedulingGates"] == [{"name": GATE}]
    cluster.delete("default", "big")
    now[0] = 2.0
    assert r.controller.place_ready().placed == 1
    assert cluster.schedule() == [("g", "n1")]


def test_patience_hands_the_pod_to_kube_scheduler_as_it_is() -> None:
    cluster = FakeCluster()
    now = [0.0]
    r = Replica(cluster, [node("n1", n=1)], FakeLedgerApi(), patience=10.0, clock=lambda: now[0])
    cluster.create(gated_pod("toobig", gpus={GPU: 2}))
    r.controller.place_ready()
    now[0] = 11.0
    stats = r.controller.place_ready()
    assert stats.handed_over == 1 and r.controller.waiting() == 0
    spec = cluster.pods[("default", "toobig")]["spec"]
    assert "schedulingGates" not in spec and "affinity" not in spec  # as it was, so preemption sees it


def test_one_mix_scores_a_whole_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass's shapes are noted before its first decision: every decision of the pass reads
    the same mix, made of all of them (noted one by one, the first pods were scored under a
    mix of themselves and each new shape replaced it: a full evaluation of every node)."""
    cluster = FakeCluster()
    r = Replica(cluster, [node(f"n{i}", n=8) for i in range(4)], FakeLedgerApi())
    r.decider = r.controller.decider = Decider(r.cache, "fragmentation")
    shapes = [1, 1, 2, 4, 8, 1, 2]
    for i, count in enumerate(shapes):
        cluster.create(gated_pod(f"g{i}", gpus={GPU: count}))
    cpu_only = gated_pod("c0")
    cpu_only["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}}
    cluster.create(cpu_only)
    seen: list[Any] = []
    decide = r.decider.decide

    def spy(demand: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(r.cache.mix())
        return decide(demand, *args, **kwargs)

    monkeypatch.setattr(r.decider, "decide", spy)
    assert r.controller.place_ready().placed == len(shapes) + 1
    assert len(seen) == len(shapes) + 1 and all(m is seen[0] for m in seen)
    counts = sorted(req.count for req, _ in seen[0])
    assert counts == [0, 1, 2, 4, 8]  # every shape of the pass, the CPU-only one as a request of no GPU


def test_warming_ahead_of_the_first_pass_numbers_every_row_then_and_changes_no_placement(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While nothing waits, the controller prepares the kept rows of every node (copy, sums,
    numbered row states), once per set of nodes: the decisions after it number only the rows
    they changed, and every pod lands where it lands without it."""
    numbered: list[int] = []
    slot_keys = verdict_memo._slot_keys
    monkeypatch.setattr(verdict_memo, "_slot_keys", lambda s, at: numbered.append(len(at)) or slot_keys(s, at))

    def place(warm: bool) -> tuple[dict[str, str], list[int]]:
        cluster = FakeCluster()
        r = Replica(cluster, [node(f"n{i}", n=8) for i in range(6)], FakeLedgerApi(), keep_rows_from=4)
        r.decider = r.controller.decider = Decider(r.cache, "fragmentation")
        warms: list[int] = []
        real_warm = r.cache.warm
        monkeypatch.setattr(r.cache, "warm", lambda names: warms.append(len(names)) or real_warm(names))
        if warm:
            r.controller.warm()
            r.controller.warm()  # the same nodes: nothing to do
            assert warms == [6]
        numbered.clear()
        for i, count in enumerate([1, 2, 1, 4, 8, 1]):
            cluster.create(gated_pod(f"g{i}", gpus={GPU: count}))
        assert r.controller.place_ready().placed == 6
        return dict(cluster.schedule()), list(numbered)

    cold, cold_numbered = place(warm=False)
    warm, warm_numbered = place(warm=True)
    assert warm == cold
    assert 6 in cold_numbered and warm_numbered and max(warm_numbered) < 6


def test_a_cpu_only_pod_is_pinned_without_devices_and_holds_its_cpu() -> None:
    cluster = FakeCluster()
    small = node("small", n=1)
    small["status"]["allocatable"] = {"cpu": "4", "memory": "16Gi"}
    big = node("big", n=1)
    big["status"]["allocatable"] = {"cpu": "64", "memory": "256Gi"}
    r = Replica(cluster, [small, big], FakeLedgerApi())
    for name in ("c1", "c2"):
        p = gated_pod(name)
        p["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "3", "memory": "1Gi"}}
        cluster.create(p)
    assert r.controller.place_ready().placed == 2
    bound = dict(cluster.schedule())
    assert bound["c1"] != bound["c2"] or bound["c1"] == "big"  # never two 3-CPU pods on the 4-CPU node
    assert all(contract.DEVICES_ANNOTATION not in p["metadata"]["annotations"] for p in cluster.pods.values())


def test_a_node_at_its_allocatable_pods_takes_no_more_pins() -> None:
    """kube-scheduler's NodeResourcesFit counts pods against allocatable.pods: a pin there would
    leave the pod pending on that node, so the next pod goes to the next node."""
    cluster = FakeCluster()
    small, big = node("a-small", n=8), node("b-big", n=8)
    small["status"]["allocatable"] = {"cpu": "64", "memory": "256Gi", "pods": "2"}
    cluster.create(pod("running", gpus={GPU: 1}, node="a-small", phase="Running"))
    r = Replica(cluster, [small, big], FakeLedgerApi())
    for name in ("p1", "p2"):
        cluster.create(gated_pod(name, gpus={GPU: 1}))
    assert r.controller.place_ready().placed == 2
    assert dict(cluster.schedule()) == {"p1": "a-small", "p2": "b-big"}
    cluster.delete("default", "running")  # room again on a-small
    cluster.create(gated_pod("p3", gpus={GPU: 1}))
    assert r.controller.place_ready().placed == 3
    assert dict(cluster.schedule()) == {"p3": "a-small"}


@pytest.mark.parametrize("change, reason", [
    (lambda p: p["metadata"]["annotations"].__setitem__(contract.GPU_MEMORY_ANNOTATION, "lots"), "cannot be read"),
    (lambda p: p["spec"].__setitem__("volumes", [{"name": "cache", "persistentVolumeClaim": {"claimName": "c"}}]),
     "persistentVolumeClaim"),
    (lambda p: p["spec"].__setitem__("affinity", {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {}}]}}), "podAntiAffinity"),
    (lambda p: p["spec"].__setitem__("topologySpreadConstraints", [{"maxSkew": 1, "topologyKey": "zone"}]),
     "topology spread"),
    (lambda p: p["spec"]["containers"][0].__setitem__("ports", [{"containerPort": 80, "hostPort": 80}]), "host port"),
    (lambda p: p["spec"]["containers"][0]["resources"]["limits"].__setitem__("rdma/hca", "1"), "rdma/hca"),
], ids=["unreadable", "pvc", "anti-affinity", "spread", "host-port", "other-resource"])
def test_what_gate_mode_cannot_evaluate_is_handed_over_at_once(change: Any, reason: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    cluster = FakeCluster()
    r = Replica(cluster, [node("n1", n=1)], FakeLedgerApi())
    p = gated_pod("p", gpus={GPU: 1})
    change(p)
    cluster.create(p)
    with caplog.at_level("INFO", logger="gpupack.placement"):
        assert r.controller.place_ready().handed_over == 1
    spec = cluster.pods[("default", "p")]["spec"]
    assert "schedulingGates" not in spec and "nodeAffinity" not in (spec.get("affinity") or {})
    assert reason in caplog.text and "handed to kube-scheduler as it is" in caplog.text


def test_the_pin_respects_taints_selectors_and_cordons() -> None:
    cluster = FakeCluster()
    tainted, cordoned, other, fine = (node(n, n=4) for n in ("a-tainted", "b-cordoned", "c-other", "d-fine"))
    tainted["spec"]["taints"] = [{"key": "dedicated", "value": "training", "effect": "NoSchedule"}]
    cordoned["spec"]["unschedulable"] = True
    for n in (tainted, cordoned, fine):
        n["metadata"]["labels"] = {"pool": "inference"}
    r = Replica(cluster, [tainted, cordoned, other, fine], FakeLedgerApi())
    p = gated_pod("p", gpus={GPU: 1})
    p["spec"]["nodeSelector"] = {"pool": "inference"}
    cluster.create(p)
    assert r.controller.place_ready().placed == 1
    assert cluster.schedule() == [("p", "d-fine")]
    q = gated_pod("q", gpus={GPU: 1})  # tolerates the taint: a-tainted sorts first and is as good
    q["spec"]["tolerations"] = [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}]
    q["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["inference"]}],
         "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["d-fine"]}]}]}}}
    cluster.create(q)
    assert r.controller.place_ready().placed == 2
    assert cluster.schedule() == [("q", "a-tainted")]


def test_a_pod_changed_under_the_patch_keeps_nothing_and_is_placed_from_its_next_version() -> None:
    cluster = FakeCluster()
    ledger_api = FakeLedgerApi()
    r = Replica(cluster, [node("n1", n=1)], ledger_api)
    cluster.create(gated_pod("g", gpus={GPU: 1}))

    def another_gate(c: FakeCluster, ns: str, name: str) -> None:
        c.before_patch = None
        p = c.pods[(ns, name)]
        p["spec"]["schedulingGates"] = [{"name": GATE}, {"name": "late.io/x"}]  # not allowed, but a change
        p["metadata"]["resourceVersion"] = "7"
        c._emit("MODIFIED", p)

    cluster.before_patch = another_gate
    stats = r.controller.place_ready()
    assert stats.conflicts == 1 and stats.placed == 0
    assert ledger_mod.ledger_name("n1") in ledger_api.maps
    assert not ledger_api.maps[ledger_mod.ledger_name("n1")][0]  # its claim was released
    rows, _, _ = r.cache.select(["n1"])
    assert rows.free[0, 0] == 1  # and its reservation
    assert r.controller.place_ready().placed == 1  # the newer version
    assert cluster.pods[("default", "g")]["spec"]["schedulingGates"] == [{"name": "late.io/x"}]


def test_a_stale_gated_event_after_the_patch_does_not_place_twice() -> None:
    cluster = FakeCluster()
    r = Replica(cluster, [node("n1", n=2)], FakeLedgerApi())
    p = gated_pod("g", gpus={GPU: 1})
    cluster.create(p)
    cluster.lagging = True  # the watch falls behind: the patch's own event comes late
    assert r.controller.place_ready().placed == 1
    # kube-scheduler's status update of the gated pod, written before the patch, delivered after it
    status = copy.deepcopy(p)
    status["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]
    r.tee.apply_event({"type": "MODIFIED", "object": status}, "Pod")
    assert r.controller.waiting() == 0
    assert r.controller.place_ready().placed == 1  # still the one placement
    rows, _, _ = r.cache.select(["n1"])
    assert int(rows.free[0, :2].sum()) == 1  # the reservation held meanwhile
    cluster.deliver()
    cluster.lagging = False
    rows, _, _ = r.cache.select(["n1"])
    assert int(rows.free[0, :2].sum()) == 1  # counted once, from the pod's own placed-on annotation


def test_gated_pods_past_the_queues_bound_are_read_again_as_it_empties(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "MAX_GATED", 2)
    cluster = FakeCluster()
    r = Replica(cluster, [node("n1", n=8)], FakeLedgerApi())
    for i in range(5):
        cluster.create(gated_pod(f"g{i}", gpus={GPU: 1}))
    assert r.controller.waiting() == 2  # three kept by name only
    for _ in range(3):
        r.controller.place_ready()
    assert r.controller.stats.placed == 5 and r.controller.waiting() == 0


def test_two_replicas_place_each_pod_once_and_never_give_a_device_twice() -> None:
    cluster = FakeCluster()
    nodes = [node("n1", n=2), node("n2", n=2)]
    ledger_api = FakeLedgerApi()
    a = Replica(cluster, nodes, ledger_api, "a")
    b = Replica(cluster, nodes, ledger_api, "b")
    cluster.lagging = True  # each replica sees the other's work only when its watch catches up
    for i in range(4):
        cluster.create(gated_pod(f"g{i}", gpus={GPU: 1}))
    cluster.deliver(a.tee, 2)  # a sees g0 and g1, b sees g2 and g3 (say, both just after a restart) ...
    del cluster.queues[id(a.tee)][:], cluster.queues[id(b.tee)][:2]
    cluster.deliver(b.tee)
    a.controller.place_ready()  # ... and neither sees what the other places
    b.controller.place_ready()
    # both chose n1's two GPUs: the ledger gave them to a; b's pods wait for its next pass
    assert sorted(devices_of(cluster)) == ["g0", "g1"]
    assert b.controller.stats.placed == 0
    cluster.lagging = False
    cluster.deliver()
    b.controller.place_ready()
    assert b.controller.stats.placed == 2
    got = devices_of(cluster)
    every = [d for ids in got.values() for d in ids]
    assert len(got) == 4 and len(every) == len(set(every)) == 4
    assert {n for _, n in cluster.schedule()} == {"n1", "n2"}


@settings(max_examples=60, deadline=None)
@given(nodes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       asks=st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=1, max_size=10),
       order=st.lists(st.sampled_from(["a", "b", "schedule", "deliver-a", "deliver-b"]), min_size=1, max_size=16))
def test_property_replicas_never_over_allocate(nodes: list[int], asks: list[tuple[int, bool]], order: list[str]) -> None:
    """Whatever the fleet, the pods (whole GPUs and shares of a GPU of 2 replicas), how far each
    replica's watch lags, and the interleaving of their passes and kube-scheduler's binds: no
    GPU given past its replicas, no pod placed twice, every placed pod bound where pinned."""
    cluster = FakeCluster()
    fleet, capacity = [], {}
    for i, n in enumerate(nodes):
        fleet.append(node(f"n{i}", n=n))
        fleet.append(node(f"s{i}", n=n, resource=contract.NVIDIA_GPU_SHARED, replicas=2))
        capacity.update({f"GPU-n{i}-{j}": 1 for j in range(n)} | {f"GPU-s{i}-{j}": 2 for j in range(n)})
    ledger_api = FakeLedgerApi()
    reps = {"a": Replica(cluster, fleet, ledger_api, "a"), "b": Replica(cluster, fleet, ledger_api, "b")}
    cluster.lagging = True
    for i, (count, shared) in enumerate(asks):
        cluster.create(gated_pod(f"g{i}", gpus={contract.NVIDIA_GPU_SHARED: 1} if shared else {GPU: count}))
    for step in order:
        if step == "schedule":
            cluster.schedule()
        elif step.startswith("deliver-"):
            cluster.deliver(reps[step[-1]].tee)
        else:
            reps[step].controller.place_ready()
    cluster.lagging = False
    cluster.deliver()
    cluster.schedule()
    use: dict[str, int] = {}
    ids_given: list[str] = []
    for p in cluster.pods.values():
        raw = (p["metadata"].get("annotations") or {}).get(contract.DEVICES_ANNOTATION)
        if not raw:
            assert p["spec"].get("schedulingGates") == [{"name": GATE}]  # waits, untouched
            continue
        assert p["spec"]["nodeName"] == p["metadata"]["annotations"][contract.PLACED_ANNOTATION]
        for per in contract.decode_assignment(raw).values():
            for ids in per.values():
                for d in ids:
                    gpu = contract.physical_id(d)
                    assert gpu.split("-")[1] == p["spec"]["nodeName"]
                    use[gpu] = use.get(gpu, 0) + 1
                    ids_given.append(d)
    assert all(n <= capacity[g] for g, n in use.items()), use
    assert len(ids_given) == len(set(ids_given))  # one share replica never given twice


def test_a_pod_both_replicas_place_keeps_the_winners_claim() -> None:
    """Replica b, behind on its watch, places the pod a has just placed: its patch loses, and
    the ledger must keep a's claim, so the next pod b places does not get a's device."""
    cluster = FakeCluster()
    ledger_api = FakeLedgerApi()
    nodes = [node("n1", n=1), node("n2", n=1)]
    now = [0.0]
    a = Replica(cluster, nodes, ledger_api, "a")
    b = Replica(cluster, nodes, ledger_api, "b", clock=lambda: now[0])
    cluster.lagging = True
    cluster.create(gated_pod("g0", gpus={GPU: 1}))
    cluster.deliver()
    a.controller.place_ready()  # g0 -> one GPU; b has not seen it
    cluster.create(gated_pod("g1", gpus={GPU: 1}))
    cluster.create(gated_pod("g2", gpus={GPU: 1}))
    queue = cluster.queues[id(b.tee)]
    cluster.queues[id(b.tee)] = [e for e in queue if e["object"]["metadata"]["name"] != "g0"]
    cluster.deliver(b.tee)
    b.controller.place_ready()  # b decides g0 (again), g1 and g2 on what it believes are two free GPUs
    assert "uid-g0" in ledger_api.maps[ledger_mod.ledger_name("n1")][0]  # a's claim stands
    now[0] = 5.0
    b.controller.place_ready()  # g2 again, b's watch still behind
    got = devices_of(cluster)
    every = [d for ids in got.values() for d in ids]
    assert len(every) == len(set(every)) == len(got) == 2, got
