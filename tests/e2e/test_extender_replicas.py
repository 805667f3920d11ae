"""Scenario: several extender replicas, one truth for device assignments.

Every replica keeps its own cache; binds that race through different replicas must still
never give one device to two pods (each bind claims its devices in the node's ledger
ConfigMap, compare-and-swap on the real API server). And a replica killed in the middle of
a burst loses nothing: kube-scheduler retries the bind through another replica, and every
pod binds within a bounded time, each device once.

kube-scheduler reaches the replicas as it would through a Service: a round-robin TCP proxy
on loopback (:class:`RoundRobinProxy`), one backend per new connection, skipping backends
that refuse. The burst runs through a second kube-scheduler (profile ``gpupack-ha``) pointed
at the proxy, so the session's scheduler and extender are untouched.
"""

from __future__ import annotations

import collections
import contextlib
import json
import signal
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gpupack import contract

from . import cluster as harness
from . import workloads

pytestmark = pytest.mark.e2e

HA_SCHEDULER = "gpupack-ha"


class RoundRobinProxy:
    """A TCP proxy on 127.0.0.1: each accepted connection goes to the next backend port that
    accepts it (as a Service spreads connections over its endpoints)."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = list(backends)
        self._next = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.5)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self.connections: collections.Counter[int] = collections.Counter()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> RoundRobinProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _pick(self) -> socket.socket | None:
        with self._lock:
            order = [self.backends[(self._next + i) % len(self.backends)] for i in range(len(self.backends))]
            self._next += 1
        for port in order:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=2)
                conn.settimeout(None)
                with self._lock:
                    self.connections[port] += 1
                return conn
            except OSError:
                continue
        return None

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            backend = self._pick()
            if backend is None:
                client.close()
                continue
            for a, b in ((client, backend), (backend, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def start_replica(cluster: harness.Cluster, name: str) -> tuple[harness.Process, int]:
    port = harness.free_port()
    proc = harness.Process(
        f"gpupack-extender-{name}",
        [harness.console_script("gpupack-extender"), f"--kubeconfig={cluster.admin_kubeconfig}",
         f"--listen=127.0.0.1:{port}", f"--replica-name={name}", "--allow-unauthenticated"],
        cluster.logs,
    )
    cluster.processes.append(proc)
    proc.start()
    harness.wait_ready(proc, lambda: harness.http_ok(f"http://127.0.0.1:{port}/readyz"), f"{name} /readyz")
    return proc, port


@contextlib.contextmanager
def running_replicas(cluster: harness.Cluster, n: int = 3) -> Iterator[list[tuple[harness.Process, int]]]:
    """``n`` more extender replicas, each Ready (its cache has listed every node and pod)."""
    started: list[tuple[harness.Process, int]] = []
    try:
        for i in range(n):
            started.append(start_replica(cluster, f"r{i}"))
        yield started
    finally:
        for proc, _ in started:
            proc.stop()
            cluster.processes.remove(proc)


def post(port: int, path: str, body: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def annotated(cluster: harness.Cluster, namespace: str, names: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in names:
        pod = cluster.core.read_namespaced_pod(name, namespace)
        text = (pod.metadata.annotations or {}).get(contract.DEVICES_ANNOTATION)
        if text:
            out[name] = [d for per in contract.decode_assignment(text).values() for ids in per.values() for d in ids]
    return out


def test_readiness_names_the_replica(cluster: harness.Cluster) -> None:
    with running_replicas(cluster, 2) as replicas:
        for i, (_, port) in enumerate(replicas):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as resp:
                text = resp.read().decode()
            assert f"replica r{i}" in text, text


@pytest.mark.parametrize("racers, gpus, resource", [
    (2, 1, contract.NVIDIA_GPU),  # one free GPU, two replicas: one pod binds
    (3, 2, contract.NVIDIA_GPU),  # two free GPUs, three replicas: two bind, on distinct GPUs
    (3, 1, contract.NVIDIA_GPU_SHARED),  # one GPU of 4 shares: three bind, on distinct shares
], ids=["2-replicas-1-gpu", "3-replicas-2-gpus", "3-replicas-shares"])
def test_binds_racing_through_replicas_never_give_a_device_twice(
    cluster: harness.Cluster, group: str, namespace: str, racers: int, gpus: int, resource: str,
) -> None:
    name = f"{group}-n"
    inventory = workloads.nvswitch_machine(name, count=gpus)
    args: list[str] = []
    if resource == contract.NVIDIA_GPU_SHARED:
        config = cluster.work / f"{name}-sharing.yaml"
        config.write_text(yaml.safe_dump({"version": "v1", "sharing": {"timeSlicing": {
            "renameByDefault": True, "resources": [{"name": contract.NVIDIA_GPU, "replicas": 4}]}}}))
        args = [f"--config={config}"]
    node = cluster.add_node(name, group, inventory, plugin_args=args)
    node.wait_allocatable({resource: gpus * (4 if resource == contract.NVIDIA_GPU_SHARED else 1)})
    cluster.wait_node(name, lambda n: (n.metadata.annotations or {}).get(contract.INVENTORY_ANNOTATION),
                      "the inventory annotation", timeout_s=30)
    # the pods wait for a scheduler that does not exist; the test binds them itself
    names = [f"race-{i}" for i in range(racers)]
    uids = {}
    for n in names:
        body = workloads.gpu_pod(n, group, {resource: 1})
        body["spec"]["schedulerName"] = "nobody"
        uids[n] = cluster.core.create_namespaced_pod(namespace, body).metadata.uid
    # replicas started now are Ready only once their caches hold the node and the pods
    with running_replicas(cluster, racers) as replicas:
        errors = race(replicas, names, uids, namespace, name)
    bound = [n for n, e in errors.items() if e == ""]
    expected = min(racers, gpus * (4 if resource == contract.NVIDIA_GPU_SHARED else 1))
    assert len(bound) == expected, errors
    given = annotated(cluster, namespace, names)
    assert set(given) == set(bound)
    ids = [d for n in bound for d in given[n]]
    assert len(ids) == len(set(ids)) == expected, given
    # the pods that bound run with exactly their annotated devices
    pods = cluster.wait_pods(namespace, workloads.all_running(namespace, bound), "the bound pods Running")
    workloads.check_allocations(cluster, pods.values(), exact=False)


def race(replicas: list[tuple[harness.Process, int]], names: list[str], uids: dict[str, str], namespace: str,
         node: str) -> dict[str, str]:
    """Binds pod i through replica i, all at once; the errors by pod ("" = bound)."""
    start = threading.Barrier(len(names))
    errors: dict[str, str] = {}

    def bind(i: int) -> None:
        start.wait(timeout=30)
        out = post(replicas[i][1], "/bind", {"PodName": names[i], "PodNamespace": namespace,
                                             "PodUID": uids[names[i]], "Node": node})
        errors[names[i]] = str(out.get("Error", ""))

    threads = [threading.Thread(target=bind, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a bind did not answer"
    return errors


def test_a_replica_killed_mid_burst_loses_nothing(cluster: harness.Cluster, group: str, namespace: str) -> None:
    with running_replicas(cluster, 3) as replicas:
        burst_with_a_replica_killed(cluster, group, namespace, replicas)


def burst_with_a_replica_killed(cluster: harness.Cluster, group: str, namespace: str,
                                replicas: list[tuple[harness.Process, int]]) -> None:
    proxy = RoundRobinProxy([port for _, port in replicas]).start()
    config = cluster.scheduler_config()
    for profile in config["profiles"]:
        profile["schedulerName"] = HA_SCHEDULER
    for extender in config["extenders"]:
        extender["urlPrefix"] = f"http://127.0.0.1:{proxy.port}"
    path = cluster.work / "kube-scheduler-ha.yaml"
    path.write_text(yaml.safe_dump(config))
    sched_port = harness.free_port()
    scheduler = harness.Process("kube-scheduler-ha", [
        str(cluster.bin / "kube-scheduler"), f"--config={path}", "--bind-address=127.0.0.1",
        f"--secure-port={sched_port}", f"--cert-dir={cluster.work / 'scheduler-ha-certs'}", "--v=2"], cluster.logs)
    cluster.processes.append(scheduler)
    scheduler.start()
    try:
        nodes = [cluster.add_node(f"{group}-n{i}", group, workloads.nvswitch_machine(f"{group}-n{i}", count=4))
                 for i in range(2)]
        for n in nodes:
            n.wait_allocatable({contract.NVIDIA_GPU: 4})
        names = [f"burst-{i}" for i in range(8)]
        for n in names:
            body = workloads.gpu_pod(n, group, {contract.NVIDIA_GPU: 1})
            body["spec"]["schedulerName"] = HA_SCHEDULER
            cluster.core.create_namespaced_pod(namespace, body)

        def some_bound(pods: dict[str, Any]) -> Any:
            return sum(1 for p in pods.values() if p.spec.node_name) >= 2

        cluster.wait_pods(namespace, some_bound, "the first binds of the burst", timeout_s=120)
        # kill the replica that carries kube-scheduler's connections, in the middle of the burst
        busiest = proxy.connections.most_common(1)[0][0]
        victim = next(proc for proc, port in replicas if port == busiest)
        victim.stop(signal.SIGKILL)
        pods = cluster.wait_pods(namespace, workloads.all_running(namespace, names),
                                 "every pod of the burst Running after a replica was killed", timeout_s=180)
        by_node = workloads.annotated_by_node(pods.values())
        for node_name, resources in by_node.items():
            ids = resources[contract.NVIDIA_GPU]
            assert len(ids) == len(set(ids)), f"{node_name}: a GPU annotated twice: {ids}"
        assert sum(len(r[contract.NVIDIA_GPU]) for r in by_node.values()) == 8
        workloads.check_allocations(cluster, pods.values(), exact=False)
    finally:
        scheduler.stop()
        cluster.processes.remove(scheduler)
        proxy.stop()
