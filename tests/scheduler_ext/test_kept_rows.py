"""The cache keeps a copy of the rows of a candidate list it sees again and re-copies only the
rows changed since: whatever happened in between, what a request reads must equal a fresh copy."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy
import pytest

from gpupack import contract
from scheduler_ext.cache import ClusterCache
from scheduler_ext.decide import Decider
from gpupack import kernel
from gpupack.kernel.node_sums import before_sums
from gpupack.kernel.verdict_memo import SubsetView
from gpupack.kernel.slots import Request, Slots
from scheduler_ext.podspec import pod_demand

from tests.fixtures import node, pod


def as_lists(rows: Slots) -> dict[str, Any]:
    return {f.name: getattr(rows, f.name).tolist() for f in dataclasses.fields(rows)}


def in_name_order(rows: Slots, pos: numpy.ndarray[Any, Any]) -> dict[str, Any]:
    """Rows and positions in the order of the request's names (a kept copy of the same rows
    listed in another order comes in its own order, with the positions mapped)."""
    order = numpy.argsort(pos, kind="stable")
    return {"pos": pos[order].tolist(), **as_lists(rows.rows(order))}


def read(cache: ClusterCache, names: list[str], exclude: str = "") -> dict[str, Any]:
    with cache.rows_of(names, exclude) as (rows, pos, _):
        return in_name_order(rows, pos)


def memo_matches(cache: ClusterCache, names: list[str], parts: list[Request], exclude: str = "") -> bool:
    """The kept per-node sums equal those of a fresh copy (exactly: same floats)."""
    with cache.rows_of(names, exclude) as (rows, _, memo):
        if memo is None:
            return True
        kept = memo.sums.get(rows, parts, numpy)
    want = before_sums(cache.select_positions(names, exclude)[0], parts, numpy)
    same = [numpy.array_equal(getattr(kept, f), getattr(want, f)) for f in ("total_idle", "used_weight", "total_weight")]
    same += [numpy.array_equal(kept.parts[g][i], want.parts[g][i]) for g in parts for i in (0, 1, 2, 3)]
    return all(same)


def fresh(cache: ClusterCache, names: list[str], exclude: str = "") -> dict[str, Any]:
    """A copy made afresh, the slow way, with no list kept: what every read must equal."""
    state = cache._candidates._state
    with state.lock:
        idx = numpy.array([state.row_of.get(n, -1) for n in names], dtype=numpy.int64)
        pos = numpy.nonzero(idx >= 0)[0]
        rows = state.arrays.rows(idx[pos])
        if exclude in cache._candidates._holds:
            cache._candidates._holds.free_in_copy(rows, idx[pos], exclude)
    return {"pos": pos.tolist(), **as_lists(rows)}


def step(cache: ClusterCache, rng: random.Random, i: int) -> None:
    """One random change of any kind the cache knows."""
    n = f"n{rng.randrange(42)}"
    kind = rng.randrange(7)
    if kind == 0:  # a pod lands, with its devices
        g = rng.randrange(4)
        cache.apply_event({"type": "ADDED", "object": pod(
            f"p{i}", gpus={contract.NVIDIA_GPU: 1}, node=n, phase="Running",
            devices={"c0": {contract.NVIDIA_GPU: [f"GPU-{n}-{g}"]}})})
    elif kind == 1:  # a pod goes
        cache.apply_event({"type": "DELETED", "object": pod(f"p{rng.randrange(i + 1)}")})
    elif kind == 2:  # a node appears, changes size (even wider than the arrays) or goes
        cache.apply_event({"type": "ADDED", "object": node(n, n=rng.choice([2, 4, 12]))})
    elif kind == 3:
        cache.apply_event({"type": "DELETED", "object": node(n, n=4)})
    elif kind == 4:  # a provisional hold
        cache.hold(pod_demand(pod(f"h{i}", gpus={contract.NVIDIA_GPU: 1})), n, Decider(cache).policy)
    elif kind == 5:  # CPU requests of a pod without GPUs
        p = pod(f"cpu{i}", node=n, phase="Running")
        p["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "2"}
        cache.apply_event({"type": "ADDED", "object": p})
    else:  # a node's allocatable changes (a status-only update)
        obj = node(n, n=4)
        obj["status"]["allocatable"] = {"cpu": str(rng.randrange(1, 64))}
        cache.apply_event({"type": "MODIFIED", "object": obj})


@pytest.mark.parametrize("seed", range(12))
def test_kept_rows_equal_a_fresh_copy_after_any_changes(seed: int) -> None:
    rng = random.Random(seed)
    cache = ClusterCache(width=4, rows=40, keep_rows_from=1)  # arrays grow as nodes come and widen
    cache.replace_all([node(f"n{k}", n=4) for k in range(40)], [])
    everyone = [f"n{k}" for k in range(42)]
    # enough names that a few changed rows are copied one by one, not the whole list again
    lists = [everyone, rng.sample(everyone, 30), everyone[:20] + everyone[:20]]
    for i in range(60):
        step(cache, rng, i)
        names = rng.choice(lists)
        if rng.random() < 0.5:  # the same nodes in another order, as kube-scheduler's parallel filter sends them
            names = rng.sample(names, len(names))
        assert read(cache, names) == fresh(cache, names)
        uid = f"uid-h{rng.randrange(i + 1)}"  # a pod's own hold is left out, then put back
        assert read(cache, names, uid) == fresh(cache, names, uid)
        assert read(cache, names) == fresh(cache, names)
        # the per-node sums kept with the copy follow it (a part seen first now, or kept)
        parts = [cache.request(contract.NVIDIA_GPU, k, 0, 0, 0) for k in (1, 2, rng.choice([3, 4]))]
        parts.append(dataclasses.replace(parts[0], models=frozenset({rng.randrange(2)})))
        assert memo_matches(cache, names, parts)
        assert memo_matches(cache, names, parts, uid)


def test_a_list_in_use_is_not_changed_under_its_reader() -> None:
    cache = ClusterCache(keep_rows_from=1)
    cache.replace_all([node("a", n=2), node("b", n=2)], [])
    names = ["a", "b"]
    read(cache, names)  # second use keeps the copy
    with cache.rows_of(names) as (rows, _, _):
        before = rows.free.tolist()
        cache.apply_event({"type": "ADDED", "object": pod(
            "x", gpus={contract.NVIDIA_GPU: 1}, node="a", phase="Running",
            devices={"c0": {contract.NVIDIA_GPU: ["GPU-a-0"]}})})
        with cache.rows_of(names) as (other, _, _):  # a second reader meanwhile gets its own copy
            assert other is not rows and other.free[0, :2].tolist() == [0, 1]
        assert rows.free.tolist() == before
    assert numpy.array_equal(fresh(cache, names)["free"], read(cache, names)["free"])


@pytest.mark.parametrize("policy", ["binpack", "spread", "fragmentation"])
def test_deciding_never_writes_to_the_kept_rows(policy: str) -> None:
    """The kept copy is handed to the kernel as it is: the kernel must leave it alone."""
    cache = ClusterCache(keep_rows_from=1)
    cache.replace_all([node(f"n{k}", n=4) for k in range(6)] + [node("shared", n=2, replicas=4)],
                      [pod("a", gpus={contract.NVIDIA_GPU: 2}, node="n1", phase="Running",
                           devices={"c0": {contract.NVIDIA_GPU: ["GPU-n1-0", "GPU-n1-1"]}})])
    d = Decider(cache, policy)
    names = [f"n{k}" for k in range(6)] + ["shared"]
    read(cache, names)  # second use from here on: the kept copy
    with cache.rows_of(names) as (rows, _, _):
        before = as_lists(rows)
    for want in ({contract.NVIDIA_GPU: 1}, {contract.NVIDIA_GPU: 3}, {contract.NVIDIA_GPU_SHARED: 1}, {}):
        d.filter(pod_demand(pod(f"w{len(want)}", gpus=want)), names)
        with cache.rows_of(names) as (rows, _, _):
            assert as_lists(rows) == before


def test_short_lists_keep_no_copy() -> None:
    cache = ClusterCache(keep_rows_from=3)
    cache.replace_all([node(f"n{k}", n=1) for k in range(3)], [])
    for names in (["n0", "n1"], ["n0", "n1", "n2"]):
        for _ in range(3):
            read(cache, names)
    kept = {len(sel.names): sel.copy is not None for sel in cache._candidates._lists}
    assert kept == {2: False, 3: True}


@pytest.mark.parametrize("policy", ["binpack", "fragmentation"])
@pytest.mark.parametrize("seed", range(4))
def test_kept_verdicts_decide_as_a_cache_that_keeps_nothing(seed: int, policy: str) -> None:
    """The verdicts kept with the copy (only changed rows evaluated again) give the decisions
    of a cache that copies and evaluates every row every time, through any changes."""
    caches = [ClusterCache(width=4, rows=40, keep_rows_from=k) for k in (1, 10**9)]
    deciders = [Decider(c, policy) for c in caches]
    rngs = [random.Random(seed), random.Random(seed)]
    for c in caches:
        c.replace_all([node(f"n{k}", n=4) for k in range(40)], [])
    everyone = [f"n{k}" for k in range(42)]
    wants = [{contract.NVIDIA_GPU: 1}, {contract.NVIDIA_GPU: 2}, {}]
    for i in range(80):  # past 40 pods the mix is kept for two pods and more (MIX_REFRESH)
        for c, rng in zip(caches, rngs):
            step(c, rng, i)
        # every node (filter), a fixed subset, or a new subset each time (prioritize gets the
        # nodes filter let through: read from the full list's memo, SubsetView)
        names = [everyone, everyone[:30], random.Random(1000 + i).sample(everyone, 35)][i % 3]
        if i % 2:  # the same nodes in another order, as kube-scheduler's parallel filter sends them
            names = random.Random(i).sample(names, len(names))
        demand = pod_demand(pod(f"w{i}", gpus=wants[i % 3]))
        kept, fresh = (d.decide(demand, names) for d in deciders)
        assert kept.fits.tolist() == fresh.fits.tolist()
        assert kept.level.tolist() == fresh.level.tolist()
        numpy.testing.assert_allclose(kept.raw, fresh.raw, rtol=0, atol=1e-12)
        assert sorted((sorted(g.positions.tolist()), g.text) for g in kept.groups) == sorted(
            (sorted(g.positions.tolist()), g.text) for g in fresh.groups)


def test_a_subset_of_a_kept_list_is_read_from_its_copy_and_memo() -> None:
    cache = ClusterCache(keep_rows_from=1)
    cache.replace_all([node(f"n{k}", n=2) for k in range(6)], [pod(
        "x", gpus={contract.NVIDIA_GPU: 1}, node="n2", phase="Running",
        devices={"c0": {contract.NVIDIA_GPU: ["GPU-n2-0"]}})])
    everyone = [f"n{k}" for k in range(6)]
    read(cache, everyone)
    read(cache, everyone)  # kept, with a memo, from the second use
    (kept,) = [sel for sel in cache._candidates._lists if sel.memo is not None]
    subset = ["n4", "n2", "n0"]
    with cache.rows_of(subset) as (rows, pos, memo):
        assert isinstance(memo, SubsetView) and pos.tolist() == [0, 1, 2]
        d = Decider(cache, "fragmentation")
        req = cache.request(contract.NVIDIA_GPU, 1, 0, 0, 0)
        from_memo = memo.evaluate(rows, req, d.policy, cache.mix())
        alone = kernel.evaluate(rows, req, d.policy, numpy, mix=cache.mix())
    assert from_memo.raw.tolist() == alone.raw.tolist() and from_memo.level.tolist() == alone.level.tolist()
    assert read(cache, subset) == fresh(cache, subset)
    assert kept.in_use is False  # released with the subset's reader


def test_the_same_nodes_in_another_order_use_the_kept_copy() -> None:
    cache = ClusterCache(keep_rows_from=1)
    cache.replace_all([node(f"n{k}", n=2) for k in range(5)], [])
    names = [f"n{k}" for k in range(5)]
    read(cache, names)
    read(cache, names)  # kept from the second use
    (kept,) = [sel for sel in cache._candidates._lists if sel.copy is not None]
    shuffled = ["n3", "n0", "n4", "n1", "n2"]
    with cache.rows_of(shuffled) as (rows, pos, memo):
        assert rows is kept.copy and memo is kept.memo  # no new copy
        # kept rows are n0..n4; n0 is at position 1 of the new list, n1 at 3, ...
        assert pos.tolist() == [1, 3, 4, 0, 2]
    assert read(cache, shuffled) == fresh(cache, shuffled)
    # a name twice, or one node fewer, is another list
    for other in (["n0", "n0", "n1", "n2", "n3"], ["n0", "n1", "n2", "n3"]):
        with cache.rows_of(other) as (rows, _, _):
            assert rows is not kept.copy
