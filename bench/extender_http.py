"""Benchmark: filter + prioritize over real HTTP on loopback, as kube-scheduler calls them.

For each policy and cluster size, a server process builds its cache (N nodes x 8 GPUs, 60 %
of the GPUs held by pods of 1, 2 and 4 GPUs with device annotations) and serves as
``gpupack-extender`` does on a live cluster (provisional holds on); this process sends
``filter`` then ``prioritize`` for a pending 1- or 2-GPU pod with every node a candidate
(``nodeCacheCapable: true``: node names only), over one keep-alive connection, and reports
p50 / p99 latency per request, decisions per second (one decision = filter + prioritize)
and the server's peak RSS. The client encodes and decodes with orjson, nearer to what Go's
encoder costs kube-scheduler than the json module; it still shares the cores with the server.
A last run loads 150,000 pods into the cache of 5,000 nodes (time-sliced GPUs, 4 shares each,
60 % held by one-share pods; the rest CPU-only pods).

There is no row with parallel connections for filter and prioritize: kube-scheduler runs one
scheduling cycle at a time and calls an extender's filter and then its prioritize within it,
so these calls never overlap (only binds, from the binding goroutines, run beside them).

    .venv/bin/python bench/extender_http.py [--policies binpack,fragmentation] [--sizes 1000,5000,10000] [--decisions 400] [--realistic]

``--realistic`` adds a run at 5,000 nodes with 500 candidates per call: kube-scheduler's
default ``percentageOfNodesToScore`` stops looking after about 10 % of 5,000 nodes, so that is
the list an extender really gets there.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402

from gpupack import contract  # noqa: E402

GPUS = 8
OCCUPIED = 0.60


def _node(name: str, resource: str, replicas: int) -> dict[str, Any]:
    inv = contract.Inventory(name, tuple(
        contract.Gpu(id=f"GPU-{name}-{i}", index=i, vendor="nvidia", model="NVIDIA H100 80GB HBM3", memory_mib=81559,
                     numa_node=i // 4, links=tuple(contract.Link(p, 18) for p in range(GPUS) if p != i),
                     resource=resource, replicas=replicas)
        for i in range(GPUS)))
    return {"kind": "Node", "metadata": {"name": name, "annotations": {contract.INVENTORY_ANNOTATION: contract.encode_inventory(inv)}}}


def _pod(uid: str, node: str, resource: str, ids: list[str]) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": uid, "namespace": "bench", "uid": uid,
                                        "annotations": {contract.DEVICES_ANNOTATION: contract.encode_assignment({"c": {resource: ids}})}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"limits": {resource: str(len(ids))}}}]},
            "status": {"phase": "Running"}}


def whole_gpu_pods(nodes: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """Per node, pods of 4, 2 and 1 GPUs until about 60 % of its GPUs are held."""
    for n in range(nodes):
        name = f"node-{n:05d}"
        target = min(GPUS, max(0, round(rng.gauss(OCCUPIED * GPUS, 2))))
        i = 0
        while i < target:
            size = min(rng.choice((1, 1, 2, 4)), target - i)
            yield _pod(f"{name}-p{i}", name, contract.NVIDIA_GPU, [f"GPU-{name}-{g}" for g in range(i, i + size)])
            i += size


def share_pods(nodes: int, total: int, replicas: int) -> Iterator[dict[str, Any]]:
    held = int(nodes * GPUS * replicas * OCCUPIED)
    for k in range(held):
        n, rest = divmod(k, GPUS * replicas)
        g, r = divmod(rest, replicas)
        name = f"node-{n:05d}"
        yield _pod(f"s{k}", name, contract.NVIDIA_GPU_SHARED, [contract.share_id(f"GPU-{name}-{g}", r)])
    for k in range(total - held):
        yield {"kind": "Pod", "metadata": {"name": f"cpu{k}", "namespace": "bench", "uid": f"cpu{k}"},
               "spec": {"nodeName": f"node-{k % nodes:05d}", "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]},
               "status": {"phase": "Running"}}


def serve(nodes: int, mode: str, pods: int, policy: str, port_q: Any) -> None:
    from scheduler_ext.cache import ClusterCache
    from scheduler_ext.decide import Decider
    from scheduler_ext.main import freeze_heap, tune_malloc
    from scheduler_ext.metrics import Metrics
    from scheduler_ext.server import ExtenderApp, serve as start

    tune_malloc()  # as main does
    rng = random.Random(7)
    cache = ClusterCache(rows=nodes)
    if mode == "whole":
        cache.replace_nodes(_node(f"node-{n:05d}", contract.NVIDIA_GPU, 1) for n in range(nodes))
        cache.replace_pods(whole_gpu_pods(nodes, rng))
    else:
        cache.replace_nodes(_node(f"node-{n:05d}", contract.NVIDIA_GPU_SHARED, 4) for n in range(nodes))
        cache.replace_pods(share_pods(nodes, pods, 4))
    freeze_heap()  # as main does after each full list
    srv, thread = start(ExtenderApp(cache, Decider(cache, policy, holds=True), None, Metrics(cache)), "127.0.0.1", 0)
    port_q.put((srv.server_address[1], cache.counts()))
    thread.join()


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pending_pod(i: int, resource: str, count: int) -> dict[str, Any]:
    return {"metadata": {"name": f"want-{i}", "namespace": "bench", "uid": f"want-{i}", "creationTimestamp": None},
            "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": {resource: str(count)}, "requests": {resource: str(count)}}}]},
            "status": {}}


def run(nodes: int, decisions: int, mode: str = "whole", pods: int = 0, policy: str = "binpack",
        candidates: int = 0) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=serve, args=(nodes, mode, pods, policy, q), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    port, (n_nodes, n_pods) = q.get(timeout=600)
    build_s = time.perf_counter() - t0
    names = [f"node-{n:05d}" for n in range(nodes)]
    if candidates:
        names = random.Random(3).sample(names, candidates)
    resource = contract.NVIDIA_GPU if mode == "whole" else contract.NVIDIA_GPU_SHARED
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    lat: list[float] = []
    by_verb: dict[str, list[float]] = {"/filter": [], "/prioritize": []}
    fitting = []

    def call(path: str, body: bytes) -> Any:
        start = time.perf_counter()
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        lat.append(time.perf_counter() - start)
        by_verb[path].append(lat[-1])
        assert resp.status == 200, data[:200]
        return orjson.loads(data)

    wall0 = 0.0
    for i in range(decisions + 20):
        if i == 20:  # warm-up done
            lat.clear()
            for v in by_verb.values():
                v.clear()
            wall0 = time.perf_counter()
        pod = pending_pod(i, resource, 2 if i % 3 == 0 else 1)
        body = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names})
        result = call("/filter", body)
        fitting.append(len(result["NodeNames"]))
        body = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": result["NodeNames"]})
        call("/prioritize", body)
    wall = time.perf_counter() - wall0
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    conn.close()
    def server_total(what: str, verb: str = "") -> float:
        return sum(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith(f"gpupack_extender_request_seconds_{what}") and f'verb="{verb}' in line)

    server_s, server_n = server_total("sum"), server_total("count")
    server_verbs = {f"server_{v}_mean_ms": round(server_total("sum", v) / max(server_total("count", v), 1) * 1e3, 2)
                    for v in ("filter", "prioritize")}
    rss = peak_rss_mib(proc.pid)
    proc.kill()
    proc.join()
    lat.sort()
    pct = {f"{verb.strip('/')}_p50_p99_ms": [round(statistics.median(v) * 1e3, 2), round(sorted(v)[int(0.99 * (len(v) - 1))] * 1e3, 2)]
           for verb, v in by_verb.items()}
    return {
        "nodes": n_nodes, "candidates": len(names), "gpu_pods_in_cache": n_pods, "pods_fed": pods or None, "mode": mode, "policy": policy,
        "build_s": round(build_s, 1),
        "p50_ms": round(statistics.median(lat) * 1e3, 2), "p99_ms": round(lat[int(0.99 * (len(lat) - 1))] * 1e3, 2),
        **pct,
        "server_mean_ms": round(server_s / max(server_n, 1) * 1e3, 2),  # handling only, from /metrics
        **server_verbs,
        "requests_per_s": round(len(lat) / wall), "decisions_per_s": round(decisions / wall),
        "server_peak_rss_mib": round(rss), "fitting_nodes_mean": round(statistics.mean(fitting)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", default="1000,5000,10000")
    p.add_argument("--decisions", type=int, default=400)
    p.add_argument("--policies", default="binpack,fragmentation")
    p.add_argument("--realistic", action="store_true", help="also 5,000 nodes with 500 candidates per call")
    p.add_argument("--memory-pods", type=int, default=150_000, help="0 skips the memory run")
    args = p.parse_args()
    policies = args.policies.split(",")
    print(f"# {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, policies {policies}")
    for policy in policies:
        for n in (int(x) for x in args.sizes.split(",") if x):
            print(json.dumps(run(n, args.decisions, policy=policy)), flush=True)
        if args.realistic:
            # kube-scheduler's percentageOfNodesToScore default at 5,000 nodes: 50 - 5000/125 = 10 %
            print(json.dumps(run(5000, args.decisions, policy=policy, candidates=500)), flush=True)
    if args.memory_pods:
        print(json.dumps(run(5000, args.decisions // 2, mode="shares", pods=args.memory_pods, policy=policies[0])), flush=True)


if __name__ == "__main__":
    main()
