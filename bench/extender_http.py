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

``--cpu`` gives the nodes 96 cores and the pods 8 to 16 cores per GPU (the pending ones 8 or
12): the extender then tracks each node's free CPU, and nodes alike in their GPUs differ in
it, so fewer changed rows are found among the states seen before (see docs/extender.md,
"Verdicts by row state").

``--pinned``: half the nodes hold A100s, half H100s, and the pending pods are pinned by
required node affinity on ``gpupack.io/gpu.product`` to A100s, to A100s or H100s, or not at
all, in turn (model pins split the fleet: fewer rows alike). ``--hinted``: time-sliced H100s
of 4 shares, 60 % held by shares with memory hints of 8, 16 or 20 GiB, the pending pods one
hinted share each.

``--policies null`` times the extender's HTTP edge with no decision behind it (every node
fits, every score 0): what any extender behind it pays plus the client's own work, the
baseline the policies' rows compare with.

``--client go`` sends the requests through kube-scheduler's own extender client instead
(``tests/e2e/go/benchclient``: ``k8s.io/kubernetes/pkg/scheduler.NewHTTPExtender``, its Go
transport and JSON), built with ``go build`` on first use (needs Go and the module proxy, as
the end-to-end tests do): the decisions per second an extender gets from a real
kube-scheduler client on the same two cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402

from gpupack import contract  # noqa: E402

GPUS = 8
OCCUPIED = 0.60


H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"


def _node(name: str, resource: str, replicas: int, cpu: int = 0, model: str = H100) -> dict[str, Any]:
    inv = contract.Inventory(name, tuple(
        contract.Gpu(id=f"GPU-{name}-{i}", index=i, vendor="nvidia", model=model, memory_mib=81559,
                     numa_node=i // 4, links=tuple(contract.Link(p, 18) for p in range(GPUS) if p != i),
                     resource=resource, replicas=replicas)
        for i in range(GPUS)))
    node: dict[str, Any] = {"kind": "Node", "metadata": {"name": name, "annotations": {contract.INVENTORY_ANNOTATION: contract.encode_inventory(inv)}}}
    if cpu:
        node["status"] = {"allocatable": {"cpu": str(cpu), "memory": "1Ti"}}
    return node


def _pod(uid: str, node: str, resource: str, ids: list[str], cpu: int = 0, memory_gib: int = 0) -> dict[str, Any]:
    res: dict[str, Any] = {"limits": {resource: str(len(ids))}}
    if cpu:
        res["requests"] = {"cpu": str(cpu)}
    annotations = {contract.DEVICES_ANNOTATION: contract.encode_assignment({"c": {resource: ids}})}
    if memory_gib:
        annotations[contract.GPU_MEMORY_ANNOTATION] = f"{memory_gib}Gi"
    return {"kind": "Pod", "metadata": {"name": uid, "namespace": "bench", "uid": uid, "annotations": annotations},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": res}]},
            "status": {"phase": "Running"}}


def whole_gpu_pods(nodes: int, rng: random.Random, cpu: bool = False) -> Iterator[dict[str, Any]]:
    """Per node, pods of 4, 2 and 1 GPUs until about 60 % of its GPUs are held; with ``cpu``,
    each asks 8, 12 or 16 cores per GPU (the node has 96 cores, 12 per GPU)."""
    for n in range(nodes):
        name = f"node-{n:05d}"
        target = min(GPUS, max(0, round(rng.gauss(OCCUPIED * GPUS, 2))))
        i = 0
        while i < target:
            size = min(rng.choice((1, 1, 2, 4)), target - i)
            yield _pod(f"{name}-p{i}", name, contract.NVIDIA_GPU, [f"GPU-{name}-{g}" for g in range(i, i + size)],
                       cpu=size * rng.choice((8, 12, 16)) if cpu else 0)
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


#: memory hints of the ``hinted`` mix's shares, GiB (an H100 of 80 GiB, 4 shares)
HINTS_GIB = (8, 16, 20)


