"""Provisional holds: after prioritize, the devices a pod would get on the node ranked first
are held for it, so the next pods of a burst are decided against them, until its bind
replaces the hold, a binding or deletion event releases it, or it expires. Time is the
cache's injected clock, moved by hand."""

from __future__ import annotations

import json
from typing import Any

from gpupack import contract
from scheduler_ext.binder import Binder
from scheduler_ext.cache import ClusterCache
from scheduler_ext.decide import Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.server import ExtenderApp
from scheduler_ext.podspec import pod_demand

from .conftest import FakePodApi, cluster_objects
from tests.fixtures import gpu, node, pod

NAMES = ["n-full", "n-half", "n-empty", "n-cpu"]
WANT2 = pod("want2", gpus={contract.NVIDIA_GPU: 2})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def setup(holds: bool = True) -> tuple[ClusterCache, Decider, Clock]:
    clock = Clock()
    cache = ClusterCache(clock=clock, hold_seconds=5.0)
    objs = cluster_objects()
    cache.replace_all([o for o in objs if o["kind"] == "Node"], [o for o in objs if o["kind"] == "Pod"])
    return cache, Decider(cache, "binpack", holds=holds), clock


def free(cache: ClusterCache, name: str) -> list[int]:
    rows, _ = cache.select_positions([name])
    return rows.free[0, :4].tolist()


def decide(d: Decider, p: dict[str, Any]) -> list[str]:
    """filter then prioritize, as kube-scheduler calls them; the fitting nodes."""
    demand = pod_demand(p)
    names = d.filter(demand, NAMES).fitting_names
    d.prioritize(demand, names)
    return names


def test_prioritize_holds_the_devices_on_the_first_node() -> None:
    cache, d, _ = setup()
    # binpack ranks n-half (2 of 4 used) first for 2 GPUs; its two free GPUs are held
    assert decide(d, WANT2) == ["n-half", "n-empty"]
    assert cache.held("uid-want2") == "n-half"
    assert free(cache, "n-half") == [0, 0, 0, 0]
    # the next pod of the burst sees them taken ...
    other = d.filter(pod_demand(pod("next", gpus={contract.NVIDIA_GPU: 1})), NAMES)
    assert other.fitting_names == ["n-empty"]
    # ... the pod itself does not: its own hold is not capacity taken from it
    assert d.filter(pod_demand(WANT2), NAMES).fitting_names == ["n-half", "n-empty"]
    assert d.prioritize(pod_demand(WANT2), ["n-half", "n-empty"]).tolist() == [10, 0]


def test_a_hold_expires_by_the_clock() -> None:
    cache, d, clock = setup()
    decide(d, WANT2)
    clock.now += 4.9
    assert cache.held("uid-want2") == "n-half"
    clock.now += 0.1
    assert cache.held("uid-want2") == ""
    assert free(cache, "n-half") == [0, 0, 1, 1]


def test_bind_replaces_the_hold_on_the_same_or_another_node() -> None:
    for target, left in (("n-half", [0, 0, 0, 0]), ("n-empty", [0, 0, 1, 1])):
        cache, d, clock = setup()
        api = FakePodApi([o for o in cluster_objects() if o["kind"] == "Pod"] + [WANT2])
        decide(d, WANT2)
        binder = Binder(api, cache, d.policy)
        assert binder.bind({"PodName": "want2", "PodNamespace": "default", "PodUID": "uid-want2", "Node": target}) == ""
        assert cache.held("uid-want2") == ""  # a reservation now, not a hold
        assert free(cache, "n-half") == left
        clock.now += 60  # no expiry for a real reservation
        assert free(cache, "n-half") == left
        assert sum(free(cache, "n-empty")) == (4 if target == "n-half" else 2)


def test_binding_event_elsewhere_and_deletion_release_the_hold() -> None:
    cache, d, _ = setup()
    decide(d, WANT2)
    bound = pod("want2", gpus={contract.NVIDIA_GPU: 2}, node="n-empty",
                devices={"c0": {contract.NVIDIA_GPU: ["GPU-n-empty-0", "GPU-n-empty-1"]}})
    cache.apply_event({"type": "MODIFIED", "object": bound})  # bound by another scheduler
    assert cache.held("uid-want2") == ""
    assert free(cache, "n-half") == [0, 0, 1, 1] and free(cache, "n-empty") == [0, 0, 1, 1]

    cache, d, _ = setup()
    decide(d, WANT2)
    cache.apply_event({"type": "MODIFIED", "object": WANT2})  # still pending: the hold stays
    assert cache.held("uid-want2") == "n-half"
    cache.apply_event({"type": "DELETED", "object": WANT2})
    assert cache.held("uid-want2") == ""
    assert free(cache, "n-half") == [0, 0, 1, 1]


