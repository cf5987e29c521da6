"""The client lifecycle on grpc's public API only (`lazygrpc.client.seams` off).

Every seam onto grpc internals has a public fallback; these tests run the calls that use the
seams (the asyncio drivers of `connect()`, `intercept_aio_channel`, `aio_client_interceptors`)
with the seams off, and check the same behaviour: globals come back by the time a call ends,
errors keep their chain, the trace of a nested call holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

import lazygrpc
from lazygrpc.client import seams
from lazygrpc.v1 import module_pb2, module_pb2_grpc


def back(x: str) -> str:
    lazygrpc.globals["back"] = f"{x}:{lazygrpc.globals.get('in')}"
    return x


def back_stream(x: str) -> Iterator[str]:
    lazygrpc.globals["back"] = f"{x}:{lazygrpc.globals.get('in')}"
    yield x


async def fails(x: str) -> str:
    raise ValueError(f"no {x}")


async def relay(x: str) -> AsyncIterator[Any]:
    async for ev in lazygrpc.connect(lazygrpc.globals["leaf"]).astream(x):
        yield ev


@pytest.fixture(params=[True, False], ids=["seams", "public"])
def seams_mode(request: Any) -> Iterator[bool]:
    seams.set_enabled(request.param)
    try:
        yield request.param
    finally:
        seams.set_enabled(True)


@pytest.fixture
def url(servers: Any) -> str:
    mods = {"back": back, "back_stream": back_stream, "fails": fails, "relay": relay}
    return servers.modules(mods, name="seams")


def test_connect_brings_globals_back_and_maps_errors(url: str, seams_mode: bool) -> None:
    async def go() -> list[Any]:
        out = []
        try:
            with lazygrpc.session(**{"in": 1}):
                out.append(await lazygrpc.connect(f"{url}/back").acall("u"))
                out.append(lazygrpc.globals["back"])
            with lazygrpc.session(**{"in": 2}):
                async for ev in lazygrpc.connect(f"{url}/back_stream").astream("s"):
                    out.append(ev.kind)
                out.append(lazygrpc.globals["back"])
            with pytest.raises(lazygrpc.RemoteError) as info:
                await lazygrpc.connect(f"{url}/fails").acall("luck")
            out.append((info.value.remote_type, info.value.path))
            with lazygrpc.session(leaf=f"{url}/back_stream", **{"in": 3}):
                async for ev in lazygrpc.connect(f"{url}/relay").astream("r"):
                    out.append(ev.kind)
                out.append(lazygrpc.globals["back"])  # from two hops down
        finally:
            await lazygrpc.client.channels.aclose_all()
        return out

    assert asyncio.run(go()) == [
        "u",
        "u:1",
        "delta",
        "result",
        "s:2",
        ("ValueError", "seams.fails"),
        "delta",
        "result",
        "r:3",
    ]


@pytest.mark.parametrize("route", ["channel", "interceptors"])
def test_raw_stubs_bring_globals_back_by_the_time_the_call_ends(
    url: str, seams_mode: bool, route: str
) -> None:
    target = url.removeprefix("grpc://")

    def open_channel() -> Any:
        if route == "interceptors":
            return grpc.aio.insecure_channel(
                target, interceptors=lazygrpc.aio_client_interceptors()
            )
        return lazygrpc.intercept_aio_channel(grpc.aio.insecure_channel(target))

    def request(module: str, i: int) -> module_pb2.CallRequest:
        return module_pb2.CallRequest(module=module, input=struct_pb2.Value(string_value=str(i)))

    async def go() -> list[Any]:
        seen = []
        async with open_channel() as channel:
            stub = module_pb2_grpc.ModuleServiceStub(channel)
            for i in range(5):
                with lazygrpc.session(**{"in": i}):
                    await stub.Call(request("back", i))
                    seen.append(lazygrpc.globals.get("back"))
                with lazygrpc.session(**{"in": i}):
                    _ = [ev async for ev in stub.Stream(request("back_stream", i))]
                    seen.append(lazygrpc.globals.get("back"))
        return seen

    assert asyncio.run(go()) == [f"{i}:{i}" for i in range(5) for _ in range(2)]
