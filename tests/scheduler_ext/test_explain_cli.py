"""``gpupack explain`` as a first-hour user meets it: the examples in ``examples/explain/``, and
every file it cannot use refused in one line that names the file and the field (exit 2).

``examples/explain/cluster.json`` is not written by hand: :func:`build_cluster` makes it with
the programs' own code, the device plugin's (its NVML backend over a fake machine, its config
parser and :class:`~device_plugin.manager.Manager`, publishing through
:func:`device_plugin.kube.node_patch`) for the Nodes, and the extender's (the cache's
:meth:`~scheduler_ext.cache.ClusterCache.assign`, as its binder calls it) for the devices of
the bound Pods. :func:`test_cluster_example_is_what_the_programs_write` keeps the file equal
to it; after a change to the contract, write it again with
``.venv/bin/python -m tests.scheduler_ext.test_explain_cli``.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import subprocess
import sys
import uuid
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from device_plugin import config, kube
from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.fakes import nvml as fake_nvml
from device_plugin.manager import Manager
from gpupack import contract, kernel
from scheduler_ext import explain
from scheduler_ext.cache import MAX_SNAPSHOT_BYTES, from_objects
from scheduler_ext.podspec import pod_demand

from tests.profiles import invariant

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "explain"
CLUSTER = EXAMPLES / "cluster.json"

# --- the example cluster, as the programs write it --------------------------------------------

H100_SXM = ("NVIDIA H100 80GB HBM3", 81559)
#: PCI bus ids of a DGX H100's eight GPUs, GPUs 0-3 on NUMA node 0.
DGX_H100_BUSES = ("00000000:1B:00.0", "00000000:43:00.0", "00000000:52:00.0", "00000000:61:00.0",
                  "00000000:9D:00.0", "00000000:C3:00.0", "00000000:D1:00.0", "00000000:DF:00.0")
CREATED = "2025-05-12T08:00:00Z"
STARTED = "2025-05-12T09:30:00Z"


def _dgx_h100(node: str, mig: dict[int, list[str]] | None = None) -> fake_nvml.FakeNvml:
    """A DGX H100 as the fake backend models it from a ``--fake-inventory`` file: 8 GPUs behind
    NVSwitch (18 NVLinks each); ``mig``: GPU index -> the profiles it is partitioned into."""
    gpus: list[dict[str, Any]] = []
    for i, bus in enumerate(DGX_H100_BUSES):
        g: dict[str, Any] = {"index": i, "model": H100_SXM[0], "memoryMiB": H100_SXM[1], "numaNode": i // 4,
                             "pciBusId": bus}
        if mig and i in mig:
            g.update(migEnabled=True, mig=[{"profile": p} for p in mig[i]])
        gpus.append(g)
    return fake_nvml.from_inventory({"version": 1, "nvswitch": 18, "gpus": gpus}, seed=node)


class _Published:
    """The device plugin's publisher, kept instead of patched onto a Node."""

    def __init__(self) -> None:
        self.inventory: contract.Inventory | None = None

    def publish(self, inventory: contract.Inventory) -> None:
        self.inventory = inventory

    def flush(self) -> None:
        return None


def _plugin_node(name: str, machine: fake_nvml.FakeNvml, plugin_config: str, cpu: int, memory_gib: int,
                 instance: str) -> dict[str, Any]:
    """The Node as ``kubectl get node -o json`` shows it once the device plugin (with this
    ``--config`` text) has published its inventory and the kubelet counts its devices."""
    settings = config.apply_config(yaml.safe_load(plugin_config), config.Settings())
    published = _Published()
    manager = Manager(NvmlBackend(machine), pathlib.Path("/var/lib/kubelet/device-plugins"), node_name=name,
                      layout=settings.layout, publisher=published)
    assert published.inventory is not None
    patch = kube.node_patch(published.inventory)["metadata"]
    devices = {r: manager.devices(r)[1] for r in manager.resource_names()}
    node = _node(name, cpu, memory_gib, instance, gpu=True)
    node["metadata"]["labels"].update(patch["labels"])
    node["metadata"]["annotations"].update(patch["annotations"])
    node["status"]["capacity"].update({r: str(len(d)) for r, d in devices.items()})
    node["status"]["allocatable"].update({r: str(sum(x.healthy for x in d)) for r, d in devices.items()})
    return node


