"""The server call lifecycle on paths where its own steps fail or the handler ends oddly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

import lazygrpc
from lazygrpc.server import modules
from lazygrpc.v1 import module_pb2, module_pb2_grpc


def changes_then_fails(x: str) -> str:
    lazygrpc.globals["h"] = []
    lazygrpc.globals["h"].append({1, 2})  # changed in place into something that is not JSON
    raise ValueError("boom")


def changes_into_non_json(x: str) -> str:
    lazygrpc.globals["h"] = []
    lazygrpc.globals["h"].append({1, 2})
    return x


async def cleanup_fails(x: str) -> AsyncIterator[str]:
    try:
        yield "first"
        yield "second"
    finally:
        raise RuntimeError("cleanup failed")


def _wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_a_global_that_no_longer_encodes_fails_the_call_and_the_server_still_drains(
    servers: Any,
) -> None:
    url = servers.modules({"fails": changes_then_fails, "ok": changes_into_non_json}, name="leaf")
    with pytest.raises(lazygrpc.RemoteError) as failed:
        lazygrpc.connect(f"{url}/fails")("x")
    assert (failed.value.remote_type, failed.value.path) == ("ValueError", "leaf.fails")
    with pytest.raises(lazygrpc.RemoteError) as unsendable:
        lazygrpc.connect(f"{url}/ok")("x")
    assert unsendable.value.remote_type == "TypeError"
    assert "'h'" in unsendable.value.message  # names the global
    server = servers.started[-1]
    started = time.monotonic()
    servers.lt.run(server.stop(5.0))  # nothing left counted in flight: no wait
    assert time.monotonic() - started < 2.0


def test_a_producer_whose_cleanup_fails_is_counted_out_once_the_client_leaves(
    servers: Any,
) -> None:
    url = servers.modules({"mod": cleanup_fails}, name="leaf")
    for _ in range(3):
        stream = lazygrpc.connect(f"{url}/mod").stream("x")
        assert next(stream).value == "first"
        stream.close()  # leaves early: the call is cancelled
    _wait(lambda: modules.active_producers() == 0)


class _SetsCodeThenRaises(module_pb2_grpc.ModuleServiceServicer):
    async def Call(self, request: Any, context: Any) -> Any:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        raise Exception("lookup failed")


def test_an_aio_handler_raising_after_set_code_still_gets_a_chain() -> None:
    async def go() -> grpc.aio.AioRpcError:
        server = grpc.aio.server(interceptors=[lazygrpc.AioServerInterceptor("svc")])
        module_pb2_grpc.add_ModuleServiceServicer_to_server(_SetsCodeThenRaises(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    await module_pb2_grpc.ModuleServiceStub(channel).Call(module_pb2.CallRequest())
                except grpc.aio.AioRpcError as err:
                    return err
                raise AssertionError("the call succeeded")
        finally:
            await server.stop(None)

    err = asyncio.run(go())
    remote = lazygrpc.remote_error_from_rpc(err)
    assert (remote.remote_type, remote.path) == ("Exception", "svc.Call")


def test_an_aio_interceptors_gate_refuses_new_calls_once_draining() -> None:
    interceptor = lazygrpc.AioServerInterceptor("svc")

    class Echo(module_pb2_grpc.ModuleServiceServicer):
        async def Call(self, request: Any, context: Any) -> Any:
            return module_pb2.CallResponse(output=request.input)

    async def go() -> tuple[Any, ...]:
        server = grpc.aio.server(interceptors=[interceptor])
        module_pb2_grpc.add_ModuleServiceServicer_to_server(Echo(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = module_pb2_grpc.ModuleServiceStub(channel)
                await stub.Call(module_pb2.CallRequest())
                idle = interceptor.gate.active
                interceptor.gate.draining = True
                try:
                    await stub.Call(module_pb2.CallRequest())
                except grpc.aio.AioRpcError as err:
                    return idle, err.code(), err.details()
                raise AssertionError("a draining server took a call")
        finally:
            await server.stop(None)

    assert asyncio.run(go()) == (0, grpc.StatusCode.UNAVAILABLE, "server is shutting down")
