"""Benchmark: pods bound per second by the real kube-scheduler, with and without gpupack. Prints figures; not a test.

On the e2e harness's control plane (``tests/e2e/cluster.py``: etcd and kube-apiserver from the
cached binaries of ``tests/e2e/build_control_plane.sh``, its certificates and process handling),
one cluster per node count:

1. ``--nodes`` Node objects as the device plugin publishes them, without a node agent each:
   the inventory annotation and GPU labels from the plugin's own code (the fake backend's
   discovery over ``tests/e2e/workloads.nvswitch_machine``, ``device_plugin.resources.plan``,
   ``device_plugin.kube.node_patch``), capacity and allocatable from
   ``device_plugin.resources.advertise``, status Ready (no controller runs to change it). A
   fleet of 3/8 8x A100-80GB, 2/8 8x H100 (whole GPUs), 2/8 8x H100 time-sliced 4 ways
   (``nvidia.com/gpu.shared``) and 1/8 CPU-only nodes; 128 CPUs, 1 TiB, 250 pods each.
2. Per round, per configuration (interleaved: none, null, gpupack, none, ...), a FRESH
   kube-scheduler with ``deploy/scheduler/kube-scheduler-config.yaml`` (leader election off,
   the address and the certificate files changed, as the e2e tests do):

   - ``none``: the profile without the ``extenders`` section;
   - ``null``: both extender entries pointing at ``bench/_nullextender.py`` (gpupack's HTTP
     edge, TLS and client CA included, deciding nothing: every node fits, every score 0), with
     no ``bindVerb``/``preemptVerb`` (kube-scheduler's default binder binds);
   - ``gpupack``: a fresh ``gpupack-extender`` as shipped: the Deployment's environment
     (policy, holds, the filter's cap of 50 nodes, mutual TLS with the certificates ``scheduler_ext.certs.ensure`` makes, as
     the certificates Job does), the chart's ServiceAccount token, RBAC and admission policies
     applied for real (``tests/e2e/accounts.py``), and kube-scheduler's ``tlsConfig`` with
     ``serverName`` the Service's name.
   - ``gate``: the same ``gpupack-extender`` with ``GPUPACK_EXTENDER_PLACEMENT=gate``, a
     kube-scheduler as in ``none``, and every pod created with the ``gpupack.io/placement``
     scheduling gate (what the chart's admission policy adds): gpupack pins each pod to its node and
     devices and ungates it, kube-scheduler binds it.

   It creates ``--pods`` pending pods of ``--mix`` (4 threads), watches them (an API watch,
   no sleeps) until every one is bound, and measures pods/s from the first create to the
   last bind seen, CPU seconds per pod of kube-scheduler, the extender, kube-apiserver and
   etcd (``/proc/<pid>/stat``), the extender's peak RSS (``VmHWM``: fresh process per
   configuration), the distinct nodes used; then deletes the pods (and gpupack's ledger
   ConfigMaps) and waits for them to be gone.

Mixes: ``whole`` (1, 2, 4, 8 whole GPUs), ``shares`` (one time-sliced share with a
``gpupack.io/gpu-memory`` hint of 8, 16 or 20 GiB), ``pinned`` (1 or 2 GPUs with a
``nodeSelector`` on ``gpupack.io/gpu.product`` = H100), ``cpu`` (1 CPU, 4 GiB), ``mixed``
(40 / 25 / 15 / 20 % of those). Pods get the e2e harness's CPU and memory per GPU.

``--bound-pods N`` first creates N pods already bound to the nodes (namespace ``bench-bound``,
as the workloads of a cluster in use), spread evenly over the nodes: on every other whole-GPU
node 8 pods holding one GPU each (the others stay free for 8-GPU pods), on each time-sliced
node 16 pods holding one share each (8 GiB hint), all with the ``gpupack.io/devices``
annotation of the devices they hold (as gpupack placed them), the rest CPU-only (100m, 256
MiB); so half the GPU capacity is held and every
configuration's scheduler and extender start by listing them: the extender's peak RSS is
then what a cluster of that many pods costs it.

Besides the table it prints, per configuration, kube-apiserver's requests per pod (its
``apiserver_request_total``), gpupack's server time per verb (its ``/metrics``) and what
kube-scheduler sent the null extender (names and bytes per call, and whether a candidate list
repeats a recent one as a set or also in its order). ``--configs ...,nulltop`` adds the null
extender with a filter that answers only its first ``--top`` names; ``gpupackall`` gpupack
with ``GPUPACK_EXTENDER_FILTER_TOP=0`` (every node that fits, as before the cap).

``--extender-cpu N`` gives the extenders (gpupack's and the null one) CPU N alone and runs
everything else (this benchmark, etcd, kube-apiserver, kube-scheduler) on the other CPUs, as
the kubelet's static CPU manager gives a pod with a whole-CPU request that requests equal its
limits: the decisions' figures are then those of an extender that never waits for a core. The
configurations without an extender have a CPU fewer, so pods/s are not comparable across
configurations in that mode.

``--py-spy PATH`` records the gpupack extender with py-spy (a separate install, e.g.
``python -m venv /tmp/pyspy-venv && /tmp/pyspy-venv/bin/pip install py-spy``; ``--gil``,
``--nonblocking``, 250 Hz) during each gpupack configuration and prints where its time went;
the raw stacks stay in ``--profile-dir``. Profiling costs CPU on the same cores: time with it
off. Results: docs/extender.md, "Throughput on the real control plane".

    .venv/bin/python bench/scheduler_throughput.py [--nodes 1000,5000] [--pods 500] [--rounds 2]
        [--mix mixed] [--configs none,null,gpupack] [--bound-pods 0] [--keep] [--py-spy /tmp/pyspy-venv/bin/py-spy]
        [--extender-cpu N]

Nothing in tests/e2e is changed: the harness's Cluster (minus the kube-scheduler and extender
it starts), Process, PKI, accounts and workloads are imported; the start of a TLS extender is
copied from test_extender_tls.py (its token pod would be scheduled by this benchmark's own
kube-scheduler, so here it is bound to the first node). Ctrl-C or SIGTERM stops every process
(the harness's teardown; its children also die with it); the folder is kept for its logs after
an error or an interrupt, removed otherwise.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import http.client
import importlib.metadata
import json
import os
import pathlib
import platform
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from device_plugin import kube as plugin_kube  # noqa: E402
from device_plugin import resources  # noqa: E402
from device_plugin.fakes.inventory import FakeFileBackend  # noqa: E402
from gpupack import contract  # noqa: E402
from scheduler_ext import certs, ledger  # noqa: E402
from tests.e2e import accounts  # noqa: E402
from tests.e2e import cluster as harness  # noqa: E402
from tests.e2e import workloads  # noqa: E402

CONFIGS = ("none", "null", "gpupack", "gate")
#: not in the default list: the null extender whose filter answers only its first --top names,
#: and gpupack with --filter-top 0 (every node that fits, not the shipped cap)
EXTRA_CONFIGS = ("nulltop", "gpupackall")
MIXES = ("whole", "shares", "pinned", "cpu", "mixed")
NAMESPACE = "bench"
BOUND_NAMESPACE = "bench-bound"  # --bound-pods: the cluster's running workloads
#: --bound-pods: per node, pods holding one whole GPU (every other A100 and H100 node) or one
#: share (time-sliced nodes)
BOUND_GPU_PODS = {"a100": 8, "h100": 8, "h100-shared": 16, "cpu": 0}
GROUP = "bench"  # the harness's group label, on every node; its pods select it
SERVICE_NAME = "gpupack-extender.kube-system.svc"  # what the serving certificate names
A100 = ("NVIDIA A100-SXM4-80GB", 81920)
H100 = ("NVIDIA H100 80GB HBM3", 81559)
SHARE_REPLICAS = 4
#: (kind, share of the fleet): a node i is of kind FLEET[i % 8]
FLEET = ("a100", "a100", "a100", "h100", "h100", "h100-shared", "h100-shared", "cpu")
NODE_CPU, NODE_MEMORY, NODE_PODS = "128", "1Ti", "250"
CREATE_THREADS = 4
PROGRESS_S = 5.0
#: a configuration gives up when no pod was bound for this long (a pod that fits nowhere)
STALL_S = 90.0
#: py-spy's sampling rate (--py-spy)
PROFILE_HZ = 250


class BenchError(RuntimeError):
    """Something the benchmark needs is missing or did not come up; the message says what."""


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- binaries: found in the cache, never built behind the user's back ------------------------


def find_binaries() -> pathlib.Path:
    """The folder build_control_plane.sh keeps the binaries in (its ``--folder``: the key is
    computed there only); without Go to compute it, the newest cache folder."""
    try:
        out = subprocess.run(["bash", str(harness.BUILD_SCRIPT), "--folder"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
        folder = pathlib.Path(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, IndexError):
        root = pathlib.Path(os.environ.get("GPUPACK_BIN_CACHE") or pathlib.Path.home() / ".cache" / "gpupack" / "bin")
        found = sorted(root.glob("k8s-*"), key=lambda p: p.stat().st_mtime)
        folder = found[-1] if found else root / "k8s-?"
    missing = [n for n in ("etcd", "kube-apiserver", "kube-scheduler", "kubectl") if not os.access(folder / n, os.X_OK)]
    if missing:
        raise BenchError(f"control plane binaries missing ({', '.join(missing)} not in {folder}): build them with "
                         f"`bash tests/e2e/build_control_plane.sh` (the first build compiles them from Go modules: see docs/e2e.md)")
    return folder


def versions(bin_dir: pathlib.Path) -> str:
    def first_line(argv: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
            return out.splitlines()[0] if out else "?"
        return "?"

    etcd = first_line([str(bin_dir / "etcd"), "--version"])
    # built from the Go module without version stamps: the pin is the version
    pin = re.search(r"k8s.io/kubernetes (v\S+)", (harness.HERE / "go" / "go.mod").read_text())
    sched = f"kube-scheduler/kube-apiserver k8s.io/kubernetes {pin.group(1) if pin else '?'}"
    libs = []
    for dist in ("gpupack", "numpy", "orjson"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            libs.append(f"{dist} {importlib.metadata.version(dist)}")
    return f"{sched}, {etcd}, CPython {platform.python_version()}, {', '.join(libs)}"


# --- the API, raw: thousands of objects through the Python client's models cost seconds -------


class Api:
    """Minimal JSON over HTTPS to kube-apiserver as the harness's admin, one connection per thread."""

    def __init__(self, cluster: harness.Cluster) -> None:
        self.port = cluster.api_port
        self.ctx = ssl.create_default_context(cafile=str(cluster.pki.ca))
        self.ctx.load_cert_chain(str(cluster.pki.cert("admin")), str(cluster.pki.key("admin")))
        self._local = threading.local()

    def connect(self, timeout: float = 60.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=timeout)

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
             ok: Sequence[int] = (200, 201, 202)) -> Any:
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self.connect()
            try:
                conn.request(method, path, data, {"Content-Type": content_type, "Accept": "application/json"})
                resp = conn.getresponse()
                text = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
                continue
            if resp.status not in ok:
                raise BenchError(f"{method} {path}: HTTP {resp.status}: {text[:300]!r}")
            return json.loads(text) if text else None
        return None