def _node(name: str, cpu: int, memory_gib: int, instance: str, gpu: bool) -> dict[str, Any]:
    kib = memory_gib * 2**20
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            "creationTimestamp": CREATED,
            "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "node.kubernetes.io/instance-type": instance},
            "name": name,
            "resourceVersion": "48211",
            "uid": _uid("node", name),
        },
        "spec": {"taints": [{"effect": "NoSchedule", "key": contract.NVIDIA_GPU}]} if gpu else {},
        "status": {
            "allocatable": {"cpu": f"{cpu - 2}", "ephemeral-storage": "1770957580Ki", "hugepages-1Gi": "0",
                            "hugepages-2Mi": "0", "memory": f"{kib - 8 * 2**20}Ki", "pods": "110"},
            "capacity": {"cpu": f"{cpu}", "ephemeral-storage": "1921559544Ki", "hugepages-1Gi": "0",
                         "hugepages-2Mi": "0", "memory": f"{kib}Ki", "pods": "110"},
            "conditions": [{"lastHeartbeatTime": STARTED, "lastTransitionTime": CREATED,
                            "message": "kubelet is posting ready status", "reason": "KubeletReady",
                            "status": "True", "type": "Ready"}],
            "nodeInfo": {"architecture": "amd64", "containerRuntimeVersion": "containerd://1.7.24",
                         "kernelVersion": "5.15.0-131-generic", "kubeletVersion": "v1.31.4",
                         "operatingSystem": "linux", "osImage": "Ubuntu 22.04.5 LTS"},
        },
    }


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "https://gpupack.io/examples/explain/" + "/".join(parts)))


def _pod(name: str, namespace: str, image: str, cpu: str, memory: str, gpus: dict[str, int] | None = None,
         memory_hint: str = "", app: str = "", limits_memory: str = "") -> dict[str, Any]:
    """A Pod as its controller creates it, not yet bound."""
    annotations = {contract.GPU_MEMORY_ANNOTATION: memory_hint} if memory_hint else {}
    limits: dict[str, str] = {"memory": limits_memory or memory, **{r: str(n) for r, n in (gpus or {}).items()}}
    spec: dict[str, Any] = {
        "containers": [{"image": image, "imagePullPolicy": "IfNotPresent", "name": "server",
                        "resources": {"limits": limits, "requests": {"cpu": cpu, "memory": memory,
                                                                      **{r: str(n) for r, n in (gpus or {}).items()}}}}],
        "priority": 0,
        "schedulerName": "gpupack-scheduler" if gpus else "default-scheduler",
    }
    if gpus:
        spec["tolerations"] = [{"effect": "NoSchedule", "key": contract.NVIDIA_GPU, "operator": "Exists"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"annotations": annotations, "creationTimestamp": STARTED,
                     "labels": {"app": app or name.rsplit("-", 2)[0]}, "name": name, "namespace": namespace,
                     "resourceVersion": "51877", "uid": _uid("pod", namespace, name)},
        "spec": spec,
        "status": {"phase": "Pending"},
    }


#: The device plugin's --config per kind of node.
WHOLE = "version: v1\nflags: {migStrategy: none}\n"
MIXED_MIG = "version: v1\nflags: {migStrategy: mixed}\n"
TIME_SLICED = ("version: v1\nsharing:\n  timeSlicing:\n    renameByDefault: true\n"
               "    resources: [{name: nvidia.com/gpu, replicas: 4}]\n")


