"""`BrokerService`: publish into named topics from other processes, and broker stats."""

from __future__ import annotations

from typing import Any

import grpc

from lazygrpc import broker
from lazygrpc.broker.topic import INTERMEDIATE, Item
from lazygrpc.core.errors import InvalidArgument, NotFound
from lazygrpc.core.values import to_value
from lazygrpc.v1 import broker_pb2, broker_pb2_grpc, module_pb2

SERVICE_NAME = "lazygrpc.v1.BrokerService"
add_to_server = broker_pb2_grpc.add_BrokerServiceServicer_to_server


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
        async for request in request_iterator:
            topic = broker.BROKER.named(request.topic)
            if topic is None:
                raise NotFound(f"topic {request.topic!r} has no subscriber")
            if not request.HasField("value"):
                raise InvalidArgument("value: missing")
            await topic.aput(Item.encoded(INTERMEDIATE, request.source, request.value))
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
        try:
            # Headers go out now, not with the first event: a subscriber that has them knows
            # the topic is open and that Publish into it will be accepted.
            await context.send_initial_metadata(())
            while (item := await topic.get()) is not None:
                value = item.payload
                if isinstance(value, str):  # only Values are published into named topics
                    value = to_value(value)
                yield module_pb2.Event(seq=seq, source=item.source, intermediate=value)
                seq += 1
        finally:
            broker.BROKER.close(topic)

    async def GetBrokerStats(
        self, request: broker_pb2.GetBrokerStatsRequest, context: grpc.aio.ServicerContext
    ) -> broker_pb2.BrokerStats:
        return stats_message(broker.BROKER.stats())
