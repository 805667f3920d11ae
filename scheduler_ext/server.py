"""The extender's HTTP edge: kube-scheduler's extender/v1 JSON in, the decider's answers out.

:class:`ExtenderApp` is transport-free (verb + body bytes -> status + JSON); the handler
only reads the body, calls it and writes the answer. Every request body is validated before
anything is decided: a malformed or oversized body gets HTTP 400 with the reason, an
unknown node a per-node failure, and no exception escapes as a 500 traceback.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import logging
import operator
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import numpy

from scheduler_ext import wire
from scheduler_ext.binder import Binder
from scheduler_ext.cache import ClusterCache
from scheduler_ext.decide import Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.requests import pod_demand

log = logging.getLogger(__name__)

#: Largest request body accepted (bytes); a full NodeList of 5,000 nodes is some tens of MB.
DEFAULT_MAX_BODY = 256 * 2**20


class BadRequest(ValueError):
    """A body that does not follow extender/v1; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"


def _json(status: int, obj: Any) -> Answer:
    return Answer(status, json.dumps(obj, separators=(",", ":")).encode())


def _object(raw: Any, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRequest(f"{what}: expected a JSON object")
    return raw


def _names(args: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]] | None]:
    """The candidate node names, and the full Node objects when the scheduler sent them."""
    names = args.get("NodeNames")
    nodes = args.get("Nodes")
    if names is not None:
        if not isinstance(names, list) or not set(map(type, names)) <= {str}:
            raise BadRequest("NodeNames: expected a list of strings or null")
        return list(names), None
    if nodes is None:
        return [], None
    nodes = _object(nodes, "Nodes")
    items = nodes.get("items") or []
    if not isinstance(items, list):
        raise BadRequest("Nodes.items: expected a list")
    out: list[str] = []
    for i, n in enumerate(items):
        name = (_object(n, f"Nodes.items[{i}]").get("metadata") or {}).get("name")
        if not isinstance(name, str):
            raise BadRequest(f"Nodes.items[{i}].metadata.name: expected a string")
        out.append(name)
    return out, items


def _pod(args: dict[str, Any]) -> dict[str, Any]:
    pod = args.get("Pod")
    if pod is None:
        raise BadRequest("Pod: missing or null")
    return _object(pod, "Pod")


def _str_field(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"{key}: expected a string")
    return value


_SCORE_SUFFIX = [f"{s}}}" for s in range(11)]
#: Most node names whose prioritize answer prefix is kept.
MAX_PREFIXES = 100_000


class Raw(str):
    """JSON text already encoded."""