def build_cluster() -> dict[str, Any]:
    """``kubectl get nodes,pods -o json`` of a small inference cluster:

    - ``gpu-h100-a``, a DGX H100, half full: a 2-GPU fine-tune and two 1-GPU LLM servers;
    - ``gpu-a100-b``, a DGX A100, empty (a finished job's annotation holds nothing);
    - ``gpu-h100-mig``, a DGX H100 in MIG mode (mixed strategy): GPUs 0-3 as seven 1g.10gb each,
      GPUs 4-7 as two 3g.40gb each, some of both taken;
    - ``gpu-h100-shared``, 8 H100 PCIe time-sliced 4 ways (``nvidia.com/gpu.shared``), with six
      24 GiB chat servers on them;
    - ``cpu-1``, a CPU-only node (no device plugin there) with the web front end.
    """
    nodes = [
        _plugin_node("gpu-h100-a", _dgx_h100("gpu-h100-a"), WHOLE, 224, 2048, "dgx-h100"),
        _plugin_node("gpu-a100-b", fake_nvml.a100_sxm4_8x("gpu-a100-b"), WHOLE, 256, 1024, "dgx-a100"),
        _plugin_node("gpu-h100-mig", _dgx_h100("gpu-h100-mig", {**{i: ["1g.10gb"] * 7 for i in range(4)},
                                                                **{i: ["3g.40gb"] * 2 for i in range(4, 8)}}),
                     MIXED_MIG, 224, 2048, "dgx-h100"),
        _plugin_node("gpu-h100-shared", fake_nvml.h100_pcie_pairs("gpu-h100-shared"), TIME_SLICED, 128, 1024,
                     "h100-pcie-8x"),
        _node("cpu-1", 64, 256, "m7i.16xlarge", gpu=False),
    ]
    vllm = "vllm/vllm-openai:v0.8.5"
    tei = "ghcr.io/huggingface/text-embeddings-inference:1.7"
    placed = [
        (_pod("finetune-llama-8b-0-x7k2p", "training", "nvcr.io/nvidia/pytorch:25.01-py3", "32", "256Gi",
              {contract.NVIDIA_GPU: 2}, app="finetune-llama-8b"), "gpu-h100-a", "Running"),
        (_pod("llm-whole-gpu-6f9c7d5b8-2xqvl", "inference", vllm, "4", "24Gi", {contract.NVIDIA_GPU: 1},
              limits_memory="32Gi"), "gpu-h100-a", "Running"),
        (_pod("llm-whole-gpu-6f9c7d5b8-h4n8w", "inference", vllm, "4", "24Gi", {contract.NVIDIA_GPU: 1},
              limits_memory="32Gi"), "gpu-h100-a", "Running"),
        (_pod("eval-nightly-28431720-5zt9r", "training", "nvcr.io/nvidia/pytorch:25.01-py3", "16", "128Gi",
              {contract.NVIDIA_GPU: 4}, app="eval-nightly"), "gpu-a100-b", "Succeeded"),
        *[(_pod(f"embeddings-mig-7c8d9f6b4-{s}", "inference", tei, "1", "4Gi", {"nvidia.com/mig-1g.10gb": 1},
                limits_memory="8Gi"), "gpu-h100-mig", "Running") for s in ("9kq2d", "m3x7t", "p8v4z", "r2w6j", "t5n1c")],
        *[(_pod(f"rerank-mig-5b7f8c9d6-{s}", "inference", vllm, "4", "32Gi", {"nvidia.com/mig-3g.40gb": 1},
                limits_memory="40Gi"), "gpu-h100-mig", "Running") for s in ("b4h8k", "f6q2m", "w9d3s")],
        *[(_pod(f"chat-shared-84d6c7b9f-{s}", "inference", vllm, "2", "8Gi", {contract.NVIDIA_GPU_SHARED: 1},
                memory_hint="24Gi", limits_memory="12Gi"), "gpu-h100-shared", "Running")
          for s in ("4mzq8", "6tjx2", "9bkv5", "c2rn7", "k8wd3", "x5hp1")],
        (_pod("web-frontend-5d8f7c6b9-lq2zx", "web", "nginx:1.27", "2", "4Gi", app="web-frontend"), "cpu-1", "Running"),
    ]
    cache = from_objects(nodes)
    policy = kernel.get_policy(kernel.DEFAULT_POLICY)
    pods = []
    for pod, node, phase in placed:
        demand = pod_demand(pod)
        if demand.wants_gpu:  # the extender's binder: the kernel's devices, reserved, then annotated
            assignment = cache.assign(demand, node, policy)
            assert assignment is not None, f"{pod['metadata']['name']} does not fit on {node}"
            pod["metadata"]["annotations"][contract.DEVICES_ANNOTATION] = contract.encode_assignment(assignment)
        pod["spec"]["nodeName"] = node
        pod["status"] = {"phase": phase, "startTime": STARTED}
        pods.append(pod)
    return {"apiVersion": "v1", "items": [*nodes, *pods], "kind": "List", "metadata": {"resourceVersion": ""}}


def write_cluster(path: pathlib.Path = CLUSTER) -> None:
    path.write_text(json.dumps(build_cluster(), indent=4) + "\n")


def test_cluster_example_is_what_the_programs_write() -> None:
    assert json.loads(CLUSTER.read_text()) == build_cluster(), (
        "examples/explain/cluster.json is stale: .venv/bin/python -m tests.scheduler_ext.test_explain_cli")


# --- the examples -------------------------------------------------------------------------------


