"""The process-wide broker: the registry of open topics, and `emit` into the current one."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from lazygrpc.broker.item import INTERMEDIATE, Item
from lazygrpc.broker.topic import Topic
from lazygrpc.core.context import current_call


@dataclass(frozen=True)
class BrokerStats:
    """A snapshot of the broker (`lazygrpc stats URL` prints the same)."""

    open_topics: int
    queued_events: int
    queued_bytes: int
    blocked_producers: int
    published_events: int
    coalesced_events: int


class Broker:
    """Process-wide registry of open topics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics: set[Topic] = set()
        self._named: dict[str, Topic] = {}
        self._published = 0
        self._coalesced = 0

    def open(self, **options: Any) -> Topic:
        """A new topic drained on the running event loop (options: `Topic`'s)."""
        topic = Topic(asyncio.get_running_loop(), on_close=self._release, **options)
        self._topics.add(topic)  # one set operation, atomic: `_release` takes the lock
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


def current_topic() -> Topic | None:
    """The topic of the streaming call the running code works for, when it takes
    intermediate events (a model's stream takes none)."""
    scope = current_call()
    topic = scope.topic if scope is not None else None
    return topic if topic is not None and topic.accepts_intermediate else None


def _intermediate(value: Any, source: str | None) -> tuple[Topic, Item] | None:
    topic = current_topic()
    if topic is None:
        return None
    scope = current_call()
    return topic, Item.of(INTERMEDIATE, source or (scope.method if scope else ""), value)


def emit(value: Any, source: str | None = None) -> bool:
    """Put `value` into the current call's stream as an `intermediate` event.

    Blocks this thread while the stream's topic is full; raises `StreamClosed` once the
    client is gone. Outside a streaming call it does nothing and returns False.
    """
    target = _intermediate(value, source)
    if target is None:
        return False
    target[0].put(target[1])
    return True


async def aemit(value: Any, source: str | None = None) -> bool:
    """`emit` for asyncio code: awaits while the topic is full."""
    target = _intermediate(value, source)
    if target is None:
        return False
    await aput_from_anywhere(*target)
    return True


async def aput_from_anywhere(topic: Topic, item: Item) -> None:
    """`topic.aput` on the topic's own loop; from another loop (a thread running its own
    `asyncio.run` under the call) a blocking put in a worker thread."""
    if topic.on_own_loop():
        await topic.aput(item)
    else:
        await asyncio.to_thread(topic.put, item)
