"""The extender's own HTTP/1.1 edge, byte for byte: keep-alive as kube-scheduler's Go client
uses it, and a clear 4xx (then a closed connection) for what it does not accept."""

from __future__ import annotations

import json
import socket

import numpy
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_ext.server import host_priorities

from .conftest import Client

FILTER = (b'{"Pod":{"metadata":{"uid":"u"},"spec":{"containers":[{"name":"c","resources":'
          b'{"limits":{"nvidia.com/gpu":"1"}}}]}},"Nodes":null,"NodeNames":["n-half","n-full"]}')


def post(body: bytes, extra: str = "", version: str = "HTTP/1.1") -> bytes:
    head = f"POST /filter {version}\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def answers(client: Client, data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Sends ``data`` on one connection and reads answers until the server closes it."""
    with socket.create_connection((str(client.host), int(client.port)), timeout=10) as s:
        s.sendall(data)
        f = s.makefile("rb")
        out = []
        while True:
            line = f.readline()
            if not line:
                return out
            status = int(line.split()[1])
            headers = {}
            while (h := f.readline()) not in (b"\r\n", b""):
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = f.read(int(headers.get("content-length", "0")))
            out.append((status, headers, body))
            if status == 100:
                out.pop()
                out.append((100, {}, b""))


def test_keep_alive_answers_in_order_until_close(client: Client) -> None:
    got = answers(client, post(FILTER) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + post(FILTER, "Connection: close\r\n"))
    assert [s for s, _, _ in got] == [200, 200, 200]
    assert json.loads(got[0][2])["NodeNames"] == ["n-half"] and got[0][1]["content-type"] == "application/json"
    assert got[1][2] == b"ok\n"
    assert got[2][1]["connection"] == "close"


def test_http10_closes_unless_asked_to_keep_alive(client: Client) -> None:
    assert [s for s, _, _ in answers(client, post(FILTER, version="HTTP/1.0") + post(FILTER))] == [200]
    got = answers(client, post(FILTER, "Connection: keep-alive\r\n", "HTTP/1.0") + post(FILTER, "Connection: close\r\n"))
    assert [s for s, _, _ in got] == [200, 200] and got[0][1]["connection"] == "keep-alive"


def test_expect_100_continue(client: Client) -> None:
    got = answers(client, post(FILTER, "Expect: 100-continue\r\nConnection: close\r\n"))
    assert [s for s, _, _ in got] == [100, 200]


@pytest.mark.parametrize("data,status,reason", [
    (b"GARBAGE\r\n\r\n", 400, b"malformed request line"),
    (b"POST /filter HTTP/2.0\r\nContent-Length: 2\r\n\r\n{}", 505, b"not supported"),
    (b"POST /filter HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400, b"chunked"),
    (b"POST /filter HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"Content-Length required"),
    (b"POST /filter HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, b"Content-Length required"),
    (b"POST /filter HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, b"conflicting"),
    (b"POST /filter HTTP/1.1\r\nno colon here\r\n\r\n", 400, b"malformed header"),
    (b"POST /filter HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, b"header lines"),
    (b"PUT /filter HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 501, b"not supported"),
    (b"GET /" + b"x" * 70000 + b" HTTP/1.1\r\n\r\n", 414, b"too long"),
], ids=["request-line", "version", "chunked", "no-length", "negative-length", "two-lengths", "header-line",
        "too-many-headers", "method", "long-line"])
def test_what_it_refuses_and_then_closes(client: Client, data: bytes, status: int, reason: bytes) -> None:
    got = answers(client, data + post(FILTER))  # the request after it is never read
    assert len(got) == 1
    assert got[0][0] == status and reason in got[0][2]
    assert got[0][1]["connection"] == "close"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["node-1", "a.b-c", "", 'a"b', 'x",', "back\\", "tab\t", "\x01", "\u2028", "é"])
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=6),  # orjson refuses lone surrogates
    st.integers(0, 10)), max_size=6))
def test_prioritize_answer_is_exact_json_for_any_names(pairs: list[tuple[str, int]]) -> None:
    names = [n for n, _ in pairs]
    levels = numpy.array([s for _, s in pairs], dtype=numpy.int64)
    text = host_priorities(names, levels)
    assert json.loads(text) == [{"Host": n, "Score": s} for n, s in pairs]
    assert text == orjson.dumps([{"Host": n, "Score": s} for n, s in pairs])  # the same bytes either way