def run(*argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """``gpupack explain`` in this process: its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = explain.main(list(argv))
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


def rows(out: str) -> list[list[str]]:
    """The table's rows, as [node, verdict, score, raw, reason] ("not now" is one cell)."""
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "VERDICT", "SCORE", "RAW", "REASON"]
    table = []
    for line in lines[1:]:
        if line.startswith(("no node fits", "web asks")):
            break
        cells = line.replace("not now", "not-now").split(None, 4)
        table.append([c.replace("not-now", "not now") for c in cells])
    return table


NAMED = "named node: first by name among the nodes at the top two levels"
H100 = "NVIDIA-H100-80GB-HBM3"
NO_PLUGIN = "no gpupack.io/inventory annotation: is the gpupack device plugin running there?"


@pytest.mark.parametrize(
    "pod, code, first, others",
    [
        # gpu-h100-a: 8 - 2 (fine-tune) - 1 - 1 (LLM servers) = 4 free; packing names it and keeps
        # the empty A100 whole. No nvidia.com/gpu on the MIG, time-sliced (renamed) or CPU nodes.
        ("pod-whole-gpu.yaml", 0, ["gpu-h100-a", "fits", "10", "fits: 4 free for 1 nvidia.com/gpu; " + NAMED],
         {"gpu-a100-b": ("fits", "fits: 8 free for 1 nvidia.com/gpu"),
          "cpu-1": ("never", f"needs 1 nvidia.com/gpu; node has no such device ({NO_PLUGIN})"),
          "gpu-h100-mig": ("never", "needs 1 nvidia.com/gpu; node has no such device"),
          "gpu-h100-shared": ("never", "needs 1 nvidia.com/gpu; node has no such device")}),
        ("pod-two-gpus.yaml", 0, ["gpu-h100-a", "fits", "10", "fits: 4 free for 2 nvidia.com/gpu; " + NAMED],
         {"gpu-a100-b": ("fits", "fits: 8 free for 2 nvidia.com/gpu"), "cpu-1": ("never", "")}),
        # GPUs 0-3 of gpu-h100-mig are 7 x 1g.10gb = 28 slices; 5 embeddings servers hold 5: 23
        ("pod-mig.yaml", 0, ["gpu-h100-mig", "fits", "10", "fits: 23 free for 1 nvidia.com/mig-1g.10gb; " + NAMED],
         {"gpu-h100-a": ("never", "needs 1 nvidia.com/mig-1g.10gb; node has no such device")}),
        # 8 H100 PCIe x 4 shares = 32; six 24 GiB chat servers, three to a GPU, leave two GPUs
        # 81559 - 3 x 24576 = 7831 MiB: none more there. The six others hold
        # floor(81559 / 24576) = 3 by memory (4 by count): 6 x 3 = 18.
        ("pod-share.yaml", 0, ["gpu-h100-shared", "fits", "10",
                               "fits: 18 free for 1 nvidia.com/gpu.shared with 24576 MiB each; " + NAMED],
         {"gpu-h100-a": ("never", "needs 1 nvidia.com/gpu.shared with 24576 MiB each; node has no such device")}),
        # pinned to the H100 label: gpu-h100-a has 4 of its 8 free, listed first (it could take
        # the pod once pods there finish); the A100 has none of that model
        ("pod-eight-h100.yaml", 1, ["gpu-h100-a", "not now", "-", f"needs 8 nvidia.com/gpu of model {H100}; 4 free now of 8"],
         {"gpu-a100-b": ("never", f"needs 8 nvidia.com/gpu of model {H100}; node can hold at most 0 even when empty"),
          "cpu-1": ("never", f"needs 8 nvidia.com/gpu of model {H100}; node has no such device ({NO_PLUGIN})")}),
    ],
    ids=["whole-gpu", "two-gpus", "mig", "share", "eight-h100"],
)
def test_example_pods_print_their_tables(pod: str, code: int, first: list[str],
                                         others: dict[str, tuple[str, str]]) -> None:
    got, out, err = run("--snapshot", str(CLUSTER), "--pod", str(EXAMPLES / pod))
    assert (got, err) == (code, "")
    table = rows(out)
    assert len(table) == 5
    assert table[0][:3] == first[:3] and table[0][4].startswith(first[3])
    by_node = {r[0]: r for r in table}
    for node, (verdict, reason) in others.items():
        assert by_node[node][1] == verdict
        assert reason in by_node[node][4]


def test_no_fit_ends_with_the_count_of_why() -> None:
    line = "no node fits this pod: 1 has too few free devices now, 4 never can"
    code, out, err = run("--snapshot", str(CLUSTER), "--pod", str(EXAMPLES / "pod-eight-h100.yaml"))
    assert (code, err, out.splitlines()[-1]) == (1, "", line)
    code, out, err = run("--snapshot", str(CLUSTER), "--pod", str(EXAMPLES / "pod-eight-h100.yaml"), "--json")
    assert code == 1 and not any(v["fits"] for v in json.loads(out))  # stdout stays JSON
    assert err == line + "\n"


