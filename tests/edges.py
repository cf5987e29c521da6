"""Edge test helpers: an `Edge` on the servers' loop, the demo mesh behind it, raw HTTP."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lazygrpc
from lazygrpc.demo import modules as demo


class Edges:
    """Starts edges on the loop the test's servers run on; stops them at the end."""

    def __init__(self, servers: Any, **defaults: Any) -> None:
        self.servers = servers
        self.defaults = defaults  # options every edge starts with unless told otherwise
        self.started: list[lazygrpc.Edge] = []

    def start(self, *upstreams: str, **options: Any) -> lazygrpc.Edge:
        edge = lazygrpc.Edge(list(upstreams), **{**self.defaults, **options})
        self.servers.lt.run(edge.start())
        self.started.append(edge)
        return edge

    def stop_all(self) -> None:
        for edge in reversed(self.started):
            self.servers.lt.run(edge.stop())
        self.started.clear()


@contextmanager
def running_edges(servers: Any, **defaults: Any) -> Iterator[Edges]:
    edges = Edges(servers, **defaults)
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
    lines += [
        f"{k}: {v}" for k, v in {"content-type": "application/json", **(headers or {})}.items()
    ]
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


class Leaf:
    """A producer that streams until it is stopped, and records when that happened."""

    def __init__(self, chunk: str = "tok ", limit: int | None = None) -> None:
        self.chunk = chunk
        self.limit = limit
        self.called = threading.Event()
        self.stopped = threading.Event()
        self.stopped_at = 0.0
        self.produced = 0

    async def stream(self, x: str) -> Any:
        self.called.set()
        try:
            if x == "wait":  # nothing before it is stopped
                await asyncio.Event().wait()
            while self.limit is None or self.produced < self.limit:
                yield self.chunk
                self.produced += 1
                if self.limit is None:
                    await asyncio.sleep(0.01)  # a model's pace
        finally:
            self.stopped_at = time.monotonic()
            self.stopped.set()


async def wait_forever(leaf: Leaf, x: str) -> str:
    """A unary module that answers only when stopped (recorded in `leaf`)."""
    leaf.called.set()
    try:
        await asyncio.Event().wait()
        return x
    finally:
        leaf.stopped_at = time.monotonic()
        leaf.stopped.set()


def relay_to(url: str) -> Any:
    remote = lazygrpc.connect(url)

    async def relay(x: str) -> Any:
        async for ev in remote.astream(x):
            if ev.kind == "delta":
                yield ev.value

    return relay


def three_hops(servers: Any, leaf: Leaf) -> str:
    """gateway → relay → leaf, each its own server; the gateway's base URL."""
    leaf_url = servers.modules({"leaf": leaf.stream}, name="leaf")
    relay_url = servers.modules({"relay": relay_to(f"{leaf_url}/leaf")}, name="relay")
    return servers.modules({"gateway": relay_to(f"{relay_url}/relay")}, name="gateway")
