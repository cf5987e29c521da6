"""The broker: one bounded topic per streaming call, and `emit` into the current one."""

from lazygrpc.broker.item import DELTA, INTERMEDIATE, Item
from lazygrpc.broker.registry import (
    BROKER,
    Broker,
    BrokerStats,
    aemit,
    aput_from_anywhere,
    current_topic,
    emit,
    stats,
)
from lazygrpc.broker.topic import (
    DEFAULT_COALESCE_BYTES,
    DEFAULT_TOPIC_BYTES,
    DEFAULT_TOPIC_EVENTS,
    Topic,
)

__all__ = [
    "BROKER",
    "DEFAULT_COALESCE_BYTES",
    "DEFAULT_TOPIC_BYTES",
    "DEFAULT_TOPIC_EVENTS",
    "DELTA",
    "INTERMEDIATE",
    "Broker",
    "BrokerStats",
    "Item",
    "Topic",
    "aemit",
    "aput_from_anywhere",
    "current_topic",
    "emit",
    "stats",
]
