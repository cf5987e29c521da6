"""`BrokerService`: publish into named topics from other processes, and broker stats.

A topic takes publishes only from its subscriber's session (the `lazy-session-id` its
Subscribe came with, which the subscriber's own calls below carry) or from a caller that
presents the token the topic hands out: Subscribe sends it in its response headers as
`lazy-topic-token`, a publisher sends it back in its request headers (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import secrets
import threading
from typing import Any

import grpc

from lazygrpc import broker
from lazygrpc.broker.item import INTERMEDIATE, Item
from lazygrpc.broker.redis_streams import BATCH, Holder, NoSubscriber, RedisTopics
from lazygrpc.broker.topic import Topic
from lazygrpc.core import context as session_context
from lazygrpc.core.baggage import SESSION_HEADER
from lazygrpc.core.errors import InvalidArgument, NotFound, PermissionDenied
from lazygrpc.core.values import to_value
from lazygrpc.v1 import broker_pb2, broker_pb2_grpc, module_pb2

SERVICE_NAME = "lazygrpc.v1.BrokerService"
add_to_server = broker_pb2_grpc.add_BrokerServiceServicer_to_server
TOPIC_TOKEN_HEADER = "lazy-topic-token"


class Grant:
    """Who may publish into one subscribed topic: its owner's session, or whoever presents
    its token (kept as a SHA-256 digest, so a Redis broker never stores the token itself).
    The one check of both brokers: the in-process one keeps grants here, the Redis one in
    the topic's claim (`encode` / `decode`)."""

    __slots__ = ("digest", "session_id")

    def __init__(self, session_id: str, digest: str) -> None:
        self.session_id = session_id
        self.digest = digest

    @classmethod
    def new(cls, session_id: str) -> tuple[Grant, str]:
        """A grant for the subscriber's session, and the token to hand out."""
        token = secrets.token_urlsafe(24)
        return cls(session_id, _digest(token)), token

    def admits(self, invocation_metadata: Any) -> bool:
        for key, value in invocation_metadata or ():
            if not isinstance(value, str):
                continue
            if key == TOPIC_TOKEN_HEADER and hmac.compare_digest(_digest(value), self.digest):
                return True
            if key == SESSION_HEADER and hmac.compare_digest(value, self.session_id):
                return True
        return False

    def check(self, topic: str, invocation_metadata: Any) -> None:
        """PERMISSION_DENIED naming the fix unless `admits`."""
        if not self.admits(invocation_metadata):
            raise PermissionDenied(
                f"topic {topic!r}: publish from the subscriber's session or "
                f"with the {TOPIC_TOKEN_HEADER} its Subscribe returned"
            )

    def encode(self) -> str:
        return f"{self.session_id} {self.digest}"

    @classmethod
    def decode(cls, text: str) -> Grant:
        session_id, _, digest = text.partition(" ")
        return cls(session_id, digest or "-")  # no digest: no token matches


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


#: The grants of the process's subscribed topics, by name (topics are process-wide too).
_grants: dict[str, tuple[Topic, Grant]] = {}
_grants_lock = threading.Lock()


def _grant(name: str) -> tuple[Topic, Grant] | None:
    """The topic open under `name` now and its grant (None: no subscriber)."""
    topic = broker.BROKER.named(name)
    with _grants_lock:
        held = _grants.get(name)
    return held if held is not None and held[0] is topic else None


def stats_message(stats: broker.BrokerStats) -> broker_pb2.BrokerStats:
    return broker_pb2.BrokerStats(
        open_topics=stats.open_topics,
        queued_events=stats.queued_events,
        queued_bytes=stats.queued_bytes,
        blocked_producers=stats.blocked_producers,
        published_events=stats.published_events,
        coalesced_events=stats.coalesced_events,
    )


