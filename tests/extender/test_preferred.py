"""The packing rule for the device plugin's own choice, through the extender's kernel."""

from __future__ import annotations

from gpupack import contract
from scheduler_ext.preferred import preferred_devices

from .fixtures import gpu


def inv(gpus: list[contract.Gpu]) -> contract.Inventory:
    return contract.Inventory("n1", tuple(gpus))


def test_whole_gpus_keep_the_nvlink_pair_together() -> None:
    # GPUs 0-1 and 2-3 are NVLink pairs; GPU 0 is in use (not offered)
    gpus = [gpu("n1", 0, links=(1,)), gpu("n1", 1, links=(0,)), gpu("n1", 2, links=(3,)), gpu("n1", 3, links=(2,))]
    offered = ["GPU-n1-1", "GPU-n1-2", "GPU-n1-3"]
    assert preferred_devices(inv(gpus), contract.NVIDIA_GPU, offered, [], 2) == ["GPU-n1-2", "GPU-n1-3"]
    # one GPU, with GPU 3 in use instead: GPU 2 (its pair is broken), keeping the pair 0-1 whole
    offered = ["GPU-n1-0", "GPU-n1-1", "GPU-n1-2"]
    assert preferred_devices(inv(gpus), contract.NVIDIA_GPU, offered, [], 1) == ["GPU-n1-2"]


def test_shares_pack_onto_the_busiest_gpu() -> None:
    gpus = [gpu("n1", i, resource=contract.NVIDIA_GPU_SHARED, replicas=4) for i in range(2)]
    # GPU 1 has shares 0 and 1 in use; GPU 0 is untouched
    offered = [contract.share_id("GPU-n1-0", r) for r in range(4)] + [contract.share_id("GPU-n1-1", r) for r in (2, 3)]
    got = preferred_devices(inv(gpus), contract.NVIDIA_GPU_SHARED, offered, [], 1)
    assert got == [contract.share_id("GPU-n1-1", 2)]


def test_must_include_comes_first_and_too_big_returns_what_fits() -> None:
    gpus = [gpu("n1", i) for i in range(3)]
    offered = ["GPU-n1-0", "GPU-n1-1", "GPU-n1-2"]
    got = preferred_devices(inv(gpus), contract.NVIDIA_GPU, offered, ["GPU-n1-2"], 2)
    assert got[0] == "GPU-n1-2" and len(got) == 2 and len(set(got)) == 2
    assert preferred_devices(inv(gpus), contract.NVIDIA_GPU, offered, [], 4) == []
