"""Edge test helpers: an `Edge` on the servers' loop, the demo mesh behind it, raw HTTP."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lazygrpc
from lazygrpc.demo import modules as demo


class Edges:
    """Starts edges on the loop the test's servers run on; stops them at the end."""

    def __init__(self, servers: Any) -> None:
        self.servers = servers
        self.started: list[lazygrpc.Edge] = []

    def start(self, *upstreams: str, **options: Any) -> lazygrpc.Edge:
        edge = lazygrpc.Edge(list(upstreams), **options)
        self.servers.lt.run(edge.start())
        self.started.append(edge)
        return edge

    def stop_all(self) -> None:
        for edge in reversed(self.started):
            self.servers.lt.run(edge.stop())
        self.started.clear()


@contextmanager
def running_edges(servers: Any) -> Iterator[Edges]:
    edges = Edges(servers)
    try:
        yield edges
    finally:
        edges.stop_all()


def demo_mesh(servers: Any, monkeypatch: Any, backend: str = "echo", **model: Any) -> list[str]:
    """gateway (`ask`) → retriever (`rag`) → model, in this process; their base URLs,
    gateway first."""
    model_url = servers.model(backend, server_name="model", **model)
    monkeypatch.setenv(demo.MODEL_URL_ENV, model_url)
    retriever = servers.modules({"rag": demo.rag}, name="retriever")
    monkeypatch.setenv(demo.RETRIEVER_URL_ENV, retriever)
    gateway = servers.modules({"ask": demo.ask}, name="gateway")
    return [gateway, retriever, model_url]


def raw_request(port: int, data: bytes) -> socket.socket:
    """A socket to the edge on 127.0.0.1 that has sent `data` (a whole HTTP request)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(data)
    return sock


def http_post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """An HTTP/1.1 POST request's bytes (connection closed after the answer)."""
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "connection: close"]
    lines += [f"{k}: {v}" for k, v in {"content-type": "application/json", **(headers or {})}.items()]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    """Read from `sock` until `marker` arrived (AssertionError if the stream ends first)."""
    got = b""
    while marker not in got:
        part = sock.recv(65536)
        assert part, f"connection closed before {marker!r}; got {got[-400:]!r}"
        got += part
    return got
