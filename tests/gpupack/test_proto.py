"""The kubelet API modules: generated from proto/ and current, and wire-compatible with upstream."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb
from gpupack.kubeletapi import dra_v1_pb2 as dra_pb
from gpupack.kubeletapi import pluginregistration_v1_pb2 as reg_pb

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_modules_are_current() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "proto/generate.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# Facts from kubernetes/kubelet pkg/apis/deviceplugin/v1beta1/api.proto: message, field, number.
UPSTREAM_FIELDS = [
    ("DevicePluginOptions", "pre_start_required", 1), ("DevicePluginOptions", "get_preferred_allocation_available", 2),
    ("RegisterRequest", "version", 1), ("RegisterRequest", "endpoint", 2), ("RegisterRequest", "resource_name", 3),
    ("RegisterRequest", "options", 4), ("ListAndWatchResponse", "devices", 1), ("TopologyInfo", "nodes", 1),
    ("NUMANode", "ID", 1), ("Device", "ID", 1), ("Device", "health", 2), ("Device", "topology", 3),
    ("PreStartContainerRequest", "devices_ids", 1), ("PreferredAllocationRequest", "container_requests", 1),
    ("ContainerPreferredAllocationRequest", "available_deviceIDs", 1),
    ("ContainerPreferredAllocationRequest", "must_include_deviceIDs", 2),
    ("ContainerPreferredAllocationRequest", "allocation_size", 3),
    ("PreferredAllocationResponse", "container_responses", 1), ("ContainerPreferredAllocationResponse", "deviceIDs", 1),
    ("AllocateRequest", "container_requests", 1), ("ContainerAllocateRequest", "devices_ids", 1), ("CDIDevice", "name", 1),
    ("AllocateResponse", "container_responses", 1), ("ContainerAllocateResponse", "envs", 1),
    ("ContainerAllocateResponse", "mounts", 2), ("ContainerAllocateResponse", "devices", 3),
    ("ContainerAllocateResponse", "annotations", 4), ("ContainerAllocateResponse", "cdi_devices", 5),
    ("Mount", "container_path", 1), ("Mount", "host_path", 2), ("Mount", "read_only", 3),
    ("DeviceSpec", "container_path", 1), ("DeviceSpec", "host_path", 2), ("DeviceSpec", "permissions", 3),
]


@pytest.mark.parametrize("message, field, number", UPSTREAM_FIELDS, ids=[f"{m}.{f}" for m, f, _ in UPSTREAM_FIELDS])
def test_field_numbers_match_upstream(message: str, field: str, number: int) -> None:
    assert pb.DESCRIPTOR.message_types_by_name[message].fields_by_name[field].number == number


def test_package_services_and_methods_match_upstream() -> None:
    assert pb.DESCRIPTOR.package == "v1beta1"
    services = {s.name: [m.name for m in s.methods] for s in pb.DESCRIPTOR.services_by_name.values()}
    assert services == {
        "Registration": ["Register"],
        "DevicePlugin": ["GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation", "Allocate", "PreStartContainer"],
    }
    assert pb.DESCRIPTOR.services_by_name["DevicePlugin"].methods_by_name["ListAndWatch"].server_streaming


def test_same_field_count_as_upstream() -> None:
    ours = sum(len(m.fields) for m in pb.DESCRIPTOR.message_types_by_name.values())
    assert ours == len(UPSTREAM_FIELDS)


# Facts from kubernetes/kubelet pkg/apis/dra/v1/api.proto and pkg/apis/pluginregistration/v1/api.proto.
DRA_FIELDS = [
    ("NodePrepareResourcesRequest", "claims", 1), ("NodePrepareResourcesResponse", "claims", 1),
    ("NodePrepareResourceResponse", "devices", 1), ("NodePrepareResourceResponse", "error", 2),
    ("Device", "request_names", 1), ("Device", "pool_name", 2), ("Device", "device_name", 3),
    ("Device", "cdi_device_ids", 4), ("Device", "share_id", 5),
    ("NodeUnprepareResourcesRequest", "claims", 1), ("NodeUnprepareResourcesResponse", "claims", 1),
    ("NodeUnprepareResourceResponse", "error", 1),
    ("Claim", "namespace", 1), ("Claim", "uid", 2), ("Claim", "name", 3),
]
REGISTRATION_FIELDS = [
    ("PluginInfo", "type", 1), ("PluginInfo", "name", 2), ("PluginInfo", "endpoint", 3),
    ("PluginInfo", "supported_versions", 4), ("RegistrationStatus", "plugin_registered", 1),
    ("RegistrationStatus", "error", 2),
]


@pytest.mark.parametrize(
    "module, message, field, number",
    [(dra_pb, *f) for f in DRA_FIELDS] + [(reg_pb, *f) for f in REGISTRATION_FIELDS],
    ids=[f"dra.{m}.{f}" for m, f, _ in DRA_FIELDS] + [f"registration.{m}.{f}" for m, f, _ in REGISTRATION_FIELDS],
)
def test_dra_field_numbers_match_upstream(module: object, message: str, field: str, number: int) -> None:
    descriptor = module.DESCRIPTOR  # type: ignore[attr-defined]
    assert descriptor.message_types_by_name[message].fields_by_name[field].number == number
    assert sum(len(m.fields) for m in descriptor.message_types_by_name.values()) == len(
        DRA_FIELDS if module is dra_pb else REGISTRATION_FIELDS)


def test_dra_packages_and_method_paths_match_the_kubelet() -> None:
    # The kubelet dials "/<package>.<Service>/<Rpc>" (api_grpc.pb.go), and a DRA driver names the
    # service "v1.DRAPlugin" in its registration (dra/v1/types.go: DRAPluginService).
    assert dra_pb.DESCRIPTOR.package == "k8s.io.kubelet.pkg.apis.dra.v1"
    assert dra_pb.DESCRIPTOR.services_by_name["DRAPlugin"].full_name == "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
    assert [m.name for m in dra_pb.DESCRIPTOR.services_by_name["DRAPlugin"].methods] == [
        "NodePrepareResources", "NodeUnprepareResources"]
    assert reg_pb.DESCRIPTOR.package == "pluginregistration"
    assert [m.name for m in reg_pb.DESCRIPTOR.services_by_name["Registration"].methods] == [
        "GetInfo", "NotifyRegistrationStatus"]
    assert dra_pb.DESCRIPTOR.message_types_by_name["Device"].fields_by_name["share_id"].has_presence


def _upstream_descriptor(tmp_path: pathlib.Path, api: str) -> object:
    """Compiles the kubelet's own api.proto (fetched from the Go module proxy) to a descriptor."""
    import json

    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    done = subprocess.run(
        ["go", "mod", "download", "-json", "k8s.io/kubelet@v0.37.2"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    folder = pathlib.Path(json.loads(done.stdout)["Dir"]) / "pkg/apis" / api
    out = tmp_path / "upstream.pb"
    assert protoc.main(["protoc", f"-I{folder}", f"--descriptor_set_out={out}", "api.proto"]) == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return fds.file[0]


def _shape(file: object) -> dict[str, object]:
    f = file  # a FileDescriptorProto
    messages = {
        m.name: sorted((x.name, x.number, x.type, x.label, x.type_name.split(".")[-1]) for x in m.field)  # type: ignore[attr-defined]
        for m in f.message_type  # type: ignore[attr-defined]
    }
    services = {
        s.name: sorted((x.name, x.input_type.split(".")[-1], x.output_type.split(".")[-1], x.server_streaming) for x in s.method)
        for s in f.service  # type: ignore[attr-defined]
    }
    return {"package": f.package, "messages": messages, "services": services}  # type: ignore[attr-defined]


@pytest.mark.parametrize("api", ["deviceplugin/v1beta1", "podresources/v1", "dra/v1", "pluginregistration/v1"])
def test_wire_shape_equals_the_kubelets_own_proto(tmp_path: pathlib.Path, api: str) -> None:
    from google.protobuf import descriptor_pb2

    from gpupack.kubeletapi import podresources_v1_pb2

    module = {"deviceplugin/v1beta1": pb, "podresources/v1": podresources_v1_pb2, "dra/v1": dra_pb,
              "pluginregistration/v1": reg_pb}[api]
    ours = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(ours)
    assert _shape(ours) == _shape(_upstream_descriptor(tmp_path, api))
