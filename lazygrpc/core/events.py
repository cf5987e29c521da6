"""Stream events in their Python form: `Event` (the wire form is `v1.Event`), source paths."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from lazygrpc.core.values import from_value
from lazygrpc.v1 import module_pb2

EventKind = Literal["delta", "intermediate", "result"]


class Event:
    """One event of a module stream: a `delta`, an `intermediate` from below, or the `result`.

    An event read from another server (`from_wire`) keeps the bytes it arrived as and
    decodes its `value` on first use: a module that relays it untouched sends those bytes
    on (`lazygrpc.core.wire`) and never decodes them. Events compare by their fields.
    """

    __slots__ = ("_message", "_value", "kind", "seq", "source", "wire")

    def __init__(self, kind: EventKind, value: Any, source: str, seq: int) -> None:
        self.kind = kind
        self._value = value
        self.source = source
        self.seq = seq
        self._message: module_pb2.Event | None = None
        #: The serialized event it arrived as (`from_wire`); None for an event made here.
        self.wire: bytes | None = None

    @property
    def value(self) -> Any:
        """The event's value, in Python form."""
        if self._message is not None:  # decoded once, on first use
            self._value = from_value(getattr(self._message, self.kind), where=self.kind)
            self._message = None
        return self._value

    @classmethod
    def from_pb(cls, ev: module_pb2.Event) -> Event:
        kind = _kind_of(ev)
        return cls(kind, from_value(getattr(ev, kind), where=kind), ev.source, ev.seq)

    @classmethod
    def from_wire(cls, data: bytes) -> Event:
        """The event a serialized `v1.Event` holds; its value is decoded when first read."""
        ev = module_pb2.Event.FromString(data)
        kind = _kind_of(ev)
        event = cls(kind, None, ev.source, ev.seq)
        event._message = ev
        event.wire = data
        return event

    def _fields(self) -> tuple[Any, ...]:
        return (self.kind, self.value, self.source, self.seq)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Event:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = f"kind={self.kind!r}, value={self.value!r}, source={self.source!r}"
        return f"Event({fields}, seq={self.seq})"


def _kind_of(ev: module_pb2.Event) -> EventKind:
    kind = ev.WhichOneof("body")
    if kind is None:
        raise ValueError(f"event {ev.seq} has no body")
    return kind  # type: ignore[return-value]


def relay_source(module: str, source: str) -> str:
    """Source path of an event relayed from `module`'s stream: `retriever/embedder`."""
    return module if not source or source == module else f"{module}/{source}"


#: The attribute `async_stream` sets (`is_async_stream` reads it).
_ASYNC_STREAM_ATTR = "_lazygrpc_async_stream"
F = TypeVar("F", bound=Callable[..., Any])


def async_stream(fn: F) -> F:
    """Mark a function that returns an async generator (without being an async generator
    function itself) as a streaming module when served, as `async def ... yield` would be."""
    setattr(fn, _ASYNC_STREAM_ATTR, True)
    return fn


def is_async_stream(fn: Any) -> bool:
    """Whether `fn` (or the function a `functools.partial` wraps) is marked `async_stream`."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return bool(getattr(fn, _ASYNC_STREAM_ATTR, False))
