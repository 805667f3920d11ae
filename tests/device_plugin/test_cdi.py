"""CDI: the specs the plugin writes, how it writes them, the config, and the whole plugin in
CDI mode checked by the CDI project's own Go package (tests/device_plugin/go/cdicheck).

The Go-checked tests run the plugin's real gRPC servers on Unix sockets, driven by the
kubelet stand-in, over the fake NVML and fake sysfs trees: Allocate answers with CDI names,
cdicheck loads the spec folder as containerd and CRI-O do, resolves those names and injects
them into an OCI spec that already holds the Allocate answer's environment, and the test
compares the container's device nodes and variables with what that device must get.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import yaml

from device_plugin import allocate, cdi, config, resources
from device_plugin.discovery.amd import AmdBackend
from device_plugin.discovery.backend import Backend, ContainerEdits
from device_plugin.discovery.intel import IntelBackend
from device_plugin.discovery.nvml import NVIDIA_CONTROL_NODES, NvmlBackend
from device_plugin.fakes import nvml as fake_nvml
from device_plugin.fakes import sysfs as fake_sysfs
from device_plugin.health import HealthSettings
from device_plugin.manager import Manager
from device_plugin.resources import Device
from gpupack import contract
from gpupack_cli.kubelet_standin import STREAM_DEADLINE_S, KubeletStandIn
from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb

REPO = pathlib.Path(__file__).resolve().parents[2]
NVIDIA_SPEC = "k8s.gpupack.io-gpu_nvidia.json"
CONTROL = list(NVIDIA_CONTROL_NODES)  # /dev/nvidiactl, -uvm, -uvm-tools, -modeset


# --- machines, each as the plugin plans it ----------------------------------------------------


def mig_caps(proc: pathlib.Path) -> None:
    """The driver's capability files for GPU 0 (minor 0), GPU instance 3, compute instance 0."""
    caps = proc / "driver/nvidia/capabilities/gpu0/mig/gi3"
    (caps / "ci0").mkdir(parents=True)
    (caps / "access").write_text("DeviceFileMinor: 30\nDeviceFileMode: 292\n")
    (caps / "ci0" / "access").write_text("DeviceFileMinor: 31\nDeviceFileMode: 292\n")


def a100_mixed() -> fake_nvml.FakeNvml:
    nvml = fake_nvml.a100_sxm4_8x("cdi-mig")
    nvml.set_mig(0, ["3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb"])  # migs[2]: the first 1g.5gb, GI 3
    nvml.set_mig(1, ["7g.40gb"])
    return nvml


SHARE_GPU_3 = resources.Layout(sharing=resources.Sharing(rules=(resources.ShareRule(contract.NVIDIA_GPU, 4, ("3",)),)))


@dataclasses.dataclass
class Machine:
    backend: Backend
    layout: resources.Layout
    nvml: fake_nvml.FakeNvml | None = None


def machine(kind: str, root: pathlib.Path) -> Machine:
    if kind == "nvidia-whole":
        nvml = fake_nvml.a100_sxm4_8x("cdi-a100")
        return Machine(NvmlBackend(nvml), resources.Layout(), nvml)
    if kind == "nvidia-mig":
        mig_caps(root / "proc")
        nvml = a100_mixed()
        return Machine(NvmlBackend(nvml, proc_root=root / "proc"), resources.Layout("mixed"), nvml)
    if kind == "nvidia-shares":
        nvml = fake_nvml.a100_sxm4_8x("cdi-shares")
        return Machine(NvmlBackend(nvml), SHARE_GPU_3, nvml)
    if kind == "amd":
        node = fake_sysfs.mi300x_8x(root / "amd")
        return Machine(AmdBackend(node.sysfs, node.dev), resources.Layout())
    node = fake_sysfs.intel_cards(root / "intel", count=4)
    return Machine(IntelBackend(node.sysfs, node.dev), resources.Layout())


def planned(m: Machine) -> tuple[tuple[contract.Gpu, ...], dict[str, tuple[Device, ...]]]:
    gpus = resources.plan(m.backend.discover(), m.layout.mig_strategy, m.layout.sharing)
    return gpus, resources.advertise(gpus)


def with_nodes(m: Machine) -> Callable[[list[str]], ContainerEdits]:
    return lambda visible: m.backend.container_edits(visible, True)


