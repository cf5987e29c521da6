"""The item every stream event travels as through a topic (`lazygrpc.broker.topic`)."""

from __future__ import annotations

from typing import Any, NamedTuple

from google.protobuf import struct_pb2

from lazygrpc.core import wire
from lazygrpc.core.values import to_value

DELTA = 0
INTERMEDIATE = 1
#: What an item counts for beyond its payload (kind, source, framing), in bytes.
ITEM_OVERHEAD = 8


class Item(NamedTuple):
    """One stream event in a topic: a `delta` or an `intermediate`, where it came from, its
    payload and the bytes it counts for against the topic's bound. The payload is text as a
    `str` (so that deltas can coalesce), any other value as a `Value`, or, relayed from
    another stream, the serialized event it arrived as (`bytes`, `lazygrpc.core.wire`)."""

    kind: int
    source: str
    payload: str | struct_pb2.Value | bytes
    nbytes: int

    @classmethod
    def of(cls, kind: int, source: str, value: Any) -> Item:
        """The item for a Python value (`TypeError` names what is not JSON-like)."""
        if type(value) is str and kind == DELTA:
            return _new(cls, (kind, source, value, len(value) + ITEM_OVERHEAD))
        return cls.encoded(kind, source, to_value(value, where="emitted value"))

    @classmethod
    def encoded(cls, kind: int, source: str, value: struct_pb2.Value) -> Item:
        """The item for a value already in protobuf form (relayed from another stream)."""
        return _new(cls, (kind, source, value, value.ByteSize() + ITEM_OVERHEAD))

    @classmethod
    def relayed(cls, kind: int, source: str, data: bytes) -> Item:
        """The item for an event relayed from another stream, as the bytes it came in."""
        return _new(cls, (kind, source, data, len(data) + ITEM_OVERHEAD))


#: Makes an `Item` from its fields in order, as `Item(...)` does without the Python-level
#: `__new__` that NamedTuple generates: every token of every stream is one.
_new = tuple.__new__


def text_of(payload: str | struct_pb2.Value | bytes) -> str | None:
    """A delta payload's text (None: not text), relayed ones read from their bytes."""
    if type(payload) is str:
        return payload
    if type(payload) is bytes:
        return wire.delta_text(payload)
    return None
