"""Kernel tables: feasibility, reasons, policies, levels and device choice, with the arithmetic."""

from __future__ import annotations

import dataclasses
import os

from typing import Any

import numpy as np
import pytest

from gpupack import kernel
from gpupack.kernel import Reason, Request, reference
from gpupack import contract
from scheduler_ext.cache import from_objects
from scheduler_ext.decide import Decider
from gpupack.kernel.levels import named, to_levels, with_lead
from scheduler_ext.podspec import pod_demand
from gpupack.kernel import slots as kslots
from gpupack.kernel.slots import units
from gpupack.kernel.xp import array_namespace, to_host
from gpupack.kernel.policies.fragmentation import PERMANENT_WEIGHT as W

from tests.fixtures import node, pod
from tests.gpupack.kernel.kernel_tables import FREE, USED, S, slots

GPU, SHARED, MIG1G, MIG3G, AMD = 0, 1, 2, 3, 4


def _installed() -> list[Any]:
    """NumPy, and CuPy where it works (test_capacity_edges.py shows the skip and its reason
    where it does not; GPUPACK_REQUIRE_GPU=1 makes its absence an error)."""
    out: list[Any] = [np]
    try:
        xp = kernel.namespace("cupy")
        xp.zeros(1).sum()
        out.append(xp)
    except Exception:
        if os.environ.get("GPUPACK_REQUIRE_GPU") == "1":
            raise
    return out


#: The same kernel tests run over every array namespace that is installed and usable.
XPS = pytest.mark.parametrize("xp", _installed(), ids=lambda m: m.__name__)


@pytest.mark.parametrize(
    "rows,req,feasible,reasons,free_units",
    [
        pytest.param([[FREE] * 4, [FREE, USED, USED, USED], [USED] * 4], Request(GPU, 2),
                     [True, False, False], [Reason.FITS, Reason.BUSY, Reason.BUSY], [4, 1, 0], id="whole-gpus"),
        pytest.param([[FREE] * 2], Request(GPU, 4), [False], [Reason.TOO_SMALL], [2], id="too-small-even-empty"),
        pytest.param([[FREE, S(healthy=False)]], Request(GPU, 2), [False], [Reason.UNHEALTHY], [1], id="unhealthy"),
        pytest.param([[S(resource=AMD)] * 8], Request(GPU, 1), [False], [Reason.NO_RESOURCE], [0], id="amd-node-for-nvidia"),
        pytest.param([[S(resource=AMD)] * 8], Request(AMD, 8), [True], [Reason.FITS], [8], id="amd-whole-node"),
        # 4 shares of 40960 MiB: fair part 10240; 2 shares used -> 2 free, 20480 MiB free
        pytest.param([[S(resource=SHARED, cap=4, free=2)]], Request(SHARED, 2), [True], [Reason.FITS], [2], id="shares"),
        # hint 15000 MiB: 20480 // 15000 = 1 unit although 2 shares are free
        pytest.param([[S(resource=SHARED, cap=4, free=2)]], Request(SHARED, 2, 15000), [False], [Reason.BUSY], [1],
                     id="shares-memory-bound"),
        # hint 50000 MiB > 40960 MiB of the GPU: even empty, 0 units
        pytest.param([[S(resource=SHARED, cap=4, free=4)]], Request(SHARED, 1, 50000), [False], [Reason.TOO_SMALL], [0],
                     id="shares-hint-beyond-gpu"),
        pytest.param([[S(resource=MIG1G, mem=10240, weight=0.25)] * 3 + [S(resource=MIG3G, mem=20480, weight=0.5, free=0)]],
                     Request(MIG3G, 1), [False], [Reason.BUSY], [0], id="mig-profile-busy"),
        pytest.param([[S(resource=MIG1G, mem=10240, weight=0.25)] * 3], Request(MIG1G, 3), [True], [Reason.FITS], [3],
                     id="mig-profile-fits"),
        pytest.param([[S(resource=GPU, mem=24576)]], Request(GPU, 1, 40960), [False], [Reason.TOO_SMALL], [0],
                     id="whole-gpu-with-too-big-hint"),
    ],
)
@XPS
def test_feasibility(rows: list[list[S]], req: Request, feasible: list[bool], reasons: list[Reason],
                     free_units: list[int], xp: Any) -> None:
    v = kernel.evaluate(slots(rows, xp), req, kernel.get_policy("binpack"), xp)
    assert to_host(v.feasible).tolist() == feasible
    assert [Reason(int(r)) for r in to_host(v.reason)] == reasons
    assert to_host(v.free_units).tolist() == free_units
    assert all(Reason(int(r)).unresolvable == (r in (1, 2, 3)) for r in v.reason)