def the_id(kind: str, gpus: tuple[contract.Gpu, ...]) -> str:
    """The device id each case looks at."""
    return {
        "nvidia-whole": lambda: gpus[2].id,
        "nvidia-mig": lambda: gpus[0].mig[2].id,
        "nvidia-shares": lambda: contract.share_id(gpus[3].id, 2),
        "amd": lambda: gpus[5].id,
        "intel": lambda: gpus[1].id,
    }[kind]()


def rw(*paths: str) -> list[dict[str, str]]:
    return [{"path": p, "permissions": "rw"} for p in paths]


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device_id, name",
    [
        ("GPU-8f0c2a6e-1b2d-4c3e-9f00-0123456789ab", "GPU-8f0c2a6e-1b2d-4c3e-9f00-0123456789ab"),  # as it is
        ("MIG-3f1b0000-aaaa-bbbb-cccc-0123456789ab", "MIG-3f1b0000-aaaa-bbbb-cccc-0123456789ab"),
        ("GPU-1::3", "GPU-1::3"),  # a share: ':' is allowed inside a name
        ("0000:03:00.0", "0000:03:00.0"),  # a PCI address (starts with a digit: CDI 0.5.0)
        ("gpu/0 x", "gpu_0_x"),  # '/' and ' ' are not allowed
        ("-GPU-1-", "GPU-1"),  # must start and end with a letter or digit
        ("MIG-\u00fc", "MIG"),  # not ASCII -> '_', then stripped at the end
    ],
)
def test_device_names_keep_to_cdis_characters(device_id: str, name: str) -> None:
    assert cdi.device_name(device_id) == name
    assert cdi.qualified_name(device_id) == f"k8s.gpupack.io/gpu={name}"


@pytest.mark.parametrize("device_id", ["", "///", "::"])
def test_an_id_with_no_name_character_is_refused(device_id: str) -> None:
    with pytest.raises(ValueError, match="no character a CDI device name may hold"):
        cdi.device_name(device_id)


def test_two_ids_with_one_name_are_refused() -> None:
    gpus = (contract.Gpu("a/b", 0, "nvidia", "m", 1), contract.Gpu("a_b", 1, "nvidia", "m", 1))
    devices = {contract.NVIDIA_GPU: tuple(Device(g.id, g.id, g.id, -1, True) for g in gpus)}
    with pytest.raises(ValueError, match="'a/b' and 'a_b' both become CDI name 'a_b'"):
        cdi.build_specs(gpus, devices, lambda v: ContainerEdits({}, tuple(f"/dev/x{i}" for i in v)))


# --- specs, per kind of device --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, file, shared, count, own",
    [
        # every NVIDIA container needs the control nodes: spec-level; a GPU has its /dev/nvidiaN
        ("nvidia-whole", NVIDIA_SPEC, CONTROL, 8, ["/dev/nvidia2"]),
        # MIG 1g.5gb on GPU 0, GI 3 / CI 0: the parent's node and both capability nodes;
        # 4 + 1 MIG devices (GPUs 0, 1) + 6 whole GPUs = 11 devices
        ("nvidia-mig", NVIDIA_SPEC, CONTROL, 11, ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap30", "/dev/nvidia-caps/nvidia-cap31"]),
        # share 2 of GPU 3: the GPU's node; 7 whole GPUs + 4 shares of GPU 3 = 11 devices
        ("nvidia-shares", NVIDIA_SPEC, CONTROL, 11, ["/dev/nvidia3"]),
        # AMD: /dev/kfd is shared; GPU 5 is card6 and renderD133 (card0 is the BMC)
        ("amd", "k8s.gpupack.io-gpu_amd.json", ["/dev/kfd"], 8, ["/dev/dri/card6", "/dev/dri/renderD133"]),
        # Intel: nothing shared; card 1 and its render node 128 + 1
        ("intel", "k8s.gpupack.io-gpu_intel.json", [], 4, ["/dev/dri/card1", "/dev/dri/renderD129"]),
    ],
)
def test_spec_of_each_kind_of_device(
    kind: str, file: str, shared: list[str], count: int, own: list[str], tmp_path: pathlib.Path
) -> None:
    m = machine(kind, tmp_path)
    gpus, devices = planned(m)
    specs = cdi.build_specs(gpus, devices, with_nodes(m))
    assert list(specs) == [file]
    spec = specs[file]
    assert (spec["cdiVersion"], spec["kind"]) == ("0.5.0", "k8s.gpupack.io/gpu")
    assert spec["containerEdits"] == ({"deviceNodes": rw(*shared)} if shared else {})
    assert len(spec["devices"]) == count
    by_name = {d["name"]: d["containerEdits"] for d in spec["devices"]}
    assert by_name[cdi.device_name(the_id(kind, gpus))] == {"deviceNodes": rw(*own)}
    # every advertised id has its device, and no other
    assert set(by_name) == {cdi.device_name(d.id) for ds in devices.values() for d in ds}
    m.backend.close()


