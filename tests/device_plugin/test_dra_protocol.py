"""The DRA driver as the kubelet sees it: real gRPC on Unix sockets, real files.

Registration (GetInfo, NotifyRegistrationStatus) on the registration socket; NodePrepareResources
and NodeUnprepareResources on the DRA socket, with the claims' allocations from a fake API (a
dict), the node from the fake NVML; CDI specs and the checkpoint in temporary folders.
"""

from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from gpupack.kubeletapi import dra_v1_pb2 as dra_pb
from gpupack.kubeletapi import dra_v1_pb2_grpc as dra_grpc
from gpupack.kubeletapi import pluginregistration_v1_pb2 as reg_pb
from gpupack.kubeletapi import pluginregistration_v1_pb2_grpc as reg_grpc

from device_plugin import resources
from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.dra import checkpoint, claimspecs, main as dra_main
from gpupack import dra_names as names
from device_plugin.dra.driver import Driver
from device_plugin.dra.prepare import Preparer
from device_plugin.dra.server import DraServer
from device_plugin.fakes import nvml as fake_nvml

NODE = "gpu-node-1"


class FakeClaims:
    """The ResourceClaims of the API server, by namespace/name; counts reads."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}
        self.reads = 0

    def add(self, name: str, uid: str, *devices: tuple[str, str], pool: str = NODE, driver: str = names.DRIVER,
            share: str | None = None) -> dict[str, Any]:
        results = []
        for request, device in devices:
            r: dict[str, Any] = {"request": request, "driver": driver, "pool": pool, "device": device}
            if share:
                r["shareID"] = share
            results.append(r)
        claim = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                 "metadata": {"namespace": "ml", "name": name, "uid": uid},
                 "status": {"allocation": {"devices": {"results": results}}}}
        self.claims["ml", name] = claim
        return claim

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        self.reads += 1
        if (namespace, name) not in self.claims:
            raise LookupError(f'resourceclaims.resource.k8s.io "{name}" not found')
        return copy.deepcopy(self.claims[namespace, name])


class Node:
    """A driver's parts over one set of folders; :meth:`restart` makes new ones over the same."""

    def __init__(self, root: pathlib.Path, driver: Driver, backend: NvmlBackend, claims: FakeClaims) -> None:
        self.root, self.driver, self.backend, self.claims = root, driver, backend, claims
        self.data, self.registry, self.cdi = root / "plugins" / names.DRIVER, root / "plugins_registry", root / "cdi"
        self.server: DraServer | None = None
        self.channels: list[grpc.Channel] = []

    def start(self) -> Node:
        self.preparer = Preparer(NODE, self.driver.published, lambda v: self.backend.container_edits(v, True),
                                 self.claims.get, checkpoint.Checkpoint(self.data), claimspecs.ClaimSpecs(self.cdi))
        self.server = DraServer(self.preparer, self.data, self.registry)
        self.server.start()
        return self

    def stop(self) -> None:
        for c in self.channels:
            c.close()
        self.channels = []
        if self.server is not None:
            self.server.stop()
            self.server = None

    def restart(self) -> Node:
        self.stop()
        return self.start()

    def dra(self) -> Any:
        channel = grpc.insecure_channel(f"unix://{self.data / 'dra.sock'}")
        self.channels.append(channel)
        return dra_grpc.DRAPluginStub(channel)

    def registration(self) -> Any:
        assert self.server is not None
        channel = grpc.insecure_channel(f"unix://{self.server.registration_path}")
        self.channels.append(channel)
        return reg_grpc.RegistrationStub(channel)

    def specs(self) -> dict[str, dict[str, Any]]:
        return {p.name: json.loads(p.read_text()) for p in sorted(self.cdi.glob("*.json"))}


@pytest.fixture
def node(short_dir: pathlib.Path) -> Iterator[Node]:
    nvml = fake_nvml.a100_sxm4_8x("dra-node")
    nvml.set_mig(0, ["3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb"])
    backend = NvmlBackend(nvml, short_dir)
    sharing = resources.Sharing(rules=(resources.ShareRule("nvidia.com/gpu", replicas=4, devices=("7",)),))
    n = Node(short_dir, Driver(backend, sharing=sharing), backend, FakeClaims()).start()
    yield n
    n.stop()


def prepare(stub: Any, *claims: tuple[str, str]) -> Any:
    return stub.NodePrepareResources(dra_pb.NodePrepareResourcesRequest(
        claims=[dra_pb.Claim(namespace="ml", uid=uid, name=name) for name, uid in claims]), timeout=5)


def unprepare(stub: Any, *claims: tuple[str, str]) -> Any:
    return stub.NodeUnprepareResources(dra_pb.NodeUnprepareResourcesRequest(
        claims=[dra_pb.Claim(namespace="ml", uid=uid, name=name) for name, uid in claims]), timeout=5)


# --- registration ------------------------------------------------------------------------------------