HALF = S(resource=SHARED, cap=2, free=1)  # one of two shares used


@pytest.mark.parametrize(
    "policy,rows,req,raw",
    [
        # binpack: raw = 2*g + u_after
        # n0 empty 4 GPUs: g=0, u=1/4 -> 0.25; n1 2 of 4 used: g=0, u=3/4 -> 0.75
        pytest.param("binpack", [[FREE] * 4, [USED, USED, FREE, FREE]], Request(GPU, 1), [0.25, 0.75], id="binpack-fuller-node"),
        # share: n0 has a half-used shared GPU: g=1, u=(1+0)/2=0.5 -> 2.5;
        # n1 three used whole GPUs + one fresh shared GPU: g=0, u=(3+0.5)/4 -> 0.875
        pytest.param("binpack", [[HALF, S(resource=SHARED, cap=2, free=2)],
                                 [USED, USED, USED, S(resource=SHARED, cap=2, free=2)]],
                     Request(SHARED, 1), [2.5, 0.875], id="binpack-partly-used-gpu-first"),
        # spread: raw = 1 - u_after: 1 - 0.25 = 0.75; 1 - 0.75 = 0.25
        pytest.param("spread", [[FREE] * 4, [USED, USED, FREE, FREE]], Request(GPU, 1), [0.75, 0.25], id="spread-emptier-node"),
        # fragmentation, mix = the request (2 GPUs): F = idle if 2 GPUs do not fit else 0, and so
        # is the permanent strand P (the one part hosted or not), weighted W = PERMANENT_WEIGHT.
        # n0 4 free: after 2 free -> F 0, P 0 -> 0 delta; +0.001*u(0.5) = 0.0005
        # n1 3 free: after 1 free, 2 no longer fit -> F 1, P 1 -> -(1 + W) + 0.001*(3/4)
        pytest.param("fragmentation", [[FREE] * 4, [USED, FREE, FREE, FREE]], Request(GPU, 2), [0.0005, -(1 + W) + 0.00075],
                     id="fragmentation-avoids-stranding"),
    ],
)
@XPS
def test_policy_raw_scores(policy: str, rows: list[list[S]], req: Request, raw: list[float], xp: Any) -> None:
    v = kernel.evaluate(slots(rows, xp), req, kernel.get_policy(policy), xp)
    assert to_host(v.raw).tolist() == pytest.approx(raw)


def test_fragmentation_with_mix_of_mig_profiles() -> None:
    # mix: 3g (p=0.5) and 1g (p=0.5). n0: one free 3g slice (weight .5) and one free 1g (weight .25);
    # placing a 1g on n0 takes the 1g: after, 3g still fits; 1g does not fit -> F_1g = idle 0.5.
    # before: both fit, F = 0.5*0 + 0.5*0 (each free slot hosts its own shape... 1g slot is
    # stranded for 3g: 0.25, 3g slot stranded for 1g: 0.5) = 0.5*0.25 + 0.5*0.5 = 0.375
    # after: F_3g = 0 (1g slot is gone), F_1g = 0.5 (cannot fit) -> 0.5*0 + 0.5*0.5 = 0.25
    # delta = 0.25 - 0.375 = -0.125 -> raw 0.125 + 0.001*u (u = 0.25/0.75 = 1/3)
    rows = [[S(resource=MIG3G, mem=20480, weight=0.5), S(resource=MIG1G, mem=10240, weight=0.25)]]
    mix = ((Request(MIG3G, 1), 0.5), (Request(MIG1G, 1), 0.5))
    v = kernel.evaluate(slots(rows), Request(MIG1G, 1), kernel.get_policy("fragmentation"), np, mix=mix)
    assert v.raw.tolist() == pytest.approx([0.125 + 0.001 / 3])