class PodWatch(threading.Thread):
    """Watches the benchmark's pods: when each was first seen bound, and to which node."""

    def __init__(self, api: Api, resource_version: str) -> None:
        super().__init__(name="pod-watch", daemon=True)
        self.api = api
        self.version = resource_version
        self.cond = threading.Condition()
        self.bound: dict[str, tuple[float, str]] = {}  # pod name -> (monotonic time seen, node)
        self.started = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._once()
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            self.error = err
            with self.cond:
                self.cond.notify_all()

    def _once(self) -> None:
        conn = self.api.connect(timeout=30)
        try:
            conn.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?watch=1&allowWatchBookmarks=true"
                                f"&timeoutSeconds=20&resourceVersion={self.version}")
            resp = conn.getresponse()
            if resp.status != 200:
                raise BenchError(f"pod watch: HTTP {resp.status}: {resp.read()[:300]!r}")
            self.started.set()
            while not self.stop.is_set():
                line = resp.readline()
                if not line:
                    return  # the watch's timeout: watch again from the last version
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":  # 410 Gone: list again
                    self._relist()
                    return
                self.version = obj["metadata"].get("resourceVersion", self.version)
                node = (obj.get("spec") or {}).get("nodeName")
                if event["type"] in ("ADDED", "MODIFIED") and node:
                    self._seen(obj["metadata"]["name"], node)
        finally:
            conn.close()

    def _relist(self) -> None:
        listed = self.api.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")
        self.version = listed["metadata"]["resourceVersion"]
        for pod in listed["items"]:
            if pod["spec"].get("nodeName"):
                self._seen(pod["metadata"]["name"], pod["spec"]["nodeName"])

    def _seen(self, name: str, node: str) -> None:
        with self.cond:
            if name not in self.bound:
                self.bound[name] = (time.monotonic(), node)
                self.cond.notify_all()