def test_every_example_pod_is_a_pod_the_extender_reads() -> None:
    pods = sorted(EXAMPLES.glob("pod-*.yaml"))
    assert [p.name for p in pods] == ["pod-eight-h100.yaml", "pod-mig.yaml", "pod-share.yaml", "pod-two-gpus.yaml",
                                      "pod-whole-gpu.yaml"]
    for path in pods:
        doc = yaml.safe_load(path.read_text())
        demand = pod_demand(doc)
        assert doc["kind"] == "Pod" and demand.wants_gpu and not demand.error, path.name
        assert doc["spec"]["schedulerName"] == "gpupack-scheduler"
    share = yaml.safe_load((EXAMPLES / "pod-share.yaml").read_text())
    assert share["metadata"]["annotations"][contract.GPU_MEMORY_ANNOTATION] == "24Gi"


def test_the_installed_command_runs_the_first_example() -> None:
    gpupack = pathlib.Path(sys.executable).parent / "gpupack"
    done = subprocess.run([str(gpupack), "explain", "--snapshot", "examples/explain/cluster.json",
                           "--pod", "examples/explain/pod-whole-gpu.yaml"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[1].split()[:3] == ["gpu-h100-a", "fits", "10"]


def test_pod_from_stdin() -> None:
    code, out, _ = run("--snapshot", str(CLUSTER), "--pod", "-", stdin=(EXAMPLES / "pod-mig.yaml").read_bytes())
    assert code == 0 and rows(out)[0][:2] == ["gpu-h100-mig", "fits"]


def test_a_pod_without_gpus_is_said_to_ask_for_none(tmp_path: pathlib.Path) -> None:
    web = tmp_path / "web.yaml"
    web.write_text("kind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: c, resources: {requests: {cpu: 1}}}]\n")
    code, out, _ = run("--snapshot", str(CLUSTER), "--pod", str(web))
    assert code == 0 and all(r[1] == "fits" for r in rows(out))
    assert out.splitlines()[-1].startswith("web asks for no GPU: every node fits as far as gpupack is concerned")


def test_policy_help_lists_every_policy() -> None:
    text = " ".join(explain.parser().format_help().split())
    assert "--policy {binpack,fragmentation,spread}" in text
    for name in kernel.POLICIES:
        assert f"{name}: " in text
    assert "binpack: fill partly used GPUs first" in text and "Default: fragmentation" in text
    assert "exit status: 0 when some node fits, 1 when none does" in text


# --- files it cannot use: one line, the file named, exit 2 --------------------------------------

POD_OK = (EXAMPLES / "pod-whole-gpu.yaml").read_text()
DEPLOYMENT = (REPO / "examples" / "inference-whole-gpu.yaml").read_text()
HOWTO = "make one with `kubectl get nodes,pods -A -o json > cluster.json`"
NODE_N1 = '{"kind": "Node", "metadata": {"name": "n1"}}'
NODE_A = json.loads(CLUSTER.read_text())["items"][0]


def _list(*items: str) -> str:
    return '{"kind": "List", "items": [' + ", ".join(items) + "]}"


#: (id, snapshot: its text, or None for the example; pod: its text, or None for the example;
#: what follows "gpupack explain: FILE: ", FILE being the one given here)
ERRORS: list[tuple[str, bytes | str | None, bytes | str | None, str]] = [
    ("snapshot-not-json", '{\n  "kind": "List",\n  "items": [\n', None, "not JSON: line 4 column 1: Expecting value"),
    ("snapshot-truncated", "{\n", None, "not JSON: line 2 column 1: Expecting property name enclosed in double quotes"),
    ("snapshot-yaml", "apiVersion: v1\nkind: List\n", None, f"not JSON: line 1 column 1: Expecting value ({HOWTO})"),
    ("snapshot-empty", "", None, f"empty; {HOWTO}"),
    ("snapshot-binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", None, f"not JSON text (byte 0 is 0x89); {HOWTO}"),
    ("snapshot-deep", "[" * 100_000, None, "not JSON this program can read: nested too deeply"),
    ("snapshot-array", "[1, 2]", None, f"expected a List of Nodes and Pods, got a list; {HOWTO}"),
    ("snapshot-one-node", NODE_N1, None, f"one Node, expected a List of Nodes and Pods; {HOWTO}"),
    ("snapshot-no-items", '{"kind": "List"}', None, f"a List without items, expected a List of Nodes and Pods; {HOWTO}"),
    ("snapshot-items-object", '{"kind": "List", "items": {}}', None, "items: expected a list, got an object"),
    ("snapshot-item-string", _list('"node-1"'), None, "items[0]: expected an object, got a string"),
    ("snapshot-node-metadata", _list('{"kind": "Node", "metadata": "n1"}'), None,
     "items[0].metadata: expected an object, got a string"),
    ("snapshot-node-annotations", _list('{"kind": "Node", "metadata": {"name": "n1", "annotations": []}}'), None,
     "items[0].metadata.annotations: expected an object, got a list (Node n1)"),
    ("snapshot-node-inventory", _list('{"kind": "Node", "metadata": {"name": "n1", "annotations": '
                                      '{"gpupack.io/inventory": {"gpus": []}}}}'), None,
     "items[0].metadata.annotations['gpupack.io/inventory']: expected a string, got an object (Node n1)"),
    ("snapshot-node-no-name", _list('{"kind": "Node", "metadata": {}}'), None,
     "items[0].metadata.name: expected the node's name, got null"),
    ("snapshot-node-status", _list('{"kind": "Node", "metadata": {"name": "n1"}, "status": {"allocatable": 5}}'),
     None, "items[0].status.allocatable: expected an object, got a number (Node n1)"),
    ("snapshot-pod-containers", _list(NODE_N1, '{"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}, '
                                                '"spec": {"containers": {}}}'), None,
     "items[1].spec.containers: expected a list, got an object (Pod ns/p)"),
    ("snapshot-no-nodes", _list(), None, f"the snapshot holds no nodes; {HOWTO}"),
    ("snapshot-pods-only", _list(json.dumps(yaml.safe_load(POD_OK))), None, f"the snapshot holds no nodes; {HOWTO}"),
    ("pod-not-yaml", None, "kind: Pod\nspec: [\n",
     "not YAML: line 3 column 1: expected the node content, but found '<stream end>'"),
    ("pod-bad-indent", None, "kind: Pod\nmetadata:\n  name: a\n name: b\n",
     "not YAML: line 4 column 2: expected <block end>, but found '<block mapping start>'"),
    ("pod-not-json", None, '{"kind": "Pod",\n "spec": }', "not JSON: line 2 column 10: Expecting value"),
    ("pod-yaml-flow-broken", None, '{"kind": "Pod",\n "spec": [}',
     "not YAML: line 2 column 11: expected the node content, but found '}'"),
    ("pod-deployment", None, DEPLOYMENT, "is a Deployment; give a Pod (e.g. its spec.template as a Pod)"),
    ("pod-cronjob", None, "apiVersion: batch/v1\nkind: CronJob\n",
     "is a CronJob; give a Pod (e.g. its spec.jobTemplate.spec.template as a Pod)"),
    ("pod-service", None, "kind: Service\n", "is a Service; give a Pod"),
    ("pod-list", None, '{"kind": "List", "items": []}', "is a List; give one Pod (e.g. `kubectl get pod NAME -o yaml`)"),
    ("pod-two-documents", None, POD_OK + "---\nkind: Service\n", "2 YAML documents (Pod, Service); give one Pod"),
    ("pod-empty", None, "# nothing\n", "empty; give a Pod as YAML or JSON"),
    ("pod-scalar", None, "just words\n", "Pod: expected an object, got a string"),
    ("pod-binary", None, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not text (byte 0 is 0x89); give the Pod as YAML or JSON"),
    ("pod-nul", None, "kind: Pod\x00\n", "not YAML: U+0000 at offset 9: special characters are not allowed"),
    ("pod-bad-date", None, "kind: Pod\nmetadata: {creationTimestamp: 2025-13-45}\n",
     "not YAML this program can read: month must be in 1..12"),
    ("pod-deep", None, "[" * 2000, "not YAML this program can read: nested too deeply"),
    ("pod-kind-number", None, "kind: 5\n", "kind: expected a string, got 5"),
    ("pod-shape", None, "kind: Pod\nspec:\n  containers: {name: c}\n", "Pod.spec.containers: expected a list, got an object"),
    ("pod-annotation-number", None,
     "kind: Pod\nmetadata: {annotations: {gpupack.io/gpu-memory: 24}}\nspec: {containers: [{name: c}]}\n",
     "Pod.metadata.annotations['gpupack.io/gpu-memory']: expected a string, got an integer"),
    ("pod-no-containers", None, "kind: Pod\nmetadata: {name: p}\n",
     "Pod.spec.containers: missing; a Pod has at least one container"),
    ("pod-too-many-gpus", None,
     "kind: Pod\nspec:\n  containers: [{name: c, resources: {limits: {nvidia.com/gpu: '1000000000000000000'}}}]\n",
     "the extender cannot read this pod's request: container 'c' nvidia.com/gpu: '1000000000000000000' is more "
     "than 1024 devices"),
    ("pod-bad-memory-hint", None,
     POD_OK.replace("labels: {app: llm-whole-gpu}", "annotations: {gpupack.io/gpu-memory: lots}"),
     "the extender cannot read this pod's request: gpupack.io/gpu-memory: 'lots' is not a memory quantity like '10Gi'"),
    ("pod-negative-cpu", None, POD_OK.replace('cpu: "4"', 'cpu: "-4"'),
     "the extender cannot read this pod's request: container 'server' requests.cpu: '-4' is negative"),
]


def _file(tmp_path: pathlib.Path, name: str, content: bytes | str | None, default: pathlib.Path) -> pathlib.Path:
    if content is None:
        return default
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def assert_one_line_error(code: int, out: str, err: str, path: pathlib.Path | str, message: str) -> None:
    assert (code, out) == (2, "")
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err == f"gpupack explain: {path}: {message}\n"


@pytest.mark.parametrize("case, snapshot, pod, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_unusable_file_is_one_line_naming_it(tmp_path: pathlib.Path, case: str, snapshot: bytes | str | None,
                                             pod: bytes | str | None, message: str) -> None:
    snap = _file(tmp_path, "cluster.json", snapshot, CLUSTER)
    pod_file = _file(tmp_path, "pod.json" if case == "pod-not-json" else "pod.yaml", pod,
                     EXAMPLES / "pod-whole-gpu.yaml")
    code, out, err = run("--snapshot", str(snap), "--pod", str(pod_file))
    assert_one_line_error(code, out, err, pod_file if pod is not None else snap, message)


@pytest.mark.parametrize("which", ["--snapshot", "--pod"])
def test_missing_file_directory_and_huge_file(tmp_path: pathlib.Path, which: str) -> None:
    given_files = {"--snapshot": str(CLUSTER), "--pod": str(EXAMPLES / "pod-whole-gpu.yaml")}
    huge = tmp_path / "huge"
    limit = MAX_SNAPSHOT_BYTES if which == "--snapshot" else explain.MAX_POD_BYTES
    with huge.open("wb") as f:
        f.truncate(limit + 1)  # sparse: refused from its size, unread
    what = "a snapshot may have" if which == "--snapshot" else "a Pod needs"
    for path, message in ((tmp_path / "missing", "cannot read (No such file or directory)"),
                          (tmp_path, "cannot read (Is a directory)"),
                          (huge, f"{limit + 1} bytes, more than {what} ({limit})")):
        argv = [a for flag, value in {**given_files, which: str(path)}.items() for a in (flag, value)]
        code, out, err = run(*argv)
        assert_one_line_error(code, out, err, path, message)


def test_files_in_utf16_as_powershell_writes_them(tmp_path: pathlib.Path) -> None:
    pod = tmp_path / "pod.yaml"
    pod.write_bytes(POD_OK.encode("utf-16"))  # with its byte-order mark
    snap = tmp_path / "cluster.json"
    snap.write_bytes(CLUSTER.read_text().encode("utf-16"))
    code, out, _ = run("--snapshot", str(snap), "--pod", str(pod))
    assert code == 0 and rows(out)[0][0] == "gpu-h100-a"


def test_live_cluster_that_cannot_be_listed_is_one_line(tmp_path: pathlib.Path) -> None:
    code, out, err = run("--kubeconfig", str(tmp_path / "none"), "--pod", str(EXAMPLES / "pod-whole-gpu.yaml"))
    assert (code, out) == (2, "") and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"gpupack explain: cannot list the cluster of {tmp_path / 'none'}: ")


# --- anything at all: an exit status, never an exception ----------------------------------------

WORDS = ["kind", "Node", "Pod", "List", "items", "metadata", "name", "namespace", "uid", "annotations", "spec",
         "containers", "resources", "limits", "requests", "nodeName", "status", "phase", "allocatable", "cpu",
         "memory", contract.NVIDIA_GPU, contract.NVIDIA_GPU_SHARED, "nvidia.com/mig-1g.10gb",
         contract.INVENTORY_ANNOTATION, contract.DEVICES_ANNOTATION, contract.GPU_MEMORY_ANNOTATION, "Running"]
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([*WORDS, "1", "2Gi", "-1", "1e400", ""]) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(WORDS), inner, max_size=5),
    max_leaves=30,
)
EXAMPLE_NODES = [o for o in json.loads(CLUSTER.read_text())["items"] if o["kind"] == "Node"][:2]