# CPU and memory in fragmentation: a shape whose CPU or memory no longer fits beside the
# node's idle GPUs strands them all. Each node has 4 whole GPUs; raw = -(F_after - F_before)
# - W * (P_after - P_before) + 0.001 * u_after, where P (the permanent strand) is the node's
# idle capacity when it can host no GPU shape of the mix, and 0 here otherwise.
@pytest.mark.parametrize(
    "rows,cpu,mem,req,mix,raw",
    [
        # mix: 1 GPU with 8 CPUs (p=1). Request 1 GPU with 4 CPUs.
        # n0: 2 free GPUs, 16 CPUs free: after 1 free GPU, 12 CPUs >= 8 -> F 0 -> 0 + 0.001*3/4
        # n1: 2 free GPUs, 10 CPUs free: after 1 free GPU, 6 CPUs < 8 -> F = P = idle 1
        #     -> -1 - W + 0.00075
        pytest.param([[USED, USED, FREE, FREE]] * 2, [16000, 10000], None, Request(GPU, 1, cpu_milli=4000),
                     ((Request(GPU, 1, cpu_milli=8000), 1.0),), [0.00075, -1 - W + 0.00075], id="cpu-strands-idle-gpus"),
        # node memory, same arithmetic: n1 keeps 20 GiB after, the shape wants 32 GiB
        pytest.param([[USED, USED, FREE, FREE]] * 2, None, [65536, 36864], Request(GPU, 1, node_memory_mib=16384),
                     ((Request(GPU, 1, node_memory_mib=32768), 1.0),), [0.00075, -1 - W + 0.00075],
                     id="memory-strands-idle-gpus"),
        # already stranded before: n0 has 4 CPUs free, the shape wants 8 -> F_before = P_before =
        # idle 2, F_after = P_after = idle 1 (still stranded) -> raw +1 + W + 0.00075: filling a
        # stranded node is the best move (it strands nothing new, and uses what nothing else can)
        pytest.param([[USED, USED, FREE, FREE]], [4000], None, Request(GPU, 1, cpu_milli=2000),
                     ((Request(GPU, 1, cpu_milli=8000), 1.0),), [1 + W + 0.00075], id="stranded-node-first"),
        # a CPU-only shape (count 0, 8 CPUs, p=0.5) and a 2-GPU shape (no CPU, p=0.5); request 1 GPU
        # with 4 CPUs. n0: 4 free GPUs, 12 CPUs: after 3 free, 8 CPUs -> both fit, F 0 -> 0.00025
        # n1: 4 free GPUs, 10 CPUs: after 6 CPUs: CPU-only shape strands idle 3 -> F 0.5*3 = 1.5
        #     -> -1.5 + 0.00025
        pytest.param([[FREE] * 4] * 2, [12000, 10000], None, Request(GPU, 1, cpu_milli=4000),
                     ((Request(-1, 0, cpu_milli=8000), 0.5), (Request(GPU, 2), 0.5)), [0.00025, -1.5 + 0.00025],
                     id="cpu-only-shape"),
        # untracked CPU (UNLIMITED): the same as without CPU: n0 3 free GPUs after -> F 0
        pytest.param([[FREE] * 4], None, None, Request(GPU, 1, cpu_milli=4000),
                     ((Request(GPU, 1, cpu_milli=8000), 1.0),), [0.00025], id="untracked-always-fits"),
    ],
)
@XPS
def test_fragmentation_counts_cpu_and_memory(rows: list[list[S]], cpu: list[int] | None, mem: list[int] | None,
                                             req: Request, mix: kernel.Mix, raw: list[float], xp: Any) -> None:
    s = slots(rows, xp, cpu=cpu, mem=mem)
    v = kernel.evaluate(s, req, kernel.get_policy("fragmentation"), xp, mix=mix)
    assert to_host(v.raw).tolist() == pytest.approx(raw)
    assert to_host(v.feasible).all()  # CPU and memory never decide feasibility in the kernel
    _, ref = reference.evaluate(slots(rows, np, cpu=cpu, mem=mem), req, "fragmentation", mix)
    assert ref == pytest.approx(raw)


