"""A stream `Event` as bytes: the relay path forwards an event without decoding it.

A hop that relays another module's stream changes only an event's `seq` and `source`.
Protobuf merges a message's fields in the order they come, the last value of a field
winning (the encoding's rule for concatenated messages), so the relay sends the event's
bytes as they arrived followed by its own `seq` and `source` (`event`): every protobuf
parser reads the relay's values, and the body is never decoded or re-encoded on the way.
"""

from __future__ import annotations

from lazygrpc.v1 import module_pb2

_SEQ = b"\x08"  # field 1, varint
_SOURCE = b"\x12"  # field 2, length-delimited
_SMALL = [bytes((n,)) for n in range(0x80)]


def varint(n: int) -> bytes:
    """`n` (≥ 0) as a protobuf varint."""
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def source_field(source: str) -> bytes:
    """`source` as a serialized field, written even when empty (it must override)."""
    src = source.encode()
    return _SOURCE + varint(len(src)) + src


def event(data: bytes, seq: int, source: bytes) -> bytes:
    """The serialized `Event` `data` with `seq` and the `source_field` `source` instead of
    its own: what a relay sends."""
    return data + _SEQ + varint(seq) + source


def delta_text(data: bytes) -> str | None:
    """The text of a serialized event that is a text delta (None for any other event)."""
    ev = module_pb2.Event.FromString(data)
    if ev.WhichOneof("body") != "delta" or ev.delta.WhichOneof("kind") != "string_value":
        return None
    return ev.delta.string_value
