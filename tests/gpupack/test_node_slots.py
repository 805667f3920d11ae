"""The one device-choice rule for one node (gpupack.node_slots): the kernel's packing choice
among the devices the kubelet offers, the topology rule where the kernel finds no fit, and
shares spread over distinct GPUs where the node says so."""

from __future__ import annotations

import pytest

from gpupack import contract, node_slots, topology

from tests.fixtures import gpu


def row(gpus: list[contract.Gpu]) -> node_slots.NodeRow:
    return node_slots.NodeRow(contract.Inventory("n1", tuple(gpus)))


def test_whole_gpus_keep_the_nvlink_pair_together() -> None:
    # GPUs 0-1 and 2-3 are NVLink pairs; GPU 0 is in use (not offered)
    gpus = [gpu("n1", 0, links=(1,)), gpu("n1", 1, links=(0,)), gpu("n1", 2, links=(3,)), gpu("n1", 3, links=(2,))]
    offered = ["GPU-n1-1", "GPU-n1-2", "GPU-n1-3"]
    assert row(gpus).choose(contract.NVIDIA_GPU, offered, [], 2) == node_slots.Choice(["GPU-n1-2", "GPU-n1-3"], "packing")
    # one GPU, with GPU 3 in use instead: GPU 2 (its pair is broken), keeping the pair 0-1 whole
    offered = ["GPU-n1-0", "GPU-n1-1", "GPU-n1-2"]
    assert row(gpus).choose(contract.NVIDIA_GPU, offered, [], 1).ids == ["GPU-n1-2"]


def test_shares_pack_onto_the_busiest_gpu() -> None:
    gpus = [gpu("n1", i, resource=contract.NVIDIA_GPU_SHARED, replicas=4) for i in range(2)]
    # GPU 1 has shares 0 and 1 in use; GPU 0 is untouched
    offered = [contract.share_id("GPU-n1-0", r) for r in range(4)] + [contract.share_id("GPU-n1-1", r) for r in (2, 3)]
    got = row(gpus).choose(contract.NVIDIA_GPU_SHARED, offered, [], 1)
    assert got == node_slots.Choice([contract.share_id("GPU-n1-1", 2)], "packing")


def test_distinct_shares_spread_one_container_over_gpus() -> None:
    gpus = [gpu("n1", i, resource=contract.NVIDIA_GPU_SHARED, replicas=4) for i in range(2)]
    offered = [contract.share_id(f"GPU-n1-{g}", r) for g in range(2) for r in range(4)]
    packed = row(gpus).choose(contract.NVIDIA_GPU_SHARED, offered, [], 2)
    spread = row(gpus).choose(contract.NVIDIA_GPU_SHARED, offered, [], 2, distinct_shares=True)
    assert {contract.physical_id(i) for i in packed.ids} == {"GPU-n1-0"} and packed.rule == "packing"
    assert {contract.physical_id(i) for i in spread.ids} == {"GPU-n1-0", "GPU-n1-1"} and spread.rule == "distinct-shares"


def test_must_include_comes_first() -> None:
    gpus = [gpu("n1", i) for i in range(3)]
    offered = ["GPU-n1-0", "GPU-n1-1", "GPU-n1-2"]
    got = row(gpus).choose(contract.NVIDIA_GPU, offered, ["GPU-n1-2"], 2)
    assert got.ids[0] == "GPU-n1-2" and len(got.ids) == 2 and len(set(got.ids)) == 2 and got.rule == "packing"


def test_an_unhealthy_gpu_the_kubelet_still_offers_goes_to_the_topology_rule() -> None:
    # the inventory says GPU 1 is unhealthy, the kubelet offers it anyway: the kernel sees one
    # free GPU where two are asked, and the topology rule answers from what is offered
    gpus = [gpu("n1", 0, links=(1,)), gpu("n1", 1, links=(0,), healthy=False)]
    got = row(gpus).choose(contract.NVIDIA_GPU, ["GPU-n1-0", "GPU-n1-1"], [], 2)
    assert got == node_slots.Choice(["GPU-n1-0", "GPU-n1-1"], "topology")


@pytest.mark.parametrize("offered, must, size", [
    (["GPU-n1-0", "GPU-n1-1", "GPU-n1-2"], [], 4),          # more than offered
    (["GPU-n1-0", "GPU-x"], [], 1),                        # a device the node does not have
], ids=["too-big", "unknown-id"])
def test_requests_that_cannot_be_answered_are_refused(offered: list[str], must: list[str], size: int) -> None:
    with pytest.raises(topology.PreferenceError):
        row([gpu("n1", i) for i in range(3)]).choose(contract.NVIDIA_GPU, offered, must, size)


def test_device_ids_take_the_lowest_free_replicas() -> None:
    slots = node_slots.inventory_slots(contract.Inventory("n1", (gpu("n1", 0, resource=contract.NVIDIA_GPU_SHARED, replicas=4),)))
    # replicas 0 and 2 in use; three units: 1, 3, then none left is never asked by the kernel
    assert node_slots.device_ids(slots, [{0, 2}], [(0, 2)]) == [contract.share_id("GPU-n1-0", 1), contract.share_id("GPU-n1-0", 3)]