def test_unhealthy_devices_stay_in_the_spec(tmp_path: pathlib.Path) -> None:
    m = machine("nvidia-whole", tmp_path)
    gpus, devices = planned(m)
    before = cdi.build_specs(gpus, devices, with_nodes(m))
    sick = tuple(dataclasses.replace(g, healthy=g.index != 3) for g in gpus)
    assert cdi.build_specs(sick, resources.advertise(sick), with_nodes(m)) == before


def test_a_device_without_nodes_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    gpus = tuple(contract.Gpu(f"GPU-{i}", i, "nvidia", "m", 1) for i in range(2))
    devices = {contract.NVIDIA_GPU: tuple(Device(g.id, g.id, g.id, -1, True) for g in gpus)}
    known = {"GPU-0": "/dev/nvidia0"}
    with caplog.at_level(logging.WARNING, "gpupack.cdi"):
        specs = cdi.build_specs(gpus, devices, lambda v: ContainerEdits({}, tuple(known[i] for i in v if i in known)))
    assert [d["name"] for d in specs[NVIDIA_SPEC]["devices"]] == ["GPU-0"]
    assert "no device node is known for GPU-1" in caplog.text
    assert cdi.build_specs(gpus, {}, lambda v: ContainerEdits({}, ())) == {}  # nothing advertised: no file


# --- the writer -------------------------------------------------------------------------------------


@pytest.fixture
def nvidia_state(tmp_path: pathlib.Path) -> tuple[Machine, tuple[contract.Gpu, ...], dict[str, tuple[Device, ...]]]:
    m = machine("nvidia-whole", tmp_path)
    return (m, *planned(m))


def test_writer_writes_our_file_and_nothing_else(tmp_path: pathlib.Path, nvidia_state: Any) -> None:
    m, gpus, devices = nvidia_state
    spec_dir = tmp_path / "cdi"
    writer = cdi.CdiSpecs(spec_dir)
    writer.write(gpus, devices, with_nodes(m))
    path = spec_dir / NVIDIA_SPEC
    assert os.listdir(spec_dir) == [NVIDIA_SPEC]  # no temporary file left
    assert json.loads(path.read_text()) == cdi.build_specs(gpus, devices, with_nodes(m))[NVIDIA_SPEC]
    assert path.stat().st_mode & 0o777 == 0o644
    inode = path.stat().st_ino
    writer.write(gpus, devices, with_nodes(m))  # same bytes: not rewritten
    assert path.stat().st_ino == inode