def _status(tmp: pathlib.Path, snapshot: bytes, pod: bytes) -> int:
    snap, pod_file = tmp / "cluster.json", tmp / "pod.yaml"
    snap.write_bytes(snapshot)
    pod_file.write_bytes(pod)
    code, out, err = run("--snapshot", str(snap), "--pod", str(pod_file))
    assert code in (0, 1, 2)
    if code == 2:
        assert out == "" and err.count("\n") == 1 and err.startswith("gpupack explain: "), err
    return code


@invariant(100)
@given(gpu=st.integers(0, 7), field=st.sampled_from(["index", "memoryMiB", "numaNode", "replicas"]),
       value=st.integers(-(2**40), 2**40) | st.integers(-3, 3))
def test_any_number_in_an_inventory_gets_an_exit_status(tmp_path_factory: pytest.TempPathFactory, gpu: int, field: str,
                                                        value: int) -> None:
    """A hand-edited inventory: the cache's int32 columns must never see a number they cannot hold."""
    node = json.loads(json.dumps(NODE_A))
    inventory = json.loads(node["metadata"]["annotations"][contract.INVENTORY_ANNOTATION])
    inventory["gpus"][gpu][field] = value
    node["metadata"]["annotations"][contract.INVENTORY_ANNOTATION] = json.dumps(inventory)
    tmp = tmp_path_factory.mktemp("numbers")
    _status(tmp, json.dumps({"kind": "List", "items": [node]}).encode(), POD_OK.encode())


