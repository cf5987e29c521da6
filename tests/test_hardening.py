"""Regressions from review: hostile headers, stray cancellations, oversize trailers, sharing."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import grpc
import pytest

import lazygrpc
from lazygrpc.core.values import to_value
from lazygrpc.v1 import module_pb2, module_pb2_grpc
from tests.hops import aborting_bare_server


def _raw_call(url: str, module: str, metadata: Any = (), value: Any = "x") -> Any:
    with grpc.insecure_channel(url.removeprefix("grpc://")) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        return stub.Call(
            module_pb2.CallRequest(module=module, input=to_value(value)),
            metadata=list(metadata),
            timeout=10,
        )


def test_deeply_nested_baggage_is_invalid_and_does_not_block_shutdown(server_loop: Any) -> None:
    async def echo(x: Any) -> Any:
        return x

    async def build() -> lazygrpc.Server:
        s = lazygrpc.Server(grace=5)
        s.add_modules({"echo": echo})
        await s.start()
        return s

    server = server_loop.run(build())
    url = f"grpc://127.0.0.1:{server.port}"
    nested = "lazy.k=" + "%5B" * 3000
    with pytest.raises(grpc.RpcError) as info:
        _raw_call(url, "echo", [("baggage", nested)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("baggage:")
    assert _raw_call(url, "echo").output.string_value == "x"
    t0 = time.monotonic()
    server_loop.run(server.stop())
    assert time.monotonic() - t0 < 2.5  # nothing left counted in flight (grace is 5 s)


def test_a_cancelled_task_inside_a_handler_is_an_error_not_a_hang(servers: Any) -> None:
    async def awaits_cancelled(x: Any) -> Any:
        task = asyncio.ensure_future(asyncio.sleep(10))
        task.cancel()
        return await task

    async def streams_then_cancelled(x: Any) -> Any:
        yield "a"
        task = asyncio.ensure_future(asyncio.sleep(10))
        task.cancel()
        await task

    url = servers.modules({"unary": awaits_cancelled, "stream": streams_then_cancelled})
    t0 = time.monotonic()
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.connect(f"{url}/unary", timeout=20)(1)
    assert info.value.remote_type == "CancelledError"
    with pytest.raises(lazygrpc.RemoteError) as info:
        list(lazygrpc.connect(f"{url}/stream", timeout=20).stream(1))
    assert info.value.remote_type == "CancelledError"
    assert time.monotonic() - t0 < 5  # answered at once, not at the 20 s deadline


def test_a_huge_error_from_a_bare_child_still_reaches_the_client(servers: Any) -> None:
    with aborting_bare_server(grpc.StatusCode.INTERNAL, "E" * 12000) as port:
        child = lazygrpc.connect(f"grpc://127.0.0.1:{port}/x")

        async def gateway(x: Any) -> Any:
            return await child.acall(x)

        url = servers.modules({"gateway": gateway}, name="gw")
        with pytest.raises(grpc.RpcError) as info:
            _raw_call(url, "gateway")  # a plain client, default 8 KiB metadata limit
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details().startswith("EEEE")


def test_globals_changed_in_place_come_back(servers: Any) -> None:
    def add_turn(x: str) -> int:
        lazygrpc.globals["history"].append(x)
        return len(lazygrpc.globals["history"])

    url = servers.modules({"add_turn": add_turn})
    m = lazygrpc.connect(f"{url}/add_turn")
    with lazygrpc.session() as s:
        lazygrpc.globals["history"] = ["turn-1"]
        assert m("turn-2") == 2
        assert s.get("history") == ["turn-1", "turn-2"]
        assert m("turn-3") == 3
        assert s.get("history") == ["turn-1", "turn-2", "turn-3"]


def test_an_oversize_globals_update_is_a_clear_error(servers: Any) -> None:
    def bloat(x: Any) -> None:
        for i in range(4):
            lazygrpc.globals[f"k{i}"] = "x" * 3000

    url = servers.modules({"bloat": bloat})
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.connect(f"{url}/bloat")(1)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "lazy-globals-update" in info.value.message and "k0" in info.value.message


def test_a_session_shared_by_threads_stays_consistent() -> None:
    s = lazygrpc.Session()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(300):
                s.set(f"w{n}-{i % 20}", i)
                s.merge_update({f"m{n}": i}, set())
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(300):
                s.baggage()
                s.update_trailer()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s.set("last", 1)
    assert "lazy.last=1" in s.baggage()


def test_model_usage_ignores_a_caller_supplied_garbage_value(servers: Any) -> None:
    url = servers.model("echo")
    with lazygrpc.session() as s:
        lazygrpc.globals["usage"] = "not a dict"
        assert lazygrpc.LLM(url)("a b") == "a b"
        assert s.get("usage")["completion_tokens"] == 2
