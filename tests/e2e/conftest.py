"""Fixtures for the end-to-end tests: one real control plane per session, nodes per test.

The binaries are built (or found in the cache) when the collected tests include any marked
``e2e``, before the first test runs, so the build does not count against a test's timeout.
``GPUPACK_E2E_KEEP=1`` keeps the cluster's temporary folder (logs, records) for a post-mortem.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Generator, Iterator

import pytest

from . import cluster as harness

_counter = itertools.count()


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.get_closest_marker("e2e") for item in session.items):
        harness.build_binaries()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_failed] = True
    return report


_failed = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def cluster() -> Iterator[harness.Cluster]:
    with harness.running_cluster(keep=os.environ.get("GPUPACK_E2E_KEEP") == "1") as c:
        yield c


@pytest.fixture
def group(request: pytest.FixtureRequest, cluster: harness.Cluster) -> Iterator[str]:
    """A label value that ties a test's nodes and pods together; its nodes and pods go at the end."""
    name = f"g{next(_counter)}"
    yield name
    if request.node.stash.get(_failed, False):
        print(cluster.tails())
    for node in [n for n in cluster.nodes.values() if n.group == name]:
        node.close()


@pytest.fixture
def namespace(cluster: harness.Cluster) -> Iterator[str]:
    """A namespace of its own; its pods are deleted at the end (no namespace controller runs)."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace({"metadata": {"name": name}})
    yield name
    cluster.core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