@invariant(200)
@given(data=st.binary(max_size=300), as_pod=st.booleans())
def test_random_bytes_get_an_exit_status(tmp_path_factory: pytest.TempPathFactory, data: bytes, as_pod: bool) -> None:
    tmp = tmp_path_factory.mktemp("bytes")
    if as_pod:
        _status(tmp, CLUSTER.read_bytes(), data)
    else:
        _status(tmp, data, POD_OK.encode())


@invariant(150)
@given(items=st.lists(JSONISH, max_size=4), pod=JSONISH, kinds=st.lists(st.sampled_from(["Node", "Pod"]), max_size=4))
def test_random_objects_get_an_exit_status(tmp_path_factory: pytest.TempPathFactory, items: list[Any], pod: Any,
                                           kinds: list[str]) -> None:
    """Random JSON in the words of Nodes and Pods: as items beside two real Nodes, and as the pod."""
    for obj, kind in zip(items, kinds):
        if isinstance(obj, dict):
            obj["kind"] = kind
    snapshot = json.dumps({"kind": "List", "items": [*EXAMPLE_NODES, *items]}).encode()
    tmp = tmp_path_factory.mktemp("objects")
    _status(tmp, snapshot, json.dumps(pod).encode())
    _status(tmp, snapshot, yaml.safe_dump({"kind": "Pod", "spec": pod} if isinstance(pod, dict) else pod).encode())


if __name__ == "__main__":
    write_cluster()
    print(f"wrote {CLUSTER.relative_to(REPO)}", file=sys.stderr)


def test_an_inventory_beyond_int32_makes_its_node_unusable_and_says_why(tmp_path: pathlib.Path) -> None:
    # the contract refuses the number (it overflowed the kernel's int32 columns before): the node
    # is kept, with the reason, exactly as the extender's watch keeps it
    bad = dict(NODE_A, metadata=dict(NODE_A["metadata"], annotations={
        contract.INVENTORY_ANNOTATION: NODE_A["metadata"]["annotations"][contract.INVENTORY_ANNOTATION].replace(
            '"replicas":1', '"replicas":4294967296', 1)}))
    snap = tmp_path / "cluster.json"
    snap.write_text(_list(json.dumps(bad)))
    got, out, err = run("--snapshot", str(snap), "--pod", str(EXAMPLES / "pod-whole-gpu.yaml"))
    assert (got, err) == (1, "")
    (row,) = rows(out)
    assert row[:2] == ["gpu-h100-a", "never"]
    assert "gpus[0].replicas: 4294967296 is out of range" in row[4]
