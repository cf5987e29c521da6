"""A stream `Event` as bytes: the relay path forwards an event's body without decoding it.

A hop that relays another module's stream changes only an event's `seq` and `source`; its
body (the `delta`, `intermediate` or `result` Value) goes on as the bytes it arrived in.
`split` takes an event's body out of its serialized form, `event` puts a new header in
front of a body. Serialized `Event`s from protobuf put their fields in field-number order
(seq, source, then the body); `split` checks that a message has exactly that layout and
re-serializes the body through protobuf otherwise, so any valid message is forwarded
correctly, only the canonical one without re-encoding.
"""

from __future__ import annotations

from typing import Any

from lazygrpc.v1 import module_pb2

_SEQ = b"\x08"  # field 1, varint
_SOURCE = b"\x12"  # field 2, length-delimited
#: Body field tags (fields 3, 4, 5, length-delimited) and the kind each one is.
BODY_TAGS = {0x1A: "delta", 0x22: "intermediate", 0x2A: "result"}
_TAG_OF = {kind: bytes((tag,)) for tag, kind in BODY_TAGS.items()}
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


def header(seq: int, source: str) -> bytes:
    """The serialized `seq` and `source` of an event (proto3: defaults are left out)."""
    src = source.encode()
    head = _SEQ + varint(seq) if seq else b""
    return head + _SOURCE + varint(len(src)) + src if src else head


def event(seq: int, source: str, body: bytes) -> bytes:
    """A serialized `Event`: `body` (from `split` or `body_of`) with a new seq and source."""
    return header(seq, source) + body


def body_of(kind: str, value: Any) -> bytes:
    """The serialized body of an event of `kind` holding `value` (a `Value`)."""
    data: bytes = value.SerializeToString()
    return _TAG_OF[kind] + varint(len(data)) + data


def split(data: bytes, ev: module_pb2.Event, kind: str) -> bytes:
    """The body of `data`, the serialized form of `ev` (whose body is `kind`)."""
    value = getattr(ev, kind)
    size = value.ByteSize()
    head = header(ev.seq, ev.source)
    # Exactly header + body, the header first: what is left is the body as it came.
    if len(data) == len(head) + 1 + len(varint(size)) + size and data.startswith(head):
        return data[len(head) :]
    return body_of(kind, value)


def delta_text(body: bytes) -> str | None:
    """The text of a body that is a text delta (None for any other body)."""
    if body[0] != 0x1A:
        return None
    ev = module_pb2.Event.FromString(body)
    return ev.delta.string_value if ev.delta.WhichOneof("kind") == "string_value" else None