def wait_pods_gone(api: Api, timeout_s: float = 300.0) -> None:
    """Watches until the namespace has no pods (deleted with grace 0: no kubelet needs to agree)."""
    deadline = time.monotonic() + timeout_s
    while True:
        listed = api.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")
        left = {p["metadata"]["name"] for p in listed["items"]}
        if not left:
            return
        version = listed["metadata"]["resourceVersion"]
        conn = api.connect(timeout=30)
        try:
            conn.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?watch=1&timeoutSeconds=10&resourceVersion={version}")
            resp = conn.getresponse()
            while left and resp.status == 200:
                line = resp.readline()
                if not line:
                    break
                event = json.loads(line)
                if event["type"] == "DELETED":
                    left.discard(event["object"]["metadata"]["name"])
                elif event["type"] == "ERROR":
                    break
        finally:
            conn.close()
        if not left:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{len(left)} pods still there {timeout_s:.0f}s after their deletion")


# --- processes ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class BenchCluster(harness.Cluster):
    """The harness's cluster with etcd and kube-apiserver only: each configuration starts its
    own kube-scheduler and extender."""

    def start_extender(self) -> None:  # started per configuration instead
        pass

    def start_scheduler(self) -> None:
        pass

    def own(self, proc: harness.Process) -> harness.Process:
        """Starts a process under the harness's teardown (stopped by close() on any way out)."""
        self.processes.append(proc)
        return proc.start()

    def drop(self, proc: harness.Process | None) -> None:
        if proc is None:
            return
        proc.stop()
        with contextlib.suppress(ValueError):
            self.processes.remove(proc)


# --- nodes as the device plugin publishes them ---------------------------------------------------


