"""One bounded topic per streaming call.

Producers (the handler's generator, module code calling `emit`, relays of downstream
streams) put items (`lazygrpc.broker.item`) into the call's topic; the handler takes them
out and writes them to the RPC, or, while the stream is idle, a producer writes its item
itself (`Topic.aput`). A response write waits on the client's HTTP/2 window, so a slow
client leaves the topic full and the producers wait: sync producers block their thread
(never the event loop), async producers await. When the client goes away the topic closes and every producer gets
`StreamClosed`. Under a backlog, consecutive text deltas of one source leave as one message.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from lazygrpc.broker.budget import OPEN
from lazygrpc.broker.item import DELTA, Item, text_of
from lazygrpc.core.errors import ResourceExhausted, StreamClosed

#: Defaults per topic; `Server(topic_events=..., topic_bytes=..., coalesce_bytes=...)`.
DEFAULT_TOPIC_EVENTS = 256
DEFAULT_TOPIC_BYTES = 1 << 20
DEFAULT_COALESCE_BYTES = 16 << 10
#: A sync `emit` on the event loop thread cannot block; it may overfill up to this factor.
LOOP_OVERFILL = 4
#: A producer that took at least this long (seconds) to make its next item finds its stream
#: idle, and writes the item itself (`Topic.sink`); a faster one queues it, to coalesce.
DIRECT_GAP = 0.0005


class Topic:
    """A bounded queue of events for one streaming call. Consumer side is asyncio."""

    __slots__ = (
        "_async_producers",
        "_behind",
        "_bytes",
        "_consumer",
        "_error",
        "_finished",
        "_gap",
        "_inline",
        "_lock",
        "_loop",
        "_loop_thread",
        "_on_close",
        "_put_at",
        "_q",
        "_space_cond",
        "_taken_at",
        "_writing",
        "accepts_intermediate",
        "blocked",
        "closed",
        "coalesce_bytes",
        "coalesced",
        "max_bytes",
        "max_events",
        "published",
        "sink",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_events: int = DEFAULT_TOPIC_EVENTS,
        max_bytes: int = DEFAULT_TOPIC_BYTES,
        coalesce_bytes: int = DEFAULT_COALESCE_BYTES,
        *,
        accepts_intermediate: bool = True,
        on_close: Callable[[Topic], None] | None = None,
    ) -> None:
        """A topic drained on `loop`; `on_close(topic)` runs once when it closes."""
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.coalesce_bytes = coalesce_bytes
        self.accepts_intermediate = accepts_intermediate
        self.closed = False
        self.blocked = 0
        self.published = 0
        self.coalesced = 0
        self._on_close = on_close
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
        #: How the consumer writes an item, once set (`lazygrpc.server.streams.Stream`): an
        #: `aput` on an idle stream calls it itself, without a hop to the consumer's task.
        self.sink: Callable[[Item], Awaitable[None]] | None = None
        self._writing = False  # an `aput` is in `sink`: the consumer waits for it
        self._put_at = _monotonic()  # when the producer started on its next item
        self._gap = 0.0  # how long the producer took to make its last item
        self._behind = False  # the last write took longer than that
        self._taken_at = 0.0  # when the consumer took the item it is writing
        OPEN.change(1)

    # -- producer side -------------------------------------------------------------------

    @property
    def _space(self) -> threading.Condition:
        """Signalled when the consumer frees room; only sync producers wait on it."""
        if self._space_cond is None:
            self._space_cond = threading.Condition(self._lock)
        return self._space_cond

    def _has_room(self, nbytes: int) -> bool:
        q = self._q
        if not q:
            return True
        cap = min(self.max_events, OPEN.share())
        return len(q) < cap and self._bytes + nbytes <= self.max_bytes

    def _append(self, item: Item) -> asyncio.Future[None] | None:
        self._q.append(item)
        self._bytes += item.nbytes
        self.published += 1
        if self._writing:  # the item goes out after that write (`_written`)
            return None
        waiter, self._consumer = self._consumer, None
        return waiter

    def _closed_error(self) -> StreamClosed:
        return StreamClosed("stream closed: the client cancelled, left or hit its deadline")

    def on_own_loop(self) -> bool:
        """Whether the running thread is the one whose event loop drains this topic."""
        return threading.get_ident() == self._loop_thread

    def put(self, item: Item) -> None:
        """Put from sync code: blocks this thread while the topic is full."""
        on_loop = self.on_own_loop()
        with self._lock:
            if self.closed:
                raise self._closed_error()
            if not self._has_room(item.nbytes):
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
                        while not self.closed and not self._has_room(item.nbytes):
                            self._space.wait()
                    finally:
                        self.blocked -= 1
                    if self.closed:
                        raise self._closed_error()
            waiter = self._append(item)
        if waiter is not None:
            self._wake(waiter)

    async def aput(self, item: Item) -> None:
        """Put from asyncio code on the topic's loop: awaits while the topic is full.

        On an idle stream (the consumer waits, nothing is queued or being written, and this
        producer took `DIRECT_GAP` or more to make the item) the item is written here, by
        `sink`, and the put returns once it is out: each token of a stream at a model's pace
        leaves without a hop to the consumer's task. A producer that runs ahead queues its
        items, and so does a stream that is behind (its last write took longer than its
        producer took to make the item: the reader's window, or a busy loop, holds it), so
        that a backlog coalesces as before. A write that fails closes the stream:
        `StreamClosed`, as for any producer of a stream whose client left.
        """
        if self.sink is not None and self._consumer is not None and not self._behind:
            now = _monotonic()
            gap = self._gap = now - self._put_at
            self._put_at = now
            if gap >= DIRECT_GAP and self._claim():
                try:
                    await self.sink(item)  # type: ignore[misc]
                except Exception as exc:
                    # The call cannot take another write (its client is gone): the stream
                    # closes, and every producer learns it as it would from the handler.
                    self.cancel()
                    raise self._closed_error() from exc
                finally:
                    self._written(now)
                return
        else:
            now = _monotonic()
            self._gap, self._put_at = now - self._put_at, now
        while True:
            with self._lock:
                if self.closed:
                    raise self._closed_error()
                if self._has_room(item.nbytes):
                    waiter = self._append(item)
                    break
                if self._inline:
                    # The consumer itself is running this step (`prime`): waiting for it
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

    def _claim(self) -> bool:
        """Take the stream's write for an `aput` while the stream is still idle."""
        with self._lock:
            if self.closed or self._writing or self._q or self._consumer is None:
                return False
            self._writing = True
            self.published += 1
            return True

    def _written(self, started: float) -> None:
        """An `aput`'s own write (from `started`) ended: what came meanwhile goes on."""
        now = self._put_at = _monotonic()
        self._behind = now - started > self._gap
        with self._lock:
            self._writing = False
            if not (self._q or self._finished or self.closed):
                return
            waiter, self._consumer = self._consumer, None
        if waiter is not None:
            self._wake(waiter)

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
        """The main producer is done (with `error` if it failed); queued events still go out.
        The first call decides: a producer winding down after an error does not undo it."""
        with self._lock:
            if self._finished:
                return
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
            OPEN.change(-1)
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
        if self._on_close is not None:
            self._on_close(self)

    # -- consumer side -------------------------------------------------------------------

    async def get(self) -> Item | None:
        """Next event (coalesced under backlog); None when the producer finished.

        Raises the producer's error after the events queued before it.
        """
        if self._taken_at:  # the consumer has written the item it took: how fast was it?
            self._behind = _monotonic() - self._taken_at > self._gap
            self._taken_at = 0.0
        while True:
            with self._lock:
                if self._writing:
                    pass  # a producer is writing an item itself (`aput`): after it
                elif self._q:
                    item = self._pop()
                    if self.blocked:
                        if self._space_cond is not None:
                            self._space_cond.notify_all()
                        producers = list(self._async_producers)
                        self._async_producers.clear()
                    else:
                        producers = []
                    break
                elif self._finished or self.closed:
                    if self._error is not None:
                        raise self._error
                    return None
                fut = self._consumer = self._loop.create_future()
            await fut
        for p in producers:
            if not p.done():
                p.set_result(None)
        self._taken_at = _monotonic()
        return item

    def _pop(self) -> Item:
        q = self._q
        item = q.popleft()
        self._bytes -= item.nbytes
        if item.kind != DELTA or not q:
            return item
        # A backlog: the text deltas of one source that follow leave with this one.
        source = item.source
        text = text_of(item.payload)
        if text is None:
            return item
        parts = [text]
        total = item.nbytes
        cap = self.coalesce_bytes
        while q:
            k2, s2, p2, n2 = q[0]
            if k2 != DELTA or s2 != source or total + n2 > cap or (t2 := text_of(p2)) is None:
                break
            q.popleft()
            self._bytes -= n2
            parts.append(t2)
            total += n2
        if len(parts) == 1:
            return item
        self.coalesced += len(parts) - 1
        return Item(DELTA, source, "".join(parts), total)

    async def prime(self, agen: Any, make: Callable[[Any], Item | None]) -> Item | None:
        """Run `agen` up to its first item on the calling (consumer) task, as `make(value)`.

        Returns that item for the caller to send at once when nothing is queued before it;
        else it is queued behind what the first step emitted (order is kept) and this
        returns None, as it does when `agen` ends without a value. The first item so leaves
        without a hop to a producer task and back, which is what time to first token costs
        otherwise; the rest of `agen` runs in the producer as usual. An error of the first
        step ends the topic after what that step emitted (`finish`).
        """
        self._inline = True
        try:
            while (item := make(await agen.__anext__())) is None:
                pass  # a value that sends nothing (`make` said so)
        except StopAsyncIteration:
            return None
        except Exception as exc:
            self.finish(exc)
            return None
        finally:
            self._inline = False
        with self._lock:
            if not self._q:
                self.published += 1
                return item
            self._append(item)  # no waiter to wake: the consumer is the caller
        return None

    @property
    def finished(self) -> bool:
        """Whether the main producer is done (its items may still be queued)."""
        return self._finished

    @property
    def waiting(self) -> bool:
        """Whether the consumer is waiting for an item (the topic is idle)."""
        return self._consumer is not None

    def queued(self) -> tuple[int, int]:
        """(events, bytes) queued now."""
        return len(self._q), self._bytes


_monotonic = time.monotonic


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