class ExtenderApp:
    """The verbs, without HTTP."""

    def __init__(self, cache: ClusterCache, decider: Decider, binder: Binder | None, metrics: Metrics) -> None:
        self.cache = cache
        self.decider = decider
        self.binder = binder
        self.metrics = metrics
        self._prefixes: dict[str, str] = {}
        self._routes: dict[str, Callable[[dict[str, Any]], Any]] = {
            "/filter": self.filter,
            "/prioritize": self.prioritize,
            "/bind": self.bind,
            "/preempt": self.preempt,
        }

    def handle_get(self, path: str) -> Answer:
        if path == "/healthz":
            return Answer(200, b"ok\n", "text/plain")
        if path == "/readyz":
            ok = self.cache.synced
            return Answer(200 if ok else 503, b"ok\n" if ok else b"cache not synced yet\n", "text/plain")
        if path == "/metrics":
            return Answer(200, self.metrics.exposition(), "text/plain; version=0.0.4")
        return Answer(404, b"not found\n", "text/plain")

    def handle_post(self, path: str, body: bytes) -> Answer:
        route = self._routes.get(path.rstrip("/") or "/")
        if route is None:
            return Answer(404, b"not found\n", "text/plain")
        verb = path.strip("/")
        start = time.perf_counter()
        try:
            try:
                args = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise BadRequest(f"body is not JSON: {err}") from err
            out = route(_object(args, "body"))
            answer = Answer(200, out.encode()) if isinstance(out, Raw) else _json(200, out)
            self.metrics.decisions.labels(verb, "ok").inc()
            return answer
        except BadRequest as err:
            self.metrics.decisions.labels(verb, "bad-request").inc()
            return Answer(400, f"bad {verb} request: {err}\n".encode(), "text/plain")
        except Exception as err:  # the scheduler gets a reason, never a traceback
            log.exception("%s failed", verb)
            self.metrics.decisions.labels(verb, "error").inc()
            return self._error(verb, f"gpupack: internal error in {verb}: {err}")
        finally:
            self.metrics.latency.labels(verb).observe(time.perf_counter() - start)

    def _error(self, verb: str, message: str) -> Answer:
        if verb == "filter":
            return _json(200, {"Nodes": None, "NodeNames": None, "FailedNodes": None,
                               "FailedAndUnresolvableNodes": None, "Error": message})
        if verb == "bind":
            return _json(200, {"Error": message})
        return Answer(500, (message + "\n").encode(), "text/plain")

    def filter(self, args: dict[str, Any]) -> wire.ExtenderFilterResult:
        pod = _pod(args)
        names, items = _names(args)
        d = self.decider.decide(pod_demand(pod), names, score=False)
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        for g in d.groups:
            nodes = [names[i] for i in g.positions.tolist()]
            (unresolvable if g.unresolvable else failed).update(dict.fromkeys(nodes, "gpupack: " + g.text))
            self.metrics.failures.labels(g.code).inc(len(nodes))
        result: wire.ExtenderFilterResult = {
            "Nodes": None, "NodeNames": None, "FailedNodes": failed,
            "FailedAndUnresolvableNodes": unresolvable, "Error": "",
        }
        keep = numpy.nonzero(d.fits)[0].tolist()
        if items is None:
            result["NodeNames"] = [names[i] for i in keep]
        else:
            result["Nodes"] = {"metadata": {}, "items": [items[i] for i in keep]}
        return result

    def prioritize(self, args: dict[str, Any]) -> Raw:
        pod = _pod(args)
        names, _ = _names(args)
        d = self.decider.decide(pod_demand(pod), names, reasons=False)
        return Raw("[" + ",".join(map(operator.add, self._host_prefixes(names), map(_SCORE_SUFFIX.__getitem__, d.level.tolist()))) + "]")

    def _host_prefixes(self, names: list[str]) -> list[str]:
        """``{"Host":"<name>","Score":`` per name, each written once per node name: at thousands
        of nodes, json.dumps of a list of dicts costs more than the decision itself."""
        cache = self._prefixes
        out: list[str | None] = list(map(cache.get, names))
        if None in out:
            if len(cache) > MAX_PREFIXES:  # names come from requests: keep the memo bounded
                cache.clear()
            for i, name in enumerate(names):
                if out[i] is None:
                    out[i] = cache[name] = '{"Host":' + json.dumps(name) + ',"Score":'
        return cast(list[str], out)

    def bind(self, args: dict[str, Any]) -> wire.ExtenderBindingResult:
        bargs: wire.ExtenderBindingArgs = {
            "PodName": _str_field(args, "PodName"),
            "PodNamespace": _str_field(args, "PodNamespace"),
            "PodUID": _str_field(args, "PodUID"),
            "Node": _str_field(args, "Node"),
        }
        if self.binder is None:
            return {"Error": "gpupack: this extender runs on a snapshot and cannot bind"}
        return {"Error": self.binder.bind(bargs)}

    def preempt(self, args: dict[str, Any]) -> wire.ExtenderPreemptionResult:
        pod = _pod(args)
        proposed: dict[str, tuple[list[str], int]] = {}
        meta = args.get("NodeNameToMetaVictims")
        full = args.get("NodeNameToVictims")
        for key, source in (("NodeNameToMetaVictims", meta), ("NodeNameToVictims", full)):
            if source is None:
                continue
            for node, victims in _object(source, key).items():
                if victims is None:
                    proposed[node] = ([], 0)
                    continue
                v = _object(victims, f"{key}.{node}")
                pods = v.get("Pods") or []
                if not isinstance(pods, list):
                    raise BadRequest(f"{key}.{node}.Pods: expected a list")
                uids: list[str] = []
                for i, p in enumerate(pods):
                    p = _object(p, f"{key}.{node}.Pods[{i}]")
                    uid = p.get("UID") if key == "NodeNameToMetaVictims" else (p.get("metadata") or {}).get("uid")
                    if not isinstance(uid, str):
                        raise BadRequest(f"{key}.{node}.Pods[{i}]: no uid")
                    uids.append(uid)
                pdb = v.get("NumPDBViolations") or 0
                if not isinstance(pdb, int):
                    raise BadRequest(f"{key}.{node}.NumPDBViolations: expected an integer")
                proposed[node] = (uids, pdb)
        chosen = self.decider.preempt(pod_demand(pod), proposed)
        return {
            "NodeNameToMetaVictims": {
                node: {"Pods": [{"UID": u} for u in uids], "NumPDBViolations": pdb}
                for node, (uids, pdb) in chosen.items()
            }
        }


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: kube-scheduler reuses connections
    disable_nagle_algorithm = True  # small answers must not wait for the peer's delayed ACK
    server: ExtenderHTTPServer

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def do_GET(self) -> None:
        self._send(self.server.app.handle_get(self.path.split("?", 1)[0]))

    def do_POST(self) -> None:
        length_text = self.headers.get("Content-Length")
        try:
            length = int(length_text) if length_text is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._send(Answer(400, b"bad request: Content-Length required\n", "text/plain"))
            return
        if length > self.server.max_body:
            self.close_connection = True  # the unread body would corrupt the next request
            self._send(Answer(400, f"bad request: body of {length} bytes exceeds {self.server.max_body}\n".encode(),
                              "text/plain"))
            return
        body = self.rfile.read(length)
        self._send(self.server.app.handle_post(self.path.split("?", 1)[0], body))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class ExtenderHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], app: ExtenderApp, max_body: int = DEFAULT_MAX_BODY,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.tls = tls
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the TLS handshake runs on the connection's own thread, so a slow or bad client
        # never holds up accepting the next one
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as err:
                log.info("TLS handshake with %s failed: %s", client_address, err)
                return
        super().finish_request(request, client_address)


def tls_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """Server TLS; with ``client_ca`` every client must present a certificate signed by it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def serve(
    app: ExtenderApp, host: str, port: int, tls: ssl.SSLContext | None = None, max_body: int = DEFAULT_MAX_BODY
) -> tuple[ExtenderHTTPServer, threading.Thread]:
    """Starts the server on a thread; port 0 picks a free one (``server.server_address``)."""
    srv = ExtenderHTTPServer((host, port), app, max_body, tls)
    thread = threading.Thread(target=srv.serve_forever, name="extender-http", daemon=True)
    thread.start()
    return srv, thread