class BrokerServicer(broker_pb2_grpc.BrokerServiceServicer):
    """Implementation of `lazygrpc.v1.BrokerService` over the process-wide broker."""

    def __init__(self, topic_options: dict[str, Any], redis: RedisTopics | None = None) -> None:
        self.topic_options = topic_options
        #: Named topics live in Redis when set (`--broker redis://…`), else in this process.
        self.redis = redis

    async def Publish(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> broker_pb2.PublishResponse:
        metadata = context.invocation_metadata()
        if self.redis is not None:
            return broker_pb2.PublishResponse(
                accepted=await _publish_to_redis(self.redis, request_iterator, metadata)
            )
        accepted = 0
        admitted: set[str] = set()
        async for request in request_iterator:
            held = _grant(request.topic)
            if held is None:
                raise NotFound(f"topic {request.topic!r} has no subscriber")
            topic, grant = held
            if request.topic not in admitted:
                grant.check(request.topic, metadata)
                admitted.add(request.topic)
            _check_value(request)
            await topic.aput(Item.encoded(INTERMEDIATE, request.source, request.value))
            accepted += 1
        return broker_pb2.PublishResponse(accepted=accepted)

    async def Subscribe(
        self, request: broker_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        if not request.topic or len(request.topic) > 256:
            raise InvalidArgument(f"topic: {request.topic[:40]!r} must be 1-256 characters")
        grant, token = Grant.new(session_context.current().id)
        # Headers go out once the topic is open, not with the first event: a subscriber
        # that has them knows that Publish into it (with the token) will be accepted.
        headers = ((TOPIC_TOKEN_HEADER, token),)
        if self.redis is not None:
            events = _subscribe_to_redis(self.redis, request.topic, grant, headers, context)
            async for event in events:
                yield event
            return
        try:
            topic = broker.BROKER.open_named(request.topic, **self.topic_options)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        seq = 0
        held = (topic, grant)
        with _grants_lock:
            _grants[request.topic] = held
        try:
            await context.send_initial_metadata(headers)
            while (item := await topic.get()) is not None:
                value = item.payload
                if isinstance(value, bytes):  # a relayed event, serialized
                    value = module_pb2.Event.FromString(value).intermediate
                elif isinstance(value, str):  # only Values are published into named topics
                    value = to_value(value)
                yield module_pb2.Event(seq=seq, source=item.source, intermediate=value)
                seq += 1
        finally:
            with _grants_lock:
                if _grants.get(request.topic) is held:
                    del _grants[request.topic]
            broker.BROKER.close(topic)

    async def GetBrokerStats(
        self, request: broker_pb2.GetBrokerStatsRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.BrokerStats:
        return stats_message(broker.BROKER.stats())


def _check_value(request: broker_pb2.PublishRequest) -> None:
    if not request.HasField("value"):
        raise InvalidArgument("value: missing")


async def _subscribe_to_redis(
    redis: RedisTopics, name: str, grant: Grant, headers: Any, context: grpc.aio.ServicerContext
) -> Any:
    try:
        subscription = await redis.subscribe(name, owner=grant.encode())
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    try:
        await context.send_initial_metadata(headers)  # the topic is claimed: publishing works
        seq = 0
        async with contextlib.aclosing(subscription.events()) as events:
            async for source, value in events:
                yield module_pb2.Event(seq=seq, source=source, intermediate=value)
                seq += 1
    finally:
        await subscription.close()


async def _publish_to_redis(redis: RedisTopics, request_iterator: Any, metadata: Any) -> int:
    """Publish a client's stream into Redis in batches: what has arrived while the last batch
    was on its way goes in the next one (one round trip each), at most `BATCH` read ahead.
    Each topic's holder is checked once (`Grant.check`), and its items go in only while that
    holder still holds it."""
    holders: dict[str, Holder] = {}

    async def admitted(topic: str) -> Holder:
        holder = holders.get(topic)
        if holder is None:
            holder = await redis.holder(topic)
            if holder is None:
                raise NotFound(f"topic {topic!r} has no subscriber")
            Grant.decode(holder.owner).check(topic, metadata)
            holders[topic] = holder
        return holder

    queue: asyncio.Queue[broker_pb2.PublishRequest | None] = asyncio.Queue(BATCH)

    async def read() -> None:
        async for request in request_iterator:
            _check_value(request)
            await queue.put(request)
        await queue.put(None)

    reader = asyncio.create_task(read())
    accepted = 0
    try:
        done = False
        while not done:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait([getter, reader], return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():  # the reader ended (or failed) with nothing queued
                getter.cancel()
                reader.result()
                continue
            batch = [getter.result()]
            while not queue.empty() and len(batch) < BATCH:
                batch.append(queue.get_nowait())
            if batch[-1] is None:
                done = True
                batch.pop()
            for topic, run in itertools.groupby(batch, key=lambda r: r.topic):  # type: ignore[union-attr]
                items = [(r.source, r.value) for r in run]  # type: ignore[union-attr]
                try:
                    await redis.publish(topic, items, await admitted(topic))
                except NoSubscriber as exc:
                    raise NotFound(str(exc)) from None
                accepted += len(items)
        return accepted
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