def test_a_failed_write_leaves_the_old_file_and_is_retried(
    tmp_path: pathlib.Path, nvidia_state: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    m, gpus, devices = nvidia_state
    spec_dir = tmp_path / "cdi"
    writer = cdi.CdiSpecs(spec_dir)
    writer.write(gpus, devices, with_nodes(m))
    old = (spec_dir / NVIDIA_SPEC).read_bytes()
    fewer = {r: ds[:3] for r, ds in devices.items()}

    def full(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with caplog.at_level(logging.ERROR, "gpupack.cdi"):
        writer.write(gpus, fewer, with_nodes(m))
    assert "No space left on device" in caplog.text and "will try again" in caplog.text
    assert (spec_dir / NVIDIA_SPEC).read_bytes() == old  # readers still see the whole old spec
    assert os.listdir(spec_dir) == [NVIDIA_SPEC]  # and no half-written temporary file
    monkeypatch.undo()
    writer.flush()  # the probe thread's retry
    assert len(json.loads((spec_dir / NVIDIA_SPEC).read_text())["devices"]) == 3


def test_only_our_own_files_are_removed(tmp_path: pathlib.Path, nvidia_state: Any) -> None:
    m, gpus, devices = nvidia_state
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    foreign = ["nvidia.yaml", "nvidia.com-gpu.json", "k8s.gpupack.io-gpu.json", "k8s.gpupack.io-gpu_nvidia.yaml", "README"]
    for name in foreign:
        (spec_dir / name).write_text("not ours\n")
    # ours, from an earlier run: a vendor no longer here, and a crash mid-write
    (spec_dir / "k8s.gpupack.io-gpu_amd.json").write_text("{}")
    (spec_dir / ".k8s.gpupack.io-gpu_nvidia.json.x1y2.tmp").write_text("{")
    writer = cdi.CdiSpecs(spec_dir)
    writer.write(gpus, devices, with_nodes(m))
    assert sorted(os.listdir(spec_dir)) == sorted([*foreign, NVIDIA_SPEC])
    writer.remove()
    assert sorted(os.listdir(spec_dir)) == sorted(foreign)
    assert {(spec_dir / n).read_text() for n in foreign} == {"not ours\n"}


def test_no_cdi_writes_nothing(tmp_path: pathlib.Path, nvidia_state: Any) -> None:
    m, gpus, devices = nvidia_state
    assert isinstance(cdi.specs_for(cdi.CdiSettings()), cdi.NoCdiSpecs)
    writer = cdi.specs_for(cdi.CdiSettings(spec_dir=tmp_path / "cdi"))
    writer.write(gpus, devices, with_nodes(m))
    writer.remove()
    assert not (tmp_path / "cdi").exists()


# --- config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, expected",
    [
        (None, cdi.CdiSettings()),
        ({}, cdi.CdiSettings()),
        ({"enabled": True}, cdi.CdiSettings(enabled=True)),
        ({"enabled": True, "allocate": "cdi"}, cdi.CdiSettings(True, pathlib.Path("/var/run/cdi"), "cdi")),
        ({"enabled": "true", "specDir": "/etc/cdi/", "allocate": "env"}, cdi.CdiSettings(True, pathlib.Path("/etc/cdi"), "env")),
        ([], "cdi: expected a mapping"),
        ({"enable": True}, "cdi.enable: unknown key (allowed: enabled, specDir, allocate)"),
        ({"enabled": "maybe"}, "cdi.enabled: expected true or false, got 'maybe'"),
        ({"enabled": True, "specDir": "var/run/cdi"}, "cdi.specDir: expected an absolute folder path such as /var/run/cdi, got 'var/run/cdi'"),
        ({"enabled": True, "specDir": 7}, "cdi.specDir: expected an absolute folder path such as /var/run/cdi, got 7"),
        ({"enabled": True, "specDir": "/x\0y"}, "cdi.specDir: expected an absolute folder path"),
        ({"enabled": True, "specDir": "/" + "d" * 5000}, "got '/ddddd"),  # 5001 bytes > 4095: refused, shown cut
        ({"enabled": True, "allocate": "annotations"}, "cdi.allocate: expected env or cdi, got 'annotations'"),
        ({"allocate": "cdi"}, "cdi.allocate: cdi needs cdi.enabled: true"),
    ],
    ids=[
        "absent", "empty", "enabled", "cdi-mode", "other-dir", "not-a-mapping", "unknown-key", "bad-bool",
        "relative-dir", "dir-not-text", "dir-with-nul", "dir-too-long", "unknown-mode", "cdi-mode-needs-enabled",
    ],
)
def test_config_cdi_section(section: Any, expected: cdi.CdiSettings | str) -> None:
    raw: dict[str, Any] = {"version": "v1"}
    if section is not None:
        raw["cdi"] = section
    if isinstance(expected, str):
        with pytest.raises(config.ConfigError) as err:
            config.apply_config(raw, config.Settings())
        assert expected in str(err.value)
        assert len(str(err.value)) < 300
    else:
        assert config.apply_config(raw, config.Settings()).cdi == expected


def test_config_file_with_cdi_names_file_and_field(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("version: v1\ncdi:\n  allocate: cdi\n")
    with pytest.raises(config.ConfigError, match=r"config\.yaml: cdi\.allocate: cdi needs cdi\.enabled: true"):
        config.load_file(path, config.Settings())


def test_manager_refuses_an_unknown_allocate_mode(a100: fake_nvml.FakeNvml, short_dir: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="unknown allocate mode 'annotations': choose env or cdi"):
        Manager(NvmlBackend(a100), short_dir, allocate_mode="annotations")


# --- the plugin in CDI mode, checked by the CDI package ------------------------------------------------


def run_cdicheck(binary: pathlib.Path, spec_dir: pathlib.Path, names: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    args = [str(binary), "-spec-dir", str(spec_dir), "-simulate-missing-host-nodes"]
    for k, v in (env or {}).items():
        args += ["-env", f"{k}={v}"]
    proc = subprocess.run([*args, *names], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.fixture
def start_cdi(kubelet: KubeletStandIn, tmp_path: pathlib.Path) -> Iterator[Callable[..., Manager]]:
    """Starts a manager over a machine with CDI specs in tmp_path/cdi and the given allocate mode."""
    started: list[Manager] = []

    def start(m: Machine, mode: str = "cdi") -> Manager:
        manager = Manager(
            m.backend, kubelet.folder, health=HealthSettings(probe_interval_s=0.05, recovery_probes=2), layout=m.layout,
            cdi_specs=cdi.CdiSpecs(tmp_path / "cdi"), allocate_mode=mode,
        )
        manager.start()
        started.append(manager)
        return manager

    yield start
    for manager in started:
        manager.stop()


def allocate_one(kubelet: KubeletStandIn, resource: str, ids: list[str]) -> pb.ContainerAllocateResponse:
    channel, stub = kubelet.plugin(f"gpupack-{resource.replace('/', '_')}.sock")
    try:
        resp = stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)]))
    finally:
        channel.close()
    c: pb.ContainerAllocateResponse = resp.container_responses[0]
    return c


