"""The pairing rule for shares through the extender: the share mix from the pods it has seen,
the named node where a share keeps to a pattern, and the devices it then holds and assigns
being the ones the kernel scored."""

from __future__ import annotations

from typing import Any

from gpupack import contract
from gpupack.kernel import pairing
from scheduler_ext.cache import ClusterCache
from scheduler_ext.decide import Decider
from scheduler_ext.podspec import pod_demand

from tests.fixtures import gpu, node, pod

SHARED = contract.NVIDIA_GPU_SHARED
NAMES = ["a-node", "b-node", "c-node"]
GPU_MIB = 1000  # small GPUs, so the hints read as the trace's milli-GPUs
#: the share pods seen so far, by memory hint: the trace's sizes, most of them 470s
SEEN = {"470Mi": 8, "460Mi": 3, "480Mi": 1, "50Mi": 2, "320Mi": 4, "650Mi": 2}


def shared_node(name: str) -> dict[str, Any]:
    return node(name, [gpu(name, i, resource=SHARED, replicas=4, memory=GPU_MIB) for i in range(2)])


def bound(name: str, on: str, gpu_index: int, memory: str) -> dict[str, Any]:
    share = contract.share_id(f"GPU-{on}-{gpu_index}", 0)
    return pod(name, gpus={SHARED: 1}, node=on, memory=memory, devices={"c0": {SHARED: [share]}})


def setup(holds: bool = True) -> tuple[ClusterCache, Decider]:
    cache = ClusterCache()
    # a-node: GPU 0 holds a 470; b-node: GPU 0 holds 540 (no part of a pattern); c-node empty
    cache.replace_all([shared_node(n) for n in NAMES],
                      [bound("on-a", "a-node", 0, "470Mi"), bound("on-b", "b-node", 0, "540Mi")])
    d = Decider(cache, "fragmentation", holds=holds)
    i = 0
    for memory, n in SEEN.items():
        for _ in range(n):
            d.record_shape(pod_demand(pod(f"seen-{i}", gpus={SHARED: 1}, memory=memory)))
            i += 1
    return cache, d


def test_the_share_mix_is_the_recent_share_sizes() -> None:
    cache, _ = setup()
    shares = cache.shares()
    assert dict(shares.sizes) == {int(m[:-2]): n / 20 for m, n in SEEN.items()}
    pats = pairing.patterns(shares, GPU_MIB, 4)
    assert 470 in pats.partners[460]  # 470 + 460 + 50 is a pattern
    assert 540 not in pats.partners[460]


def test_a_share_is_named_where_it_keeps_to_a_pattern_and_held_on_that_gpu() -> None:
    """Best fit would put a 460 beside b-node's 540 (nothing left); the pattern puts it beside
    a-node's 470 (where a 50 still fits), and the hold takes that GPU."""
    cache, d = setup()
    share = pod_demand(pod("share", gpus={SHARED: 1}, memory="460Mi"))
    fitting = d.filter(share, NAMES).fitting_names
    assert fitting == NAMES
    level = d.prioritize(share, fitting).tolist()
    assert level[0] == 10 and max(level[1:]) < 10
    assert cache.held("uid-share") == "a-node"
    rows, _ = cache.select_positions(["a-node"])
    assert rows.free_memory_mib[0, :2].tolist() == [70, 1000]


def test_the_assigned_share_is_the_one_scored() -> None:
    """On b-node the 460 keeps to no pattern beside the 540: the kernel scores it on the empty
    GPU, and that is the GPU the assignment gives."""
    cache, d = setup(holds=False)
    share = pod_demand(pod("share", gpus={SHARED: 1}, memory="460Mi"))
    assignment = cache.assign(share, "b-node", d.policy)
    assert assignment is not None
    (device,) = assignment["c0"][SHARED]
    assert contract.physical_id(device) == "GPU-b-node-1"


def test_explain_says_why_the_named_node() -> None:
    _, d = setup()
    share = pod_demand(pod("share", gpus={SHARED: 1}, memory="460Mi"))
    (a, *_) = d.verdicts(share, NAMES)
    assert a.level == 10 and "joins a pattern of the recent share sizes" in a.reason