def test_registration_tells_the_kubelet_driver_endpoint_and_service(node: Node) -> None:
    assert node.server is not None
    assert node.server.registration_path == node.registry / "gpu.gpupack.io-reg.sock"
    info = node.registration().GetInfo(reg_pb.InfoRequest(), timeout=5)
    assert info.type == "DRAPlugin"
    assert info.name == "gpu.gpupack.io"
    assert info.endpoint == str(node.data / "dra.sock")
    assert list(info.supported_versions) == ["v1.DRAPlugin"]


def test_registration_status_is_kept(node: Node) -> None:
    assert node.server is not None
    stub = node.registration()
    stub.NotifyRegistrationStatus(reg_pb.RegistrationStatus(plugin_registered=True), timeout=5)
    assert node.server.registration.registered.is_set()
    stub.NotifyRegistrationStatus(reg_pb.RegistrationStatus(plugin_registered=False, error="version"), timeout=5)
    assert not node.server.registration.registered.is_set()
    assert node.server.registration.status is not None and node.server.registration.status.error == "version"


# --- prepare and unprepare ------------------------------------------------------------------------------

def test_prepare_writes_a_spec_of_exactly_the_claims_devices_and_is_idempotent(node: Node) -> None:
    node.claims.add("train", "uid-1", ("gpus", "gpu-3"), ("gpus", "gpu-5"), ("mig/small", "gpu-0-mig-4-2g10gb"))
    stub = node.dra()
    resp = prepare(stub, ("train", "uid-1"))
    entry = resp.claims["uid-1"]
    assert entry.error == ""
    assert [(list(d.request_names), d.pool_name, d.device_name, list(d.cdi_device_ids)) for d in entry.devices] == [
        (["gpus"], NODE, "gpu-3", ["k8s.gpupack.io/claim=uid-1-gpu-3"]),
        (["gpus"], NODE, "gpu-5", ["k8s.gpupack.io/claim=uid-1-gpu-5"]),
        (["mig"], NODE, "gpu-0-mig-4-2g10gb", ["k8s.gpupack.io/claim=uid-1-gpu-0-mig-4-2g10gb"]),  # subrequest cut
    ]
    assert not entry.devices[0].HasField("share_id")
    (spec,) = node.specs().values()
    assert list(node.specs()) == ["k8s.gpupack.io-claim_uid-1.json"]
    assert spec["kind"] == "k8s.gpupack.io/claim"
    assert [d["name"] for d in spec["devices"]] == ["uid-1-gpu-3", "uid-1-gpu-5", "uid-1-gpu-0-mig-4-2g10gb"]
    gpus = {g.index: g for g in node.driver.gpus()}
    visible = spec["containerEdits"]["env"]
    assert visible == [f"NVIDIA_VISIBLE_DEVICES={gpus[3].id},{gpus[5].id},{gpus[0].mig[1].id}"]
    assert "/dev/nvidiactl" in [n["path"] for n in spec["containerEdits"]["deviceNodes"]]
    assert [n["path"] for n in spec["devices"][0]["containerEdits"]["deviceNodes"]] == ["/dev/nvidia3"]
    # again: the same answer, from the checkpoint, without reading the API
    reads = node.claims.reads
    again = prepare(stub, ("train", "uid-1"))
    assert again == resp and node.claims.reads == reads
    # unprepare removes exactly that spec, twice is fine
    assert unprepare(stub, ("train", "uid-1")).claims["uid-1"].error == ""
    assert node.specs() == {}
    assert unprepare(stub, ("train", "uid-1")).claims["uid-1"].error == ""
    assert node.preparer.prepared() == {}


def test_two_claims_sharing_a_gpu_get_their_own_specs_and_share_ids(node: Node) -> None:
    node.claims.add("a", "uid-a", ("share", "gpu-7"), share="share-a")
    node.claims.add("b", "uid-b", ("share", "gpu-7"), share="share-b")
    resp = prepare(node.dra(), ("a", "uid-a"), ("b", "uid-b"))
    assert resp.claims["uid-a"].devices[0].share_id == "share-a"
    assert resp.claims["uid-b"].devices[0].share_id == "share-b"
    assert sorted(node.specs()) == ["k8s.gpupack.io-claim_uid-a.json", "k8s.gpupack.io-claim_uid-b.json"]
    unprepare(node.dra(), ("a", "uid-a"))
    assert sorted(node.specs()) == ["k8s.gpupack.io-claim_uid-b.json"]  # b's spec untouched


