"""The edge's bounds: a client that leaves stops every hop below, a slow reader slows the
producer, and past `max_streams` the edge answers 429."""

from __future__ import annotations

import functools
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.edges import (
    Edges,
    Leaf,
    http_post,
    raw_request,
    read_until,
    running_edges,
    three_hops,
    wait_forever,
)


@pytest.fixture(params=["httptools", "h11"])
def edges(servers: Any, request: Any) -> Iterator[Edges]:
    """Edges on each of uvicorn's HTTP/1.1 parsers: the default (httptools) and the
    pure-Python fallback both see a client leave and a slow reader."""
    with running_edges(servers, http=request.param) as e:
        yield e


ROUTES = {
    "module": ("/v1/modules/gateway/stream", {"input": "go"}),
    "openai": (
        "/v1/chat/completions",
        {"model": "gateway", "stream": True, "messages": [{"role": "user", "content": "go"}]},
    ),
}


def leave_and_time(port: int, leaf: Leaf, path: str, body: Any, marker: bytes | None) -> float:
    """Send the request, wait for `marker` in the answer (or for the leaf to be called),
    close the socket: seconds until the leaf stopped."""
    sock = raw_request(port, http_post(path, json.dumps(body).encode()))
    if marker is None:
        assert leaf.called.wait(10)
    else:
        read_until(sock, marker)  # tokens flow through every hop
    left = time.monotonic()
    sock.close()
    assert leaf.stopped.wait(10), "the leaf kept going after its client left"
    return leaf.stopped_at - left


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_client_that_leaves_stops_the_leaf_three_hops_down_within_100ms(
    servers: Any, edges: Edges, route: str
) -> None:
    leaf = Leaf()
    edge = edges.start(three_hops(servers, leaf))
    path, body = ROUTES[route]
    assert leave_and_time(edge.port, leaf, path, body, b"tok ") <= 0.1


def test_a_client_that_leaves_before_the_first_token_stops_the_chain(
    servers: Any, edges: Edges
) -> None:
    leaf = Leaf()
    edge = edges.start(three_hops(servers, leaf))
    path, body = "/v1/modules/gateway/stream", {"input": "wait"}
    assert leave_and_time(edge.port, leaf, path, body, None) <= 0.1


def test_a_client_that_leaves_a_json_call_stops_it(servers: Any, edges: Edges) -> None:
    leaf = Leaf()
    edge = edges.start(servers.modules({"waits": functools.partial(wait_forever, leaf)}))
    assert leave_and_time(edge.port, leaf, "/v1/modules/waits", {"input": "x"}, None) <= 0.1


def _still(leaf: Leaf) -> int:
    """The leaf's count once it stopped growing (it waits for the reader)."""
    before = -1
    for _ in range(100):
        if leaf.produced == before:
            return before
        before = leaf.produced
        time.sleep(0.3)
    raise AssertionError("the producer never stopped producing")


def test_a_slow_reader_holds_the_producer_back(servers: Any, edges: Edges) -> None:
    chunk = "x" * (64 << 10)
    leaf = Leaf(chunk, limit=768)  # 48 MiB in all
    edge = edges.start(servers.modules({"leaf": leaf.stream}, name="leaf"))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", edge.port))
    sock.sendall(http_post("/v1/modules/leaf/stream", b'{"input": "go"}'))
    first = read_until(sock, b"\r\n\r\n")  # the headers, then the reader stalls
    held = _still(leaf)
    assert 0 < held * len(chunk) < 16 << 20, f"{held} chunks produced while nobody read"
    got = bytearray(first.partition(b"\r\n\r\n")[2])
    while part := sock.recv(1 << 20):  # reading again lets the producer finish
        got += part
    sock.close()
    # Every chunk arrived (under backlog, consecutive deltas may share a message).
    assert leaf.produced == 768 and got.count(b"x") >= 768 * len(chunk)
    assert b"event: globals" in got


def test_past_max_streams_the_edge_answers_429_with_retry_after(servers: Any, edges: Edges) -> None:
    leaf, short = Leaf(), Leaf(limit=3)
    modules = {"leaf": leaf.stream, "short": short.stream}
    edge = edges.start(servers.modules(modules, name="leaf"), max_streams=1)
    sock = raw_request(edge.port, http_post("/v1/modules/leaf/stream", b'{"input": "wait"}'))
    assert leaf.called.wait(10)
    r = httpx.post(f"{edge.url}/v1/modules/leaf", json={"input": "x"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "max_streams=1" in r.json()["error"]["message"]
    sock.close()
    assert leaf.stopped.wait(10)
    for _ in range(100):  # the slot is free once the edge saw the client leave
        if httpx.get(f"{edge.url}/health").json()["calls_in_flight"] == 0:
            break
        time.sleep(0.05)
    r = httpx.post(f"{edge.url}/v1/modules/short/stream", json={"input": "x"}, timeout=30)
    assert r.status_code == 200 and '"result":"tok tok tok "' in r.text
