"""The relay path forwards events as bytes: `lazygrpc.core.wire`, and relays through real servers.

A module that yields another module's events (`async for ev in connect(url).astream(x)`)
sends each event on as the bytes it arrived as, followed by its own `seq` and `source`
(protobuf's last value wins); any valid `Event` is forwarded right, and relayed text deltas
still coalesce when the reader falls behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import struct_pb2

import lazygrpc
from lazygrpc.core import wire
from lazygrpc.core.events import Event
from lazygrpc.core.values import to_value
from lazygrpc.v1 import module_pb2, module_pb2_grpc


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 300, 2**40])
@pytest.mark.parametrize("source", ["", "gw", "retriever/embedder", "é" * 70])
def test_a_relayed_event_reads_as_the_relays_seq_and_source(seq: int, source: str) -> None:
    original = module_pb2.Event(seq=7, source="leaf", delta=to_value({"a": [1, "b"]}))
    relayed = wire.event(original.SerializeToString(), seq, wire.source_field(source))
    expected = module_pb2.Event(seq=seq, source=source, delta=original.delta)
    assert module_pb2.Event.FromString(relayed) == expected


def test_delta_text_reads_text_deltas_only() -> None:
    def text(**body: Any) -> str | None:
        return wire.delta_text(module_pb2.Event(seq=1, source="s", **body).SerializeToString())

    assert text(delta=to_value("hé")) == "hé"
    assert text(delta=to_value(3)) is None
    assert text(intermediate=to_value("x")) is None


def test_an_event_from_the_wire_decodes_its_value_when_read() -> None:
    data = module_pb2.Event(seq=2, source="s", result=to_value({"k": [1, 2]})).SerializeToString()
    ev = Event.from_wire(data)
    assert (ev.kind, ev.source, ev.seq) == ("result", "s", 2)
    assert ev.value == {"k": [1, 2]}
    assert ev == Event("result", {"k": [1, 2]}, "s", 2)
    with pytest.raises(ValueError, match="no body"):
        Event.from_wire(module_pb2.Event(seq=5).SerializeToString())


def _event(seq: int, **body: Any) -> bytes:
    """An event with its body first and its seq and source after: valid, not protobuf's
    own order."""
    head = module_pb2.Event(seq=seq, source="odd").SerializeToString()
    return module_pb2.Event(**body).SerializeToString() + head


class OutOfOrder(module_pb2_grpc.ModuleServiceServicer):
    """A hand-written leaf that writes its events' fields in an unusual (valid) order."""

    async def Stream(self, request: Any, context: Any) -> AsyncIterator[bytes]:
        for i, word in enumerate(["one", "two"]):
            yield _event(i, delta=to_value({"word": word}))
        yield _event(2, result=to_value("done"))


@pytest.fixture
async def odd_leaf() -> AsyncIterator[str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "lazygrpc.v1.ModuleService",
                {
                    "Stream": grpc.unary_stream_rpc_method_handler(
                        OutOfOrder().Stream,
                        request_deserializer=module_pb2.CallRequest.FromString,
                        response_serializer=None,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"grpc://127.0.0.1:{port}"
    await server.stop(None)


async def test_a_relay_forwards_any_valid_event_from_a_hand_written_leaf(
    servers: Any, odd_leaf: str
) -> None:
    async def relay() -> AsyncIterator[Any]:
        async for ev in lazygrpc.connect(f"{odd_leaf}/odd").astream():
            yield ev

    url = servers.modules({"relay": relay}, name="gw")
    channel = grpc.aio.insecure_channel(url.removeprefix("grpc://"))
    stub = module_pb2_grpc.ModuleServiceStub(channel)
    events = [ev async for ev in stub.Stream(module_pb2.CallRequest(module="relay"))]
    await channel.close()
    assert [(e.seq, e.source, e.WhichOneof("body")) for e in events] == [
        (0, "relay", "delta"),
        (1, "relay", "delta"),
        (2, "relay", "result"),
    ]
    assert events[0].delta.struct_value["word"] == "one"
    assert events[2].result.string_value == "done"


async def test_relayed_text_deltas_coalesce_when_the_reader_falls_behind(servers: Any) -> None:
    async def words(n: int) -> AsyncIterator[str]:
        for i in range(n):
            yield f"w{i} "

    leaf = servers.modules({"words": words}, name="leaf")

    async def relay(n: int) -> AsyncIterator[Any]:
        async for ev in lazygrpc.connect(f"{leaf}/words").astream(n):
            yield ev

    url = servers.modules({"relay": relay}, name="gw")
    channel = grpc.aio.insecure_channel(url.removeprefix("grpc://"))
    stub = module_pb2_grpc.ModuleServiceStub(channel)
    n = 2000
    call = stub.Stream(
        module_pb2.CallRequest(module="relay", input=struct_pb2.Value(number_value=n))
    )
    first = await call.read()
    await asyncio.sleep(0.3)  # a reader that falls behind, not a readiness wait
    texts = [first.delta.string_value]
    messages = 1
    while (ev := await call.read()) is not grpc.aio.EOF:
        if ev.HasField("delta"):
            texts.append(ev.delta.string_value)
            messages += 1
    await channel.close()
    assert "".join(texts) == "".join(f"w{i} " for i in range(n))
    assert messages < n / 4, f"{messages} messages for {n} deltas"