def test_idle_and_fragmented_counts_cpu() -> None:
    # n0: 2 free GPUs, 2 CPUs free; n1: 2 free GPUs, 16 CPUs; the mix wants 1 GPU and 8 CPUs
    s = slots([[USED, USED, FREE, FREE]] * 2, cpu=[2000, 16000])
    assert kernel.idle_and_fragmented(s, ((Request(GPU, 1, cpu_milli=8000), 1.0),), np) == (4.0, 2.0)


@pytest.mark.parametrize(
    "raw,feasible,levels",
    [
        pytest.param([3.0, 1.0, 2.0], [1, 1, 1], [10, 0, 5], id="three-distinct: 10 - round(r*10/2)"),
        pytest.param([1.0, 1.0], [1, 1], [10, 10], id="ties-both-best"),
        pytest.param([5.0, 9.0], [1, 0], [10, 0], id="infeasible-zero"),
        # 22 distinct values: level = 10 - floor(r*11/22) = 10 - r//2
        pytest.param(list(range(22)), [1] * 22, [10 - (21 - i) // 2 for i in range(22)], id="bands"),
        pytest.param([], [], [], id="empty"),
    ],
)
def test_levels(raw: list[float], feasible: list[int], levels: list[int]) -> None:
    out = to_levels(np.asarray(raw, dtype=float), np.asarray(feasible, dtype=bool), np)
    assert out.tolist() == levels


@pytest.mark.parametrize(
    "raw,names,levels",
    [
        pytest.param([3.0, 1.0, 2.0], ["c", "a", "b"], [10, 0, 5], id="one-best: it is named"),
        pytest.param([2.0, 3.0, 3.0, 1.0], ["a", "d", "b", "c"], [5, 8, 10, 0],
                     id="tied-best: the first by name is named, the other drops to 8"),
        # 22 distinct values, bands of two: levels 10 and 9 hold {21, 20, 19, 18}; "n18" sorts first
        pytest.param([float(v) for v in range(22)], [f"n{v:02d}" for v in range(22)],
                     [min(8, 10 - (21 - v) // 2) for v in range(18)] + [10, 8, 8, 8],
                     id="first-of-the-top-two-levels-by-name-not-the-best"),
        # 11 distinct values, one level each: the node at 9 sorts first and is named
        pytest.param([float(v) for v in range(11)], [f"c{v}" for v in range(9)] + ["a", "b"],
                     list(range(9)) + [10, 8], id="the-second-best-named-when-its-name-sorts-first"),
        pytest.param([], [], [], id="empty"),
    ],
)
def test_with_lead_names_the_first_by_name_of_the_top_two_levels(raw: list[float], names: list[str], levels: list[int]) -> None:
    plain = to_levels(np.asarray(raw, dtype=float), np.ones(len(raw), dtype=bool), np)
    assert with_lead(plain, names).tolist() == levels


def test_with_lead_leaves_levels_without_a_best_band_alone() -> None:
    level = np.asarray([0, 0], dtype=np.int64)  # nothing fits
    assert with_lead(level, ["a", "b"]).tolist() == [0, 0] and named(level, ["a", "b"]) == -1


@pytest.mark.parametrize("name", ["binpack", "fragmentation"])
def test_packing_policies_name_one_node_for_gpu_pods_only(name: str) -> None:
    """Four empty nodes score the same: the extender names the one whose name sorts first for
    a pod with GPUs; a CPU-only pod (nothing to pack) and the spread policy leave them all at 10."""
    cache = from_objects([node(n, n=2) for n in ("n-c", "n-a", "n-d", "n-b")])
    names = ["n-c", "n-a", "n-d", "n-b"]
    gpu_pod, cpu_pod = pod("g", gpus={contract.NVIDIA_GPU: 1}), pod("c")
    assert Decider(cache, name).prioritize(pod_demand(gpu_pod), names).tolist() == [8, 10, 8, 8]
    assert Decider(cache, name).prioritize(pod_demand(cpu_pod), names).tolist() == [10] * 4
    assert Decider(cache, "spread").prioritize(pod_demand(gpu_pod), names).tolist() == [10] * 4


def test_unknown_policy_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy 'best'.*binpack"):
        kernel.get_policy("best")


def test_cupy_refused_when_absent_or_asked_wrongly() -> None:
    with pytest.raises(ValueError, match="unknown array namespace"):
        kernel.namespace("torch")
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="cupy cannot be imported"):
            kernel.namespace("cupy")


@pytest.mark.parametrize(
    "row,req,chosen",
    [
        # 8 GPUs, two NVLink groups of 4; group 0 has 3 free, group 1 has 4 free -> group 1
        pytest.param([S(free=0, nvgroup=0)] + [S(nvgroup=0)] * 3 + [S(nvgroup=1)] * 4, Request(GPU, 4), ((4, 1), (5, 1), (6, 1), (7, 1)),
                     id="nvlink-group-that-holds-all"),
        # 2 GPUs: both groups can; group 0 has 3 free (smaller) -> keeps group 1 whole
        pytest.param([S(free=0, nvgroup=0)] + [S(nvgroup=0)] * 3 + [S(nvgroup=1)] * 4, Request(GPU, 2), ((1, 1), (2, 1)),
                     id="nvlink-smallest-fitting-group"),
        # no NVLink; NUMA 0 has 1 free, NUMA 1 has 2 -> NUMA 1
        pytest.param([USED, S(numa=0), S(numa=1), S(numa=1)], Request(GPU, 2), ((2, 1), (3, 1)), id="numa"),
        # shares go to the fullest GPU that still has room (best fit)
        pytest.param([S(resource=SHARED, cap=4, free=4), S(resource=SHARED, cap=4, free=1)], Request(SHARED, 1),
                     ((1, 1),), id="share-best-fit"),
        pytest.param([USED, USED], Request(GPU, 1), (), id="none-free"),
        # NVSwitch: one NVLink group of 8, NUMA 0 = GPUs 0-3, NUMA 1 = 4-7; 0-2 in use.
        # 2 GPUs: NUMA 0 has only GPU 3 free -> both from NUMA 1, not 3+4 across sockets
        pytest.param([S(free=0, nvgroup=0, numa=0)] * 3 + [S(nvgroup=0, numa=0)] + [S(nvgroup=0, numa=1)] * 4,
                     Request(GPU, 2), ((4, 1), (5, 1)), id="nvswitch-numa-local-within-group"),
        # 4 GPUs with 1 + 4 free: NUMA 1 holds all four
        pytest.param([S(free=0, nvgroup=0, numa=0)] * 3 + [S(nvgroup=0, numa=0)] + [S(nvgroup=0, numa=1)] * 4,
                     Request(GPU, 4), ((4, 1), (5, 1), (6, 1), (7, 1)), id="nvswitch-4-on-one-socket"),
        # 5 GPUs: no NUMA node holds them: the fuller NUMA 1 (4 free) first, then GPU 3
        pytest.param([S(free=0, nvgroup=0, numa=0)] * 3 + [S(nvgroup=0, numa=0)] + [S(nvgroup=0, numa=1)] * 4,
                     Request(GPU, 5), ((3, 1), (4, 1), (5, 1), (6, 1), (7, 1)), id="nvswitch-5-spans-two"),
        # one GPU: from the group already broken (group 0: 3 free) rather than the whole group 1
        pytest.param([S(free=0, nvgroup=0)] + [S(nvgroup=0)] * 3 + [S(nvgroup=1)] * 4, Request(GPU, 1), ((1, 1),),
                     id="single-gpu-from-broken-group"),
        pytest.param([S(nvgroup=1)] * 4 + [S(free=0, nvgroup=0)] + [S(nvgroup=0)] * 3, Request(GPU, 1), ((5, 1),),
                     id="single-gpu-from-broken-group-not-lowest-index"),
    ],
)
def test_choose_devices(row: list[S], req: Request, chosen: tuple[tuple[int, int], ...]) -> None:
    assert kernel.choose_devices(slots([row]), 0, req, np) == chosen


def test_units_never_beyond_free() -> None:
    s = slots([[S(resource=SHARED, cap=4, free=3, free_mem=40000)]])
    # min(3 free shares, 40000 // 10240 = 3) = 3
    assert units(s, Request(SHARED, 1), np).tolist() == [[3]]


def test_idle_and_fragmented() -> None:
    # n0: 1 free of 4 -> idle 1; mix wants 2 GPUs -> does not fit -> all 1 fragmented
    # n1: 2 free -> idle 2, fits -> 0 fragmented
    s = slots([[USED, USED, USED, FREE], [USED, USED, FREE, FREE]])
    idle, frag = kernel.idle_and_fragmented(s, ((Request(GPU, 2), 1.0),), np)
    assert (idle, frag) == (3.0, 1.0)


def test_a_shape_pinned_to_another_model_counts_nothing_on_a_node() -> None:
    # n0: model 0, 1 free of 4; n1: model 1, the same. The mix wants 2 GPUs of model 1: n1
    # cannot host it (its 1 idle GPU is a fragment for it); n0 never could, and counts nothing.
    a, b = S(model=0), S(model=1)
    used_a, used_b = dataclasses.replace(a, free=0), dataclasses.replace(b, free=0)
    s = slots([[used_a, used_a, used_a, a], [used_b, used_b, used_b, b]])
    pinned = ((Request(GPU, 2, models=frozenset({1})), 1.0),)
    assert kernel.idle_and_fragmented(s, pinned, np) == (2.0, 1.0)
    # a 1-GPU pod on n1's last GPU removes a fragment of the pinned shape (+1), which was also
    # permanent there (n1 can host no shape of the mix: +W * 1); on n0's, none (0); counted as
    # before, n0's GPU was a fragment too and both nodes scored alike
    v = kernel.evaluate(s, Request(GPU, 1), kernel.get_policy("fragmentation"), np, mix=pinned)
    assert v.raw.tolist() == pytest.approx([0.0 + 0.001, 1.0 + W + 0.001])
    _, ref = reference.evaluate(s, Request(GPU, 1), "fragmentation", pinned)
    assert ref == pytest.approx(v.raw.tolist())


def test_mixed_namespaces_refused() -> None:
    class FakeDeviceArray:
        __module__ = "cupy._core"

    with pytest.raises(TypeError, match="different namespaces"):
        array_namespace(np.zeros(1), FakeDeviceArray())


def test_request_pinned_to_models_uses_only_their_slots() -> None:
    """A request with ``models`` has units only on slots of those GPU models: the node whose
    free GPU is of another model cannot host it, and in ``fragmentation`` that GPU is a
    fragment for the pinned shape."""
    s = kslots.empty_slots(np, 2, 2)
    for row in range(2):
        for col in range(2):
            s.resource[row, col], s.capacity[row, col], s.free[row, col] = GPU, 1, 1
            s.memory_mib[row, col] = s.free_memory_mib[row, col] = 1000
            s.healthy[row, col], s.weight[row, col], s.model[row, col], s.gpu[row, col] = True, 1.0, col, col
    s.free[1, 1] = 0  # node 1: only its model-0 GPU is free
    s.free_memory_mib[1, 1] = 0
    pinned = Request(GPU, 1, models=frozenset({1}))
    assert kslots.units(s, pinned, np).tolist() == [[0, 1], [0, 0]]
    v = kernel.evaluate(s, pinned, kernel.get_policy("binpack"), np)
    assert v.feasible.tolist() == [True, False]
    any_model = Request(GPU, 1)
    frag = kernel.get_policy("fragmentation")
    v = kernel.evaluate(s, any_model, frag, np, mix=((pinned, 1.0),))
    # on node 1 the free model-0 GPU is already useless to the pinned shape: taking it strands nothing more
    assert v.raw[1] > v.raw[0]
    _, ref = reference.evaluate(s, any_model, "fragmentation", ((pinned, 1.0),))
    assert v.raw.tolist() == pytest.approx(ref)


def test_a_changed_row_in_a_state_seen_before_is_not_evaluated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kept verdicts remember row states: a node that changes into a state another node
    was evaluated in takes that verdict without array work, also when its free CPU differs
    but reaches the same of the mix's CPU amounts; past one of them it is evaluated."""
    from gpupack.kernel import verdict_memo as kept_module
    from gpupack.kernel.verdict_memo import VerdictMemo

    calls: list[int] = []
    real = kept_module.evaluate

    def counting(s: Any, *a: Any, **k: Any) -> Any:
        calls.append(s.shape[0])
        return real(s, *a, **k)

    monkeypatch.setattr(kept_module, "evaluate", counting)
    req = Request(0, 1, cpu_milli=1000)
    mix = ((req, 0.5), (Request(0, 2, cpu_milli=4000), 0.5))  # CPU cuts at 1000, 2000, 4000, 5000
    policy = kernel.get_policy("fragmentation")
    rows, cpus = [[FREE] * 4] * 3, [8000] * 3
    memo = VerdictMemo(3)
    memo.evaluate(slots(rows, cpu=cpus), req, policy, mix)
    assert calls == [1]  # three rows alike: one evaluated for all three
    steps = [(0, 6000, [1]), (1, 7000, []), (2, 4500, [1])]  # row, its new free CPU, rows evaluated
    for row, cpu, evaluated in steps:
        rows = [[USED, FREE, FREE, FREE] if i == row else r for i, r in enumerate(rows)]
        cpus[row] = cpu
        memo.mark(np.asarray([row]))
        calls.clear()
        now = slots(rows, cpu=cpus)
        got = memo.evaluate(now, req, policy, mix)
        assert calls == evaluated, (row, cpu)
        assert got.raw.tolist() == kernel.evaluate(now, req, policy, np, mix=mix).raw.tolist()


def test_kept_verdicts_take_requests_beyond_any_node() -> None:
    """A CPU request larger than any node could have (the cuts' sums past 64 bits) is
    answered as a fresh evaluation answers it, not with an overflow."""
    from gpupack.kernel.verdict_memo import VerdictMemo

    req = Request(0, 1, cpu_milli=5 * 10**18)
    s = slots([[FREE] * 2] * 2, cpu=[8000, kslots.UNLIMITED])
    policy = kernel.get_policy("fragmentation")
    kept = VerdictMemo(2).evaluate(s, req, policy, ((req, 1.0),))
    assert kept.raw.tolist() == kernel.evaluate(s, req, policy, np, mix=((req, 1.0),)).raw.tolist()


def test_the_permanent_strand_is_what_the_least_stranding_part_leaves() -> None:
    # one node, two shared GPUs (4 shares, 40 GiB): A free, B with 2 shares and 7000 MiB left.
    # Parts of the mix: a plain share (10 GiB, a quarter) and a 5000 MiB share; both are
    # hosted (on A). B is stranded for the plain share but not for the 5000 MiB one, so no
    # capacity is permanent before (P 0: the least of the two). The 5000 MiB request goes to B
    # (fewest units left); after, B's 2000 MiB suit neither, so P = B's idle 2000/40960.
    shared = dict(resource=GPU, cap=4, mem=40960)
    rows = [[S(free=4, free_mem=40960, **shared), S(free=2, free_mem=7000, **shared)]]
    mix = ((Request(GPU, 1), 0.5), (Request(GPU, 1, 5000), 0.5))
    s = slots(rows)
    node = reference._node(reference._lists(s), 0)
    assert reference._permanent(node, mix, 0, 0) == 0.0
    req = Request(GPU, 1, 5000)
    v = kernel.evaluate(s, req, kernel.get_policy("fragmentation"), np, mix=mix)
    _, ref = reference.evaluate(s, req, "fragmentation", mix)
    assert v.raw.tolist() == pytest.approx(ref)
    after = reference._after(node, reference._place(node, req), req)
    assert reference._permanent(after, mix, 0, 0) == pytest.approx(2000 / 40960)
