"""Prioritize reuses the scores filter computed for the same pod while the cache is unchanged,
and decides afresh after any change: a stale memo is a wrong ranking."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gpupack import contract
from scheduler_ext import decide
from scheduler_ext.cache import ClusterCache, from_objects
from scheduler_ext.decide import Decider
from scheduler_ext.podspec import pod_demand

from .conftest import cluster_objects
from tests.fixtures import node, pod

NAMES = ["n-full", "n-half", "n-empty", "n-cpu"]
WANT1 = pod_demand(pod("want1", gpus={contract.NVIDIA_GPU: 1}))


def counting(decider: Decider) -> list[int]:
    """Counts calls of ``decider.decide`` from now on."""
    calls = [0]
    inner = decider.decide

    def wrapped(*args: Any, **kw: Any) -> decide.Decision:
        calls[0] += 1
        return inner(*args, **kw)

    decider.decide = wrapped  # type: ignore[method-assign]
    return calls


def fresh(cache: ClusterCache, policy: str, names: list[str]) -> list[int]:
    """What prioritize answers with no memo: a new decider over the same cache."""
    return Decider(cache, policy).decide(WANT1, names, reasons=False).level.tolist()


@pytest.mark.parametrize("policy", ["binpack", "fragmentation"])
def test_prioritize_reuses_the_filter_scores(policy: str) -> None:
    cache = from_objects(cluster_objects())
    d = Decider(cache, policy)
    f = d.filter(WANT1, NAMES)
    assert f.fitting_names == ["n-half", "n-empty"]
    calls = counting(d)
    # binpack: n-half has 2 of 4 GPUs used (partly used GPUs are none, node half full) -> 10;
    # n-empty -> 0 (two distinct raw values: 10 and 0)
    levels = d.prioritize(WANT1, f.fitting_names).tolist()
    assert calls == [0]
    assert levels == fresh(cache, policy, f.fitting_names)
    # another order, and a subset, from the same memo
    assert d.prioritize(WANT1, ["n-empty", "n-half"]).tolist() == levels[::-1]
    assert d.prioritize(WANT1, ["n-empty"]).tolist() == [10]  # alone, it is the best
    assert calls == [0]


def _pod_lands_on_empty(c: ClusterCache) -> None:
    c.apply_event({"type": "ADDED", "object": pod(
        "x", gpus={contract.NVIDIA_GPU: 2}, node="n-empty", phase="Running",
        devices={"c0": {contract.NVIDIA_GPU: ["GPU-n-empty-0", "GPU-n-empty-1"]}})})


def _pod_on_half_deleted(c: ClusterCache) -> None:
    c.apply_event({"type": "DELETED", "object": pod("b", gpus={contract.NVIDIA_GPU: 2}, node="n-half")})


def _reservation_on_empty(c: ClusterCache) -> None:
    c.reserve(pod_demand(pod("r", gpus={contract.NVIDIA_GPU: 2})), "n-empty",
              {"c0": {contract.NVIDIA_GPU: ["GPU-n-empty-0", "GPU-n-empty-1"]}})


def _node_half_shrinks(c: ClusterCache) -> None:
    c.apply_event({"type": "MODIFIED", "object": node("n-half", n=2)})


def _node_half_deleted(c: ClusterCache) -> None:
    c.apply_event({"type": "DELETED", "object": node("n-half", n=4)})


CHANGES: list[tuple[str, Callable[[ClusterCache], None]]] = [
    # n-empty gets 2 of 4 used: it ties with n-half -> both 10 (stale: n-empty 0)
    ("pod-event", _pod_lands_on_empty),
    # n-half empties: both empty -> both 10 (stale: n-half 10, n-empty 0)
    ("pod-deleted", _pod_on_half_deleted),
    ("reserve", _reservation_on_empty),
    # n-half now has 2 GPUs, both held by pod b: it no longer fits -> n-half 0, n-empty 10
    ("node-modified", _node_half_shrinks),
    ("node-deleted", _node_half_deleted),
]


@pytest.mark.parametrize("change", [c for _, c in CHANGES], ids=[i for i, _ in CHANGES])
def test_a_cache_change_in_between_is_seen(change: Callable[[ClusterCache], None]) -> None:
    cache = from_objects(cluster_objects())
    d = Decider(cache, "binpack")
    names = d.filter(WANT1, NAMES).fitting_names
    before = fresh(cache, "binpack", names)
    change(cache)
    after = fresh(cache, "binpack", names)
    assert after != before  # each change alters the answer, so a stale memo would show
    calls = counting(d)
    assert d.prioritize(WANT1, names).tolist() == after
    assert calls == [1]


def test_release_of_a_reservation_is_seen() -> None:
    cache = from_objects(cluster_objects())
    _reservation_on_empty(cache)
    d = Decider(cache, "binpack")
    names = d.filter(WANT1, NAMES).fitting_names
    cache.release("uid-r")
    assert d.prioritize(WANT1, names).tolist() == fresh(cache, "binpack", names) == [10, 0]


def test_a_new_shape_in_the_mix_is_seen_by_fragmentation() -> None:
    cache = from_objects(cluster_objects())
    d = Decider(cache, "fragmentation")
    names = d.filter(WANT1, NAMES).fitting_names
    generation = cache.generation
    # another pod's filter adds its shape (4 GPUs) to the mix the scores were computed under
    d.filter(pod_demand(pod("big", gpus={contract.NVIDIA_GPU: 4})), NAMES)
    assert cache.generation != generation
    calls = counting(d)
    d.prioritize(WANT1, names)
    assert calls == [1]


def test_another_request_under_the_same_uid_is_decided_afresh() -> None:
    cache = from_objects(cluster_objects())
    d = Decider(cache, "binpack")
    names = d.filter(WANT1, NAMES).fitting_names
    calls = counting(d)
    bigger = pod_demand(pod("want1", gpus={contract.NVIDIA_GPU: 4}))  # same uid, other request
    assert d.prioritize(bigger, names).tolist() == [0, 10]  # only n-empty fits 4
    assert calls == [1]


def test_unknown_names_in_prioritize_are_decided_afresh() -> None:
    cache = from_objects(cluster_objects())
    d = Decider(cache, "binpack")
    d.filter(WANT1, ["n-half"])
    calls = counting(d)
    assert d.prioritize(WANT1, ["n-half", "n-empty"]).tolist() == [10, 0]
    assert calls == [1]


def test_the_memo_is_bounded() -> None:
    cache = from_objects(cluster_objects())
    d = Decider(cache, "binpack")
    for i in range(3 * decide.MEMO_PODS):
        d.filter(pod_demand(pod(f"p{i}", gpus={contract.NVIDIA_GPU: 1})), NAMES)
    assert len(d._memo) == decide.MEMO_PODS
    assert list(d._memo)[-1] == f"uid-p{3 * decide.MEMO_PODS - 1}"
