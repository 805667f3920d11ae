"""The shipped KubeSchedulerConfiguration against the contract (fast: no cluster)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from gpupack import contract

from . import cluster as harness

_RESOURCE_NAME = re.compile(r"^[a-z0-9.-]+/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def extenders() -> list[dict[str, Any]]:
    return list(yaml.safe_load(harness.SCHEDULER_CONFIG.read_text())["extenders"])


def extender() -> dict[str, Any]:
    """The entry for GPU pods."""
    return dict(extenders()[0])


def test_extender_verbs_and_cache() -> None:
    ext = extender()
    assert (ext["filterVerb"], ext["prioritizeVerb"], ext["bindVerb"], ext["preemptVerb"]) == (
        "filter", "prioritize", "bind", "preempt")
    assert ext["nodeCacheCapable"] is True
    assert ext["ignorable"] is False  # see the reasoning in the file; scenario 3 tests it


def test_cpu_only_pods_are_scored_by_a_second_score_only_entry() -> None:
    first, second = extenders()
    assert second["urlPrefix"] == first["urlPrefix"]
    assert second["prioritizeVerb"] == "prioritize-cpu-only"  # scheduler_ext/server.py's route
    # score only, for every pod (no managedResources), never in the way when the extender is down
    assert not {"filterVerb", "bindVerb", "preemptVerb", "managedResources"} & set(second)
    assert second["ignorable"] is True and second["nodeCacheCapable"] is True
    assert second["weight"] == first["weight"]


def test_managed_resources_cover_every_whole_device_resource() -> None:
    names = [r["name"] for r in extender()["managedResources"]]
    assert len(names) == len(set(names))
    for base in (contract.NVIDIA_GPU, contract.NVIDIA_GPU_SHARED, contract.AMD_GPU, contract.INTEL_I915, contract.INTEL_XE):
        assert base in names
    for name in names:
        assert contract.is_gpu_resource(name), name
        assert _RESOURCE_NAME.match(name), f"{name} is not a valid extended resource name"
    # each MIG resource comes with its time-sliced (renamed) variant
    migs = {n for n in names if contract.mig_profile_of(n)}
    assert migs and all(n + contract.SHARED_SUFFIX in migs for n in migs if not n.endswith(contract.SHARED_SUFFIX))


def test_scheduler_counts_gpu_resources_itself() -> None:
    assert all(r["ignoredByScheduler"] is False for r in extender()["managedResources"])
