"""The process-wide broker: one bounded topic per streaming call, drained by its handler.

Producers (the handler's generator, module code calling `emit`, relays of downstream
streams) put events into the call's topic; the handler takes them out and writes them to the
RPC. A response write waits on the client's HTTP/2 window, so a slow client leaves the topic
full and the producers wait: sync producers block their thread (never the event loop),
async producers await. When the client goes away the topic closes and every producer gets
`StreamClosed`. Under a backlog, consecutive text deltas of one source leave as one message.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2

from lazygrpc.calls import current_call
from lazygrpc.errors import ResourceExhausted, StreamClosed
from lazygrpc.values import to_value

DELTA = 0
INTERMEDIATE = 1

#: Defaults per topic; `build_server(topic_events=..., topic_bytes=..., coalesce_bytes=...)`.
DEFAULT_TOPIC_EVENTS = 256
DEFAULT_TOPIC_BYTES = 1 << 20
DEFAULT_COALESCE_BYTES = 16 << 10
#: A sync `emit` on the event loop thread cannot block; it may overfill up to this factor.
LOOP_OVERFILL = 4

# An item is (kind, source, payload, nbytes); payload is str for text, else a Value.
Item = tuple[int, str, "str | struct_pb2.Value", int]


def make_item(kind: int, source: str, value: Any) -> Item:
    """An event for a topic; text stays a str so that deltas can coalesce."""
    if type(value) is str and kind == DELTA:
        return (kind, source, value, len(value) + 8)
    v = to_value(value, where="emitted value")
    return (kind, source, v, v.ByteSize() + 8)


@dataclass(frozen=True)
class BrokerStats:
    """A snapshot of the broker (`lazygrpc stats URL` prints the same)."""

    open_topics: int
    queued_events: int
    queued_bytes: int
    blocked_producers: int
    published_events: int
    coalesced_events: int


class Topic:
    """A bounded queue of events for one streaming call. Consumer side is asyncio."""

    __slots__ = (
        "_async_producers",
        "_broker",
        "_bytes",
        "_consumer",
        "_error",
        "_finished",
        "_inline",
        "_lock",
        "_loop",
        "_loop_thread",
        "_q",
        "_space_cond",
        "accepts_intermediate",
        "blocked",
        "closed",
        "coalesce_bytes",
        "coalesced",
        "max_bytes",
        "max_events",
        "published",
    )

    def __init__(
        self,
        broker: Broker,
        loop: asyncio.AbstractEventLoop,
        max_events: int = DEFAULT_TOPIC_EVENTS,
        max_bytes: int = DEFAULT_TOPIC_BYTES,
        coalesce_bytes: int = DEFAULT_COALESCE_BYTES,
        *,
        accepts_intermediate: bool = True,
    ) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.coalesce_bytes = coalesce_bytes
        self.accepts_intermediate = accepts_intermediate
        self.closed = False
        self.blocked = 0
        self.published = 0
        self.coalesced = 0
        self._broker = broker
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._q: deque[Item] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._space_cond: threading.Condition | None = None  # made when a thread must wait
        self._consumer: asyncio.Future[None] | None = None
        self._async_producers: deque[asyncio.Future[None]] = deque()
        self._finished = False
        self._error: BaseException | None = None
        self._inline = False

    # -- producer side -------------------------------------------------------------------

    @property
    def _space(self) -> threading.Condition:
        """Signalled when the consumer frees room; only sync producers wait on it."""
        if self._space_cond is None:
            self._space_cond = threading.Condition(self._lock)
        return self._space_cond

    def _has_room(self, nbytes: int) -> bool:
        q = self._q
        return not q or (len(q) < self.max_events and self._bytes + nbytes <= self.max_bytes)

    def _append(self, item: Item) -> asyncio.Future[None] | None:
        self._q.append(item)
        self._bytes += item[3]
        self.published += 1
        waiter, self._consumer = self._consumer, None
        return waiter

    def _closed_error(self) -> StreamClosed:
        return StreamClosed("stream closed: the client cancelled, left or hit its deadline")

    def put(self, item: Item) -> None:
        """Put from sync code: blocks this thread while the topic is full."""
        on_loop = threading.get_ident() == self._loop_thread
        with self._lock:
            if self.closed:
                raise self._closed_error()
            if not self._has_room(item[3]):
                if on_loop:
                    # Blocking here would stall the loop that drains this very topic.
                    if len(self._q) >= LOOP_OVERFILL * self.max_events:
                        raise ResourceExhausted(
                            f"topic full ({len(self._q)} events): sync emit() on the event "
                            "loop cannot wait; use `await lazygrpc.aemit()`"
                        )
                else:
                    self.blocked += 1
                    try:
                        while not self.closed and not self._has_room(item[3]):
                            self._space.wait()
                    finally:
                        self.blocked -= 1
                    if self.closed:
                        raise self._closed_error()
            waiter = self._append(item)
        if waiter is not None:
            self._wake(waiter)

    async def aput(self, item: Item) -> None:
        """Put from asyncio code on the topic's loop: awaits while the topic is full."""
        while True:
            with self._lock:
                if self.closed:
                    raise self._closed_error()
                if self._has_room(item[3]):
                    waiter = self._append(item)
                    break
                if self._inline:
                    # The consumer itself is running this step (see `prime`): waiting for it
                    # would deadlock, so overfill up to the same cap as a sync put on the loop.
                    if len(self._q) >= LOOP_OVERFILL * self.max_events:
                        raise ResourceExhausted(
                            f"topic full ({len(self._q)} events) before the stream's first item"
                        )
                    waiter = self._append(item)
                    break
                fut = self._loop.create_future()
                self._async_producers.append(fut)
                self.blocked += 1
            try:
                await fut
            finally:
                with self._lock:
                    self.blocked -= 1
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self, fut: asyncio.Future[None]) -> None:
        if threading.get_ident() == self._loop_thread:
            if not fut.done():
                fut.set_result(None)
        else:
            try:
                self._loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass

    def finish(self, error: BaseException | None = None) -> None:
        """The main producer is done (with `error` if it failed); queued events still go out."""
        with self._lock:
            self._finished = True
            self._error = error
            waiter, self._consumer = self._consumer, None
        if waiter is not None:
            self._wake(waiter)

    def cancel(self) -> None:
        """The consumer is gone: every blocked or later put raises `StreamClosed`."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._q.clear()
            self._bytes = 0
            if self._space_cond is not None:
                self._space_cond.notify_all()
            producers = list(self._async_producers)
            self._async_producers.clear()
            waiter, self._consumer = self._consumer, None
        for fut in producers:
            self._wake(fut)
        if waiter is not None:
            self._wake(waiter)
        self._broker._release(self)

    # -- consumer side -------------------------------------------------------------------

    async def get(self) -> Item | None:
        """Next event (coalesced under backlog); None when the producer finished.

        Raises the producer's error after the events queued before it.
        """
        while True:
            with self._lock:
                if self._q:
                    item = self._pop()
                    if self.blocked:
                        if self._space_cond is not None:
                            self._space_cond.notify_all()
                        producers = list(self._async_producers)
                        self._async_producers.clear()
                    else:
                        producers = []
                    break
                if self._finished or self.closed:
                    if self._error is not None:
                        raise self._error
                    return None
                fut = self._consumer = self._loop.create_future()
            await fut
        for p in producers:
            if not p.done():
                p.set_result(None)
        return item

    def _pop(self) -> Item:
        q = self._q
        item = q.popleft()
        self._bytes -= item[3]
        kind, source, payload, nbytes = item
        if kind != DELTA or type(payload) is not str or not q:
            return item
        parts = [payload]
        total = nbytes
        cap = self.coalesce_bytes
        while q:
            k2, s2, p2, n2 = q[0]
            if k2 != DELTA or s2 != source or type(p2) is not str or total + n2 > cap:
                break
            q.popleft()
            self._bytes -= n2
            parts.append(p2)
            total += n2
        if len(parts) == 1:
            return item
        self.coalesced += len(parts) - 1
        return (DELTA, source, "".join(parts), total)

    def queued(self) -> tuple[int, int]:
        return len(self._q), self._bytes


def topic_args(options: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """`Topic` options (`max_events`, `max_bytes`, `coalesce_bytes`) as its positional
    arguments after the broker and the loop; None when there are others (then they go by
    keyword, `Broker.open(**options)`)."""
    if not set(options) <= {"max_events", "max_bytes", "coalesce_bytes"}:
        return None
    return (
        options.get("max_events", DEFAULT_TOPIC_EVENTS),
        options.get("max_bytes", DEFAULT_TOPIC_BYTES),
        options.get("coalesce_bytes", DEFAULT_COALESCE_BYTES),
    )


def push_front(topic: Topic, item: Item) -> None:
    """Put a first item `prime` handed back at the head of `topic` after all (consumer side)."""
    with topic._lock:
        topic._q.appendleft(item)
        topic._bytes += item[3]


#: What `prime` returns for a generator that ended without an item, and for a first item
#: it queued behind events the first step emitted.
ENDED: Any = object()
QUEUED: Any = object()


async def prime(topic: Topic, agen: Any, make: Any) -> Any:
    """Run `agen` up to its first item on the calling (consumer) task.

    Returns that item for the caller to send at once when nothing else is queued before
    it; else it goes into the topic behind what the first step emitted (order is kept) and
    this returns `QUEUED`. Returns `ENDED` if `agen` ended without an item. The first item so
    leaves without a hop to a producer task and back, which is what time to first token
    costs otherwise; the rest of `agen` runs in a producer task as usual. `make(item)`
    turns the item into a topic `Item` when it is queued. Errors propagate.
    """
    topic._inline = True
    try:
        first = await agen.__anext__()
    except StopAsyncIteration:
        return ENDED
    finally:
        topic._inline = False
    with topic._lock:
        if not topic._q:
            topic.published += 1
            return first
        topic._append(make(first))  # no waiter: the consumer is us
    return QUEUED


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Broker:
    """Process-wide registry of open topics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics: set[Topic] = set()
        self._named: dict[str, Topic] = {}
        self._published = 0
        self._coalesced = 0

    def open(self, **options: Any) -> Topic:
        """A new topic drained on the running event loop."""
        return self.open_topic(Topic(self, asyncio.get_running_loop(), **options))

    def open_topic(self, topic: Topic) -> Topic:
        """Register a topic made for this broker (a handler's per-call path builds it with
        positional arguments, `Topic(BROKER, loop, events, bytes, coalesce)`)."""
        self._topics.add(topic)  # one set operation: atomic, no lock needed
        return topic

    def open_named(self, name: str, **options: Any) -> Topic:
        """A topic other processes can publish into by name (`BrokerService.Subscribe`)."""
        topic = self.open(**options)
        with self._lock:
            if name in self._named:
                self._topics.discard(topic)
                raise ValueError(f"topic {name!r} is already subscribed")
            self._named[name] = topic
        return topic

    def named(self, name: str) -> Topic | None:
        with self._lock:
            return self._named.get(name)

    def close(self, topic: Topic) -> None:
        """The handler is done with `topic`: close it and free it."""
        topic.cancel()

    def _release(self, topic: Topic) -> None:
        with self._lock:
            if topic in self._topics:
                self._topics.discard(topic)
                self._published += topic.published
                self._coalesced += topic.coalesced
            for name, t in list(self._named.items()):
                if t is topic:
                    del self._named[name]

    def stats(self) -> BrokerStats:
        with self._lock:
            topics = list(self._topics)
            published, coalesced = self._published, self._coalesced
        events = nbytes = blocked = 0
        for t in topics:
            e, b = t.queued()
            events += e
            nbytes += b
            blocked += t.blocked
            published += t.published
            coalesced += t.coalesced
        return BrokerStats(len(topics), events, nbytes, blocked, published, coalesced)