def test_each_claim_fails_on_its_own(node: Node) -> None:
    node.claims.add("good", "uid-good", ("gpu", "gpu-1"))
    node.claims.add("elsewhere", "uid-else", ("gpu", "gpu-1"), pool="gpu-node-2")
    node.claims.add("ghost", "uid-ghost", ("gpu", "gpu-99"))
    node.claims.add("replaced", "uid-new", ("gpu", "gpu-2"))
    node.claims.add("pending", "uid-pending")["status"] = {}
    node.claims.add("others", "uid-others", ("nic", "eth0"), driver="nic.example.com")
    resp = prepare(node.dra(), ("good", "uid-good"), ("missing", "uid-missing"), ("elsewhere", "uid-else"),
                   ("ghost", "uid-ghost"), ("replaced", "uid-old"), ("pending", "uid-pending"), ("others", "uid-others"))
    errors = {uid: c.error for uid, c in resp.claims.items()}
    assert errors["uid-good"] == ""
    assert "cannot read claim ml/missing" in errors["uid-missing"] and "not found" in errors["uid-missing"]
    assert errors["uid-else"] == "claim ml/elsewhere was allocated device gpu-node-2/gpu-1, which is not on this node (pool gpu-node-1)"
    assert "gpu-node-1/gpu-99, which this node does not publish" in errors["uid-ghost"]
    assert "got replaced" in errors["uid-old"]
    assert errors["uid-pending"] == "claim ml/pending is not allocated"
    assert errors["uid-others"] == "" and len(resp.claims["uid-others"].devices) == 0  # not ours: nothing to do
    assert sorted(node.specs()) == ["k8s.gpupack.io-claim_uid-good.json"]
    assert set(node.preparer.prepared()) == {"uid-good", "uid-others"}


# --- restarts and the checkpoint ----------------------------------------------------------------------

def test_a_restart_loses_no_prepared_claim(node: Node) -> None:
    node.claims.add("train", "uid-1", ("gpus", "gpu-3"))
    first = prepare(node.dra(), ("train", "uid-1"))
    node.claims.claims.clear()  # the API is away (or the claim deleted) after the restart
    node.restart()
    assert set(node.preparer.prepared()) == {"uid-1"}
    assert prepare(node.dra(), ("train", "uid-1")) == first
    assert unprepare(node.dra(), ("train", "uid-1")).claims["uid-1"].error == ""
    node.restart()
    assert node.preparer.prepared() == {} and node.specs() == {}


def test_a_missing_spec_is_written_again_and_an_orphan_spec_removed(node: Node) -> None:
    node.claims.add("train", "uid-1", ("gpus", "gpu-3"))
    prepare(node.dra(), ("train", "uid-1"))
    (node.cdi / "k8s.gpupack.io-claim_uid-1.json").unlink()
    (node.cdi / "k8s.gpupack.io-claim_uid-crashed.json").write_text("{}")  # a crash before the checkpoint
    (node.cdi / "k8s.gpupack.io-gpu_nvidia.json").write_text("{}")  # the device plugin's: not ours to touch
    node.restart()
    assert sorted(node.specs()) == ["k8s.gpupack.io-gpu_nvidia.json"]
    assert prepare(node.dra(), ("train", "uid-1")).claims["uid-1"].error == ""
    assert sorted(node.specs()) == ["k8s.gpupack.io-claim_uid-1.json", "k8s.gpupack.io-gpu_nvidia.json"]


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2], "is not JSON"),
    (lambda text: text.replace("gpu-3", "gpu-4"), "fails its checksum"),
    (lambda text: text.replace('"version": 1', '"version": 9'), "has version 9"),
], ids=["truncated", "edited", "future-version"])
def test_a_corrupt_checkpoint_is_a_clear_error(node: Node, damage: Any, message: str) -> None:
    node.claims.add("train", "uid-1", ("gpus", "gpu-3"))
    prepare(node.dra(), ("train", "uid-1"))
    node.stop()
    path = node.data / "checkpoint.json"
    path.write_text(damage(path.read_text()))
    with pytest.raises(checkpoint.CheckpointError, match=message) as err:
        node.start()
    assert str(path) in str(err.value)


def test_a_checkpoint_that_cannot_be_saved_fails_the_claims_and_leaves_no_spec(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    node.claims.add("train", "uid-1", ("gpus", "gpu-3"))

    def full_disk(claims: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(node.preparer.checkpoint, "save", full_disk)  # (the tests run as root: chmod would not stop it)
    resp = prepare(node.dra(), ("train", "uid-1"))
    assert "cannot save the checkpoint" in resp.claims["uid-1"].error
    assert node.specs() == {} and node.preparer.prepared() == {}


def test_the_checkpoint_round_trips() -> None:
    claims = {"u": checkpoint.PreparedClaim("u", "ml", "c", (checkpoint.PreparedDevice(("r",), NODE, "gpu-0", ("k=x",), "s"),))}
    assert checkpoint.decode(checkpoint.encode(claims)) == claims


def test_bad_driver_flags_stop_start_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert dra_main.main(["--remove-slices-on-exit", "maybe", "--no-publish"]) == 2
    assert "--remove-slices-on-exit: expected true or false" in capsys.readouterr().err
