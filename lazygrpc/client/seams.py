"""Named seams onto grpc.aio internals (grpcio 1.85), each with a public fallback.

Each one saves work on every call a lazygrpc client makes; the benchmark rows that show it
are in docs/performance.md ("grpc seams"). With `LAZYGRPC_GRPC_SEAMS=0` in the
environment, or after `set_enabled(False)`, every call takes the public route instead, and
the test suite runs the client lifecycle both ways. These are the only places in lazygrpc
that touch grpc's private attributes.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio

_enabled = os.environ.get("LAZYGRPC_GRPC_SEAMS", "1") != "0"

#: How deep `ended_trailers` unwraps calls (grpc nests one wrapper per interceptor at most).
_MAX_WRAPPING = 16


def set_enabled(enabled: bool) -> None:
    """Use the seams (the default) or grpc's public API only."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


class OutgoingMetadata(grpc.aio.Metadata):  # type: ignore[misc]
    """Call metadata for grpc.aio that is read as it was built.

    grpc.aio turns a list into `Metadata` (a dict of lists) and back into a tuple on every
    call, most of what sending any metadata costs a client. grpc.aio only takes `len()` and
    `tuple()` of a `Metadata` it is given, so this one answers both from its tuple, and
    builds the dict (grpc's private `_metadata`) only if an interceptor reads or changes it.
    """

    def __init__(self, items: tuple[tuple[str, str | bytes], ...]) -> None:
        self._items = items
        self._dict: OrderedDict[str, list[str | bytes]] | None = None

    @property  # type: ignore[override]
    def _metadata(self) -> OrderedDict[str, list[str | bytes]]:
        if self._dict is None:
            d: OrderedDict[str, list[str | bytes]] = OrderedDict()
            for key, value in self._items:
                d.setdefault(key, []).append(value)
            self._dict = d
        return self._dict

    @_metadata.setter
    def _metadata(self, value: OrderedDict[str, list[str | bytes]]) -> None:
        self._dict = value

    def __len__(self) -> int:
        return len(self._items) if self._dict is None else super().__len__()

    def __iter__(self) -> Iterator[tuple[str, str | bytes]]:
        return iter(self._items) if self._dict is None else super().__iter__()

    def __add__(self, other: Any) -> grpc.aio.Metadata:
        # grpc's own only adds instances of its exact class: a plain Metadata works here too.
        if isinstance(other, grpc.aio.Metadata):
            return grpc.aio.Metadata(*tuple(self), *tuple(other))
        if isinstance(other, tuple):
            return grpc.aio.Metadata(*tuple(self), *other)
        return NotImplemented


def aio_metadata(items: tuple[tuple[str, str | bytes], ...]) -> Any:
    """What a grpc.aio call takes as `metadata=`: `OutgoingMetadata`, or (public route) the
    tuple itself, which grpc converts."""
    return OutgoingMetadata(items) if _enabled else items


def ended_trailers(call: Any) -> Any:
    """The trailing metadata of a grpc.aio call that has ended, without awaiting (so that a
    done callback can merge them before the caller resumes); None when they are not there.

    The seam reads the status the call already holds; grpc.aio's `trailing_metadata()` is a
    coroutine that wraps that status in a new `Metadata` (the public route: the coroutine is
    run here, and an ended call's finishes without suspending). A call that grpc's
    interceptor path wrapped is unwrapped to the call inside.
    """
    if _enabled:
        trailing = _held_trailers(call)
        if trailing is not None:
            return trailing
    try:
        coro = call.trailing_metadata()
        coro.send(None)
    except StopIteration as done:
        return done.value
    except Exception:
        return None  # not a grpc.aio call, or its status could not be read
    coro.close()  # it had to wait: the call has not ended
    return None


def _held_trailers(call: Any) -> Any:
    for _ in range(_MAX_WRAPPING):
        try:
            return call._cython_call._status.trailing_metadata()
        except AttributeError:
            pass
        task = getattr(call, "_interceptors_task", None)
        if task is not None:  # grpc's InterceptedCall: the call its interceptors returned
            if not task.done() or task.cancelled():
                return None
            error = task.exception()
            if error is not None:
                return (
                    error.trailing_metadata() if isinstance(error, grpc.aio.AioRpcError) else None
                )
            call = task.result()
            continue
        inner = getattr(call, "_call", None)  # a response iterator an interceptor returned
        if inner is None or inner is call:
            return None
        call = inner
    return None


async def trailers(call: Any) -> Any:
    """The trailing metadata of a grpc.aio call that has ended."""
    trailing = ended_trailers(call)
    return await call.trailing_metadata() if trailing is None else trailing