def every_name(manager: Manager) -> set[str]:
    return {cdi.device_name(d.id) for r in manager.resource_names() for d in manager.devices(r)[1]}


def spec_names(report: dict[str, Any]) -> set[str]:
    return {name for s in report["specs"] for name in s["devices"]}


def ids_of(kind: str, gpus: tuple[contract.Gpu, ...]) -> tuple[str, list[str]]:
    """The resource and the ids one container is given, per case."""
    share = contract.share_id
    cases: dict[str, Callable[[], tuple[str, list[str]]]] = {
        "nvidia-whole": lambda: (contract.NVIDIA_GPU, [gpus[0].id, gpus[1].id]),
        "nvidia-mig": lambda: ("nvidia.com/mig-1g.5gb", [gpus[0].mig[2].id]),
        # three shares, two of one GPU: two physical GPUs, three CDI names
        "nvidia-shares": lambda: (contract.NVIDIA_GPU, [share(gpus[3].id, 0), share(gpus[3].id, 1), gpus[4].id]),
        "amd": lambda: (contract.AMD_GPU, [gpus[0].id, gpus[5].id]),
        "intel": lambda: (contract.INTEL_I915, [gpus[1].id]),
    }
    return cases[kind]()


@pytest.mark.parametrize(
    "kind, env, nodes",
    [
        # NVIDIA: the control nodes from the spec, then each GPU's node; the variable the env
        # path sets comes through Allocate (a list, which per-device CDI edits cannot build)
        ("nvidia-whole", lambda g: {"NVIDIA_VISIBLE_DEVICES": f"{g[0].id},{g[1].id}"}, CONTROL + ["/dev/nvidia0", "/dev/nvidia1"]),
        ("nvidia-mig", lambda g: {"NVIDIA_VISIBLE_DEVICES": g[0].mig[2].id},
         CONTROL + ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap30", "/dev/nvidia-caps/nvidia-cap31"]),
        ("nvidia-shares", lambda g: {"NVIDIA_VISIBLE_DEVICES": f"{g[3].id},{g[4].id}"}, CONTROL + ["/dev/nvidia3", "/dev/nvidia4"]),
        # AMD: /dev/kfd once, then GPU 0 (card1, renderD128) and GPU 5 (card6, renderD133); no variable
        ("amd", lambda g: {}, ["/dev/kfd", "/dev/dri/card1", "/dev/dri/renderD128", "/dev/dri/card6", "/dev/dri/renderD133"]),
        ("intel", lambda g: {}, ["/dev/dri/card1", "/dev/dri/renderD129"]),
    ],
    ids=["nvidia-whole", "nvidia-mig", "nvidia-shares", "amd", "intel"],
)
def test_allocate_names_resolve_to_exactly_the_devices_nodes(
    kind: str, env: Callable[[tuple[contract.Gpu, ...]], dict[str, str]], nodes: list[str],
    tmp_path: pathlib.Path, kubelet: KubeletStandIn, start_cdi: Callable[..., Manager], cdicheck: pathlib.Path,
) -> None:
    manager = start_cdi(machine(kind, tmp_path))
    gpus = manager.inventory().gpus
    resource, ids = ids_of(kind, gpus)
    c = allocate_one(kubelet, resource, ids)
    names = [cdi.qualified_name(i) for i in ids]
    assert list(d.name for d in c.cdi_devices) == names
    assert len(c.devices) == 0  # device nodes come from the spec, not as device specs
    assert dict(c.envs) == env(gpus)

    report = run_cdicheck(cdicheck, tmp_path / "cdi", names, dict(c.envs))
    assert report["errors"] == [] and report["unresolved"] == []
    assert report["devices"] == names
    assert report["deviceNodes"] == nodes
    assert report["env"] == [f"{k}={v}" for k, v in env(gpus).items()]
    assert set(report["deviceRules"]) == {r for r in report["deviceRules"] if r.endswith(" rw")}  # no mknod
    (spec,) = report["specs"]
    vendor = gpus[0].vendor
    assert (pathlib.Path(spec["path"]).name, spec["kind"], spec["cdiVersion"]) == (cdi.spec_file_name(vendor), "k8s.gpupack.io/gpu", "0.5.0")
    assert spec_names(report) == every_name(manager)  # every advertised device, and each resolves


def test_env_mode_with_specs_keeps_the_env_answer(
    tmp_path: pathlib.Path, kubelet: KubeletStandIn, start_cdi: Callable[..., Manager], cdicheck: pathlib.Path,
) -> None:
    manager = start_cdi(machine("nvidia-whole", tmp_path), mode="env")
    gpu = manager.inventory().gpus[6].id
    c = allocate_one(kubelet, contract.NVIDIA_GPU, [gpu])
    assert (dict(c.envs), len(c.devices), len(c.cdi_devices)) == ({"NVIDIA_VISIBLE_DEVICES": gpu}, 0, 0)
    # the specs are there for an operator about to switch
    report = run_cdicheck(cdicheck, tmp_path / "cdi", [cdi.qualified_name(gpu)])
    assert report["errors"] == [] and report["deviceNodes"] == CONTROL + ["/dev/nvidia6"]


def test_specs_follow_health_and_layout_and_go_at_shutdown(
    tmp_path: pathlib.Path, kubelet: KubeletStandIn, start_cdi: Callable[..., Manager], cdicheck: pathlib.Path,
) -> None:
    m = machine("nvidia-mig", tmp_path)
    assert m.nvml is not None
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    # NVIDIA's toolkit's spec of its own kind, for the same GPUs: no conflict with ours
    toolkit = {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
               "devices": [{"name": "all", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}}]}
    (spec_dir / "nvidia.yaml").write_text(yaml.safe_dump(toolkit))
    manager = start_cdi(m)
    gpus = manager.inventory().gpus
    big = cdi.qualified_name(gpus[1].mig[0].id)  # GPU 1's 7g.40gb
    before = (spec_dir / NVIDIA_SPEC).read_bytes()

    # GPU 1 falls off the bus: Unhealthy, refused by Allocate, still in the spec
    channel, stub = kubelet.plugin("gpupack-nvidia.com_mig-7g.40gb.sock")
    stream = stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)
    next(stream)
    m.nvml.lose(1)
    assert {d.health for d in next(stream).devices} == {"Unhealthy"}
    with pytest.raises(grpc.RpcError) as err:
        stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[gpus[1].mig[0].id])]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()
    manager.probe_once()  # whatever the refresh threads did, the spec is written by now
    assert (spec_dir / NVIDIA_SPEC).read_bytes() == before
    report = run_cdicheck(cdicheck, spec_dir, [big, "nvidia.com/gpu=all"])
    assert report["errors"] == [] and report["unresolved"] == []
    m.nvml.recover(1)
    manager.probe_once()
    manager.probe_once()

    # the operator repartitions GPU 1 into seven 1g.5gb: the 7g.40gb leaves the spec, the new ones come
    m.nvml.set_mig(1, ["1g.5gb"] * 7)
    manager.rescan()
    new = [cdi.qualified_name(mig.id) for mig in manager.inventory().gpus[1].mig]
    report = run_cdicheck(cdicheck, spec_dir, [big, *new])
    assert report["errors"] == []
    assert report["unresolved"] == [big] and report["devices"] == new
    assert {s["kind"] for s in report["specs"]} == {"k8s.gpupack.io/gpu", "nvidia.com/gpu"}
    assert spec_names(report) == every_name(manager) | {"all"}

    # a time-slicing change: shares of the whole GPU 2 appear, GPU 2 itself goes
    sharing = resources.Sharing(rules=(resources.ShareRule(contract.NVIDIA_GPU, 2, ("2",)),))
    assert manager.reconfigure(resources.Layout("mixed", sharing), HealthSettings(probe_interval_s=0.05, recovery_probes=2), False)
    gpu2 = gpus[2].id
    report = run_cdicheck(cdicheck, spec_dir, [cdi.qualified_name(gpu2), cdi.qualified_name(contract.share_id(gpu2, 1))])
    assert report["unresolved"] == [cdi.qualified_name(gpu2)]
    assert report["deviceNodes"] == CONTROL + ["/dev/nvidia2"]

    manager.stop()
    assert os.listdir(spec_dir) == ["nvidia.yaml"]  # ours gone, the toolkit's untouched


