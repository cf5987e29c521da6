"""Admission control through real servers: past a limit a new call is refused with
RESOURCE_EXHAUSTED and a RetryInfo delay before its handler runs; calls already admitted
finish; a server's default and maximum deadline reach the calls it makes (issue 17, item 5)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import lazygrpc
from lazygrpc.core.values import to_value
from lazygrpc.v1 import module_pb2, module_pb2_grpc


def _retry_delay(err: grpc.RpcError) -> float | None:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


def test_calls_past_max_calls_are_refused_with_retry_info_and_admitted_ones_finish(
    servers: Any,
) -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def hold(x: Any) -> str:
        entered.release()
        release.wait(30)
        return "held"

    def quick(x: Any) -> str:
        return "quick"

    url = servers.modules(
        {"hold": hold, "quick": quick}, limits=lazygrpc.Limits(max_calls=2, retry_after=0.5)
    )
    target = url.removeprefix("grpc://")
    with grpc.insecure_channel(target) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        held = [
            stub.Call.future(module_pb2.CallRequest(module="hold", input=to_value(i)), timeout=30)
            for i in range(2)
        ]
        for _ in held:
            assert entered.acquire(timeout=10)  # both admitted and running
        with pytest.raises(grpc.RpcError) as info:
            stub.Call(module_pb2.CallRequest(module="quick", input=to_value(1)), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_calls" in info.value.details()
        assert _retry_delay(info.value) == 0.5
        release.set()
        assert [f.result().output.string_value for f in held] == ["held", "held"]
        reply = stub.Call(module_pb2.CallRequest(module="quick", input=to_value(1)), timeout=10)
        assert reply.output.string_value == "quick"  # admitted again once they finished


def test_streams_past_max_streams_are_refused_while_unary_calls_go_on(servers: Any) -> None:
    release = asyncio.Event()
    started = threading.Event()

    async def slow_stream(x: Any) -> Any:
        yield "first"
        started.set()
        await release.wait()
        yield "last"

    def quick(x: Any) -> str:
        return "quick"

    url = servers.modules(
        {"slow_stream": slow_stream, "quick": quick}, limits=lazygrpc.Limits(max_streams=1)
    )
    slow = lazygrpc.connect(f"{url}/slow_stream")
    events = slow.stream("a")
    assert next(events).value == "first"
    assert started.wait(10)
    with pytest.raises(lazygrpc.RemoteError) as info:
        list(lazygrpc.connect(f"{url}/slow_stream").stream("b"))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert lazygrpc.connect(f"{url}/quick")("x") == "quick"
    servers.lt.loop.call_soon_threadsafe(release.set)
    assert next(ev.value for ev in events) == "last"
    assert next(ev.value for ev in lazygrpc.connect(f"{url}/slow_stream").stream("c")) == "first"


def test_a_servers_default_and_maximum_deadline_reach_the_calls_it_makes(servers: Any) -> None:
    def remaining(x: Any) -> float:
        scope = lazygrpc.core.context.current_call()
        assert scope is not None
        left = scope.time_remaining()
        return -1.0 if left is None else left

    leaf = servers.modules({"remaining": remaining})

    def gateway(x: Any) -> float:
        return lazygrpc.connect(f"{leaf}/remaining")(x)

    capped = servers.modules(
        {"gateway": gateway}, limits=lazygrpc.Limits(default_deadline=5, max_deadline=20)
    )
    no_deadline = lazygrpc.connect(f"{capped}/gateway")("x")
    assert 0 < no_deadline <= 5 * 1.03  # grpc rounds the timeout it writes up a little
    long = lazygrpc.connect(f"{capped}/gateway", timeout=600)("x")
    assert 5 * 1.03 < long <= 20 * 1.03
    assert lazygrpc.connect(f"{leaf}/remaining")("x") == -1.0  # no limits: no deadline


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_calls"):
        lazygrpc.Limits(max_calls=0)


def test_a_bad_admission_flag_is_one_usage_line() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "lazygrpc", "serve", "lazygrpc.demo.modules:ask", "--max-calls", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["lazygrpc: --max-calls must be positive, got 0"]


def test_a_huge_request_does_not_stall_the_other_calls(servers: Any) -> None:
    """A request of 200k kwargs is turned into arguments off the event loop: a small call
    made meanwhile is answered while the big one is still being decoded. (Protobuf's own
    parse of it, about 0.4 s here, holds the GIL in C: a small call can wait that long.)"""
    import time

    def count(**kwargs: Any) -> int:
        return len(kwargs)

    def quick(x: Any) -> str:
        return "quick"

    url = servers.modules({"count": count, "quick": quick})
    target = url.removeprefix("grpc://")
    big = module_pb2.CallRequest(module="count")
    for i in range(200_000):
        big.kwargs.fields[f"k{i}"].number_value = i
    data = big.SerializeToString()  # serialized up front: the client sends bytes only
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        raw = ch.unary_unary(
            "/lazygrpc.v1.ModuleService/Call",
            response_deserializer=module_pb2.CallResponse.FromString,
        )
        pending = raw.future(data, timeout=120)
        quick_times = []
        while not pending.done():
            t0 = time.monotonic()
            reply = stub.Call(module_pb2.CallRequest(module="quick", input=to_value(1)), timeout=30)
            quick_times.append(time.monotonic() - t0)
            assert reply.output.string_value == "quick"
        assert pending.result().output.number_value == 200_000
    assert quick_times and max(quick_times) < 1.0, quick_times  # 10x a slow call here


def test_busy_module_threads_refuse_waiting_calls_and_say_not_serving(servers: Any) -> None:
    """With every module thread busy, health says NOT_SERVING; calls past the waiting bound
    are refused with RESOURCE_EXHAUSTED and a retry delay; once a thread is free, health
    says SERVING again and calls run."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from lazygrpc.server import threads

    release = threading.Event()
    entered = threading.Semaphore(0)

    def hold(x: Any) -> str:
        entered.release()
        release.wait(30)
        return "held"

    small = threads.ModuleThreads(workers=2, max_waiting=1, max_wait=30)
    url = servers.modules({"hold": hold}, threads=small)
    target = url.removeprefix("grpc://")
    with grpc.insecure_channel(target) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        held = [
            stub.Call.future(module_pb2.CallRequest(module="hold", input=to_value(i)))
            for i in range(3)  # two run, one waits
        ]
        for _ in range(2):
            assert entered.acquire(timeout=10)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        statuses = [next(watch).status]
        while statuses[-1] != health_pb2.HealthCheckResponse.NOT_SERVING:
            statuses.append(next(watch).status)
        with pytest.raises(grpc.RpcError) as info:
            stub.Call(module_pb2.CallRequest(module="hold", input=to_value(9)), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "module thread" in info.value.details() and _retry_delay(info.value) == 1.0
        release.set()
        assert [f.result(30).output.string_value for f in held] == ["held"] * 3
        while statuses[-1] != health_pb2.HealthCheckResponse.SERVING:
            statuses.append(next(watch).status)
        watch.cancel()
