"""Direct writes: on an idle stream a producer writes its item itself (`Topic.sink`).

A stream at a model's pace finds its handler waiting for every token; the producer then
writes the token to the call at once, without a hop to the handler's task. Whatever arrives
while that write is out (an `emit` from another task, a thread's put) queues and leaves after
it, in order; a producer that runs ahead queues, and its deltas coalesce as before.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

import lazygrpc
from lazygrpc.broker import DELTA, INTERMEDIATE, Broker, Item, Topic
from lazygrpc.broker.topic import DIRECT_GAP
from lazygrpc.core.errors import StreamClosed
from lazygrpc.core.values import from_value, to_value
from lazygrpc.v1 import module_pb2, module_pb2_grpc

pytestmark = pytest.mark.timeout(30)


def delta(text: str) -> Item:
    return Item.of(DELTA, "m", text)


class Sink:
    """Records what a topic's producers wrote themselves; `hold` keeps the next write out
    until released, as a client's flow-control window would."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.hold: asyncio.Event | None = None
        self.delay = 0.0  # how long each write takes
        self.entered = asyncio.Event()

    async def __call__(self, item: Item) -> None:
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        await asyncio.sleep(self.delay)
        self.written.append(str(item.payload))


async def _consumer_waiting(topic: Topic) -> asyncio.Task[Item | None]:
    getter = asyncio.create_task(topic.get())
    while not topic.waiting:  # one loop step: the task starts and waits
        await asyncio.sleep(0)
    return getter


async def _after_gap() -> None:
    """What a producer at a model's pace does between tokens."""
    await asyncio.sleep(DIRECT_GAP * 4)


async def test_an_idle_producer_writes_each_item_itself() -> None:
    b = Broker()
    topic = b.open()
    sink = topic.sink = Sink()
    getter = await _consumer_waiting(topic)
    for text in ["a", "b", "c"]:
        await _after_gap()
        await topic.aput(delta(text))
    assert sink.written == ["a", "b", "c"]
    assert not getter.done() and topic.queued() == (0, 0)  # the consumer never woke
    topic.finish()
    assert await getter is None
    assert topic.published == 3
    b.close(topic)


async def test_what_arrives_during_a_direct_write_leaves_after_it_in_order() -> None:
    b = Broker()
    topic = b.open()
    sink = topic.sink = Sink()
    sink.hold = asyncio.Event()
    getter = await _consumer_waiting(topic)
    await _after_gap()
    writing = asyncio.create_task(topic.aput(delta("first")))
    await sink.entered.wait()  # the producer's own write is out, held by the window
    await topic.aput(Item.of(INTERMEDIATE, "below", {"step": 1}))  # another task's emit
    thread = threading.Thread(target=topic.put, args=(delta("from a thread"),))
    thread.start()
    thread.join()
    assert not getter.done()  # the consumer does not write beside the producer
    sink.hold.set()
    await writing
    first = await getter  # then the consumer takes what came in meanwhile, in order
    assert first is not None and first.kind == INTERMEDIATE
    assert isinstance(first.payload, struct_pb2.Value)
    assert from_value(first.payload) == {"step": 1}
    second = await topic.get()
    assert second is not None and second.payload == "from a thread"
    assert sink.written == ["first"]
    b.close(topic)


async def test_a_producer_that_runs_ahead_queues_and_coalesces() -> None:
    b = Broker()
    topic = b.open()
    sink = topic.sink = Sink()
    getter = await _consumer_waiting(topic)
    await _after_gap()
    await topic.aput(delta("a"))  # idle: written at once
    for text in "bcdef":  # no pause between them: they queue
        await topic.aput(delta(text))
    assert sink.written == ["a"]
    item = await getter
    assert item is not None and item.payload == "bcdef"  # one message for the backlog
    assert topic.coalesced == 4
    b.close(topic)


async def test_a_stream_behind_its_reader_queues_and_coalesces_until_it_catches_up() -> None:
    b = Broker()
    topic = b.open()
    sink = topic.sink = Sink()
    sink.delay = DIRECT_GAP * 12  # the reader's window (or a busy loop) holds the write
    getter = await _consumer_waiting(topic)
    await _after_gap()
    await topic.aput(delta("a"))  # idle: written at once, but slower than tokens come
    await _after_gap()
    for text in "bcd":  # behind: they queue, though "b" came after a pause
        await topic.aput(delta(text))
    assert sink.written == ["a"]
    item = await getter
    assert item is not None and item.payload == "bcd"  # one message for what waited
    sink.delay = 0.0
    await _after_gap()
    await topic.aput(delta("e"))  # still behind: the consumer takes it, and writes it fast
    item = await topic.get()
    assert item is not None and item.payload == "e"
    getter = await _consumer_waiting(topic)  # caught up: faster than the producer's pace
    await _after_gap()
    await topic.aput(delta("f"))
    assert sink.written == ["a", "f"]  # idle again: written at once
    assert not getter.done()
    topic.finish()
    assert await getter is None
    b.close(topic)


async def test_a_failed_direct_write_closes_the_stream_for_every_producer() -> None:
    b = Broker()
    topic = b.open()

    async def client_gone(item: Item) -> None:
        raise RuntimeError("the call is over")

    topic.sink = client_gone
    getter = await _consumer_waiting(topic)
    await _after_gap()
    with pytest.raises(StreamClosed) as closed:
        await topic.aput(delta("a"))
    assert isinstance(closed.value.__cause__, RuntimeError)
    assert await getter is None  # the handler learns the stream is over
    with pytest.raises(StreamClosed):  # and so does every later producer
        await topic.aput(delta("b"))
    with pytest.raises(StreamClosed):
        topic.put(delta("c"))


# -- through a server ------------------------------------------------------------------------


async def paced(n: int, pace: float = 0.005) -> Any:
    """A model's pace, with progress emitted from another task while the stream waits."""
    for k in range(n):
        side = asyncio.create_task(lazygrpc.aemit({"progress": k}))
        await asyncio.sleep(pace)
        await side
        yield f"t{k} "


async def test_a_paced_stream_sends_every_token_and_event_in_order() -> None:
    server = lazygrpc.Server()
    server.add_modules({"paced": paced})
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = module_pb2_grpc.ModuleServiceStub(channel)
            request = module_pb2.CallRequest(module="paced", args=to_value([40]).list_value)
            events = [ev async for ev in stub.Stream(request)]
    finally:
        await server.stop(None)
    assert [ev.seq for ev in events] == list(range(len(events)))
    deltas = [ev.delta.string_value for ev in events if ev.HasField("delta")]
    assert deltas == [f"t{k} " for k in range(40)]  # one message per token: none waited
    progress = [
        from_value(ev.intermediate)["progress"] for ev in events if ev.HasField("intermediate")
    ]
    assert progress == list(range(40))
    # Each progress event leaves before its token: the emit came first.
    kinds = [ev.WhichOneof("body") for ev in events]
    assert kinds == ["intermediate", "delta"] * 40 + ["result"]
    assert events[-1].result.string_value == "".join(deltas)
