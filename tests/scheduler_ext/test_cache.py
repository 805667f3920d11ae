"""The cluster cache driven by event streams, and the syncer's list/watch/resync loop."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpupack import contract
from scheduler_ext import cache as cache_mod
from scheduler_ext.cache import ClusterCache
from scheduler_ext.watch import Backoff, Gone, Syncer

from tests.fixtures import gpu, node, pod


def free_of(c: ClusterCache, name: str) -> list[int]:
    rows, known, _ = c.select([name])
    st = c.node(name)
    assert st is not None and known == [name]
    return [int(x) for x in rows.free[0, : len(st.slots)]]


def ev(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def test_add_modify_delete_events() -> None:
    c = ClusterCache()
    c.apply_event(ev("ADDED", node("n1", n=4)))
    assert free_of(c, "n1") == [1, 1, 1, 1]
    p = pod("p", gpus={contract.NVIDIA_GPU: 1}, node="n1", devices={"c0": {contract.NVIDIA_GPU: ["GPU-n1-2"]}})
    c.apply_event(ev("ADDED", p))
    assert free_of(c, "n1") == [1, 1, 0, 1]
    # the pod finishes: its GPU is free again
    p["status"]["phase"] = "Succeeded"
    c.apply_event(ev("MODIFIED", p))
    assert free_of(c, "n1") == [1, 1, 1, 1]
    p["status"]["phase"] = "Running"
    c.apply_event(ev("MODIFIED", p))
    c.apply_event(ev("DELETED", p))
    assert free_of(c, "n1") == [1, 1, 1, 1]
    c.apply_event(ev("DELETED", node("n1", n=4)))
    assert c.node("n1") is None


def test_pod_without_annotation_counts_conservatively() -> None:
    c = ClusterCache()
    c.apply_event(ev("ADDED", node("n1", n=4)))
    c.apply_event(ev("ADDED", pod("other", gpus={contract.NVIDIA_GPU: 3}, node="n1", phase="Running")))
    assert sum(free_of(c, "n1")) == 1


def test_pod_before_its_node_and_node_inventory_change() -> None:
    c = ClusterCache()
    c.apply_event(ev("ADDED", pod("p", gpus={contract.NVIDIA_GPU: 1}, node="n1",
                                    devices={"c0": {contract.NVIDIA_GPU: ["GPU-n1-1"]}})))
    c.apply_event(ev("ADDED", node("n1", n=2)))
    assert free_of(c, "n1") == [1, 0]
    # GPU 0 turns unhealthy; the pod on GPU 1 is still held after the row is rebuilt
    c.apply_event(ev("MODIFIED", node("n1", [gpu("n1", 0, healthy=False), gpu("n1", 1)])))
    rows, _, _ = c.select(["n1"])
    assert rows.healthy[0, :2].tolist() == [False, True]
    assert free_of(c, "n1") == [1, 0]


def test_time_sliced_shares_and_memory() -> None:
    c = ClusterCache()
    c.apply_event(ev("ADDED", node("n1", [gpu("n1", 0, resource=contract.NVIDIA_GPU_SHARED, replicas=4)])))
    share = contract.share_id("GPU-n1-0", 2)
    c.apply_event(ev("ADDED", pod("p", gpus={contract.NVIDIA_GPU_SHARED: 1}, node="n1", memory="20Gi",
                                    devices={"c0": {contract.NVIDIA_GPU_SHARED: [share]}})))
    rows, _, _ = c.select(["n1"])
    # 4 shares - 1 = 3; 40960 - 20480 MiB (20Gi) = 20480
    assert (int(rows.free[0, 0]), int(rows.free_memory_mib[0, 0])) == (3, 20480)


def test_mig_slots() -> None:
    migs = (
        contract.MigDevice("MIG-a", "3g.20gb", 0, 4, 20096, resource=contract.mig_resource("3g.20gb")),
        contract.MigDevice("MIG-b", "1g.5gb", 4, 1, 4864, resource=contract.mig_resource("1g.5gb")),
    )
    c = ClusterCache()
    c.apply_event(ev("ADDED", node("n1", [gpu("n1", 0, mig=migs)])))
    st = c.node("n1")
    assert st is not None
    assert [s.resource for s in st.slots] == ["nvidia.com/mig-3g.20gb", "nvidia.com/mig-1g.5gb"]
    assert st.slots[0].weight == 20096 / 40960


def test_bad_inventory_is_a_node_error_not_a_crash() -> None:
    c = ClusterCache()
    bad = node("n1", n=1)
    bad["metadata"]["annotations"][contract.INVENTORY_ANNOTATION] = "{not json"
    c.apply_event(ev("ADDED", bad))
    assert "unreadable" in c.node_error("n1")


def test_snapshot_builds_the_same_state(tmp_path: Path) -> None:
    items = [node("n1", n=4), pod("p", gpus={contract.NVIDIA_GPU: 2}, node="n1", phase="Running",
                                     devices={"c0": {contract.NVIDIA_GPU: ["GPU-n1-0", "GPU-n1-3"]}})]
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    snap = cache_mod.from_snapshot(str(path))
    live = ClusterCache()
    for obj in items:
        live.apply_event(ev("ADDED", obj))
    assert free_of(snap, "n1") == free_of(live, "n1") == [0, 1, 1, 0]
    assert snap.synced


class FakeSource:
    """Plays a script per kind: each ``list`` returns the next listing, each ``watch`` the next
    event batch (a list of events, or an exception to raise after them). ``stop`` is set
    when the script is used up, so the syncer ends without any sleep."""

    def __init__(self, script: dict[str, list[Any]], stop: threading.Event) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.stop = stop
        self.calls: list[str] = []

    def _next(self, kind: str) -> Any:
        if not self.script[kind]:
            self.stop.set()
            return None
        return self.script[kind].pop(0)

    def list(self, kind: str) -> tuple[list[dict[str, Any]], str]:
        self.calls.append(f"list {kind}")
        step = self._next(kind)
        if step is None:
            return [], "0"
        items, rv = step
        return items, rv

    def watch(self, kind: str, resource_version: str) -> Iterator[dict[str, Any]]:
        self.calls.append(f"watch {kind} {resource_version}")
        step = self._next(kind)
        if step is None:
            return
        events, end = step
        yield from events
        if end is not None:
            raise end


def rv(obj: dict[str, Any], version: str) -> dict[str, Any]:
    obj = json.loads(json.dumps(obj))
    obj["metadata"]["resourceVersion"] = version
    return obj


def test_syncer_lists_watches_and_resyncs_on_gone_and_disconnect() -> None:
    stop = threading.Event()
    n1, n2 = node("n1", n=2), node("n2", n=2)
    p = pod("p", gpus={contract.NVIDIA_GPU: 1}, node="n1", devices={"c0": {contract.NVIDIA_GPU: ["GPU-n1-0"]}})
    script: dict[str, list[Any]] = {
        "Node": [
            ([n1], "10"),
            ([ev("ADDED", rv(n2, "11"))], Gone("too old")),  # 410: relist at once
            ([n1, n2], "20"),
            ([ev("DELETED", rv(n2, "21")), {"type": "ERROR", "object": {"code": 410, "message": "gone"}}], None),
            ([n1], "30"),
            ([], ConnectionResetError("disconnected")),  # relist after backoff
            ([n1], "40"),
        ],
        "Pod": [([], "5"), ([ev("ADDED", rv(p, "6"))], None)],
    }
    c = ClusterCache()
    waits: list[float] = []
    source = FakeSource(script, stop)
    syncer = Syncer(c, source, Backoff(initial_s=0.5), wait=lambda _stop, s: waits.append(s))
    # run both kinds on this thread, one after the other: no threads, no sleeps
    syncer.run_kind("Pod", stop)  # ends when its script is used up (the source sets stop)
    assert not c.synced  # nodes not listed yet
    stop.clear()
    syncer.run_kind("Node", stop)
    assert c.synced
    assert syncer.relists["Node"] >= 4
    assert waits == [0.5]
    assert "watch Node 10" in source.calls and "watch Node 20" in source.calls
    assert c.node("n2") is None and c.node("n1") is not None
    assert free_of(c, "n1") == [0, 1]


def test_relist_drops_vanished_pods_and_keeps_reservations_of_listed_pods() -> None:
    c = ClusterCache()
    c.replace_nodes([node("n1", n=3)])
    c.replace_pods([pod("gone", gpus={contract.NVIDIA_GPU: 1}, node="n1", phase="Running")])
    assert sum(free_of(c, "n1")) == 2
    from scheduler_ext.podspec import pod_demand

    binding = pod("binding", gpus={contract.NVIDIA_GPU: 1})
    c.reserve(pod_demand(binding), "n1", {"c0": {contract.NVIDIA_GPU: ["GPU-n1-1"]}})
    c.reserve(pod_demand(pod("deleted-meanwhile", gpus={contract.NVIDIA_GPU: 1})), "n1",
              {"c0": {contract.NVIDIA_GPU: ["GPU-n1-2"]}})
    assert free_of(c, "n1") == [0, 0, 0]
    # the relist shows "binding" still pending (bind in flight) and neither other pod
    c.replace_pods([binding])
    assert free_of(c, "n1") == [1, 0, 1]


def _cpu_pod(name: str, node: str, cpu: str, memory: str, *, gpus: dict[str, int] | None = None,
             phase: str = "Running") -> dict[str, Any]:
    p = pod(name, gpus=gpus, node=node, phase=phase)
    p["spec"]["containers"][0]["resources"]["requests"].update({"cpu": cpu, "memory": memory})
    return p


def test_free_cpu_and_memory_follow_events() -> None:
    c = ClusterCache()
    n1 = node("n1", n=2)
    n1["status"]["allocatable"] = {"cpu": "16", "memory": "64Gi"}
    # a CPU-only pod bound before its node is seen: counted once the node arrives
    c.apply_event(ev("ADDED", _cpu_pod("web", "n1", "1500m", "2Gi")))
    c.apply_event(ev("ADDED", n1))
    assert c.node_free("n1") == (16000 - 1500, 65536 - 2048)
    # a GPU pod adds its CPU and memory (4 CPUs, 8 GiB) beside its GPU
    gp = _cpu_pod("train", "n1", "4", "8Gi", gpus={contract.NVIDIA_GPU: 1})
    c.apply_event(ev("ADDED", gp))
    assert c.node_free("n1") == (16000 - 5500, 65536 - 10240)
    rows, _, _ = c.select(["n1"])
    assert (int(rows.node_cpu_free[0]), int(rows.node_memory_free[0])) == (10500, 55296)
    # the GPU pod finishes: its CPU and memory come back; the web pod is deleted
    gp["status"]["phase"] = "Succeeded"
    c.apply_event(ev("MODIFIED", gp))
    c.apply_event(ev("DELETED", _cpu_pod("web", "n1", "1500m", "2Gi")))
    assert c.node_free("n1") == (16000, 65536)
    # allocatable changes with nothing else: tracked; a node that does not say: untracked
    n1["status"]["allocatable"] = {"cpu": "8", "memory": "32Gi"}
    c.apply_event(ev("MODIFIED", n1))
    assert c.node_free("n1") == (8000, 32768)
    c.apply_event(ev("ADDED", node("n2", n=1)))
    assert c.node_free("n2") == (cache_mod.kslots.UNLIMITED, cache_mod.kslots.UNLIMITED)


def test_relist_drops_cpu_only_pods_gone() -> None:
    c = ClusterCache()
    n1 = node("n1", n=1)
    n1["status"]["allocatable"] = {"cpu": "4", "memory": "4Gi"}
    c.replace_all([n1], [_cpu_pod("a", "n1", "1", "1Gi"), _cpu_pod("b", "n1", "500m", "512Mi")])
    assert c.node_free("n1") == (2500, 2560)
    c.replace_pods([_cpu_pod("b", "n1", "500m", "512Mi")])
    assert c.node_free("n1") == (3500, 3584)


def test_cpu_only_pod_scored_by_the_gpus_it_would_strand() -> None:
    from scheduler_ext.decide import Decider
    from scheduler_ext.podspec import pod_demand

    # two nodes with 2 free GPUs each; n1 has 16 CPUs free, n2 6. The mix (from the pods seen):
    # GPU pods with 4 CPUs. A CPU-only pod of 3 CPUs: on n1 13 CPUs stay, 4 still fit -> F 0;
    # on n2 3 CPUs stay -> the GPU shape no longer fits: its 2 idle GPUs are stranded
    c = ClusterCache()
    for name, cpu in (("n1", "16"), ("n2", "6")):
        n = node(name, n=2)
        n["status"]["allocatable"] = {"cpu": cpu, "memory": "64Gi"}
        c.apply_event(ev("ADDED", n))
    d = Decider(c, "fragmentation")
    gpu_pod = pod_demand(_cpu_pod("g", "", "4", "1Gi", gpus={contract.NVIDIA_GPU: 1}, phase="Pending"))
    d.decide(gpu_pod, ["n1", "n2"])  # records its shape in the mix
    cpu_pod = pod_demand(_cpu_pod("w", "", "3", "1Gi", phase="Pending"))
    out = d.decide(cpu_pod, ["n1", "n2", "unknown"])
    assert out.fits.tolist() == [True, True, True]  # the filter is unchanged: CPU is NodeResourcesFit's
    assert out.level.tolist()[:2] == [10, 0]
    assert out.raw[0] > out.raw[1]
