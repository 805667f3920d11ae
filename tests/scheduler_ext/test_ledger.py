"""One truth across replicas: binds through different extender replicas (each with its own
cache) never give one device to two pods, because every bind claims its devices in the
node's ledger with a compare-and-swap (scheduler_ext/ledger.py).

The replicas here share one fake API server (pods and ConfigMaps with resourceVersions);
their reads of the ledger are forced to interleave (every racer reads before any writes),
which is the race that gave one GPU to two pods before the ledger existed.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from gpupack import contract
from scheduler_ext import ledger as ledger_mod
from scheduler_ext.binder import Binder
from scheduler_ext.cache import ClusterCache, from_objects
from scheduler_ext.decide import Decider

from .conftest import FakePodApi
from tests.fixtures import node, pod

GPU = contract.NVIDIA_GPU
SHARED = contract.NVIDIA_GPU_SHARED


class FakeLedgerApi:
    """ConfigMaps by name with resourceVersions; 409 on a stale write. The first ``together``
    reads wait for each other, so that many racers read the same version."""

    def __init__(self, together: int = 0) -> None:
        self.maps: dict[str, tuple[dict[str, str], int]] = {}
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(together) if together > 1 else None
        self.reads = 0
        self.together = together
        self.writes = 0
        self.conflicts = 0

    def read(self, name: str) -> tuple[dict[str, str], str] | None:
        with self.lock:
            self.reads += 1
            wait = self.barrier is not None and self.reads <= self.together
            found = self.maps.get(name)
            out = (dict(found[0]), str(found[1])) if found else None
        if wait:
            assert self.barrier is not None
            self.barrier.wait(timeout=10)
        return out

    def create(self, name: str, data: dict[str, str]) -> str:
        with self.lock:
            if name in self.maps:
                self.conflicts += 1
                raise ledger_mod.Conflict("already exists")
            self.maps[name] = (dict(data), 1)
            self.writes += 1
            return "1"

    def replace(self, name: str, data: dict[str, str], resource_version: str) -> str:
        with self.lock:
            found = self.maps.get(name)
            if found is None or str(found[1]) != resource_version:
                self.conflicts += 1
                raise ledger_mod.Conflict("the object has been modified")
            self.maps[name] = (dict(data), found[1] + 1)
            self.writes += 1
            return str(found[1] + 1)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def replicas(objs: list[dict[str, Any]], pending: list[dict[str, Any]], n: int, ledger_api: Any,
             clock: Clock | None = None) -> tuple[list[Binder], FakePodApi]:
    """``n`` extender replicas, each with its own cache of ``objs``, over one API server."""
    api = FakePodApi(objs[1:] + pending if objs and objs[0]["kind"] == "Node" else pending)
    binders = []
    for i in range(n):
        cache = from_objects(copy.deepcopy(objs))
        led = ledger_mod.Ledger(ledger_api, f"replica-{i}", clock or Clock()) if ledger_api is not None else None
        binders.append(Binder(api, cache, Decider(cache).policy, led))
    return binders, api


def race(binders: list[Binder], pods: list[str]) -> dict[str, str]:
    """Binds pod i through replica i, all at once; the errors by pod ("" = bound)."""
    out: dict[str, str] = {}
    start = threading.Barrier(len(pods))

    def bind(i: int) -> None:
        start.wait(timeout=10)
        out[pods[i]] = binders[i].bind({"PodName": pods[i], "PodNamespace": "default",
                                        "PodUID": f"uid-{pods[i]}", "Node": "n1"})

    threads = [threading.Thread(target=bind, args=(i,)) for i in range(len(pods))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a bind hung"
    return out


def devices_of(api: FakePodApi, name: str) -> list[str]:
    ann = api.read_pod("default", name)["metadata"].get("annotations", {}).get(contract.DEVICES_ANNOTATION)
    if ann is None:
        return []
    return [d for per in contract.decode_assignment(ann).values() for ids in per.values() for d in ids]


def one_gpu_used() -> list[dict[str, Any]]:
    return [node("n1", n=2), pod("a", gpus={GPU: 1}, node="n1", phase="Running", devices={"c0": {GPU: ["GPU-n1-0"]}})]


def test_without_the_ledger_two_replicas_give_one_gpu_to_two_pods() -> None:
    # the finding this module fixes: each replica's cache sees the one free GPU, both bind
    binders, api = replicas(one_gpu_used(), [pod(f"p{i}", gpus={GPU: 1}) for i in range(2)], 2, None)
    errors = race(binders, ["p0", "p1"])
    assert errors == {"p0": "", "p1": ""}
    assert devices_of(api, "p0") == devices_of(api, "p1") == ["GPU-n1-1"]


def test_two_replicas_racing_for_the_last_gpu_bind_one_pod() -> None:
    led = FakeLedgerApi(together=2)
    binders, api = replicas(one_gpu_used(), [pod(f"p{i}", gpus={GPU: 1}) for i in range(2)], 2, led)
    errors = race(binders, ["p0", "p1"])
    winners = [p for p, e in errors.items() if e == ""]
    assert len(winners) == 1, errors
    loser = ({"p0", "p1"} - set(winners)).pop()
    assert "no room left on n1" in errors[loser]
    assert devices_of(api, winners[0]) == ["GPU-n1-1"] and devices_of(api, loser) == []
    assert [b[1] for b in api.bindings] == winners
    assert led.conflicts >= 1  # both read the same version: one write lost and read again


@pytest.mark.parametrize("n", [2, 3])
def test_replicas_racing_for_free_gpus_get_distinct_ones(n: int) -> None:
    # n racers, n free GPUs: without the ledger every replica's kernel picks the same GPU
    led = FakeLedgerApi(together=n)
    pods = [f"p{i}" for i in range(n)]
    binders, api = replicas([node("n1", n=n)], [pod(p, gpus={GPU: 1}) for p in pods], n, led)
    errors = race(binders, pods)
    assert set(errors.values()) == {""}
    given = [d for p in pods for d in devices_of(api, p)]
    assert sorted(given) == [f"GPU-n1-{i}" for i in range(n)]


def test_three_replicas_two_free_gpus_never_one_twice() -> None:
    led = FakeLedgerApi(together=3)
    pods = ["p0", "p1", "p2"]
    binders, api = replicas([node("n1", n=2)], [pod(p, gpus={GPU: 1}) for p in pods], 3, led)
    errors = race(binders, pods)
    bound = [p for p, e in errors.items() if e == ""]
    assert len(bound) == 2
    given = [d for p in bound for d in devices_of(api, p)]
    assert sorted(given) == ["GPU-n1-0", "GPU-n1-1"]


def test_shares_through_two_replicas_get_distinct_replicas() -> None:
    led = FakeLedgerApi(together=2)
    binders, api = replicas([node("n1", n=1, resource=SHARED, replicas=4)],
                            [pod(f"s{i}", gpus={SHARED: 1}) for i in range(2)], 2, led)
    errors = race(binders, ["s0", "s1"])
    assert set(errors.values()) == {""}
    assert sorted(devices_of(api, "s0") + devices_of(api, "s1")) == [contract.share_id("GPU-n1-0", r) for r in (0, 1)]


def test_a_claim_expires_and_a_retried_pod_reuses_its_own() -> None:
    led, clock = FakeLedgerApi(), Clock()
    ledger = ledger_mod.Ledger(led, "r0", clock, claim_seconds=60)
    gpu0 = {"c0": {GPU: ["GPU-n1-0"]}}
    assert ledger.claim("n1", "uid-a", "default/a", gpu0, 0).ok
    # another pod cannot claim GPU 0 while a's claim lives ...
    blocked = ledger.claim("n1", "uid-b", "default/b", gpu0, 0)
    assert not blocked.ok and set(blocked.taken) == {"uid-a"} and blocked.taken["uid-a"].pod == "default/a"
    # ... a retried bind of a itself may (its old claim is replaced, not counted)
    assert ledger.claim("n1", "uid-a", "default/a", gpu0, 0).ok
    # 60 s on, a's claim is gone from the count and dropped from the ConfigMap at the next write
    clock.now += 60
    assert ledger.claim("n1", "uid-b", "default/b", gpu0, 0).ok
    data, _ = led.maps[ledger_mod.ledger_name("n1")]
    assert set(data) == {"uid-b"}


def test_a_failed_bind_releases_its_claim() -> None:
    led = FakeLedgerApi()

    class NoBinding(FakePodApi):
        def create_binding(self, namespace: str, name: str, uid: str, node: str) -> None:
            raise RuntimeError("the API server went away")

    objs = [node("n1", n=1)]
    api = NoBinding([pod("p0", gpus={GPU: 1})])
    cache: ClusterCache = from_objects(objs)
    binder = Binder(api, cache, Decider(cache).policy, ledger_mod.Ledger(led, "r0", Clock()))
    error = binder.bind({"PodName": "p0", "PodNamespace": "default", "PodUID": "uid-p0", "Node": "n1"})
    assert "the API server went away" in error
    data, _ = led.maps[ledger_mod.ledger_name("n1")]
    assert data == {}  # nothing left claimed
    rows, _, _ = cache.select(["n1"])
    assert rows.free[0, 0] == 1  # nor reserved in the cache


def test_the_ledger_names_every_node_validly() -> None:
    assert ledger_mod.ledger_name("gpu-node-1") == "gpupack-node-gpu-node-1"
    long = ledger_mod.ledger_name("n" * 250)
    assert long.startswith("gpupack-node-") and len(long) <= 253
    assert ledger_mod.ledger_name("Upper_Case") != ledger_mod.ledger_name("upper_case")


@pytest.mark.parametrize("text", ["", "{", "[]", '{"pod": "a"}', '{"pod": "a", "devices": 3, "at": 1}',
                                  '{"pod": "a", "devices": {"c": {"r": [1]}}, "at": 1}'])
def test_an_unreadable_claim_is_not_counted(text: str) -> None:
    assert ledger_mod.Claim.decode(text) is None


def bind_then_watch(binder: Binder, api: FakePodApi, name: str, given: contract.Assignment | None = None) -> str:
    """Binds pod ``name`` to n1; then the watch shows it bound, with ``given`` in its annotation
    where the kubelet gave other devices than chosen (the plugin's correction). Returns the
    devices chosen, or the bind's error."""
    error = binder.bind({"PodName": name, "PodNamespace": "default", "PodUID": f"uid-{name}", "Node": "n1"})
    if error:
        return error
    obj = api.read_pod("default", name)
    chosen = devices_of(api, name)
    if given is not None:
        obj["metadata"]["annotations"][contract.DEVICES_ANNOTATION] = contract.encode_assignment(given)
    obj["status"]["phase"] = "Running"
    binder.cache.upsert_pod(obj)
    return ",".join(chosen)


def test_a_claim_the_plugin_corrected_does_not_block_the_device_it_names() -> None:
    # The mixed-fleet e2e failure: the kubelet gave share s0 another replica than the one
    # claimed and the plugin corrected its annotation. The cache then sees the claimed replica
    # free and chooses it for s1; the claim, which protects a device s0 does not hold, made
    # every bind round fail for CLAIM_SECONDS ("kept being claimed by other replicas").
    led = FakeLedgerApi()
    binders, api = replicas([node("n1", n=1, resource=SHARED, replicas=4)],
                            [pod(f"s{i}", gpus={SHARED: 1}) for i in range(2)], 1, led)
    replica0, replica3 = (contract.share_id("GPU-n1-0", r) for r in (0, 3))
    first = bind_then_watch(binders[0], api, "s0", given={"c0": {SHARED: [replica3]}})
    assert first == replica0
    assert bind_then_watch(binders[0], api, "s1") == replica0  # truly free: s0 holds replica 3
    data, _ = led.maps[ledger_mod.ledger_name("n1")]
    assert set(data) == {"uid-s1"}  # s0's superseded claim was dropped on that write


def test_a_bound_pods_claim_that_matches_its_annotation_still_counts() -> None:
    # A replica whose watch lags behind would see the device free but for the claim: a claim
    # the annotation confirms stays, and the device goes to nobody else.
    led = FakeLedgerApi()
    objs: list[dict[str, Any]] = [node("n1", n=2)]
    binders, api = replicas(objs, [pod(f"p{i}", gpus={GPU: 1}) for i in range(2)], 2, led)
    assert bind_then_watch(binders[0], api, "p0") == "GPU-n1-0"
    # replica 1 has not seen p0 bound: its kernel picks GPU 0, the claim sends it to GPU 1
    assert bind_then_watch(binders[1], api, "p1") == "GPU-n1-1"
    data, _ = led.maps[ledger_mod.ledger_name("n1")]
    assert set(data) == {"uid-p0", "uid-p1"}



# --- writing on what this replica wrote last ---------------------------------------------------


def _assignment(gpu: str) -> contract.Assignment:
    return {"c0": {GPU: [gpu]}}


def test_a_burst_on_one_node_reads_its_ledger_once() -> None:
    # the first claim reads (404) and creates; each later one writes on the version it wrote
    api, clock = FakeLedgerApi(), Clock()
    led = ledger_mod.Ledger(api, "r1", clock)
    for i in range(5):
        assert led.claim("n1", f"u{i}", f"ns/p{i}", _assignment(f"GPU-{i}"), 0).ok
    assert (api.reads, api.writes, api.conflicts) == (1, 5, 0)
    assert set(api.maps["gpupack-node-n1"][0]) == {f"u{i}" for i in range(5)}


def test_another_replicas_write_in_between_is_read_and_counted() -> None:
    api, clock = FakeLedgerApi(), Clock()
    mine, other = ledger_mod.Ledger(api, "r1", clock), ledger_mod.Ledger(api, "r2", clock)
    assert mine.claim("n1", "u1", "ns/p1", _assignment("GPU-1"), 0).ok
    assert other.claim("n1", "u2", "ns/p2", _assignment("GPU-2"), 0).ok  # reads, writes version 2
    # r1's guess (version 1) is stale: 409, then it reads and sees u2's claim on GPU-2
    out = mine.claim("n1", "u3", "ns/p3", _assignment("GPU-2"), 0)
    assert not out.ok and set(out.taken) == {"u2"}
    assert api.conflicts == 1
    assert mine.claim("n1", "u3", "ns/p3", _assignment("GPU-3"), 0).ok
    assert set(api.maps["gpupack-node-n1"][0]) == {"u1", "u2", "u3"}


def test_a_claim_in_the_guess_is_read_again_before_it_counts() -> None:
    # r1 remembers u1 on GPU-1; r2 released it meanwhile: the guess shows GPU-1 taken, but only
    # what the API says now counts, so u2 gets GPU-1
    api, clock = FakeLedgerApi(), Clock()
    mine, other = ledger_mod.Ledger(api, "r1", clock), ledger_mod.Ledger(api, "r2", clock)
    assert mine.claim("n1", "u1", "ns/p1", _assignment("GPU-1"), 0).ok
    other.release("n1", "u1")
    assert mine.claim("n1", "u2", "ns/p2", _assignment("GPU-1"), 0).ok
    assert set(api.maps["gpupack-node-n1"][0]) == {"u2"}


def test_what_is_remembered_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_mod, "KNOWN_LEDGERS", 3)
    api, clock = FakeLedgerApi(), Clock()
    led = ledger_mod.Ledger(api, "r1", clock)
    for i in range(6):
        assert led.claim(f"n{i}", f"u{i}", f"ns/p{i}", _assignment("GPU-0"), 0).ok
    assert list(led._known) == ["gpupack-node-n3", "gpupack-node-n4", "gpupack-node-n5"]