BROKER = Broker()


def stats() -> BrokerStats:
    """Stats of this process's broker."""
    return BROKER.stats()


def _current_topic(source: str | None) -> tuple[Topic, str] | None:
    scope = current_call()
    if scope is None or scope.topic is None or not scope.topic.accepts_intermediate:
        return None
    return scope.topic, source or scope.method


def emit(value: Any, source: str | None = None) -> bool:
    """Put `value` into the current call's stream as an `intermediate` event.

    Blocks this thread while the stream's topic is full; raises `StreamClosed` once the
    client is gone. Outside a streaming call it does nothing and returns False.
    """
    target = _current_topic(source)
    if target is None:
        return False
    topic, src = target
    topic.put(make_item(INTERMEDIATE, src, value))
    return True


async def aemit(value: Any, source: str | None = None) -> bool:
    """`emit` for asyncio code: awaits while the topic is full."""
    target = _current_topic(source)
    if target is None:
        return False
    topic, src = target
    await aput_from_anywhere(topic, make_item(INTERMEDIATE, src, value))
    return True


async def aput_from_anywhere(topic: Topic, item: Item) -> None:
    """`topic.aput` on the topic's own loop; from another loop (a thread running its own
    `asyncio.run` under the call) a blocking put in a worker thread."""
    if threading.get_ident() == topic._loop_thread:
        await topic.aput(item)
    else:
        await asyncio.to_thread(topic.put, item)
