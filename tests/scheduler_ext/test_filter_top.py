"""``--filter-top``: filter lets a GPU pod through to the best N nodes only, and prioritize
ranks those N as it would have ranked them among every node that fit."""

from __future__ import annotations

import pytest

from gpupack import contract
from scheduler_ext import main as extender_main
from scheduler_ext.cache import ClusterCache
from scheduler_ext.decide import Decider
from scheduler_ext.podspec import pod_demand

from tests.fixtures import node, pod

GPU = contract.NVIDIA_GPU


def cluster() -> tuple[ClusterCache, list[str]]:
    """12 nodes of 8 GPUs; node k has k % 8 GPUs in use (so the fullest that fit differ)."""
    names = [f"n{k:02d}" for k in range(12)]
    pods = [pod(f"u{k}-{g}", gpus={GPU: 1}, node=n, phase="Running", devices={"c0": {GPU: [f"GPU-{n}-{g}"]}})
            for k, n in enumerate(names) for g in range(k % 8)]
    cache = ClusterCache()
    cache.replace_all([node(n, n=8) for n in names], pods)
    return cache, names


@pytest.mark.parametrize("policy", ["binpack", "fragmentation", "spread"])
def test_the_capped_filter_keeps_the_named_node_and_prioritize_ranks_as_uncapped(policy: str) -> None:
    cache, names = cluster()
    want = pod_demand(pod("w", gpus={GPU: 1}))
    free = Decider(cache, policy)
    full = free.filter(want, names)
    full_levels = dict(zip(full.fitting_names, free.prioritize(want, full.fitting_names).tolist()))
    capped = Decider(cache, policy, filter_top=3)
    d = capped.filter(want, names)
    assert len(d.fitting_names) == 3 and len(full.fitting_names) == 12
    named = max(full_levels, key=lambda n: (full_levels[n], n == min(full_levels)))
    assert full_levels[named] == 10 and named in d.fitting_names
    # the 3 best by level among all 12 (then raw score, then name)
    assert sorted(full_levels[n] for n in d.fitting_names) == sorted(full_levels.values())[-3:]
    got = capped.prioritize(want, d.fitting_names).tolist()
    assert got == [full_levels[n] for n in d.fitting_names]
    assert d.groups == [] and full.groups == []  # the nodes left out carry no failure reason


def test_the_cap_when_some_fit_none_fit_or_the_pod_has_no_gpu() -> None:
    cache, names = cluster()
    capped, free = Decider(cache, filter_top=3), Decider(cache)
    seven = pod_demand(pod("seven", gpus={GPU: 7}))  # fits n00, n01, n08, n09 (0 or 1 in use)
    assert free.filter(seven, names).fitting_names == ["n00", "n01", "n08", "n09"]
    # capped: the two fuller ones (1 in use), then the first empty one by name
    assert capped.filter(seven, names).fitting_names == ["n00", "n01", "n09"]
    nine = pod_demand(pod("nine", gpus={GPU: 9}))  # fits nowhere: every node's reason, for preemption
    a, b = capped.filter(nine, names), free.filter(nine, names)
    assert a.fitting_names == [] and [(g.positions.tolist(), g.text) for g in a.groups] == [
        (g.positions.tolist(), g.text) for g in b.groups]
    cpu_only = pod_demand(pod("cpu"))
    assert capped.filter(cpu_only, names).fitting_names == names
    two = pod_demand(pod("two", gpus={GPU: 2}))
    assert len(Decider(cache, filter_top=20).filter(two, names).fitting_names) == 11  # all but n07 (1 free)


def test_a_negative_cap_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="filter_top must be 0"):
        Decider(ClusterCache(), filter_top=-1)
    assert extender_main.main(["--snapshot", "x.json", "--filter-top", "-5"]) == 2
    assert "--filter-top: expected 0 (no cap) or a number of nodes, got -5" in capsys.readouterr().err