def node_object(name: str, kind: str, folder: pathlib.Path,
                devices: dict[str, dict[str, list[str]]] | None = None) -> dict[str, Any]:
    """The Node; ``devices`` gets the device ids it advertises per resource."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              harness.GROUP_LABEL: GROUP}
    annotations: dict[str, str] = {}
    base = {"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": NODE_PODS}
    capacity, allocatable = dict(base), dict(base)
    if kind != "cpu":
        model, memory = A100 if kind == "a100" else H100
        path = folder / f"{name}.json"
        path.write_text(json.dumps(workloads.nvswitch_machine(name, model, memory)))
        backend = FakeFileBackend(path)
        try:
            found = backend.discover()
        finally:
            backend.close()
        path.unlink()
        sharing = (resources.Sharing(rules=(resources.ShareRule(contract.NVIDIA_GPU, SHARE_REPLICAS),),
                                     rename_by_default=True) if kind == "h100-shared" else resources.Sharing())
        planned = resources.plan(found, "none", sharing)
        # as device_plugin.manager.Manager.inventory() and its publisher do
        inventory = contract.Inventory(node=name, gpus=planned, mig_strategy="none",
                                       sharing="time-slicing" if sharing.rules else "none")
        patch = plugin_kube.node_patch(inventory)["metadata"]
        labels.update(patch["labels"])
        annotations.update(patch["annotations"])
        for resource, advertised in resources.advertise(planned).items():
            capacity[resource] = str(len(advertised))
            allocatable[resource] = str(sum(d.healthy for d in advertised))
            if devices is not None:
                devices.setdefault(name, {})[resource] = [d.id for d in advertised]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "status": {
            "capacity": capacity, "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "scheduler_throughput bench: no kubelet",
                            "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "bench", "operatingSystem": "linux", "architecture": "amd64",
                         "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "",
                         "containerRuntimeVersion": "", "kubeProxyVersion": ""},
        },
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def create_all(what: str, items: Sequence[Any], create: Any) -> float:
    """Calls ``create(item)`` for every item on CREATE_THREADS threads, saying how far it got
    every PROGRESS_S; returns the seconds it took."""
    done = [0]
    lock = threading.Lock()
    last = [time.monotonic()]
    t0 = time.monotonic()

    def one(item: Any) -> None:
        create(item)
        with lock:
            done[0] += 1
            if time.monotonic() - last[0] > PROGRESS_S:
                last[0] = time.monotonic()
                say(f"  {what}: {done[0]}/{len(items)} created ({done[0] / (last[0] - t0):.0f}/s)")

    with concurrent.futures.ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(one, items))
    return time.monotonic() - t0


def create_nodes(api: Api, count: int, folder: pathlib.Path,
                 devices: dict[str, dict[str, list[str]]] | None = None) -> dict[str, str]:
    """Creates the fleet; returns node name -> kind (``devices``: see :func:`node_object`)."""
    names = {f"node-{i:05d}": FLEET[i % len(FLEET)] for i in range(count)}

    def one(item: tuple[str, str]) -> None:
        name, kind = item
        body = node_object(name, kind, folder, devices)
        made = api.call("POST", "/api/v1/nodes", body)
        if not (made.get("status") or {}).get("conditions"):  # status dropped on create: write it
            api.call("PATCH", f"/api/v1/nodes/{name}/status", {"status": body["status"]},
                     content_type="application/merge-patch+json")

    took = create_all("nodes", list(names.items()), one)
    say(f"  nodes: {count} created in {took:.1f}s")
    return names


# --- pods -------------------------------------------------------------------------------------------


def check_capacity(mix: str, pods: int, nodes: int) -> None:
    """Refuses a run whose pods cannot all fit (they would wait for ever)."""
    per = collections.Counter(FLEET[i % len(FLEET)] for i in range(nodes))
    weights = mix_weights(mix)
    whole = pods * weights["whole"] * 2.4 + pods * weights["pinned"] * 1.5  # mean GPUs of a pod
    pinned = pods * weights["pinned"] * 1.5
    shares = pods * weights["shares"]
    room = {"whole GPUs": (whole, 8 * (per["a100"] + per["h100"])), "H100 GPUs (pinned)": (pinned, 8 * per["h100"]),
            "shares": (shares, 8 * SHARE_REPLICAS * per["h100-shared"])}
    for what, (need, have) in room.items():
        if need > 0.7 * have:
            raise BenchError(f"--pods {pods} of --mix {mix} need about {need:.0f} {what}, the {nodes} nodes have {have}: "
                             "use more nodes or fewer pods")


def mix_weights(mix: str) -> dict[str, float]:
    if mix == "mixed":
        return {"whole": 0.40, "shares": 0.25, "pinned": 0.15, "cpu": 0.20}
    return {k: float(k == mix) for k in ("whole", "shares", "pinned", "cpu")}


def make_pods(mix: str, count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    weights = mix_weights(mix)
    kinds = rng.choices(list(weights), weights=list(weights.values()), k=count)
    out = []
    for i, kind in enumerate(kinds):
        name = f"p-{i:05d}"
        if kind == "whole":
            pod = workloads.gpu_pod(name, GROUP, {contract.NVIDIA_GPU: rng.choices((1, 2, 4, 8), (50, 25, 15, 10))[0]})
        elif kind == "shares":
            hint = {contract.GPU_MEMORY_ANNOTATION: rng.choice(("8Gi", "16Gi", "20Gi"))}
            pod = workloads.gpu_pod(name, GROUP, {contract.NVIDIA_GPU_SHARED: 1}, annotations=hint)
        elif kind == "pinned":
            pod = workloads.gpu_pod(name, GROUP, {contract.NVIDIA_GPU: rng.choice((1, 2))})
            pod["spec"]["nodeSelector"][contract.LABEL_PRODUCT] = contract.label_value(H100[0])
        else:
            pod = workloads.gpu_pod(name, GROUP, {})
            pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1", "memory": "4Gi"}}
        pod["metadata"]["labels"] = {"bench": kind}
        out.append(pod)
    return out


def create_bound_pods(api: Api, count: int, nodes: dict[str, str], devices: dict[str, dict[str, list[str]]]) -> None:
    """``--bound-pods``: ``count`` pods bound to the fleet's nodes (see the module's docstring)."""
    every = sorted(nodes)
    per_node = -(-count // len(every))
    if per_node > 200:
        raise BenchError(f"--bound-pods {count}: more than 200 per node (the nodes take {NODE_PODS} pods each)")
    plan: list[tuple[str, str, str]] = []  # (node, resource or "", device id or "")
    whole = 0
    for name in every:
        held = devices.get(name, {})
        resource = contract.NVIDIA_GPU_SHARED if contract.NVIDIA_GPU_SHARED in held else contract.NVIDIA_GPU
        ids = held.get(resource, [])[:BOUND_GPU_PODS[nodes[name]]]
        if resource == contract.NVIDIA_GPU and ids:
            whole += 1
            if whole % 2 == 0:
                ids = []
        plan += [(name, resource, i) for i in ids]
        plan += [(name, "", "")] * (per_node - len(ids))
    plan = plan[:count]
    api.call("POST", "/api/v1/namespaces", {"metadata": {"name": BOUND_NAMESPACE}})

    def one(i: int) -> None:
        name, resource, device = plan[i]
        if resource:
            annotations = {contract.DEVICES_ANNOTATION: contract.encode_assignment({"main": {resource: [device]}})}
            if resource == contract.NVIDIA_GPU_SHARED:
                annotations[contract.GPU_MEMORY_ANNOTATION] = "8Gi"
            pod = workloads.gpu_pod(f"b-{i:06d}", GROUP, {resource: 1}, annotations=annotations, node_name=name)
        else:
            pod = workloads.gpu_pod(f"b-{i:06d}", GROUP, {}, node_name=name)
            pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}}
        pod["metadata"]["namespace"] = BOUND_NAMESPACE
        pod["metadata"]["labels"] = {"bench": "bound"}
        api.call("POST", f"/api/v1/namespaces/{BOUND_NAMESPACE}/pods", pod)

    took = create_all("bound pods", range(len(plan)), one)
    gpu = sum(1 for _, r, _ in plan if r)
    say(f"  bound pods: {len(plan)} created in {took:.1f}s ({gpu} holding a GPU or a share)")


# --- one configuration ---------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    config: str
    round: int
    pods: int
    bound: int
    wall_s: float
    create_s: float
    cpu_s: dict[str, float]  # process -> CPU seconds over the measurement
    rss_mb: float | None
    nodes_used: int
    verbs: dict[str, tuple[int, float]]  # gpupack: verb -> (calls, server seconds); null: names
    requests: collections.Counter[str]  # kube-apiserver's requests over the run: "VERB resource code" -> count
    wire: dict[str, list[int]]  # null: verb -> [calls, request bytes, answer bytes, names]
    profile: pathlib.Path | None = None

    @property
    def rate(self) -> float:
        return self.bound / self.wall_s if self.wall_s > 0 else 0.0


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: BenchCluster, api: Api, nodes: dict[str, str]) -> None:
        self.args = args
        self.cluster = cluster
        self.api = api
        self.nodes = nodes
        self.work = cluster.work
        self.tls = self._certificates()
        self.shipped = yaml.safe_load(harness.SCHEDULER_CONFIG.read_text())

    # -- as the chart ships it

    def _certificates(self) -> dict[str, pathlib.Path]:
        """The three Secrets the certificates Job makes (scheduler_ext.certs.ensure), as files."""
        store: dict[str, dict[str, bytes]] = {}

        class Memory:
            def read(self, name: str) -> dict[str, bytes] | None:
                return store.get(name)

            def create(self, name: str, data: dict[str, bytes]) -> None:
                store[name] = data

            def replace(self, name: str, data: dict[str, bytes]) -> None:
                store[name] = data

        names = certs.Names(namespace="kube-system", service="gpupack-extender", ca_secret="gpupack-extender-ca",
                            server_secret="gpupack-extender-tls", client_secret="gpupack-scheduler-client-tls")
        certs.ensure(Memory(), names)
        assert names.dns_names[2] == SERVICE_NAME
        out = {}
        for secret, what in ((names.server_secret, "server"), (names.client_secret, "client")):
            folder = self.work / "tls" / what
            folder.mkdir(parents=True, exist_ok=True)
            for key, value in store[secret].items():
                (folder / key).write_bytes(value)
            out[what] = folder
        return out

    def scheduler_config(self, config: str, port: int) -> dict[str, Any]:
        c = json.loads(json.dumps(self.shipped))
        c["clientConnection"]["kubeconfig"] = str(self.cluster.scheduler_kubeconfig)
        c["leaderElection"] = {"leaderElect": False}
        if config in ("none", "gate"):
            del c["extenders"]  # gate: gpupack places ahead of kube-scheduler, which runs without it
            return c
        client = self.tls["client"]
        files = {"caFile": client / "ca.crt", "certFile": client / "tls.crt", "keyFile": client / "tls.key"}
        for extender in c["extenders"]:
            extender["urlPrefix"] = f"https://127.0.0.1:{port}"
            assert set(extender["tlsConfig"]) == set(files)
            extender["tlsConfig"] = {k: str(v) for k, v in files.items()} | {"serverName": SERVICE_NAME}
            if config in ("null", "nulltop"):
                extender.pop("bindVerb", None)  # the default binder binds
                extender.pop("preemptVerb", None)
        return c

    def start_scheduler(self, config: str, port: int, tag: str) -> harness.Process:
        path = self.work / f"kube-scheduler-{tag}.yaml"
        path.write_text(yaml.safe_dump(self.scheduler_config(config, port)))
        sched_port = harness.free_port()
        proc = self.cluster.own(harness.Process(f"kube-scheduler-{tag}", [
            str(self.cluster.bin / "kube-scheduler"), f"--config={path}", "--bind-address=127.0.0.1",
            f"--secure-port={sched_port}", f"--cert-dir={self.work / 'scheduler-certs'}", "--v=2"], self.cluster.logs))
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its self-signed serving cert; /readyz is public
        harness.wait_ready(proc, lambda: harness.http_ok(f"https://127.0.0.1:{sched_port}/readyz", insecure),
                           "kube-scheduler /readyz", timeout_s=180)
        return proc

    def _trusting(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.tls["server"] / "ca.crt"))
        ctx.check_hostname = False  # loopback; the certificate names the Service
        return ctx

    def _on_extender_cpu(self, argv: list[str]) -> list[str]:
        """``argv`` run on ``--extender-cpu`` alone (its threads inherit it), when given."""
        if self.args.extender_cpu is None:
            return argv
        return [sys.executable, "-c", "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); "
                "os.execv(sys.argv[2], sys.argv[2:])", str(self.args.extender_cpu), *argv]

    def start_null(self, port: int, tag: str, top: int = 0) -> harness.Process:
        server = self.tls["server"]
        proc = self.cluster.own(harness.Process(f"null-extender-{tag}", self._on_extender_cpu([
            sys.executable, str(REPO / "bench" / "_nullextender.py"), f"--listen=127.0.0.1:{port}", f"--top={top}",
            f"--tls-cert={server / 'tls.crt'}", f"--tls-key={server / 'tls.key'}",
            f"--tls-client-ca={server / 'ca.crt'}"]), self.cluster.logs))
        ctx = self._trusting()
        harness.wait_ready(proc, lambda: harness.http_ok(f"https://127.0.0.1:{port}/readyz", ctx), "null extender /readyz")
        return proc

    def start_gpupack(self, port: int, tag: str, stack: contextlib.ExitStack, filter_top: int | None = None,
                      gate: bool = False) -> harness.Process:
        """As tests/e2e/test_extender_tls.py's start_extender (copied, not imported: its token pod
        is unbound, and this benchmark's own kube-scheduler would schedule it): the Deployment's
        environment with the Secret's files, a token of the Deployment's ServiceAccount bound
        to a pod on the first node."""
        (deployment,) = [d["spec"]["template"]["spec"] for d in accounts.manifest_docs()
                         if d["kind"] == "Deployment" and d["metadata"]["name"] == "gpupack-extender"]
        (container,) = deployment["containers"]
        mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tls")
        from_fields = {"metadata.namespace": accounts.NAMESPACE, "metadata.name": f"bench-extender-{tag}"}
        env = {}
        for e in container["env"]:
            value = e["value"] if "value" in e else from_fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
            env[e["name"]] = value.replace(mount, str(self.tls["server"]))
        env["GPUPACK_EXTENDER_LISTEN"] = f"127.0.0.1:{port}"
        if filter_top is not None:
            env["GPUPACK_EXTENDER_FILTER_TOP"] = str(filter_top)
        if gate:
            env["GPUPACK_EXTENDER_PLACEMENT"] = "gate"
        token = stack.enter_context(accounts.pod_token(self.cluster, deployment["serviceAccountName"],
                                                       f"bench-extender-{tag}", node=next(iter(self.nodes))))
        kubeconfig = accounts.token_kubeconfig(self.cluster, token, self.work / f"extender-{tag}.kubeconfig")
        proc = self.cluster.own(harness.Process(f"gpupack-extender-{tag}", self._on_extender_cpu([
            *[harness.console_script(c) for c in container["command"]], f"--kubeconfig={kubeconfig}"]),
            self.cluster.logs, env=env))
        ctx = self._trusting()
        harness.wait_ready(proc, lambda: harness.http_ok(f"https://127.0.0.1:{port}/readyz", ctx),
                           "gpupack-extender /readyz (its cache listed every node and pod)", timeout_s=300)
        return proc

    def _get(self, port: int, path: str) -> str:
        ctx = self._trusting()
        ctx.load_cert_chain(str(self.tls["client"] / "tls.crt"), str(self.tls["client"] / "tls.key"))  # as kube-scheduler
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", timeout=30, context=ctx) as resp:
            return str(resp.read().decode())

    # -- the measurement

    def run(self, config: str, round_no: int) -> Result:
        tag = f"{config}-r{round_no}"
        pods = make_pods(self.args.mix, self.args.pods, seed=round_no)
        if config == "gate":
            for pod in pods:  # as the chart's admission policy does: every pod of the gpupack scheduler
                pod["spec"]["schedulingGates"] = [{"name": contract.PLACEMENT_GATE}]
        port = harness.free_port()
        with contextlib.ExitStack() as stack:
            extender = None
            if config in ("null", "nulltop"):
                extender = self.start_null(port, tag, self.args.top if config == "nulltop" else 0)
            elif config in ("gpupack", "gpupackall", "gate"):
                extender = self.start_gpupack(port, tag, stack, 0 if config == "gpupackall" else None,
                                              gate=config == "gate")
            stack.callback(self.cluster.drop, extender)
            scheduler = self.start_scheduler(config, port, tag)
            stack.callback(self.cluster.drop, scheduler)
            assert self.cluster.apiserver and self.cluster.apiserver.proc and self.cluster.etcd and self.cluster.etcd.proc
            pids = {"kube-scheduler": scheduler.proc.pid, "kube-apiserver": self.cluster.apiserver.proc.pid,
                    "etcd": self.cluster.etcd.proc.pid}
            if extender is not None and extender.proc is not None:
                pids["extender"] = extender.proc.pid
            profiler, out = None, None
            if config in ("gpupack", "gpupackall", "gate") and self.args.py_spy:
                self.args.profile_dir.mkdir(parents=True, exist_ok=True)
                out = self.args.profile_dir / f"profile-{len(self.nodes)}-{tag}-{time.strftime('%H%M%S')}.txt"
                profiler = subprocess.Popen([self.args.py_spy, "record", "--pid", str(pids["extender"]),
                                             "--rate", str(PROFILE_HZ), "--gil", "--nonblocking", "--format", "raw",
                                             "--output", str(out)],
                                            stdout=subprocess.DEVNULL, stderr=open(self.cluster.logs / f"py-spy-{tag}.log", "wb"),
                                            start_new_session=True)
                stack.callback(lambda: profiler.poll() is None and profiler.kill())

            listed = self.api.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")
            assert not listed["items"], "pods left from an earlier configuration"
            requests_before = self.api_requests()
            watch = PodWatch(self.api, listed["metadata"]["resourceVersion"])
            watch.start()
            stack.callback(watch.stop.set)
            if not watch.started.wait(30):
                raise BenchError("the pod watch did not start")
            say(f"  {tag}: creating {len(pods)} pods ({self.args.mix})")
            before = {k: cpu_seconds(p) for k, p in pids.items()}
            t0 = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(CREATE_THREADS) as pool:
                list(pool.map(lambda pod: self.api.call("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod), pods))
            created = time.monotonic() - t0
            last_progress, last_count, last_change = time.monotonic(), 0, time.monotonic()
            with watch.cond:
                while len(watch.bound) < len(pods):
                    watch.cond.wait(1.0)
                    if watch.error is not None:
                        raise BenchError(f"pod watch failed: {watch.error}")
                    now = time.monotonic()
                    if len(watch.bound) != last_count:
                        last_count, last_change = len(watch.bound), now
                    if now - last_progress >= PROGRESS_S:
                        last_progress = now
                        say(f"  {tag}: {len(watch.bound)}/{len(pods)} bound after {now - t0:.0f}s "
                            f"({len(watch.bound) / (now - t0):.1f}/s; created in {created:.1f}s)")
                    if now - last_change > STALL_S:
                        say(f"  {tag}: no bind for {STALL_S:.0f}s: giving up with {len(watch.bound)}/{len(pods)} bound")
                        break
                    for name, proc in (("kube-scheduler", scheduler), ("extender", extender)):
                        if proc is not None and not proc.running:
                            raise BenchError(f"{name} exited during the run\n{proc.tail()}")
                bound = dict(watch.bound)
            after = {k: cpu_seconds(p) for k, p in pids.items()}
            last = max((t for t, _ in bound.values()), default=t0)
            rss = peak_rss_mb(pids["extender"]) if "extender" in pids else None
            requests = self.api_requests()
            requests.subtract(requests_before)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    profiler.wait(60)
            verbs: dict[str, tuple[int, float]] = {}
            wire: dict[str, list[int]] = {}
            if config in ("gpupack", "gpupackall"):
                verbs = request_seconds(self._get(port, "/metrics"))
            elif config == "gate":
                exposition = self._get(port, "/metrics")
                n, mean, p99, slow = placement_decisions(exposition)
                _, cpu_mean, cpu_p99, cpu_slow = placement_decisions(exposition, "gpupack_placement_decision_cpu_seconds")
                verbs = {"place": (n, n * mean)}
                say(f"  {tag}: {n} placement decisions, mean {1000 * mean:.2f} ms, p99 <= {1000 * p99:g} ms, "
                    f"{slow} over 5 ms; their CPU time mean {1000 * cpu_mean:.2f} ms, p99 <= {1000 * cpu_p99:g} ms, "
                    f"{cpu_slow} over 5 ms")
            elif config in ("null", "nulltop"):
                wire = json.loads(self._get(port, "/stats"))
            result = Result(config, round_no, len(pods), len(bound), last - t0, created,
                            {k: after[k] - before[k] for k in pids}, rss, len({n for _, n in bound.values()}),
                            verbs, requests, wire, out)
        # the scheduler and extender are stopped (the stack); the next configuration starts clean
        self.clean()
        return result

    def api_requests(self) -> collections.Counter[str]:
        """kube-apiserver's apiserver_request_total, as "VERB resource[/subresource] code" (writes
        and reads of single objects; lists and watches left out)."""
        conn = self.api.connect()
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        out: collections.Counter[str] = collections.Counter()
        for m in re.finditer(r"^apiserver_request_total\{([^}]*)\} (\S+)$", text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if labels.get("verb") in ("LIST", "WATCH") or not labels.get("resource"):
                continue
            what = labels["resource"] + (f"/{labels['subresource']}" if labels.get("subresource") else "")
            out[f"{labels['verb']} {what} {labels.get('code', '')}"] += int(float(m.group(2)))
        return out

    def clean(self) -> None:
        self.api.call("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods?gracePeriodSeconds=0")
        wait_pods_gone(self.api)
        cms = self.api.call("GET", f"/api/v1/namespaces/{accounts.NAMESPACE}/configmaps")
        for cm in cms["items"]:
            name = cm["metadata"]["name"]
            if name.startswith(ledger.PREFIX):  # claims of deleted pods would hold devices for 120 s
                self.api.call("DELETE", f"/api/v1/namespaces/{accounts.NAMESPACE}/configmaps/{name}", ok=(200, 202, 404))


def request_seconds(exposition: str) -> dict[str, tuple[int, float]]:
    """verb -> (calls, seconds) from gpupack_extender_request_seconds' _count and _sum."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for m in re.finditer(r'^gpupack_extender_request_seconds_(sum|count)\{verb="([^"]+)"\} (\S+)$', exposition, re.M):
        if m.group(1) == "sum":
            sums[m.group(2)] = float(m.group(3))
        else:
            counts[m.group(2)] = int(float(m.group(3)))
    return {v: (counts.get(v, 0), sums.get(v, 0.0)) for v in counts}