def test_a_second_prioritize_moves_the_hold() -> None:
    cache, d, _ = setup()
    decide(d, WANT2)
    d.prioritize(pod_demand(WANT2), ["n-empty"])  # a retry that only has n-empty left
    assert cache.held("uid-want2") == "n-empty"
    assert free(cache, "n-half") == [0, 0, 1, 1] and sum(free(cache, "n-empty")) == 2


def test_no_hold_when_off_for_cpu_pods_or_when_nothing_fits() -> None:
    cache, d, _ = setup(holds=False)
    decide(d, WANT2)
    assert cache.held("uid-want2") == ""
    cache, d, _ = setup()
    decide(d, pod("web", gpus={}))
    assert cache.held("uid-web") == ""
    decide(d, pod("huge", gpus={contract.NVIDIA_GPU: 8}))
    assert cache.held("uid-huge") == "" and free(cache, "n-empty") == [1, 1, 1, 1]


def test_a_burst_is_decided_against_the_pods_ahead_of_it() -> None:
    # two pods of 2 GPUs scored before either bind arrives: n-half has room for one of them
    for holds, second in ((False, "n-half"), (True, "n-empty")):
        cache, d, _ = setup(holds=holds)
        firsts = []
        for name in ("a2", "b2"):
            demand = pod_demand(pod(name, gpus={contract.NVIDIA_GPU: 2}))
            names = d.filter(demand, NAMES).fitting_names
            levels = d.prioritize(demand, names).tolist()
            firsts.append(names[levels.index(max(levels))])
        # without holds both rank n-half first and one bind must fail; with them, b2 goes on
        assert firsts == ["n-half", second]


def test_holds_are_counted_in_metrics() -> None:
    from scheduler_ext.metrics import Metrics

    cache, d, clock = setup()
    metrics = Metrics(cache)
    decide(d, WANT2)
    assert b"gpupack_cache_provisional_holds 1.0" in metrics.exposition()
    clock.now += 5
    assert b"gpupack_cache_provisional_holds 0.0" in metrics.exposition()


def test_binds_are_counted_by_whether_they_went_to_the_held_node() -> None:
    """``gpupack_extender_binds_total{on=...}`` tells an operator how often kube-scheduler
    follows the node gpupack named (and held devices on) at prioritize."""
    def binds(app: ExtenderApp) -> dict[str, float]:
        text = app.metrics.exposition().decode()
        return {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("gpupack_extender_binds_total{")}

    for holds, target, want in ((True, "n-half", "held-node"), (True, "n-empty", "other-node"), (False, "n-half", "no-hold")):
        cache, d, _ = setup(holds=holds)
        api = FakePodApi([o for o in cluster_objects() if o["kind"] == "Pod"] + [WANT2])
        app = ExtenderApp(cache, d, Binder(api, cache, d.policy), Metrics(cache))
        decide(d, WANT2)
        body = json.dumps({"PodName": "want2", "PodNamespace": "default", "PodUID": "uid-want2", "Node": target})
        assert json.loads(app.handle_post("/bind", body.encode()).body) == {"Error": ""}
        assert binds(app) == {want: 1.0}
        # a failed bind counts nowhere
        failed = json.dumps({"PodName": "gone", "PodNamespace": "default", "PodUID": "uid-gone", "Node": target})
        assert json.loads(app.handle_post("/bind", failed.encode()).body)["Error"]
        assert binds(app) == {want: 1.0}


def test_levels_and_the_hold_rank_only_nodes_that_fit_every_resource() -> None:
    """A pod of two resources: a node that fits the leading one (NVIDIA) but lost its AMD device
    between filter and prioritize gets 0, and the node that still fits both is named and held."""
    amd = contract.AMD_GPU
    cache = ClusterCache()
    cache.replace_all([node("a", [gpu("a", 0), gpu("a", 1), gpu("a", 2, resource=amd, vendor="amd")]),
                       node("b", [gpu("b", i) for i in range(4)] + [gpu("b", 4, resource=amd, vendor="amd")])], [])
    d = Decider(cache, "binpack", holds=True)
    want = pod_demand(pod("p", gpus={contract.NVIDIA_GPU: 2, amd: 1}))
    assert d.filter(want, ["a", "b"]).fitting_names == ["a", "b"]
    cache.apply_event({"type": "ADDED", "object": pod("q", gpus={amd: 1}, node="a", phase="Running",
                                                      devices={"c0": {amd: ["GPU-a-2"]}})})
    assert d.prioritize(want, ["a", "b"]).tolist() == [0, 10]
    assert cache.held("uid-p") == "b"
    named = [v for v in d.verdicts(want, ["a", "b"]) if "named node" in v.reason]
    assert [(v.node, v.fits) for v in named] == [("b", True)]
