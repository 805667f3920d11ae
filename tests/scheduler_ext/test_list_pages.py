"""Lists come page by page (``limit``/``continue``) over real loopback HTTP through the official
client, each page read only when the one before is used up; a list cut short by an expired
``continue`` (410) raises :class:`Gone` and leaves the cache as it was."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from gpupack import contract
from scheduler_ext.cache import ClusterCache
from scheduler_ext.watch import LIST_PAGE, Gone, KubeWatchSource
from tests.fixtures import node, pod


class PagingApiServer:
    """Serves ``GET /api/v1/pods`` from a snapshot as kube-apiserver pages it: ``limit`` objects,
    ``metadata.continue`` naming the next offset, ``resourceVersion`` of the snapshot; with
    ``expire`` set, a request carrying a continue token gets 410 (the token outlived etcd's
    compaction). Records each request's query."""

    def __init__(self, objects: list[dict[str, Any]], version: str = "100") -> None:
        self.objects = objects
        self.version = version
        self.expire = False
        self.queries: list[dict[str, list[str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                server.queries.append(query)
                status, doc = server.answer(query)
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        config = client.Configuration(host=f"http://127.0.0.1:{self.http.server_address[1]}")
        self.core = client.CoreV1Api(client.ApiClient(config))

    def answer(self, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        token = query.get("continue", [""])[0]
        if token and self.expire:
            return 410, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                         "message": "The provided continue parameter is too old to display a consistent list result."}
        start = int(token or 0)
        limit = int(query.get("limit", [str(len(self.objects))])[0])
        page = self.objects[start:start + limit]
        meta: dict[str, Any] = {"resourceVersion": self.version}
        if start + limit < len(self.objects):
            meta["continue"] = str(start + limit)
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": page}

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def served() -> Iterator[PagingApiServer]:
    pods = [pod(f"p{i:04d}", gpus={contract.NVIDIA_GPU: 1}, node="n1", phase="Running") for i in range(2 * LIST_PAGE + 234)]
    server = PagingApiServer(pods)
    yield server
    server.close()


def names(objects: Any) -> list[str]:
    return [o["metadata"]["name"] for o in objects]


def test_a_list_is_read_a_page_at_a_time_as_it_is_used(served: PagingApiServer) -> None:
    objects, version = KubeWatchSource(served.core).list("Pod")
    assert version == "100"
    assert len(served.queries) == 1 and served.queries[0]["limit"] == [str(LIST_PAGE)]
    assert "continue" not in served.queries[0]
    first = [next(objects) for _ in range(LIST_PAGE)]
    assert len(served.queries) == 1  # the first page used up: the next not asked for yet
    rest = list(objects)
    assert names(first + rest) == names(served.objects)
    assert [q.get("continue") for q in served.queries] == [None, [str(LIST_PAGE)], [str(2 * LIST_PAGE)]]
    assert all(q["limit"] == [str(LIST_PAGE)] for q in served.queries)


def test_an_expired_continue_raises_gone_and_the_cache_keeps_its_pods(served: PagingApiServer) -> None:
    cache = ClusterCache()
    cache.replace_nodes([node("n1", n=2)])
    cache.replace_pods([pod("earlier", gpus={contract.NVIDIA_GPU: 1}, node="n1", phase="Running")])
    assert cache.pod("uid-earlier") is not None
    source = KubeWatchSource(served.core)
    served.expire = True
    objects, _ = source.list("Pod")
    with pytest.raises(Gone):
        cache.replace_pods(objects)
    # the pages read before the 410 changed nothing
    assert cache.pod("uid-earlier") is not None and cache.pod("uid-p0000") is None
    served.expire = False
    cache.replace_pods(source.list("Pod")[0])  # what the syncer does next: list again
    assert cache.pod("uid-earlier") is None
    assert all(cache.pod(o["metadata"]["uid"]) is not None for o in served.objects)


def test_a_server_that_repeats_a_continue_token_is_refused(served: PagingApiServer) -> None:
    served.answer = lambda query: (200, {"metadata": {"resourceVersion": "7", "continue": "again"},  # type: ignore[method-assign]
                                          "items": served.objects[:2]})
    objects, _ = KubeWatchSource(served.core).list("Pod")
    with pytest.raises(RuntimeError, match="repeated a continue token"):
        list(objects)
    assert len(served.queries) == 2
