"""Stream events in their Python form: `Event` (the wire form is `v1.Event`), source paths."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from lazygrpc.core.values import from_value
from lazygrpc.v1 import module_pb2

EventKind = Literal["delta", "intermediate", "result"]


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a module stream: a `delta`, an `intermediate` from below, or the `result`."""

    kind: EventKind
    value: Any
    source: str
    seq: int

    @classmethod
    def from_pb(cls, ev: module_pb2.Event) -> Event:
        kind = ev.WhichOneof("body")
        if kind is None:
            raise ValueError(f"event {ev.seq} has no body")
        return cls(kind, from_value(getattr(ev, kind), where=kind), ev.source, ev.seq)


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
