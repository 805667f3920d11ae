"""A null scheduler extender for ``bench/scheduler_throughput.py``: no decision behind the HTTP edge.

It serves gpupack's own HTTP edge (``scheduler_ext.server``: the keep-alive server, TLS with a
client CA, orjson parsing of every request body) with verbs that decide nothing: ``filter``
lets every node through, ``prioritize`` and ``prioritize-cpu-only`` give every node 0. Timed
behind the real kube-scheduler, it is the floor any extender behind this edge pays (kube-scheduler's
JSON of the Pod and the node names, the HTTP round trips, our parsing and answer writing), so
``gpupack / null`` is what gpupack's decisions cost on top. It has no bind verb: kube-scheduler's
default binder binds (the benchmark's configuration leaves ``bindVerb`` out for it).

``--top K`` makes filter answer only the first K names (the others are left out of the answer:
neither feasible nor failed, so the answer stays short): what kube-scheduler would save if an
extender answered only its few best candidates instead of every feasible node.

``GET /stats`` answers, per verb, the calls, the request and answer bytes and the node names
seen (how much JSON kube-scheduler sends through an extender per pod), and how many calls
named the same set of nodes as one of the verb's last 8 calls, and how many of those in the
same order too (what a cache keyed on the list as sent can reuse).

    python bench/_nullextender.py --listen 127.0.0.1:PORT [--tls-cert C --tls-key K --tls-client-ca CA]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy  # noqa: E402
import orjson  # noqa: E402

from scheduler_ext.cache import ClusterCache  # noqa: E402
from scheduler_ext.decide import Decider  # noqa: E402
from scheduler_ext.metrics import Metrics  # noqa: E402
from scheduler_ext.server import Answer, ExtenderApp, Raw, host_priorities, serve, tls_context  # noqa: E402


class NullApp(ExtenderApp):
    """Every node fits, every score is 0; counts what came in and went out per verb."""

    def __init__(self, top: int = 0) -> None:
        cache = ClusterCache()
        self.top = top  # filter answers only this many names (0: all)
        super().__init__(cache, Decider(cache), None, Metrics(cache))
        self._lock = threading.Lock()
        #: verb -> [calls, request bytes, answer bytes, node names, same set as a recent call,
        #: same set in the same order]
        self.stats: dict[str, list[int]] = {}
        self._recent: dict[str, list[tuple[int, int]]] = {}  # verb -> (hash of the set, of the list)

    def handle_get(self, path: str) -> Answer:
        if path == "/readyz":  # no cache to sync: ready once it serves
            return Answer(200, b"ok: null extender\n", "text/plain")
        if path == "/stats":
            with self._lock:
                return Answer(200, orjson.dumps(self.stats), "application/json")
        return super().handle_get(path)

    def handle_post(self, path: str, body: bytes | bytearray) -> Answer:
        answer = super().handle_post(path, body)
        with self._lock:
            row = self.stats.setdefault(path.strip("/"), [0] * 6)
            row[0] += 1
            row[1] += len(body)
            row[2] += len(answer.body)
        return answer

    def _count_names(self, verb: str, names: list[str]) -> None:
        key = (hash(frozenset(names)), hash(tuple(names)))
        with self._lock:
            row = self.stats.setdefault(verb, [0] * 6)
            row[3] += len(names)
            recent = self._recent.setdefault(verb, [])
            row[4] += any(k[0] == key[0] for k in recent)
            row[5] += key in recent
            recent.insert(0, key)
            del recent[8:]

    def filter(self, args: dict[str, Any]) -> Raw:
        names = args.get("NodeNames") or []
        self._count_names("filter", names)
        if self.top and len(names) > self.top:
            return Raw(orjson.dumps({"Nodes": None, "NodeNames": names[: self.top], "FailedNodes": {},
                                     "FailedAndUnresolvableNodes": {}, "Error": ""}))
        return Raw(orjson.dumps({"Nodes": None, "NodeNames": names, "FailedNodes": {},
                                 "FailedAndUnresolvableNodes": {}, "Error": ""}))

    def prioritize(self, args: dict[str, Any]) -> Raw:
        names = args.get("NodeNames") or []
        self._count_names("prioritize", names)
        return Raw(host_priorities(names, numpy.zeros(len(names), numpy.int64)))

    def prioritize_cpu_only(self, args: dict[str, Any]) -> Raw:
        names = args.get("NodeNames") or []
        self._count_names("prioritize-cpu-only", names)
        return Raw(host_priorities(names, numpy.zeros(len(names), numpy.int64)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", required=True, help="host:port")
    p.add_argument("--tls-cert", default="")
    p.add_argument("--tls-key", default="")
    p.add_argument("--tls-client-ca", default="")
    p.add_argument("--top", type=int, default=0, help="filter answers only the first TOP names (0: all)")
    a = p.parse_args()
    host, _, port = a.listen.rpartition(":")
    tls = tls_context(a.tls_cert, a.tls_key, a.tls_client_ca) if a.tls_cert else None
    srv, thread = serve(NullApp(a.top), host, int(port), tls)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"null extender on {a.listen} ({'TLS' if tls else 'plain HTTP'})", flush=True)
    stop.wait()
    srv.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
