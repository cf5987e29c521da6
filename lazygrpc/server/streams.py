"""The server side of one streaming call: its topic, and the producer that fills it.

Both stream servicers (`ModuleService.Stream`, `ModelService.Generate`) run their calls
through `Stream`: it takes an async generator's first item on the handler's own task
(`Topic.prime`), starts the producer that makes the rest (in one place, `next`), writes
the topic's items in order, and winds the producer down when the call ends, however
it ends. While the stream is idle, the producer writes its items itself (`Topic.sink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from lazygrpc.broker.item import Item
from lazygrpc.broker.topic import Topic
from lazygrpc.core.errors import StreamClosed

_log = logging.getLogger(__name__)

#: Seconds a stream's producer gets to end by itself once its client is gone.
CLOSE_GRACE = 0.1

Make = Callable[[Any], Item | None]
Write = Callable[[Item], Awaitable[None]]


class Messages:
    """How a stream's items become its RPC's messages, numbered in the order they leave:
    yielded by the handler (`encode`), or written by the producer itself while the stream is
    idle (`write`, the `Stream`'s sink). Each servicer says how (`encode`, which numbers
    each message with `count`)."""

    __slots__ = ("_write", "count", "source")

    def __init__(self, write: Callable[[Any], Awaitable[None]], source: str) -> None:
        self._write = write  # the call's `context.write`
        self.count = 0  # messages encoded so far: the next one's number
        self.source = source  # the stream's own source (the module or model name)

    def encode(self, item: Item) -> Any:
        """The next message, for `item`."""
        raise NotImplementedError

    def write(self, item: Item) -> Awaitable[None]:
        """Write `item`'s message to the call now (the awaitable `context.write` returns)."""
        return self._write(self.encode(item))


class Stream:
    """One streaming call's topic and producer: `first()`, then `next()` until None.

    `rest(topic)` makes the producer's coroutine; `gen` (with `make`, which turns its values
    into items) is an async generator whose first item is taken on the handler's own task
    (`Topic.prime`) before the producer starts. The producer's outcome ends the topic
    (`Topic.finish`), after what it queued.

    With `open_topic` instead of a topic (a model's stream, which no intermediate event can
    enter), nothing can be queued before the first item: the topic opens once that item is
    out, and the first token does not wait for it.

    `sink(item)` writes an item to the call as the handler would (`context.write`): while
    the stream is idle, the producer writes its items with it itself, without a hop to the
    handler's task (`Topic.aput`).
    """

    __slots__ = ("_open", "_producer", "_rest", "_sink", "_started", "gen", "make", "topic")

    def __init__(
        self,
        topic: Topic | None,
        rest: Callable[[Topic], Coroutine[Any, Any, Any]],
        *,
        gen: Any = None,
        make: Make | None = None,
        open_topic: Callable[[], Topic] | None = None,
        sink: Write | None = None,
    ) -> None:
        self.topic = topic
        self.gen = gen
        self.make = make
        self._open = open_topic
        self._rest = rest
        self._started = False
        self._producer: asyncio.Future[Any] | None = None
        self._sink = sink

    async def first(self) -> Item | None:
        """The call's first item (None: the stream is empty), from the handler's task when
        the generator can make it at once."""
        if self.gen is not None and self.make is not None:
            if self.topic is None:  # nothing can be queued before it
                try:
                    while (item := self.make(await self.gen.__anext__())) is None:
                        pass
                    return item
                except StopAsyncIteration:
                    pass
            elif (item := await self.topic.prime(self.gen, self.make)) is not None:
                return item
        return await self.next()

    async def next(self) -> Item | None:
        """The next item in order (None at the end); raises the producer's error after what
        it queued. The first call starts the producer: the one place it starts."""
        if not self._started:
            self._started = True
            if self.topic is None:
                assert self._open is not None
                self.topic = self._open()
            if not self.topic.finished:  # else the first step failed: nothing more to make
                self.topic.sink = self._sink
                self._producer = asyncio.ensure_future(self._run())
        assert self.topic is not None
        return await self.topic.get()

    async def _run(self) -> Any:
        assert self.topic is not None
        try:
            result = await self._rest(self.topic)
        except StreamClosed:
            raise  # the topic is closed already
        except BaseException as exc:
            self.topic.finish(exc)
            raise
        self.topic.finish()
        return result

    async def result(self) -> Any:
        """The producer's result, once `next()` said the stream ended."""
        assert self._producer is not None
        return await self._producer

    async def close(self) -> None:
        """Close the topic and wind the producer down (always; from a `finally`)."""
        if self.topic is not None:
            self.topic.cancel()
        task = self._producer
        if task is None:  # never started: its generator still has to be closed
            if self.gen is not None:
                try:
                    await self.gen.aclose()
                except Exception:  # the call is over: its producer's cleanup cannot fail it
                    _log.warning("a stream's producer failed while closing", exc_info=True)
            return
        try:
            if not task.done():
                # Closing the topic woke a producer waiting on it with StreamClosed: let it
                # end by itself, so that it sees StreamClosed (not CancelledError) and its
                # cleanup runs now; only a producer busy elsewhere is cancelled after the
                # grace.
                await asyncio.wait({task}, timeout=CLOSE_GRACE)
        finally:  # the handler may be cancelled in that wait: the producer is stopped still
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # already raised through the topic; mark it retrieved
        if not task.done():
            # The producer may be a thread blocked in put(); closing the topic unblocked it.
            await asyncio.gather(task, return_exceptions=True)


async def pump(gen: Any, topic: Topic | None, make: Make) -> None:
    """Drive an async generator to its end, each value put into `topic` as `make(value)`
    (None: not sent). The generator sees `StreamClosed` at its `yield` when the client is
    gone, and is closed here, not whenever it is collected."""
    try:
        async for value in gen:
            item = make(value)
            if topic is None or item is None:
                continue
            try:
                await topic.aput(item)
            except StreamClosed as closed:
                with contextlib.suppress(StreamClosed, StopAsyncIteration):
                    await gen.athrow(closed)
                raise
    finally:
        await gen.aclose()


def drain_sync(gen: Any, topic: Topic | None, make: Make) -> Any:
    """`pump` for a sync generator, on a thread of its own; returns the generator's return
    value (None when it returned nothing)."""
    try:
        while True:
            try:
                value = next(gen)
            except StopIteration as stop:
                return stop.value
            item = make(value)
            if topic is None or item is None:
                continue
            try:
                topic.put(item)
            except StreamClosed as closed:
                with contextlib.suppress(StreamClosed, StopIteration):
                    gen.throw(closed)
                raise
    finally:
        gen.close()
