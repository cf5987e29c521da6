"""Load-client building blocks (asyncio) shared by the benchmark scripts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf import struct_pb2

from lazygrpc.v1 import model_pb2, model_pb2_grpc, module_pb2, module_pb2_grpc

Unary = Callable[[], Awaitable[Any]]
StreamFn = Callable[[], AsyncIterator[str]]


# -- bare grpcio clients ---------------------------------------------------------------------


def bare_channel(address: str, interceptors: list[Any] | None = None) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, interceptors=interceptors)


class _NoopUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


class _NoopStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


def noop_interceptors() -> list[Any]:
    """grpc.aio client interceptors that do nothing: what grpc's interceptor path costs."""
    return [_NoopUnary(), _NoopStream()]


def bare_unary(channel: grpc.aio.Channel, value: str = "ping") -> Unary:
    stub = module_pb2_grpc.ModuleServiceStub(channel)
    request = module_pb2.CallRequest(module="echo", input=struct_pb2.Value(string_value=value))

    async def call() -> Any:
        return (await stub.Call(request)).output.string_value

    return call


def layered_unary(channel: grpc.aio.Channel, value: str = "ping") -> Unary:
    """`bare_unary` through lazygrpc's client layer (`lazygrpc.client.call`, what connect() uses)."""
    from lazygrpc.client import call as invoke

    stub = module_pb2_grpc.ModuleServiceStub(channel)
    request = module_pb2.CallRequest(module="echo", input=struct_pb2.Value(string_value=value))

    async def call() -> Any:
        return (await invoke.aunary(stub.Call, request, None, _same)).output.string_value

    return call


def layered_module_stream(channel: grpc.aio.Channel, module: str, value: Any) -> StreamFn:
    """`bare_module_stream` through lazygrpc's client layer."""
    from lazygrpc.client import call as invoke

    stub = module_pb2_grpc.ModuleServiceStub(channel)
    v = struct_pb2.Value(number_value=value)
    request = module_pb2.CallRequest(module=module, input=v)

    async def stream() -> AsyncIterator[str]:
        async for ev in invoke.astream(stub.Stream, request, None, _same):
            if ev.HasField("delta"):
                yield ev.delta.string_value

    return stream


def _same(err: Any) -> Any:
    return err


def bare_module_stream(channel: grpc.aio.Channel, module: str, value: Any) -> StreamFn:
    stub = module_pb2_grpc.ModuleServiceStub(channel)
    v = (
        struct_pb2.Value(string_value=value)
        if isinstance(value, str)
        else struct_pb2.Value(number_value=value)
    )
    request = module_pb2.CallRequest(module=module, input=v)

    async def stream() -> AsyncIterator[str]:
        async for ev in stub.Stream(request):
            if ev.HasField("delta"):
                yield ev.delta.string_value

    return stream


def bare_generate(channel: grpc.aio.Channel, prompt: str) -> StreamFn:
    stub = model_pb2_grpc.ModelServiceStub(channel)
    request = model_pb2.GenerateRequest(input=prompt)

    async def stream() -> AsyncIterator[str]:
        async for chunk in stub.Generate(request):
            if chunk.text:
                yield chunk.text

    return stream


# -- lazygrpc clients (public API) -----------------------------------------------------------


def lazy_unary(url: str, value: str = "ping", module: str = "echo") -> Unary:
    from lazygrpc import connect

    m = connect(f"{url}/{module}")

    async def call() -> Any:
        return await m.acall(value)

    return call


def lazy_module_stream(url: str, module: str, value: Any) -> StreamFn:
    from lazygrpc import connect

    m = connect(f"{url}/{module}")

    async def stream() -> AsyncIterator[str]:
        async for ev in m.astream(value):
            if ev.kind == "delta":
                yield ev.value

    return stream


def lazy_generate(url: str, prompt: str) -> StreamFn:
    from lazygrpc import LLM

    llm = LLM(url)

    def stream() -> AsyncIterator[str]:
        return llm.astream(prompt)

    return stream


# -- measurements ----------------------------------------------------------------------------


async def latencies(call: Unary, n: int) -> list[float]:
    """Seconds per call, `n` sequential calls."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t0)
    return out


async def qps(
    call: Unary, concurrency: int, duration: float, counts: list[int] | None = None
) -> float:
    """Calls/s with `concurrency` callers looping for `duration` seconds (the number of
    calls made is appended to `counts` when given)."""
    count = 0
    stop = time.perf_counter() + duration

    async def caller() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await call()
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    if counts is not None:
        counts.append(count)
    return count / (time.perf_counter() - t0)


async def stream_once(
    stream: StreamFn, expect_chars: int | None = None
) -> tuple[float, float, int]:
    """(time to first non-empty delta, time to the end of the stream) in seconds, messages."""
    t0 = time.perf_counter()
    ttft = None
    chars = 0
    messages = 0
    async for text in stream():
        if ttft is None and text:
            ttft = time.perf_counter() - t0
        chars += len(text)
        messages += 1
    total = time.perf_counter() - t0
    if expect_chars is not None and chars != expect_chars:
        raise AssertionError(f"stream delivered {chars} characters, expected {expect_chars}")
    return (ttft if ttft is not None else total), total, messages


async def warm(*fns: Callable[[], Awaitable[Any]], times: int = 20) -> None:
    for fn in fns:
        for _ in range(times):
            await fn()
