"""`BrokerService`: publish into named topics from other processes, and broker stats.

A topic takes publishes only from its subscriber's session (the `lazy-session-id` its
Subscribe came with, which the subscriber's own calls below carry) or from a caller that
presents the token the topic hands out: Subscribe sends it in its response headers as
`lazy-topic-token`, a publisher sends it back in its request headers (docs/security.md).
"""

from __future__ import annotations

import hmac
import secrets
import threading
from typing import Any

import grpc

from lazygrpc import broker
from lazygrpc.broker.topic import INTERMEDIATE, Item, Topic
from lazygrpc.core import context as session_context
from lazygrpc.core.baggage import SESSION_HEADER
from lazygrpc.core.errors import InvalidArgument, NotFound, PermissionDenied
from lazygrpc.core.values import to_value
from lazygrpc.v1 import broker_pb2, broker_pb2_grpc, module_pb2

SERVICE_NAME = "lazygrpc.v1.BrokerService"
add_to_server = broker_pb2_grpc.add_BrokerServiceServicer_to_server
TOPIC_TOKEN_HEADER = "lazy-topic-token"


class _Grant:
    """Who may publish into one subscribed topic: its owner's session, or its token."""

    __slots__ = ("session_id", "token", "topic")

    def __init__(self, topic: Topic, session_id: str) -> None:
        self.topic = topic
        self.session_id = session_id
        self.token = secrets.token_urlsafe(24)

    def admits(self, invocation_metadata: Any) -> bool:
        for key, value in invocation_metadata or ():
            if not isinstance(value, str):
                continue
            if key == TOPIC_TOKEN_HEADER and hmac.compare_digest(value, self.token):
                return True
            if key == SESSION_HEADER and hmac.compare_digest(value, self.session_id):
                return True
        return False


#: The grants of the process's subscribed topics, by name (topics are process-wide too).
_grants: dict[str, _Grant] = {}
_grants_lock = threading.Lock()


def _grant(name: str) -> _Grant | None:
    """The grant of the topic open under `name` now (None: no subscriber)."""
    topic = broker.BROKER.named(name)
    with _grants_lock:
        grant = _grants.get(name)
    return grant if grant is not None and grant.topic is topic else None


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

    def __init__(self, topic_options: dict[str, Any]) -> None:
        self.topic_options = topic_options

    async def Publish(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> broker_pb2.PublishResponse:
        accepted = 0
        metadata = context.invocation_metadata()
        admitted: set[str] = set()
        async for request in request_iterator:
            grant = _grant(request.topic)
            if grant is None:
                raise NotFound(f"topic {request.topic!r} has no subscriber")
            if request.topic not in admitted:
                if not grant.admits(metadata):
                    raise PermissionDenied(
                        f"topic {request.topic!r}: publish from the subscriber's session or "
                        f"with the {TOPIC_TOKEN_HEADER} its Subscribe returned"
                    )
                admitted.add(request.topic)
            if not request.HasField("value"):
                raise InvalidArgument("value: missing")
            await grant.topic.aput(Item.encoded(INTERMEDIATE, request.source, request.value))
            accepted += 1
        return broker_pb2.PublishResponse(accepted=accepted)

    async def Subscribe(
        self, request: broker_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        if not request.topic or len(request.topic) > 256:
            raise InvalidArgument(f"topic: {request.topic[:40]!r} must be 1-256 characters")
        try:
            topic = broker.BROKER.open_named(request.topic, **self.topic_options)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        seq = 0
        grant = _Grant(topic, session_context.current().id)
        with _grants_lock:
            _grants[request.topic] = grant
        try:
            # Headers go out now, not with the first event: a subscriber that has them knows
            # the topic is open and that Publish into it (with the token) will be accepted.
            await context.send_initial_metadata(((TOPIC_TOKEN_HEADER, grant.token),))
            while (item := await topic.get()) is not None:
                value = item.payload
                if isinstance(value, str):  # only Values are published into named topics
                    value = to_value(value)
                yield module_pb2.Event(seq=seq, source=item.source, intermediate=value)
                seq += 1
        finally:
            with _grants_lock:
                if _grants.get(request.topic) is grant:
                    del _grants[request.topic]
            broker.BROKER.close(topic)

    async def GetBrokerStats(
        self, request: broker_pb2.GetBrokerStatsRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.BrokerStats:
        return stats_message(broker.BROKER.stats())