def test_the_chart_mounts_the_spec_dir_and_configures_cdi() -> None:
    helm = subprocess.run([str(REPO / "tools" / "helm" / "build.sh")], capture_output=True, text=True, timeout=1500, check=False)
    assert helm.returncode == 0, helm.stderr
    binary = helm.stdout.strip().splitlines()[-1]

    def render(*values: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "template", "gpupack", str(REPO / "deploy/helm/gpupack"), "--namespace", "kube-system",
             "--kube-version", "1.37.2", *values], capture_output=True, text=True, timeout=120, check=False,
        )

    proc = render("--set", "devicePlugin.cdi.enabled=true", "--set", "devicePlugin.cdi.allocate=cdi",
                  "--set", "devicePlugin.cdi.specDir=/etc/cdi")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict)]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "gpupack-device-plugin")
    settings = config.apply_config(yaml.safe_load(cm["data"]["config.yaml"]), config.Settings())
    assert settings.cdi == cdi.CdiSettings(True, pathlib.Path("/etc/cdi"), "cdi")
    pod = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "cdi-specs")
    assert volume["hostPath"] == {"path": "/etc/cdi", "type": "DirectoryOrCreate"}
    mount = next(v for v in pod["containers"][0]["volumeMounts"] if v["name"] == "cdi-specs")
    assert mount == {"name": "cdi-specs", "mountPath": "/etc/cdi"}  # writable, at the host's path
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}  # root owns it: no capability

    refused = render("--set", "devicePlugin.cdi.allocate=cdi")
    assert refused.returncode != 0 and "devicePlugin.cdi.allocate: cdi needs devicePlugin.cdi.enabled=true" in refused.stderr
    default = render()
    assert default.returncode == 0 and "cdi-specs" not in default.stdout and "cdi:" not in default.stdout