def hinted_share_pods(nodes: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """Per GPU (4 shares), one-share pods with memory hints of 8, 16 or 20 GiB until about 60 %
    of the shares are held, never past the GPU's memory."""
    for n in range(nodes):
        name = f"node-{n:05d}"
        for g in range(GPUS):
            used = 0
            for r in range(sum(rng.random() < OCCUPIED for _ in range(4))):
                hint = rng.choice(HINTS_GIB)
                if used + hint > 79:
                    break
                used += hint
                yield _pod(f"{name}-g{g}-s{r}", name, contract.NVIDIA_GPU_SHARED,
                           [contract.share_id(f"GPU-{name}-{g}", r)], memory_gib=hint)


def null_app(cache: Any) -> Any:
    """The extender's HTTP edge with no decision behind it: filter lets every node through,
    prioritize gives every node 0. Timed with the same client, it is the floor any extender
    behind this edge pays (request parsing, answer writing) plus the client's own work."""
    import numpy

    from scheduler_ext.decide import Decider
    from scheduler_ext.metrics import Metrics
    from scheduler_ext.server import ExtenderApp, Raw, host_priorities

    class NullApp(ExtenderApp):
        def filter(self, args: dict[str, Any]) -> Any:
            return {"Nodes": None, "NodeNames": args.get("NodeNames") or [], "FailedNodes": {},
                    "FailedAndUnresolvableNodes": {}, "Error": ""}

        def prioritize(self, args: dict[str, Any]) -> Raw:
            names = args.get("NodeNames") or []
            return Raw(host_priorities(names, numpy.zeros(len(names), numpy.int64)))

    return NullApp(cache, Decider(cache), None, Metrics(cache))


def serve(nodes: int, mode: str, pods: int, policy: str, port_q: Any) -> None:
    from scheduler_ext.cache import ClusterCache
    from scheduler_ext.decide import Decider
    from scheduler_ext.main import freeze_heap, tune_malloc
    from scheduler_ext.metrics import Metrics
    from scheduler_ext.server import ExtenderApp, serve as start

    if policy == "null":
        srv, thread = start(null_app(ClusterCache()), "127.0.0.1", 0)
        port_q.put((srv.server_address[1], (nodes, 0)))
        thread.join()
        return
    tune_malloc()  # as main does
    rng = random.Random(7)
    cache = ClusterCache(rows=nodes)
    if mode in ("whole", "whole-cpu", "pinned"):
        cpu = mode == "whole-cpu"
        # pinned: half the nodes A100s, half H100s (the pending pods pin to one or to both)
        model = (lambda n: A100 if n % 2 else H100) if mode == "pinned" else (lambda n: H100)
        cache.replace_nodes(_node(f"node-{n:05d}", contract.NVIDIA_GPU, 1, cpu=96 if cpu else 0, model=model(n))
                            for n in range(nodes))
        cache.replace_pods(whole_gpu_pods(nodes, rng, cpu=cpu))
    elif mode == "hinted":
        cache.replace_nodes(_node(f"node-{n:05d}", contract.NVIDIA_GPU_SHARED, 4) for n in range(nodes))
        cache.replace_pods(hinted_share_pods(nodes, rng))
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


def pending_pod(i: int, resource: str, count: int, cpu: int = 0, models: tuple[str, ...] = (),
                memory_gib: int = 0) -> dict[str, Any]:
    """A pending pod; ``models``: pinned to those GPU products by required node affinity (the
    device plugin's ``gpupack.io/gpu.product`` label); ``memory_gib``: a share's memory hint."""
    requests = {resource: str(count), **({"cpu": str(cpu)} if cpu else {})}
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "x", "resources": {"limits": {resource: str(count)}, "requests": requests}}]}
    if models:
        term = {"matchExpressions": [{"key": contract.LABEL_PRODUCT, "operator": "In",
                                      "values": [contract.label_value(m) for m in models]}]}
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}
    annotations = {contract.GPU_MEMORY_ANNOTATION: f"{memory_gib}Gi"} if memory_gib else {}
    return {"metadata": {"name": f"want-{i}", "namespace": "bench", "uid": f"want-{i}", "creationTimestamp": None,
                         "annotations": annotations},
            "spec": spec, "status": {}}