def placement_decisions(exposition: str, metric: str = "gpupack_placement_decision_seconds",
                        over: float = 0.005) -> tuple[int, float, float, int]:
    """Gate mode: (decisions, mean seconds, p99 upper bound in seconds: the smallest bucket
    bound holding 99 % of them, how many took more than ``over`` seconds) from the histogram
    ``metric`` (the decisions' time, or gpupack_placement_decision_cpu_seconds: their CPU time)."""
    buckets = [(float(m.group(1)), float(m.group(2))) for m in re.finditer(
        rf'^{metric}_bucket\{{le="([^"+]+)"\}} (\S+)$', exposition, re.M)]
    count = re.search(rf"^{metric}_count (\S+)$", exposition, re.M)
    total = re.search(rf"^{metric}_sum (\S+)$", exposition, re.M)
    n = int(float(count.group(1))) if count else 0
    p99 = next((le for le, c in sorted(buckets) if c >= 0.99 * n), float("inf")) if n else 0.0
    within = next((c for le, c in buckets if le == over), float(n))
    return n, (float(total.group(1)) / n if total and n else 0.0), p99, n - int(within)


# --- the profile ------------------------------------------------------------------------------------


def summarize_profile(path: pathlib.Path, pods: int) -> str:
    """Where the extender's samples went, from py-spy's raw (collapsed) stacks, recorded with
    ``--gil`` (only a thread holding the GIL counts: Python's CPU, without the threads that
    wait in a socket read or write)."""
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            stacks.append((stack.split(";"), int(n)))
    total = sum(n for _, n in stacks)
    if not total:
        return f"    (no samples in {path})"

    def method(frame: str) -> str:
        return frame.split(" (")[0].strip().rsplit(".", 1)[-1]

    def where(frame: str) -> str:  # "Decider.decide (decide.py:201)"
        name, _, loc = frame.partition(" (")
        return f"{name.strip()} ({loc.rsplit('/', 1)[-1]}" if loc else name

    verbs = {"filter": "filter", "prioritize": "prioritize", "prioritize_cpu_only": "prioritize-cpu-only", "bind": "bind"}
    cats: collections.Counter[str] = collections.Counter()
    detail: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        leaves[where(frames[-1])] += n
        app = [i for i, f in enumerate(frames) if "scheduler_ext/server.py" in f and method(f) in verbs]
        if app:
            i = app[-1]
            verb = verbs[method(frames[i])]
            cats[verb] += n
            detail[f"{verb} > {where(frames[i + 1]) if i + 1 < len(frames) else '(itself)'}"] += n
        elif any(method(f) == "handle_post" for f in frames):
            line = next(f for f in frames if method(f) == "handle_post")
            cats["handle_post outside the verb (orjson.loads of the body, metrics)"] += n
            detail[f"handle_post > {where(line)}"] += n
        elif any("scheduler_ext/server.py" in f for f in frames):
            cats["HTTP + TLS (reading requests, writing answers)"] += n
        elif any("scheduler_ext/watch.py" in f for f in frames):
            cats["watch (API events into the cache)"] += n
        else:
            cats["other (GC, metrics, timers)"] += n
    ms = 1000.0 / PROFILE_HZ
    out = [f"    {total} samples holding the GIL at {PROFILE_HZ} Hz ({total * ms / 1000:.1f} s), "
           f"{total * ms / pods:.1f} ms per pod"]
    for cat, n in cats.most_common():
        out.append(f"    {100 * n / total:5.1f} %  {n * ms / pods:6.2f} ms/pod  {cat}")
    out.append("    the verbs' next frames:")
    out += [f"      {100 * n / total:5.1f} %  {what}" for what, n in detail.most_common(12)]
    inclusive: collections.Counter[str] = collections.Counter()
    generic = ("threading.py", "socketserver.py", "_Connection.handle ", "_Connection._one ", "ExtenderApp.handle_post ",
               "process_request_thread", "finish_request", "Syncer.run")
    for frames, n in stacks:
        seen = set()
        for f in frames:
            if any(g in f for g in generic):
                continue
            name, _, loc = f.partition(" (")
            key = f"{name.strip()} ({loc.split(':')[0].rsplit('/', 1)[-1]})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += n
    out.append("    functions, inclusive (ms per pod):")
    out += [f"      {100 * n / total:5.1f} %  {n * ms / pods:6.2f}  {what}" for what, n in inclusive.most_common(30)]
    out.append("    leaf functions (self time; a leaf in handle_post is orjson.loads of the body):")
    out += [f"      {100 * n / total:5.1f} %  {what}" for what, n in leaves.most_common(15)]
    return "\n".join(out)


