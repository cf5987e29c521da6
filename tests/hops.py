"""Three-hop meshes for session and error tests, on sync and asyncio servers.

Each hop is a module: hop1 and hop2 forward to the next hop through lazygrpc clients, hop3
does the work (records what it saw, sets a global, sleeps, fails or streams on request).
Server kinds: `aio` (lazygrpc.Server, async modules, aio clients), `aio-threads`
(lazygrpc.Server, sync modules in threads, sync clients), `sync` (a plain `grpc.server` with
`lazygrpc.server_interceptors(aio=False)` and a hand-written servicer, sync clients).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc

import lazygrpc
from lazygrpc.core.context import current_call
from lazygrpc.core.values import from_struct, from_value, to_value
from lazygrpc.server.builder import SERVER_OPTIONS
from lazygrpc.v1 import module_pb2, module_pb2_grpc

SERVER_KINDS = ["aio", "aio-threads", "sync"]


class Record:
    """What hop 3 saw, keyed by the input it was called with."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, dict[str, Any]] = {}
        self.finally_at: dict[str, float] = {}
        self.started = threading.Event()
        #: The W3C trace context headers hop 3's call came with, by input.
        self.traces: dict[str, tuple[tuple[str, str], ...]] = {}

    def note(self, key: str) -> None:
        scope = current_call()
        with self.lock:
            self.seen[key] = {
                "sid": lazygrpc.session_id(),
                "globals": dict(lazygrpc.globals),
                "deadline": scope.time_remaining() if scope else None,
            }
            self.traces[key] = scope.trace_headers if scope else ()


def hop3_work(record: Record, x: str) -> str:
    record.note(x)
    lazygrpc.globals["from_hop3"] = f"hop3 saw {x}"
    if x.startswith("fail"):
        raise ValueError(f"hop3 failed on {x!r}")
    if x.startswith("notfound"):
        raise lazygrpc.NotFound(f"no such thing: {x!r}")
    return f"done:{x}"


def hop3_stream_sync(record: Record, x: str, n: int = 5) -> Iterator[str]:
    record.note(x)
    lazygrpc.globals["from_hop3"] = f"hop3 saw {x}"
    try:
        for i in range(n):
            record.started.set()
            yield f"c{i} "
            if x.startswith("slow"):
                time.sleep(0.01)
        if x.startswith("fail"):
            raise ValueError(f"hop3 failed after {n} chunks")
    finally:
        record.finally_at[x] = time.monotonic()


async def hop3_stream_async(record: Record, x: str, n: int = 5) -> Any:
    record.note(x)
    lazygrpc.globals["from_hop3"] = f"hop3 saw {x}"
    try:
        for i in range(n):
            record.started.set()
            yield f"c{i} "
            if x.startswith("slow"):
                await asyncio.sleep(0.01)
        if x.startswith("fail"):
            raise ValueError(f"hop3 failed after {n} chunks")
    finally:
        record.finally_at[x] = time.monotonic()


def make_modules(kind: str, record: Record, next_url: str | None) -> dict[str, Callable[..., Any]]:
    """`run` (unary) and `stream` (generator) for one hop of the given kind."""
    if next_url is None:  # hop 3
        if kind == "aio":

            async def run(x: str) -> str:
                if x.startswith("sleep"):
                    record.note(x)
                    await asyncio.sleep(2)
                return hop3_work(record, x)

            async def stream(x: str, n: int = 5) -> Any:
                async for item in hop3_stream_async(record, x, n):
                    yield item

            return {"run": run, "stream": stream}

        def run_sync(x: str) -> str:
            if x.startswith("sleep"):
                record.note(x)
                time.sleep(2)
            return hop3_work(record, x)

        def stream_sync(x: str, n: int = 5) -> Iterator[str]:
            yield from hop3_stream_sync(record, x, n)

        return {"run": run_sync, "stream": stream_sync}

    run_next = lazygrpc.connect(f"{next_url}/run")
    stream_next = lazygrpc.connect(f"{next_url}/stream")
    if kind == "aio":

        async def run_fwd(x: str) -> Any:
            return await run_next.acall(x)

        async def stream_fwd(x: str, n: int = 5) -> Any:
            async for ev in stream_next.astream(x, n=n):
                if ev.kind == "delta":
                    yield ev.value

        return {"run": run_fwd, "stream": stream_fwd}

    def run_fwd_sync(x: str) -> Any:
        return run_next(x)

    def stream_fwd_sync(x: str, n: int = 5) -> Iterator[Any]:
        for ev in stream_next.stream(x, n=n):
            if ev.kind == "delta":
                yield ev.value

    return {"run": run_fwd_sync, "stream": stream_fwd_sync}


class SyncModuleServicer(module_pb2_grpc.ModuleServiceServicer):
    """A hand-written sync ModuleService (what a user of plain `grpc.server` would write)."""

    def __init__(self, modules: dict[str, Callable[..., Any]]) -> None:
        self.modules = modules

    def Call(self, request: Any, context: Any) -> Any:
        fn = self.modules[request.module]
        out = fn(from_value(request.input), **from_struct(request.kwargs))
        return module_pb2.CallResponse(output=to_value(out))

    def Stream(self, request: Any, context: Any) -> Any:
        fn = self.modules[request.module]
        parts = []
        for i, d in enumerate(fn(from_value(request.input), **from_struct(request.kwargs))):
            parts.append(d)
            yield module_pb2.Event(seq=i, source=request.module, delta=to_value(d))
        yield module_pb2.Event(
            seq=len(parts), source=request.module, result=to_value("".join(parts))
        )


def start_sync_server(name: str, modules: dict[str, Callable[..., Any]]) -> tuple[grpc.Server, str]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=64),
        interceptors=lazygrpc.server_interceptors(name, aio=False, expose_tracebacks=True),
        options=SERVER_OPTIONS,
    )
    module_pb2_grpc.add_ModuleServiceServicer_to_server(SyncModuleServicer(modules), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"grpc://127.0.0.1:{port}"


@contextmanager
def aborting_bare_server(code: grpc.StatusCode, details: str) -> Iterator[int]:
    """A bare grpcio ModuleService (no lazygrpc code) whose `Call` aborts; yields its port."""

    class Aborting(module_pb2_grpc.ModuleServiceServicer):
        def Call(self, request: Any, context: Any) -> Any:
            context.abort(code, details)

    bare = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    module_pb2_grpc.add_ModuleServiceServicer_to_server(Aborting(), bare)
    port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    try:
        yield port
    finally:
        bare.stop(0)


class Mesh:
    """hop1 → hop2 → hop3, all of one server kind."""

    def __init__(self, servers: Any, kind: str) -> None:
        self.kind = kind
        self.record = Record()
        self._sync_servers: list[grpc.Server] = []
        url = None
        for name in ("hop3", "hop2", "hop1"):
            modules = make_modules(kind, self.record, url)
            if kind == "sync":
                server, url = start_sync_server(name, modules)
                self._sync_servers.append(server)
            else:
                url = servers.modules(modules, name=name, expose_tracebacks=True)
        assert url is not None
        self.entry = url
        self.run = lazygrpc.connect(f"{url}/run")
        self.stream = lazygrpc.connect(f"{url}/stream")

    def method(self, module: str, rpc: str) -> str:
        """The method name frames carry: the module, or the RPC on a hand-written servicer."""
        return rpc if self.kind == "sync" else module

    def close(self) -> None:
        for s in self._sync_servers:
            s.stop(0)