def test_allocate_grants_by_mode() -> None:
    devices = {d.id: d for d in [
        Device("GPU-0::0", "GPU-0", "GPU-0", 0, True, 2), Device("GPU-0::1", "GPU-0", "GPU-0", 0, True, 2),
        Device("GPU-1", "GPU-1", "GPU-1", 0, True),
    ]}

    def edits(v: list[str]) -> ContainerEdits:
        return ContainerEdits({"NVIDIA_VISIBLE_DEVICES": ",".join(v)}, tuple(f"/dev/{i}" for i in v))

    ids = ["GPU-0::1", "GPU-0::0", "GPU-1"]
    assert allocate.GRANTS["env"](ids, devices, edits) == allocate.Grant(
        {"NVIDIA_VISIBLE_DEVICES": "GPU-0,GPU-1"}, ("/dev/GPU-0", "/dev/GPU-1"))
    assert allocate.GRANTS["cdi"](ids, devices, edits) == allocate.Grant(
        {"NVIDIA_VISIBLE_DEVICES": "GPU-0,GPU-1"}, (),
        ("k8s.gpupack.io/gpu=GPU-0::1", "k8s.gpupack.io/gpu=GPU-0::0", "k8s.gpupack.io/gpu=GPU-1"))
    with pytest.raises(allocate.AllocationError, match="unknown device ids: nope"):
        allocate.GRANTS["cdi"](["nope"], devices, edits)