# --- the run ------------------------------------------------------------------------------------------


def table(results: list[Result], nodes: int) -> str:
    lines = ["| round | config | pods/s | bound | wall s | create s | CPU ms/pod: kube-scheduler | extender | "
             "kube-apiserver | etcd | extender peak RSS | nodes used |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        cpu = {k: f"{1000 * v / max(r.bound, 1):.1f}" for k, v in r.cpu_s.items()}
        rss = f"{r.rss_mb:.0f} MB" if r.rss_mb is not None else "-"
        lines.append(f"| {r.round} | {r.config} | {r.rate:.1f} | {r.bound}/{r.pods} | {r.wall_s:.1f} | {r.create_s:.1f} | "
                     f"{cpu['kube-scheduler']} | {cpu.get('extender', '-')} | {cpu['kube-apiserver']} | {cpu['etcd']} | "
                     f"{rss} | {r.nodes_used} |")
    rounds = sorted({r.round for r in results})
    ratio_lines = []
    for rnd in rounds:
        by = {r.config: r for r in results if r.round == rnd}
        parts = []
        if "gpupack" in by and "none" in by and by["none"].rate:
            parts.append(f"gpupack/none {by['gpupack'].rate / by['none'].rate:.2f}")
        if "gpupack" in by and "null" in by and by["null"].rate:
            parts.append(f"gpupack/null {by['gpupack'].rate / by['null'].rate:.2f}")
        if "gate" in by and "none" in by and by["none"].rate:
            parts.append(f"gate/none {by['gate'].rate / by['none'].rate:.2f}")
        if "gate" in by and "gpupack" in by and by["gpupack"].rate:
            parts.append(f"gate/gpupack {by['gate'].rate / by['gpupack'].rate:.2f}")
        if "null" in by and "none" in by and by["none"].rate:
            parts.append(f"null/none {by['null'].rate / by['none'].rate:.2f}")
        if "nulltop" in by and "null" in by and by["null"].rate:
            parts.append(f"nulltop/null {by['nulltop'].rate / by['null'].rate:.2f}")
        if "gpupackall" in by and "gpupack" in by and by["gpupackall"].rate:
            parts.append(f"gpupack/gpupackall {by['gpupack'].rate / by['gpupackall'].rate:.2f}")
        if parts:
            ratio_lines.append(f"round {rnd}: " + ", ".join(parts))
    out = "\n".join(lines)
    if ratio_lines:
        out += "\n\nThroughput ratios within each round: " + "; ".join(ratio_lines)
    for r in results:
        calls = [(k, v) for k, v in r.requests.items() if v > 0 and v >= r.bound // 10]
        if calls:
            text = ", ".join(f"{k} {v / max(r.bound, 1):.2f}" for k, v in sorted(calls, key=lambda kv: -kv[1]))
            out += f"\nround {r.round} {r.config}, kube-apiserver requests per pod (verb, resource, code): {text}"
        if r.verbs:
            calls = ", ".join(f"{v} {n / max(r.bound, 1):.2f} calls x {1000 * s / max(n, 1):.2f} ms"
                              for v, (n, s) in sorted(r.verbs.items()) if n)
            out += f"\nround {r.round} {r.config}, server time per pod (calls/pod x mean): {calls}"
        if r.wire:
            parts = [f"{v} {c / max(r.bound, 1):.2f} calls/pod, {req / max(c, 1) / 1024:.0f} KiB in / "
                     f"{ans / max(c, 1) / 1024:.0f} KiB out, {names / max(c, 1):.0f} names per call, "
                     f"{same_set} calls with the set of one of the last 8, {same_order} in its order too"
                     for v, (c, req, ans, names, same_set, same_order) in sorted(r.wire.items())]
            out += f"\nround {r.round} {r.config}, what kube-scheduler sent: " + "; ".join(parts)
    return out


def run_node_count(args: argparse.Namespace, bin_dir: pathlib.Path, nodes: int, header: str) -> None:
    check_capacity(args.mix, args.pods, nodes)
    work = pathlib.Path(tempfile.mkdtemp(prefix="gpupack-bench-", dir="/tmp"))
    say(f"nodes {nodes}: starting etcd + kube-apiserver in {work}")
    cluster = BenchCluster(bin_dir, work)
    failed = True
    try:
        cluster.start()
        api = Api(cluster)
        api.call("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        if {"gpupack", "gpupackall", "gate"} & set(args.configs):
            accounts.apply_access_objects(cluster)  # the chart's RBAC and admission policies
        say(f"nodes {nodes}: creating the fleet ({', '.join(f'{k} {v}/8' for k, v in collections.Counter(FLEET).items())})")
        devices: dict[str, dict[str, list[str]]] = {}
        node_kinds = create_nodes(api, nodes, work, devices)
        if args.bound_pods:
            say(f"nodes {nodes}: creating {args.bound_pods} pods bound to them (--bound-pods)")
            create_bound_pods(api, args.bound_pods, node_kinds, devices)
        bench = Bench(args, cluster, api, node_kinds)
        results: list[Result] = []
        for rnd in range(1, args.rounds + 1):
            for config in args.configs:
                say(f"nodes {nodes}: round {rnd}/{args.rounds}, config {config}")
                r = bench.run(config, rnd)
                say(f"  {config}-r{rnd}: {r.bound}/{r.pods} bound in {r.wall_s:.1f}s = {r.rate:.1f} pods/s, "
                    f"{r.nodes_used} nodes used")
                results.append(r)
        bound = f", {args.bound_pods:,} pods bound before the rounds" if args.bound_pods else ""
        print(f"\n## {nodes:,} nodes, {args.pods} pods, mix {args.mix}{bound}\n{header}\n")
        print(table(results, nodes))
        for r in results:
            if r.profile is not None and r.profile.exists():
                print(f"\nprofile of gpupack-extender, round {r.round} ({r.profile}):")
                print(summarize_profile(r.profile, r.bound))
        sys.stdout.flush()
        failed = False
        if args.keep:
            say(f"--keep: cluster up, KUBECONFIG={cluster.admin_kubeconfig} (logs in {cluster.logs}); Ctrl-C to stop it")
            threading.Event().wait()
    finally:
        cluster.close()
        if args.keep or failed:
            say(f"kept {work} (logs: {cluster.logs})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", default="1000,5000", help="node counts, comma-separated (one cluster each)")
    p.add_argument("--pods", type=int, default=500, help="pending pods per configuration")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every configuration, interleaved")
    p.add_argument("--mix", default="mixed", choices=MIXES)
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help="none, null, gpupack, gate (gpupack placing gated pods ahead of a kube-scheduler without "
                        "extenders; and nulltop: the null extender's filter answers only --top names; "
                        "gpupackall: gpupack with --filter-top 0, every node that fits), run in this order in every round")
    p.add_argument("--bound-pods", type=int, default=0,
                   help="pods bound to the nodes before the rounds (a cluster in use; the extender lists them all)")
    p.add_argument("--top", type=int, default=50, help="names the nulltop configuration's filter answers")
    p.add_argument("--keep", action="store_true", help="leave the (last) cluster up until Ctrl-C, keep its folder")
    p.add_argument("--py-spy", default="", help="py-spy binary: profile gpupack-extender in its configurations")
    p.add_argument("--profile-dir", type=pathlib.Path, default=pathlib.Path("/tmp/gpupack-bench-profiles"),
                   help="where --py-spy's raw stacks are kept (they outlive the cluster's folder)")
    p.add_argument("--extender-cpu", type=int, default=None,
                   help="CPU the extenders get alone; everything else runs on the others")
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in args.configs if c not in CONFIGS + EXTRA_CONFIGS]
    if bad or not args.configs:
        p.error(f"--configs: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(CONFIGS + EXTRA_CONFIGS)}")
    try:
        counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    except ValueError:
        p.error(f"--nodes: expected numbers like 1000,5000, got {args.nodes!r}")
    if args.py_spy and not os.access(args.py_spy, os.X_OK):
        p.error(f"--py-spy: {args.py_spy} is not an executable")
    if args.extender_cpu is not None:
        cpus = os.sched_getaffinity(0)
        if args.extender_cpu not in cpus or len(cpus) < 2:
            p.error(f"--extender-cpu: {args.extender_cpu} must be one of this process's CPUs "
                    f"({', '.join(map(str, sorted(cpus)))}), and another must be left")
        os.sched_setaffinity(0, cpus - {args.extender_cpu})  # inherited by everything started from here
    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # torn down as on Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (nohup, &)
    try:
        bin_dir = find_binaries()
        load = os.getloadavg()
        header = (f"machine: {os.cpu_count()} cores ({platform.machine()}), load average at start "
                  f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}{' (loaded: shared with other work)' if load[0] > 0.5 else ''}; "
                  f"{versions(bin_dir)}"
                  + (f"; extenders alone on CPU {args.extender_cpu}, the rest on the others" if args.extender_cpu is not None else ""))
        say(header)
        for n in counts:
            run_node_count(args, bin_dir, n, header)
    except BenchError as err:
        print(f"scheduler_throughput: {err}", file=sys.stderr)
        return 2
    except harness.E2EError as err:
        print(f"scheduler_throughput: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scheduler_throughput: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
