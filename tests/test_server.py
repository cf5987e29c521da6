"""The server builder: health per service, graceful shutdown with a drain."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import lazygrpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _check(ch: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(ch)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_health_reports_every_service_and_the_server(servers: Any) -> None:
    url = servers.model("echo")
    with grpc.insecure_channel(url.removeprefix("grpc://")) as ch:
        served = (
            "",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "lazygrpc.v1.ModelService",
            "lazygrpc.v1.BrokerService",
        )
        for service in served:
            assert _check(ch, service) == SERVING
        with pytest.raises(grpc.RpcError) as info:
            _check(ch, "no.such.Service")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        listed = health_pb2_grpc.HealthStub(ch).List(health_pb2.HealthListRequest(), timeout=5)
        assert {k: v.status for k, v in listed.statuses.items()} == dict.fromkeys(served, SERVING)


def test_an_open_health_watch_does_not_hold_the_stop(server_loop: Any) -> None:
    async def build() -> lazygrpc.Server:
        s = lazygrpc.Server(name="watched", grace=30)
        s.add_modules({"echo": lambda x: x})
        await s.start()
        return s

    server = server_loop.run(build())
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        assert next(watch).status == SERVING
        t0 = time.monotonic()
        server_loop.run(server.stop())
        # The drain has nothing of lazygrpc's to wait for: the stop does not take the grace.
        assert time.monotonic() - t0 < 10
        statuses = []
        with pytest.raises(grpc.RpcError):
            for item in watch:
                statuses.append(item.status)
        assert statuses[:1] == [NOT_SERVING]


def test_graceful_stop_drains_streams_and_flips_health(server_loop: Any) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(n: int) -> Any:
        for i in range(n):
            if i == 1:
                started.set()
                release.wait(10)
            yield f"t{i} "

    async def build() -> lazygrpc.Server:
        # No notice period: the refusal of a call that comes after NOT_SERVING is under test.
        s = lazygrpc.Server(name="drain", grace=5, drain_notice=0)
        s.add_modules({"slow": slow})
        await s.start()
        return s

    server = server_loop.run(build())
    target = f"127.0.0.1:{server.port}"
    results: list[Any] = []
    stream = lazygrpc.connect(f"grpc://{target}/slow")

    def consume() -> None:
        results.extend(e.value for e in stream.stream(4) if e.kind == "delta")

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert started.wait(10)
    health_ch = grpc.insecure_channel(target)
    assert _check(health_ch, "") == SERVING
    stopping = asyncio.run_coroutine_threadsafe(server.stop(), server_loop.loop)
    # Health turns NOT_SERVING first; the in-flight stream is still running.
    statuses = set()
    for _ in range(200):
        try:
            statuses.add(_check(health_ch, ""))
        except grpc.RpcError:
            break
        if NOT_SERVING in statuses:
            break
    assert NOT_SERVING in statuses
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.connect(f"grpc://{target}/slow", timeout=2)(1)
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    release.set()
    stopping.result(10)
    consumer.join(10)
    health_ch.close()
    assert "".join(results) == "t0 t1 t2 t3 "


def test_the_server_registers_no_methods_with_grpc(server_loop: Any) -> None:
    """Every service reaches grpc as one generic handler: grpc.aio keeps a task per
    registered method, and each registered method costs every call (docs/index.md)."""

    async def build_and_count() -> tuple[lazygrpc.Server, int]:
        s = lazygrpc.Server(name="plain")
        s.add_modules({"echo": lambda x: x})
        await s.start()
        names = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()]
        return s, sum(n.endswith("_request_registered_call") for n in names)

    server, registered = server_loop.run(build_and_count())
    try:
        assert registered == 0
        assert lazygrpc.connect(f"grpc://127.0.0.1:{server.port}/echo")("hi") == "hi"
    finally:
        server_loop.run(server.stop(0))
