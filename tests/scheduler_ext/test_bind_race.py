"""Concurrent binds for the last free GPU: exactly one wins, over real HTTP."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from gpupack import contract
from scheduler_ext import ledger
from scheduler_ext.binder import Binder
from scheduler_ext.cache import from_objects
from scheduler_ext.decide import Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.server import ExtenderApp, serve

from .conftest import Client, FakePodApi
from tests.fixtures import node, pod

RACERS = 8


def test_last_free_gpu_goes_to_exactly_one() -> None:
    objs = [node("n1", n=2), pod("a", gpus={contract.NVIDIA_GPU: 1}, node="n1", phase="Running",
                                   devices={"c0": {contract.NVIDIA_GPU: ["GPU-n1-0"]}})]
    pending = [pod(f"p{i}", gpus={contract.NVIDIA_GPU: 1}) for i in range(RACERS)]
    cache = from_objects(objs)
    api = FakePodApi([objs[1], *pending])
    decider = Decider(cache)
    app = ExtenderApp(cache, decider, Binder(api, cache, decider.policy), Metrics(cache))
    srv, thread = serve(app, "127.0.0.1", 0)
    client = Client(srv)
    start = threading.Barrier(RACERS)
    errors: dict[str, str] = {}

    def bind(i: int) -> None:
        start.wait()
        _, body = client.post("/bind", {"PodName": f"p{i}", "PodNamespace": "default", "PodUID": f"uid-p{i}", "Node": "n1"})
        errors[f"p{i}"] = body["Error"]

    threads = [threading.Thread(target=bind, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    srv.shutdown()
    srv.server_close()
    thread.join()
    winners = [p for p, e in errors.items() if e == ""]
    assert len(winners) == 1
    assert all("no room left on n1" in e for p, e in errors.items() if p not in winners)
    assert api.bindings == [("default", winners[0], "n1")]
    ann = api.read_pod("default", winners[0])["metadata"]["annotations"][contract.DEVICES_ANNOTATION]
    assert contract.decode_assignment(ann) == {"c0": {contract.NVIDIA_GPU: ["GPU-n1-1"]}}
    # the losers hold nothing: releasing the winner's reservation frees the GPU again
    cache.release(f"uid-{winners[0]}")
    rows, _, _ = cache.select(["n1"])
    assert rows.free[0, :2].tolist() == [0, 1]


def test_shares_racing_get_distinct_replicas() -> None:
    objs = [node("n1", n=1, resource=contract.NVIDIA_GPU_SHARED, replicas=4)]
    pending = [pod(f"s{i}", gpus={contract.NVIDIA_GPU_SHARED: 1}) for i in range(6)]
    cache = from_objects(objs)
    api = FakePodApi(pending)
    binder = Binder(api, cache, Decider(cache).policy)
    start = threading.Barrier(6)
    results: dict[int, str] = {}

    def bind(i: int) -> None:
        start.wait()
        results[i] = binder.bind({"PodName": f"s{i}", "PodNamespace": "default", "PodUID": f"uid-s{i}", "Node": "n1"})

    threads = [threading.Thread(target=bind, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for e in results.values() if e == "") == 4
    ids = sorted(
        contract.decode_assignment(api.read_pod("default", f"s{i}")["metadata"]["annotations"][contract.DEVICES_ANNOTATION])
        ["c0"][contract.NVIDIA_GPU_SHARED][0]
        for i, e in results.items() if e == ""
    )
    assert ids == [contract.share_id("GPU-n1-0", r) for r in range(4)]


class LedgerWithAWinner:
    """A node ledger in which another replica's pod ``winner`` already holds ``device``; its
    bound event reaches this replica's watch while this replica's own claim is in flight (as
    it did in CI under load), so for a moment two records in the cache hold one device."""

    def __init__(self, cache: Any, winner: dict[str, Any], device: str, resource: str) -> None:
        self.cache, self.winner, self.device, self.resource = cache, winner, device, resource
        self.claims: list[list[str]] = []

    def claim(self, node: str, uid: str, pod: str, devices: contract.Assignment, memory_mib: int,
              superseded: Any = None) -> ledger.Outcome:
        ids = sorted(d for per in devices.values() for got in per.values() for d in got)
        self.claims.append(ids)
        if self.device not in ids:
            return ledger.Outcome(True)
        self.cache.apply_event({"type": "MODIFIED", "object": self.winner}, "Pod")
        held = ledger.Claim("default/winner", {"c0": {self.resource: [self.device]}}, 0, 0.0, "r2")
        return ledger.Outcome(False, taken={"uid-winner": held})

    def release(self, node: str, uid: str) -> None:
        return None


@pytest.mark.parametrize("resource, replicas, device, other", [
    (contract.NVIDIA_GPU_SHARED, 4, contract.share_id("GPU-n1-0", 0), contract.share_id("GPU-n1-0", 1)),
    (contract.NVIDIA_GPU, 1, "GPU-n1-0", "GPU-n1-1"),
], ids=["share", "whole-gpu"])
def test_a_device_another_replica_won_stays_taken_when_this_bind_lets_go_of_it(
    resource: str, replicas: int, device: str, other: str,
) -> None:
    """The CI failure of 2026-12-03: this replica reserved ``device`` for its pod, the claim
    lost to another replica's pod, whose bound event arrived meanwhile, so two records held
    ``device``; releasing this pod's reservation freed ``device`` in the cache, and every
    round chose it again until the bind gave up. Now the next round chooses ``other``."""
    objs = [node("n1", n=1 if replicas > 1 else 2, resource=resource, replicas=replicas)]
    cache = from_objects(objs)
    winner = pod("winner", gpus={resource: 1}, node="n1", phase="Pending", devices={"c0": {resource: [device]}})
    mine = pod("mine", gpus={resource: 1})
    fake = LedgerWithAWinner(cache, winner, device, resource)
    binder = Binder(FakePodApi([mine]), cache, Decider(cache).policy, ledger=fake)
    error = binder.bind({"PodName": "mine", "PodNamespace": "default", "PodUID": "uid-mine", "Node": "n1"})
    assert error == ""
    assert fake.claims == [[device], [other]]
    rec = cache.pod("uid-winner")
    assert rec is not None and not rec.reserved
    rows, _, _ = cache.select(["n1"])
    assert int(rows.free[0].sum()) == (replicas - 2 if replicas > 1 else 0)
