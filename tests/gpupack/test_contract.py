"""The contract both programs share: names, ids, quantities, and refusals of malformed input."""

from __future__ import annotations

import re

import pytest

from gpupack import contract

#: what the API server accepts as an extended resource name (prefix/name, name a qualified name)
RESOURCE_NAME = re.compile(r"^[a-z0-9.-]+/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@pytest.mark.parametrize(
    "profile, resource",
    [
        ("1g.10gb", "nvidia.com/mig-1g.10gb"),
        ("3g.40gb", "nvidia.com/mig-3g.40gb"),
        ("1c.3g.20gb", "nvidia.com/mig-1c.3g.20gb"),
        ("1g.10gb+me", "nvidia.com/mig-1g.10gb.me"),  # '+' is not allowed in a resource name
    ],
)
def test_mig_resources_are_valid_names_and_map_back(profile: str, resource: str) -> None:
    assert contract.mig_resource(profile) == resource
    assert RESOURCE_NAME.match(resource)
    assert contract.mig_profile_of(resource) == profile
    assert contract.mig_profile_of(resource + contract.SHARED_SUFFIX) == profile
    assert contract.is_gpu_resource(resource)


@pytest.mark.parametrize("bad", ["", "10gb", "1g", "0g.5gb", "1g.5GB", "1g.5gb+"])
def test_bad_mig_profiles_are_refused(bad: str) -> None:
    with pytest.raises(contract.ContractError, match="not a MIG profile name"):
        contract.mig_resource(bad)


def test_resource_names() -> None:
    for r in (contract.NVIDIA_GPU, contract.NVIDIA_GPU_SHARED, contract.AMD_GPU, contract.INTEL_I915, contract.INTEL_XE):
        assert RESOURCE_NAME.match(r) and contract.is_gpu_resource(r)
    assert not contract.is_gpu_resource("cpu") and not contract.is_gpu_resource("nvidia.com/mig-x")


def test_share_ids() -> None:
    sid = contract.share_id("GPU-1", 3)
    assert sid == "GPU-1::3"
    assert (contract.physical_id(sid), contract.replica_of(sid)) == ("GPU-1", 3)
    assert (contract.physical_id("GPU-1"), contract.replica_of("GPU-1")) == ("GPU-1", None)
    with pytest.raises(contract.ContractError):
        contract.replica_of("GPU-1::x")


@pytest.mark.parametrize(
    "quantity, mib",
    [("10Gi", 10240), ("512Mi", 512), ("1.5Gi", 1536), ("16G", 15259), ("1Ki", 1), ("1048576", 1)],
)
def test_memory_quantities_in_mib_rounded_up(quantity: str, mib: int) -> None:
    # 16G = 16e9 bytes / 2^20 = 15258.8 -> 15259 MiB
    assert contract.memory_mib(quantity) == mib


@pytest.mark.parametrize("bad", ["ten gigs", "-1Gi", "10GiB", ""])
def test_bad_memory_hint_names_the_annotation(bad: str) -> None:
    with pytest.raises(contract.ContractError, match="gpupack.io/gpu-memory"):
        contract.memory_mib(bad)


@pytest.mark.parametrize(
    "text, message",
    [
        ("nope", "inventory: not JSON"),
        ("[]", "inventory: expected a JSON object"),
        ('{"version": 2, "gpus": []}', "inventory.version: 2 is not supported"),
        ('{"version": 1, "gpus": [{"id": "g", "index": 0, "vendor": "ibm", "model": "x", "memoryMiB": 1}]}', "vendor: 'ibm'"),
        ('{"version": 1, "gpus": [{"id": "g", "index": true, "vendor": "amd", "model": "x", "memoryMiB": 1}]}', "gpus[0].index: expected int"),
        ('{"version": 1, "gpus": [{"id": "g", "index": 0, "vendor": "amd", "model": "x"}]}', "gpus[0].memoryMiB: missing"),
        # beyond int32 overflowed the extender's arrays (OverflowError in its watch) before the bound
        ('{"version": 1, "gpus": [{"id": "g", "index": 0, "vendor": "amd", "model": "x", "memoryMiB": 2147483648}]}',
         "gpus[0].memoryMiB: 2147483648 is out of range"),
        ('{"version": 1, "gpus": [{"id": "g", "index": 0, "vendor": "nvidia", "model": "x", "memoryMiB": 1, '
         '"replicas": 99999999999}]}', "gpus[0].replicas: 99999999999 is out of range"),
        ('{"version": 1, "gpus": [' + ",".join(['{"id": "g", "index": 0, "vendor": "amd", "model": "x", "memoryMiB": 1}'] * 257)
         + "]}", "inventory.gpus: 257 GPUs, more than 256"),
    ],
)
def test_malformed_inventory_is_refused_with_the_field(text: str, message: str) -> None:
    with pytest.raises(contract.ContractError, match=re.escape(message)):
        contract.decode_inventory(text)


def test_assignment_round_trip_and_refusals() -> None:
    a = {"main": {"nvidia.com/gpu": ["GPU-1", "GPU-2"]}, "side": {"nvidia.com/gpu.shared": ["GPU-3::0"]}}
    assert contract.decode_assignment(contract.encode_assignment(a)) == a
    with pytest.raises(contract.ContractError, match="devices.version"):
        contract.decode_assignment('{"version": 9, "containers": {}}')
    with pytest.raises(contract.ContractError, match="expected a list of ids"):
        contract.decode_assignment('{"version": 1, "containers": {"c": {"r": "GPU-1"}}}')


def test_label_values_are_kubernetes_safe() -> None:
    assert contract.label_value("NVIDIA A100-SXM4-40GB") == "NVIDIA-A100-SXM4-40GB"
    assert contract.label_value("AMD Instinct MI300X (OAM)") == "AMD-Instinct-MI300X-OAM"
    assert len(contract.label_value("x" * 100)) == 63