#: the ``pinned`` mix's pending pods, in turn: pinned to A100s, to A100s or H100s, not pinned
PINS: tuple[tuple[str, ...], ...] = ((A100,), (A100, H100), ())


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUP = 20


def go_client() -> str:
    """Builds tests/e2e/go/benchclient (Go's build cache makes a rebuild of unchanged sources
    quick) and returns the binary's path."""
    out = os.path.join(os.environ.get("GPUPACK_BIN_CACHE", os.path.expanduser("~/.cache/gpupack/bin")), "benchclient")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly"}
    subprocess.run(["go", "build", "-trimpath", "-o", out, "./benchclient"], cwd=os.path.join(ROOT, "tests", "e2e", "go"),
                   env=env, check=True)
    return out


def drive_with_go(binary: str, port: int, names: list[str], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """Filter then prioritize for each pod through kube-scheduler's extender client."""
    spec = {"url": f"http://127.0.0.1:{port}", "nodes": names, "pods": pods, "warmup": WARMUP}
    done = subprocess.run([binary], input=orjson.dumps(spec), capture_output=True)
    if done.returncode:
        raise SystemExit(f"benchclient failed: {done.stderr.decode(errors='replace').strip()}")
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def run(nodes: int, decisions: int, mode: str = "whole", pods: int = 0, policy: str = "binpack",
        candidates: int = 0, go_binary: str = "") -> dict[str, Any]:
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
    resource = contract.NVIDIA_GPU_SHARED if mode in ("shares", "hinted") else contract.NVIDIA_GPU
    if mode == "hinted":  # one share each, with a memory hint
        pending = [pending_pod(i, resource, 1, memory_gib=HINTS_GIB[i % 3]) for i in range(decisions + WARMUP)]
    else:
        gpus = [2 if i % 3 == 0 else 1 for i in range(decisions + WARMUP)]
        pending = [pending_pod(i, resource, g, cpu=g * (8 if i % 2 else 12) if mode == "whole-cpu" else 0,
                               models=PINS[i % 4 % 3] if mode == "pinned" else ())
                   for i, g in enumerate(gpus)]
    measured = drive_with_go(go_binary, port, names, pending) if go_binary else drive_with_python(port, names, pending)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    conn.close()

    def server_total(what: str, verb: str = "") -> float:
        return sum(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith(f"gpupack_extender_request_seconds_{what}") and f'verb="{verb}' in line)

    server_s, server_n = server_total("sum"), server_total("count")
    server_verbs = {f"server_{v}_mean_ms": round(server_total("sum", v) / max(server_total("count", v), 1) * 1e3, 2)
                    for v in ("filter", "prioritize")}
    rss = peak_rss_mib(proc.pid) if proc.pid is not None else float("nan")
    proc.kill()
    proc.join()
    by_verb = {"filter": measured["filter_ms"], "prioritize": measured["prioritize_ms"]}
    lat = sorted(by_verb["filter"] + by_verb["prioritize"])
    wall = measured["wall_s"]
    pct = {f"{verb}_p50_p99_ms": [round(statistics.median(v), 2), round(sorted(v)[int(0.99 * (len(v) - 1))], 2)]
           for verb, v in by_verb.items()}
    return {
        "nodes": n_nodes, "candidates": len(names), "gpu_pods_in_cache": n_pods, "pods_fed": pods or None, "mode": mode, "policy": policy,
        "client": "go" if go_binary else "python", "build_s": round(build_s, 1),
        "p50_ms": round(statistics.median(lat), 2), "p99_ms": round(lat[int(0.99 * (len(lat) - 1))], 2),
        **pct,
        "server_mean_ms": round(server_s / max(server_n, 1) * 1e3, 2),  # handling only, from /metrics
        **server_verbs,
        "requests_per_s": round(len(lat) / wall), "decisions_per_s": round(decisions / wall),
        # the client's own CPU per decision: what it takes from the two cores the server shares
        "client_cpu_ms_per_decision": round(measured["cpu_s"] / decisions * 1e3, 2),
        "server_peak_rss_mib": round(rss), "fitting_nodes_mean": round(statistics.mean(measured["fitting"])),
    }


def drive_with_python(port: int, names: list[str], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """Filter then prioritize for each pod over one keep-alive connection (http.client, orjson);
    the same result as :func:`drive_with_go`. A request's latency is the HTTP exchange: the
    client's JSON encoding and decoding are outside it (the Go client's include kube-scheduler's
    own), and inside the wall and CPU time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(path: str, body: bytes) -> tuple[Any, float]:
        start = time.perf_counter()
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        took = (time.perf_counter() - start) * 1e3
        assert resp.status == 200, data[:200]
        return orjson.loads(data), took

    out: dict[str, Any] = {"filter_ms": [], "prioritize_ms": [], "fitting": []}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i, pod in enumerate(pods):
        if i == WARMUP:
            out = {"filter_ms": [], "prioritize_ms": [], "fitting": []}
            wall0, cpu0 = time.perf_counter(), time.process_time()
        result, took_f = call("/filter", orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names}))
        _, took_p = call("/prioritize", orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": result["NodeNames"]}))
        if i >= WARMUP:
            out["filter_ms"].append(took_f)
            out["prioritize_ms"].append(took_p)
            out["fitting"].append(len(result["NodeNames"]))
    out["wall_s"] = time.perf_counter() - wall0
    out["cpu_s"] = time.process_time() - cpu0
    conn.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", default="1000,5000,10000")
    p.add_argument("--decisions", type=int, default=400)
    p.add_argument("--policies", default="binpack,fragmentation",
                   help="policies to time; 'null' times the HTTP edge alone (every node fits, every score 0)")
    p.add_argument("--realistic", action="store_true", help="also 5,000 nodes with 500 candidates per call")
    p.add_argument("--memory-pods", type=int, default=150_000, help="0 skips the memory run")
    p.add_argument("--cpu", dest="mode", action="store_const", const="whole-cpu", default="whole",
                   help="nodes of 96 cores whose pods ask 8 to 16 cores per GPU: CPU tracked, so kept verdicts by "
                        "row state find fewer nodes alike")
    p.add_argument("--pinned", dest="mode", action="store_const", const="pinned",
                   help="half the nodes A100s, half H100s; pending pods pinned by node affinity to A100s, to "
                        "A100s or H100s, or not at all, in turn")
    p.add_argument("--hinted", dest="mode", action="store_const", const="hinted",
                   help="time-sliced H100s (4 shares) 60 %% held by shares with memory hints of 8, 16 or 20 GiB; "
                        "pending pods ask one share with such a hint")
    p.add_argument("--client", choices=("python", "go"), default="python",
                   help="go: kube-scheduler's own extender client (built from tests/e2e/go/benchclient)")
    args = p.parse_args()
    policies = args.policies.split(",")
    go_binary = go_client() if args.client == "go" else ""
    print(f"# {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, policies {policies}, client {args.client}")
    for policy in policies:
        for n in (int(x) for x in args.sizes.split(",") if x):
            print(json.dumps(run(n, args.decisions, mode=args.mode, policy=policy, go_binary=go_binary)), flush=True)
        if args.realistic:
            # kube-scheduler's percentageOfNodesToScore default at 5,000 nodes: 50 - 5000/125 = 10 %
            print(json.dumps(run(5000, args.decisions, mode=args.mode, policy=policy, candidates=500,
                                 go_binary=go_binary)), flush=True)
    if args.memory_pods:
        print(json.dumps(run(5000, args.decisions // 2, mode="shares", pods=args.memory_pods, policy=policies[0],
                             go_binary=go_binary)), flush=True)


if __name__ == "__main__":
    main()
