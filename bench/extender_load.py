"""Benchmark: the extender's HTTP edge under abuse, on loopback. Prints figures; not a test.

A server process serves as ``gpupack-extender`` does (``tune_malloc``, the shipped
:class:`scheduler_ext.server.Limits` unless flags say otherwise) from a cache of ``--nodes``
realistic 8-GPU nodes, 60 % of their GPUs held. This process plays kube-scheduler's
scheduling cycle, one keep-alive connection sending ``filter`` then ``prioritize`` for a
pending 1- or 2-GPU pod with every node a candidate (``nodeCacheCapable: true``), and
measures those requests' p50 / p99 in four phases of ``--decisions`` decisions each:

- ``quiet``: nothing else;
- ``slow clients``: ``--slow`` connections that each send half a request and stall, held
  open until the server drops them (``--read-timeout`` after their first byte);
- ``large bodies``: a second connection sends, one after another, a filter with every one of
  ``--full-nodes`` Nodes in full (``nodeCacheCapable: false``: the largest real request), and
  a body over ``--max-body-bytes`` (refused with 413 from its Content-Length);
- ``both``: slow clients and large bodies at once.

Then it reports the slow clients' fate (answered 408 and closed), the large requests'
answers, the connections turned away past ``--max-connections``, and the server's memory
(baseline, after each phase: ``/proc/<pid>/statm``; peak: ``VmHWM``).

``--sizes`` only measures the body of a filter with 5,000 full Nodes as kube-scheduler
would send it: what :data:`scheduler_ext.server.DEFAULT_MAX_BODY` is sized from.

    .venv/bin/python bench/extender_load.py [--nodes 1000] [--decisions 300] [--slow 200] [--full-nodes 5000]
    .venv/bin/python bench/extender_load.py --sizes
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import multiprocessing
import os
import selectors
import socket
import statistics
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402

from gpupack import contract  # noqa: E402

GPUS = 8
OCCUPIED = 0.60
_IMAGES = [("nvcr.io/nvidia/tritonserver", "24.05-py3", 15_800_000_000), ("nvcr.io/nvidia/pytorch", "24.05-py3", 21_000_000_000),
           ("vllm/vllm-openai", "v0.5.0", 9_600_000_000), ("nvcr.io/nvidia/k8s/dcgm-exporter", "3.3.5-3.4.1-ubuntu22.04", 1_400_000_000)]


def _hex(seed: str, n: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


def _uuid(seed: str) -> str:
    h = _hex(seed, 32)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def node_name(i: int) -> str:
    return f"gpu-node-{i:05d}.us-east-1.compute.internal"


def kube_node(i: int) -> dict[str, Any]:
    """Node ``i`` as kube-scheduler's informer holds it and sends it with ``nodeCacheCapable:
    false`` (managedFields stripped, as kube-scheduler's informers do): an 8 x H100 node with
    NVLink, the labels a cloud provider, GPU feature discovery and node feature discovery set,
    gpupack's inventory annotation and labels, a taint, and the status the kubelet reports
    (capacity, conditions, addresses, nodeInfo, and 50 images: kubelet's nodeStatusMaxImages)."""
    name = node_name(i)
    zone = f"us-east-1{'abc'[i % 3]}"
    inv = contract.Inventory(name, tuple(
        contract.Gpu(id=f"GPU-{_uuid(name + str(g))}", index=g, vendor="nvidia", model="NVIDIA H100 80GB HBM3",
                     memory_mib=81559, numa_node=g // 4, links=tuple(contract.Link(p, 18) for p in range(GPUS) if p != g),
                     resource=contract.NVIDIA_GPU, replicas=1)
        for g in range(GPUS)))
    labels = {
        "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "p5.48xlarge", "beta.kubernetes.io/instance-type": "p5.48xlarge",
        "topology.kubernetes.io/region": "us-east-1", "topology.kubernetes.io/zone": zone,
        "failure-domain.beta.kubernetes.io/region": "us-east-1", "failure-domain.beta.kubernetes.io/zone": zone,
        "topology.ebs.csi.aws.com/zone": zone, "k8s.io/cloud-provider-aws": _hex(name, 32),
        "eks.amazonaws.com/nodegroup": "gpu-h100", "eks.amazonaws.com/capacityType": "ON_DEMAND",
        "eks.amazonaws.com/nodegroup-image": "ami-0123456789abcdef0",
        "eks.amazonaws.com/sourceLaunchTemplateId": "lt-0123456789abcdef0",
        "nvidia.com/cuda.driver.major": "550", "nvidia.com/cuda.driver.minor": "54", "nvidia.com/cuda.driver.rev": "15",
        "nvidia.com/cuda.runtime.major": "12", "nvidia.com/cuda.runtime.minor": "4", "nvidia.com/gfd.timestamp": "1718000000",
        "nvidia.com/gpu.compute.major": "9", "nvidia.com/gpu.compute.minor": "0", "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.family": "hopper", "nvidia.com/gpu.machine": "p5.48xlarge", "nvidia.com/gpu.memory": "81559",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.replicas": "1", "nvidia.com/mig.capable": "true",
        "nvidia.com/mig.strategy": "single", "nvidia.com/mps.capable": "false",
        "feature.node.kubernetes.io/pci-10de.present": "true",
        "feature.node.kubernetes.io/kernel-version.full": "5.10.217-205.860.amzn2.x86_64",
        **contract.inventory_labels(inv),
    }
    ip = f"10.0.{i // 250}.{i % 250}"
    annotations = {
        contract.INVENTORY_ANNOTATION: contract.encode_inventory(inv),
        "alpha.kubernetes.io/provided-node-ip": ip,
        "csi.volume.kubernetes.io/nodeid": '{"ebs.csi.aws.com":"i-' + _hex(name, 17) + '"}',
        "node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        "nfd.node.kubernetes.io/feature-labels":
            "cpu-cpuid.ADX,cpu-cpuid.AESNI,cpu-cpuid.AVX,cpu-cpuid.AVX2,cpu-cpuid.AVX512BW,pci-10de.present",
    }
    t = "2024-06-10T12:00:00Z"
    conditions = [{"type": kind, "status": status, "lastHeartbeatTime": t, "lastTransitionTime": t, "reason": reason,
                   "message": message} for kind, status, reason, message in [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "kubelet is posting ready status")]]
    images = []
    for k in range(50):
        repo, tag, size = _IMAGES[k % len(_IMAGES)]
        repo = f"{repo}-{k}" if k >= len(_IMAGES) else repo
        images.append({"names": [f"{repo}@sha256:{_hex(repo + str(k), 64)}", f"{repo}:{tag}"], "sizeBytes": size + k})
    capacity = {"cpu": "192", "ephemeral-storage": "3748905244Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
                "memory": "2097152000Ki", "nvidia.com/gpu": "8", "pods": "110", "vpc.amazonaws.com/efa": "32"}
    return {
        "metadata": {"name": name, "uid": _uuid(name), "resourceVersion": str(1000000 + i), "creationTimestamp": t,
                     "labels": labels, "annotations": annotations},
        "spec": {"providerID": f"aws:///{zone}/i-{_hex(name, 17)}", "podCIDR": f"10.1.{i % 256}.0/24",
                 "podCIDRs": [f"10.1.{i % 256}.0/24"],
                 "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": dict(capacity, cpu="191450m", memory="2090000000Ki"),
                   "conditions": conditions,
                   "addresses": [{"type": "InternalIP", "address": ip}, {"type": "InternalDNS", "address": name},
                                 {"type": "Hostname", "address": name}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                   "nodeInfo": {"machineID": _hex(name + "m", 32), "systemUUID": _uuid(name + "s").upper(),
                                "bootID": _uuid(name + "b"), "kernelVersion": "5.10.217-205.860.amzn2.x86_64",
                                "osImage": "Amazon Linux 2", "containerRuntimeVersion": "containerd://1.7.11",
                                "kubeletVersion": "v1.30.0-eks-036c24b", "kubeProxyVersion": "v1.30.0-eks-036c24b",
                                "operatingSystem": "linux", "architecture": "amd64"},
                   "images": images},
    }


def pending_pod(i: int, count: int) -> dict[str, Any]:
    return {"metadata": {"name": f"want-{i}", "namespace": "bench", "uid": f"want-{i}", "creationTimestamp": None},
            "spec": {"containers": [{"name": "c", "image": "x", "resources": {
                "limits": {contract.NVIDIA_GPU: str(count)}, "requests": {contract.NVIDIA_GPU: str(count)}}}]},
            "status": {}}


def full_nodes_body(nodes: list[dict[str, Any]]) -> bytes:
    """A filter's ExtenderArgs as kube-scheduler writes it with ``nodeCacheCapable: false``."""
    return orjson.dumps({"Pod": pending_pod(0, 1), "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None})


def _held_pods(nodes: int) -> list[dict[str, Any]]:
    pods = []
    for n in range(nodes):
        name = node_name(n)
        for g in range(round(GPUS * OCCUPIED) if n % 5 else GPUS):
            device = f"GPU-{_uuid(name + str(g))}"
            pods.append({"metadata": {"name": f"{n}-{g}", "namespace": "bench", "uid": f"held-{n}-{g}",
                                      "annotations": {contract.DEVICES_ANNOTATION: contract.encode_assignment(
                                          {"c": {contract.NVIDIA_GPU: [device]}})}},
                         "spec": {"nodeName": name, "containers": [{"name": "c", "resources": {
                             "limits": {contract.NVIDIA_GPU: "1"}}}]},
                         "status": {"phase": "Running"}})
    return pods


def serve(nodes: int, limits: dict[str, Any], port_q: Any) -> None:
    from scheduler_ext.cache import ClusterCache
    from scheduler_ext.decide import Decider
    from scheduler_ext.main import freeze_heap, tune_malloc
    from scheduler_ext.metrics import Metrics
    from scheduler_ext.server import ExtenderApp, Limits, serve as start

    tune_malloc()  # as main does
    cache = ClusterCache(rows=nodes)
    cache.replace_nodes(kube_node(n) for n in range(nodes))
    cache.replace_pods(_held_pods(nodes))
    freeze_heap()
    srv, thread = start(ExtenderApp(cache, Decider(cache, "fragmentation", holds=True), None, Metrics(cache)),
                        "127.0.0.1", 0, limits=Limits(**limits))
    port_q.put(srv.server_address[1])
    thread.join()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[int(q * (len(s) - 1))] if s else float("nan")


class SlowClients:
    """Connections that each send half a request and stall; the server should answer 408 and
    close them once its read timeout has passed."""

    def __init__(self, port: int, count: int) -> None:
        self.socks: list[socket.socket] = []
        self.failed_to_connect = 0
        half = b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"Pod\":"
        for _ in range(count):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(half)
                self.socks.append(s)
            except OSError:
                self.failed_to_connect += 1

    def outcome(self, deadline_s: float) -> dict[str, int]:
        """Waits (on the sockets, up to ``deadline_s``) until the server has closed each."""
        sel = selectors.DefaultSelector()
        for s in self.socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, bytearray())
        got = {"answered_408": 0, "turned_away_503": 0, "closed_without_answer": 0, "still_open": 0}
        end = time.monotonic() + deadline_s
        while sel.get_map() and time.monotonic() < end:
            for key, _ in sel.select(timeout=max(end - time.monotonic(), 0)):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    key.data.extend(data)
                    continue
                text = bytes(key.data)
                got["answered_408" if text.startswith(b"HTTP/1.1 408") else
                    "turned_away_503" if text.startswith(b"HTTP/1.1 503") else "closed_without_answer"] += 1
                sel.unregister(sock)
                sock.close()
        got["still_open"] = len(sel.get_map())
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        return got


class LargeBodies(threading.Thread):
    """One connection after another sending the largest real request, then one over the limit."""

    def __init__(self, port: int, body: bytes, max_body: int) -> None:
        super().__init__(daemon=True)
        self.port, self.body, self.max_body = port, body, max_body
        self.stop = threading.Event()
        self.answers: dict[str, int] = {}
        self.seconds: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                conn.request("POST", "/filter", self.body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                key = f"full-nodes {resp.status}"
            except OSError as err:
                key = f"full-nodes {type(err).__name__}"
            finally:
                conn.close()
            self.seconds.append(time.perf_counter() - t)
            self.answers[key] = self.answers.get(key, 0) + 1
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                s.sendall(f"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: {self.max_body + 1}\r\n\r\n".encode())
                status = s.recv(100).split(b" ")[1].decode()
                s.close()
                key = f"over-limit {status}"
            except (OSError, IndexError) as err:
                key = f"over-limit {type(err).__name__}"
            self.answers[key] = self.answers.get(key, 0) + 1


def decisions(port: int, names: list[str], count: int, start: int) -> tuple[list[float], list[float], int]:
    """``count`` filter + prioritize pairs over one keep-alive connection; latencies in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    filt: list[float] = []
    prio: list[float] = []
    errors = 0
    names_json = orjson.dumps(names)
    for i in range(start, start + count):
        pod = orjson.dumps(pending_pod(i, 2 if i % 3 == 0 else 1))
        body = b'{"Pod":' + pod + b',"Nodes":null,"NodeNames":' + names_json + b"}"
        for verb, out in (("/filter", filt), ("/prioritize", prio)):
            t = time.perf_counter()
            conn.request("POST", verb, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            out.append((time.perf_counter() - t) * 1e3)
            if resp.status != 200:
                errors += 1
            elif verb == "/filter":
                body = b'{"Pod":' + pod + b',"Nodes":null,"NodeNames":' + orjson.dumps(orjson.loads(data)["NodeNames"]) + b"}"
    conn.close()
    return filt, prio, errors


def main() -> None:
    from scheduler_ext.server import Limits

    shipped = Limits()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000, help="nodes in the server's cache and in each normal request")
    p.add_argument("--decisions", type=int, default=300, help="filter + prioritize pairs per phase")
    p.add_argument("--slow", type=int, default=200, help="stalled half-requests per slow phase")
    p.add_argument("--full-nodes", type=int, default=5000, help="Nodes in full in each large request")
    p.add_argument("--read-timeout", type=float, default=shipped.read_timeout)
    p.add_argument("--max-connections", type=int, default=shipped.max_connections)
    p.add_argument("--max-body-bytes", type=int, default=shipped.max_body)
    p.add_argument("--sizes", action="store_true", help="only measure the body of a filter with 5,000 full Nodes")
    args = p.parse_args()

    if args.sizes:
        t = time.perf_counter()
        body = full_nodes_body([kube_node(i) for i in range(5000)])
        one = len(orjson.dumps(kube_node(0)))
        print(f"one Node: {one} bytes; filter with 5,000 Nodes in full: {len(body)} bytes ({len(body) / 2**20:.1f} MiB); "
              f"twice that: {2 * len(body) / 2**20:.1f} MiB; DEFAULT_MAX_BODY: {shipped.max_body / 2**20:.0f} MiB "
              f"({shipped.max_body / len(body):.2f}x); built in {time.perf_counter() - t:.1f} s")
        return

    limits = {"read_timeout": args.read_timeout, "max_connections": args.max_connections, "max_body": args.max_body_bytes}
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=serve, args=(args.nodes, limits, q), daemon=True)
    proc.start()
    port = q.get(timeout=600)
    assert proc.pid is not None
    names = [node_name(n) for n in range(args.nodes)]
    big = full_nodes_body([kube_node(i) for i in range(args.full_nodes)])
    decisions(port, names, 20, 0)  # warm-up
    baseline = rss_mib(proc.pid)
    rows = []
    slow_outcomes: list[dict[str, int]] = []
    large_answers: dict[str, int] = {}
    large_seconds: list[float] = []
    start = 100
    for phase in ("quiet", "slow clients", "large bodies", "both"):
        slow = SlowClients(port, args.slow) if "slow" in phase or phase == "both" else None
        large = LargeBodies(port, big, args.max_body_bytes) if "large" in phase or phase == "both" else None
        if large:
            large.start()
        t = time.perf_counter()
        filt, prio, errors = decisions(port, names, args.decisions, start)
        wall = time.perf_counter() - t
        start += args.decisions
        if large:
            large.stop.set()
            large.join()
            for k, v in large.answers.items():
                large_answers[k] = large_answers.get(k, 0) + v
            large_seconds += large.seconds
        if slow:
            outcome = slow.outcome(args.read_timeout + 10)
            outcome["failed_to_connect"] = slow.failed_to_connect
            slow_outcomes.append(outcome)
        rows.append((phase, len(filt), round(statistics.median(filt), 2), round(_pct(filt, 0.99), 2),
                     round(statistics.median(prio), 2), round(_pct(prio, 0.99), 2), errors, round(wall, 1),
                     round(rss_mib(proc.pid))))
    after = rss_mib(proc.pid)
    peak = peak_rss_mib(proc.pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    conn.close()
    proc.kill()
    proc.join()

    print(f"cache: {args.nodes} nodes x {GPUS} GPUs; normal requests name all {args.nodes}; "
          f"large body: {len(big) / 2**20:.1f} MiB ({args.full_nodes} Nodes in full); limits {limits}")
    print(f"{'phase':<14} {'pairs':>5} {'filter p50':>10} {'filter p99':>10} {'prio p50':>9} {'prio p99':>9} "
          f"{'non-200':>7} {'wall s':>6} {'RSS after':>9}")
    for r in rows:
        print(f"{r[0]:<14} {r[1]:>5} {r[2]:>10} {r[3]:>10} {r[4]:>9} {r[5]:>9} {r[6]:>7} {r[7]:>6} {r[8]:>9}")
    print("slow clients per phase:", slow_outcomes)
    print("large requests:", large_answers, "seconds each (p50 / max):",
          f"{statistics.median(large_seconds):.2f} / {max(large_seconds):.2f}" if large_seconds else "-")
    print(f"server RSS MiB: baseline {baseline:.0f}, peak {peak:.0f}, after {after:.0f}")
    for line in metrics.splitlines():
        if line.startswith(("gpupack_extender_connections", "gpupack_extender_http_refused")) and not line.startswith("#"):
            print(" ", line)


if __name__ == "__main__":
    main()
