"""ResourceSlices from the discovered inventory (device_plugin/dra/slices.py): a table of nodes.

Each node is discovered through the real backends over the fakes (fake NVML, fake sysfs), planned
as the driver plans it, and turned into slices; the rows say what the scheduler must see.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from gpupack import contract

from device_plugin import resources
from device_plugin.discovery import amd, intel
from device_plugin.discovery.backend import HealthEvent
from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.dra import slices
from gpupack import dra_names as names
from device_plugin.fakes import nvml as fake_nvml
from device_plugin.fakes import sysfs as fake_sysfs

REPO = pathlib.Path(__file__).resolve().parents[2]
NODE = "gpu-node-1"


def nvidia(nvml: fake_nvml.FakeNvml, tmp: pathlib.Path, sharing: resources.Sharing = resources.Sharing()) -> tuple[contract.Gpu, ...]:
    return resources.plan(NvmlBackend(nvml, tmp).discover(), "none", sharing)


def a100(tmp: pathlib.Path) -> tuple[contract.Gpu, ...]:
    return nvidia(fake_nvml.a100_sxm4_8x("slices"), tmp)


def a100_mig(tmp: pathlib.Path) -> tuple[contract.Gpu, ...]:
    nvml = fake_nvml.a100_sxm4_8x("slices-mig")
    nvml.set_mig(0, ["3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb"])
    nvml.set_mig(1, ["7g.40gb"])
    return nvidia(nvml, tmp)


def h100_shared(tmp: pathlib.Path) -> tuple[contract.Gpu, ...]:
    rule = resources.ShareRule(contract.NVIDIA_GPU, replicas=4, devices=("0", "1"))
    return nvidia(fake_nvml.h100_pcie_pairs("slices-ts"), tmp, resources.Sharing(rules=(rule,), rename_by_default=True))


def mi300x(tmp: pathlib.Path) -> tuple[contract.Gpu, ...]:
    node = fake_sysfs.mi300x_8x(tmp)
    return resources.plan(amd.AmdBackend(node.sysfs, node.dev).discover())


def intel_cards(tmp: pathlib.Path) -> tuple[contract.Gpu, ...]:
    node = fake_sysfs.intel_cards(tmp, driver="xe", count=4)
    return resources.plan(intel.IntelBackend(node.sysfs, node.dev).discover())


def devices(out: list[slices.ResourceSliceJSON]) -> list[slices.DeviceJSON]:
    return [d for s in out for d in s["spec"].get("devices", [])]


def attr(device: slices.DeviceJSON, name: str) -> Any:
    (value,) = device["attributes"][name].values()
    return value


# --- the table --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    node: Callable[[pathlib.Path], tuple[contract.Gpu, ...]]
    slices: int  # ResourceSlices of the pool
    devices: int  # devices published
    counter_sets: int
    check: Callable[[list[slices.ResourceSliceJSON]], None]


def check_a100(out: list[slices.ResourceSliceJSON]) -> None:
    gpu = devices(out)[5]
    assert gpu["name"] == "gpu-5"
    assert attr(gpu, names.PRODUCT) == "NVIDIA A100-SXM4-40GB"
    assert attr(gpu, names.COMPUTE_CAPABILITY) == "8.0.0"
    assert attr(gpu, names.UUID).startswith("GPU-")
    assert attr(gpu, names.PCI_BUS_ID) == attr(gpu, names.STANDARD_PCI_BUS_ID) == "0000:90:00.0"  # NVML's 8-digit domain cut to 4
    assert attr(gpu, names.NUMA) == attr(gpu, names.STANDARD_NUMA_NODE) == 1  # GPUs 4-7 on NUMA node 1
    assert attr(gpu, names.NVLINK_GROUP) == 0  # all eight behind the NVSwitches: one group, lowest index 0
    assert gpu["capacity"] == {names.MEMORY: {"value": "40Gi"}}  # 40960 MiB, canonical
    assert "allowMultipleAllocations" not in gpu and "taints" not in gpu and "consumesCounters" not in gpu


def check_mig_sets(out: list[slices.ResourceSliceJSON]) -> None:
    spec = out[0]["spec"]
    assert "devices" not in spec  # devices and shared counters never share a slice
    sets = {cs["name"]: cs["counters"] for cs in spec["sharedCounters"]}
    assert sorted(sets) == ["gpu-0-counters", "gpu-1-counters"]
    # 40Gi of memory, 7 compute slices, 8 memory slices of 1
    assert sets["gpu-0-counters"]["memory"] == {"value": "40Gi"}
    assert sets["gpu-0-counters"]["compute-slices"] == {"value": "7"}
    assert [k for k in sets["gpu-0-counters"] if k.startswith("memory-slice-")] == [f"memory-slice-{i}" for i in range(8)]
    by_name = {d["name"]: d for d in devices(out)}
    assert sorted(n for n in by_name if n.startswith("gpu-0")) == [
        "gpu-0", "gpu-0-mig-0-3g20gb", "gpu-0-mig-4-2g10gb", "gpu-0-mig-6-1g5gb", "gpu-0-mig-7-1g5gb"]
    (use,) = by_name["gpu-0-mig-4-2g10gb"]["consumesCounters"]
    # 2g.10gb at placement 4, size 2: 9984 MiB, 2 compute slices, memory slices 4 and 5
    assert use == {"counterSet": "gpu-0-counters", "counters": {
        "memory": {"value": "9984Mi"}, "compute-slices": {"value": "2"},
        "memory-slice-4": {"value": "1"}, "memory-slice-5": {"value": "1"}}}
    assert attr(by_name["gpu-0-mig-4-2g10gb"], names.MIG_PROFILE) == "2g.10gb"
    assert attr(by_name["gpu-0-mig-4-2g10gb"], names.PARENT_UUID) == attr(by_name["gpu-0"], names.UUID)
    assert attr(by_name["gpu-0-mig-4-2g10gb"], names.TYPE) == "mig"
    # the GPU in MIG mode consumes everything: it and any of its MIG devices exclude each other
    (whole,) = by_name["gpu-0"]["consumesCounters"]
    assert whole["counters"] == sets["gpu-0-counters"]
    assert attr(by_name["gpu-0"], names.MIG_ENABLED) is True
    assert "consumesCounters" not in by_name["gpu-2"]  # MIG off: a plain whole GPU


def check_shared(out: list[slices.ResourceSliceJSON]) -> None:
    by_name = {d["name"]: d for d in devices(out)}
    shared = by_name["gpu-0"]
    assert shared["allowMultipleAllocations"] is True and attr(shared, names.SHARED) is True
    # 81559 MiB = 79.6 GiB: a claim asks 1..79 GiB in steps of 1 GiB; by default 81559 / 4 -> 19 GiB
    assert shared["capacity"][names.MEMORY] == {"value": "81559Mi", "requestPolicy": {
        "default": "19Gi", "validRange": {"min": "1Gi", "max": "79Gi", "step": "1Gi"}}}
    # 4 replicas: at most four claims, one share each by default
    assert shared["capacity"][names.SHARES] == {"value": "4", "requestPolicy": {
        "default": "1", "validRange": {"min": "1", "max": "4", "step": "1"}}}
    assert "allowMultipleAllocations" not in by_name["gpu-2"]  # the rule names GPUs 0 and 1 only
    assert attr(by_name["gpu-2"], names.NVLINK_GROUP) == 2 and attr(by_name["gpu-3"], names.NVLINK_GROUP) == 2  # bridged pair


def check_amd(out: list[slices.ResourceSliceJSON]) -> None:
    gpu = devices(out)[0]
    assert attr(gpu, names.VENDOR) == "amd" and attr(gpu, names.KERNEL_DRIVER) == "amdgpu"
    assert names.COMPUTE_CAPABILITY not in gpu["attributes"] and names.NVLINK_GROUP not in gpu["attributes"]
    assert gpu["capacity"][names.MEMORY]["value"] == "196592Mi"  # the fake MI300X: 192 GiB less what the driver keeps


def check_intel(out: list[slices.ResourceSliceJSON]) -> None:
    gpu = devices(out)[0]
    assert attr(gpu, names.VENDOR) == "intel" and attr(gpu, names.KERNEL_DRIVER) == "xe"
    assert re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", attr(gpu, names.PCI_BUS_ID))


ROWS = [
    Row("nvidia-8x-a100", a100, slices=1, devices=8, counter_sets=0, check=check_a100),
    # counter slice + 1 device slice: 8 GPUs + 4 + 1 MIG devices = 13
    Row("mig-node", a100_mig, slices=2, devices=13, counter_sets=2, check=check_mig_sets),
    Row("time-sliced-h100", h100_shared, slices=1, devices=8, counter_sets=0, check=check_shared),
    Row("amd-mi300x", mi300x, slices=1, devices=8, counter_sets=0, check=check_amd),
    Row("intel-xe", intel_cards, slices=1, devices=4, counter_sets=0, check=check_intel),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_nodes_as_slices(row: Row, tmp_path: pathlib.Path) -> None:
    out = slices.build(NODE, row.node(tmp_path), generation=3)
    assert len(out) == row.slices
    assert len(devices(out)) == row.devices
    assert sum(len(s["spec"].get("sharedCounters", [])) for s in out) == row.counter_sets
    for i, s in enumerate(out):
        assert s["apiVersion"] == "resource.k8s.io/v1" and s["kind"] == "ResourceSlice"
        assert s["metadata"]["name"] == f"{NODE}-gpu.gpupack.io-{i}"
        assert s["spec"]["driver"] == names.DRIVER and s["spec"]["nodeName"] == NODE
        assert s["spec"]["pool"] == {"name": NODE, "generation": 3, "resourceSliceCount": row.slices}
    for d in devices(out):
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", d["name"]), d["name"]  # a DNS label
        assert len(d["attributes"]) + len(d.get("capacity", {})) <= 32
    assert len({d["name"] for d in devices(out)}) == row.devices
    row.check(out)


# --- health ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("event, value, effect", [
    (HealthEvent("GPU-x", "XID 79", xid=79), "xid-79", "NoExecute"),  # fallen off the bus
    (HealthEvent("GPU-x", "XID 48", xid=48), "xid-48", "NoSchedule"),  # double-bit ECC: no new claims
    (HealthEvent("0000:03:00.0", "PCI device 0000:03:00.0 is gone from /sys/bus/pci/devices"), "gone", "NoExecute"),
    (HealthEvent(None, "NVML event wait failed: Unknown Error"), "nvml-error", "NoSchedule"),
], ids=["xid-79", "xid-48", "device-gone", "nvml-fails"])
def test_faults_choose_the_taint(event: HealthEvent, value: str, effect: str) -> None:
    assert slices.fault_of(event) == slices.Fault(value, effect)  # type: ignore[arg-type]


def test_an_unhealthy_gpu_taints_its_devices_and_recovery_removes_them(tmp_path: pathlib.Path) -> None:
    gpus = a100_mig(tmp_path)
    sick = dataclasses.replace(gpus[0], healthy=False)
    out = slices.build(NODE, (sick, *gpus[1:]), {sick.id: slices.Fault("xid-79", "NoExecute")})
    tainted = {d["name"] for d in devices(out) if d.get("taints")}
    assert tainted == {"gpu-0", "gpu-0-mig-0-3g20gb", "gpu-0-mig-4-2g10gb", "gpu-0-mig-6-1g5gb", "gpu-0-mig-7-1g5gb"}
    assert devices(out)[0]["taints"] == [{"key": "gpu.gpupack.io/unhealthy", "value": "xid-79", "effect": "NoExecute"}]
    # an Unhealthy GPU without a recorded fault still gets a NoSchedule taint
    out = slices.build(NODE, (sick, *gpus[1:]))
    assert devices(out)[0]["taints"] == [{"key": "gpu.gpupack.io/unhealthy", "value": "unhealthy", "effect": "NoSchedule"}]
    # recovered: no taint anywhere
    assert not any(d.get("taints") for d in devices(slices.build(NODE, gpus)))


# --- limits -----------------------------------------------------------------------------------------

def many(n: int, healthy_but: int | None = None) -> tuple[contract.Gpu, ...]:
    return tuple(contract.Gpu(id=f"GPU-{i:04d}", index=i, vendor="nvidia", model="NVIDIA L4", memory_mib=23034,
                              healthy=i != healthy_but) for i in range(n))


@pytest.mark.parametrize("n, sick, sizes", [
    (128, None, [128]),  # the limit exactly
    (200, None, [128, 72]),  # 200 = 128 + 72
    (300, None, [128, 128, 44]),
    # a taint makes its slice "advanced": 64 at most. Devices 0..127 fill slice 0; device 150's slice
    # holds 128..191 (64), the rest 192..199 (8).
    (200, 150, [128, 64, 8]),
    (100, 3, [64, 36]),  # 0..63 with the taint, then 64..99
], ids=["128", "200", "300", "200-one-tainted", "100-early-taint"])
def test_large_pools_split_within_the_api_limits(n: int, sick: int | None, sizes: list[int]) -> None:
    out = slices.build(NODE, many(n, sick), generation=7)
    assert [len(s["spec"]["devices"]) for s in out] == sizes
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in out} == {len(sizes)}
    assert {s["spec"]["pool"]["generation"] for s in out} == {7}
    assert [d["name"] for d in devices(out)] == [f"gpu-{i}" for i in range(n)]
    for s in out:
        advanced = any(d.get("taints") or d.get("consumesCounters") for d in s["spec"]["devices"])
        assert len(s["spec"]["devices"]) <= (64 if advanced else 128)


def test_counter_sets_split_by_eight(tmp_path: pathlib.Path) -> None:
    base = a100_mig(tmp_path)[0]
    gpus = tuple(dataclasses.replace(base, id=f"GPU-{i}", index=i, mig=tuple(
        dataclasses.replace(m, id=f"MIG-{i}-{j}") for j, m in enumerate(base.mig))) for i in range(10))
    out = slices.build(NODE, gpus)
    assert [len(s["spec"].get("sharedCounters", [])) for s in out[:2]] == [8, 2]
    assert [len(s["spec"].get("devices", [])) for s in out[2:]] == [50]  # 10 x (1 + 4): within 64


def test_no_gpus_no_slices() -> None:
    assert slices.build(NODE, ()) == []


def test_compute_instances_of_one_gpu_instance_do_not_exclude_each_other(tmp_path: pathlib.Path) -> None:
    base = a100_mig(tmp_path)[1]
    ci = contract.MigDevice(id="MIG-a", profile="1c.3g.20gb", start=0, size=4, memory_mib=19968)
    gpu = dataclasses.replace(base, mig=(ci, dataclasses.replace(ci, id="MIG-b")))
    devs, _ = slices.gpu_devices(gpu)
    assert [d["name"] for d in devs] == ["gpu-1", "gpu-1-mig-0-1c3g20gb", "gpu-1-mig-0-1c3g20gb-1"]
    for d in devs[1:]:
        # 1 compute slice each, no memory slice and no memory: the placement is their GPU instance's
        assert d["consumesCounters"][0]["counters"] == {"compute-slices": {"value": "1"}}


@pytest.mark.parametrize("mib, text", [(40960, "40Gi"), (81559, "81559Mi"), (1024 * 1024, "1Ti"), (1536, "1536Mi"), (0, "0")])
def test_quantities_are_canonical(mib: int, text: str) -> None:
    assert slices.quantity_mib(mib) == text


@pytest.mark.parametrize("model, cc", [("NVIDIA A100-SXM4-40GB", "8.0.0"), ("NVIDIA H100 PCIe", "9.0.0"),
                                       ("NVIDIA A10G", "8.6.0"), ("Tesla T4", "7.5.0"), ("NVIDIA L40S", "8.9.0"),
                                       ("Some Future GPU", None)])
def test_compute_capability_by_product(model: str, cc: str | None) -> None:
    assert slices.compute_capability(model) == cc


def test_published_devices_name_what_prepare_gives(tmp_path: pathlib.Path) -> None:
    gpus = a100_mig(tmp_path)
    published = slices.published_devices(gpus)
    assert sorted(published) == sorted(d["name"] for d in devices(slices.build(NODE, gpus)))
    mig = published["gpu-0-mig-4-2g10gb"]
    assert (mig.kind, mig.gpu_id, mig.visible_id) == ("mig", gpus[0].id, gpus[0].mig[1].id)


# --- the DeviceClasses name what the slices publish --------------------------------------------------

def device_classes() -> list[dict[str, Any]]:
    out = []
    for path in sorted((REPO / "deploy" / "dra").glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "DeviceClass"]
    return out


def test_device_classes_keep_todays_resource_names() -> None:
    named = [c for c in device_classes() if c["spec"].get("extendedResourceName")]
    by_resource = {c["spec"]["extendedResourceName"]: c["metadata"]["name"] for c in named}
    for resource in (contract.NVIDIA_GPU, contract.NVIDIA_GPU_SHARED, contract.AMD_GPU, contract.INTEL_I915,
                     contract.INTEL_XE, contract.mig_resource("1g.5gb"), contract.mig_resource("1g.10gb")):
        assert resource in by_resource, resource
    assert len(by_resource) == len(named)  # each extended resource names one class


def test_device_class_selectors_use_only_published_attributes() -> None:
    published = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and v.startswith(names.DRIVER + "/")}
    for c in device_classes():
        (selector,) = c["spec"]["selectors"]
        cel = selector["cel"]["expression"]
        assert f'device.driver == "{names.DRIVER}"' in cel
        for attribute in re.findall(r'device\.attributes\["gpu\.gpupack\.io"\]\.(\w+)', cel):
            assert f"{names.DRIVER}/{attribute}" in published, (c["metadata"]["name"], attribute)


def test_the_chart_in_dra_mode_ships_the_same_classes_the_driver_and_its_rbac() -> None:
    import subprocess

    helm = subprocess.run([str(REPO / "tools/helm/build.sh")], capture_output=True, text=True, timeout=1500, check=False)
    assert helm.returncode == 0, helm.stderr
    binary = helm.stdout.strip().splitlines()[-1]

    def render(*values: str) -> list[dict[str, Any]]:
        proc = subprocess.run([binary, "template", "gpupack", str(REPO / "deploy/helm/gpupack"), "--namespace", "kube-system",
                               "--kube-version", "1.37.2", *values], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict)]

    assert not [d for d in render() if "dra" in d["metadata"]["name"] or d["kind"] == "DeviceClass"]  # default: device-plugin
    docs = render("--set", "dra.mode=dra")
    assert [d for d in docs if d["kind"] == "DeviceClass"] == device_classes()
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "gpupack-dra-driver"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == ["gpupack-dra-driver"]
    assert pod["nodeSelector"] == {"gpupack.io/kubelet-api": "dra"}
    paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert paths == {"/var/lib/kubelet/plugins/gpu.gpupack.io", "/var/lib/kubelet/plugins_registry", "/var/run/cdi", "/dev"}
    (role,) = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "gpupack-dra-driver"]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    # device_plugin/dra/publisher.py: list, watch, create, update (replace), delete slices; get the Node (owner uid);
    # prepare.py: get the claim. "get" on slices for kubectl-style reads of one slice.
    assert granted == {("resource.k8s.io", "resourceslices", v) for v in ("get", "list", "watch", "create", "update", "delete")} | {
        ("resource.k8s.io", "resourceclaims", "get"), ("", "nodes", "get")}
