"""How lazygrpc's own clients make a call: the interceptors' core, without their machinery.

`connect()` and `LLM()` pass session metadata and the inherited deadline straight to plain
stubs and merge the `lazy-globals-update` trailer themselves. grpc's aio interceptor path
costs an extra task and a second call object per RPC (measured: +65-90 µs of client CPU per
unary call); raw-stub users still get the same behaviour from `lazygrpc.intercept_channel`
and `aio_client_interceptors()`, which share `prepare()` and `merge_trailers()`.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import grpc

from lazygrpc.client_interceptors import OutgoingMetadata, ended_trailers, merge_trailers, prepare

ErrorFactory = Callable[[grpc.RpcError], Exception]
F = TypeVar("F", bound=Callable[..., Any])

#: The attribute `async_stream` sets (`lazygrpc.modules.Module.of` reads it).
ASYNC_STREAM_ATTR = "_lazygrpc_async_stream"


def is_async_stream(fn: Any) -> bool:
    """Whether `fn` (or the function a `functools.partial` wraps) is marked `async_stream`."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return bool(getattr(fn, ASYNC_STREAM_ATTR, False))


def async_stream(fn: F) -> F:
    """Mark a function that returns an async generator (without being an async generator
    function itself) as a streaming module when served, as `async def ... yield` would be."""
    setattr(fn, ASYNC_STREAM_ATTR, True)
    return fn


def unary(method: Any, request: Any, timeout: float | None, error: ErrorFactory) -> Any:
    """A sync unary call, cancellable by the parent call; `error` builds the raised error."""
    items, timeout, session, scope = prepare(None, timeout)
    future = method.future(request, metadata=items, timeout=timeout)
    if scope is not None:
        scope.add_child(future)
    try:
        response = future.result()
    except grpc.RpcError as err:
        merge_trailers(session, err.trailing_metadata())
        raise error(err) from err
    except BaseException:
        future.cancel()
        raise
    finally:
        if scope is not None:
            scope.discard_child(future)
    merge_trailers(session, future.trailing_metadata())
    return response


async def aunary(method: Any, request: Any, timeout: float | None, error: ErrorFactory) -> Any:
    """The asyncio twin of `unary`; cancelling the awaiting task cancels the RPC."""
    items, timeout, session, scope = prepare(None, timeout)
    call = method(request, metadata=OutgoingMetadata(items), timeout=timeout)
    if scope is not None:
        scope.add_child(call)
    try:
        response = await call
    except grpc.RpcError as err:
        merge_trailers(session, err.trailing_metadata())
        raise error(err) from err
    finally:
        if scope is not None:
            scope.discard_child(call)
    trailing = ended_trailers(call)
    merge_trailers(session, await call.trailing_metadata() if trailing is None else trailing)
    return response


def stream(
    method: Any, request: Any, timeout: float | None, error: ErrorFactory, *, text: bool = False
) -> Iterator[Any]:
    """A sync server stream; leaving the loop early cancels the RPC.

    `text=True` yields the non-empty `text` of each message instead of the message.
    """
    items, timeout, session, scope = prepare(None, timeout)
    call = method(request, metadata=items, timeout=timeout)
    if scope is not None:
        scope.add_child(call)
    try:
        if text:
            for item in call:
                if item.text:
                    yield item.text
        else:
            yield from call
    except grpc.RpcError as err:
        merge_trailers(session, err.trailing_metadata())
        raise error(err) from err
    else:
        merge_trailers(session, call.trailing_metadata())
    finally:
        call.cancel()  # a no-op once the stream ended
        if scope is not None:
            scope.discard_child(call)


async def astream(
    method: Any, request: Any, timeout: float | None, error: ErrorFactory, *, text: bool = False
) -> AsyncIterator[Any]:
    """The asyncio twin of `stream` (one generator layer on the stream, not two)."""
    items, timeout, session, scope = prepare(None, timeout)
    call = method(request, metadata=OutgoingMetadata(items), timeout=timeout)
    if scope is not None:
        scope.add_child(call)
    try:
        async for item in call:
            if not text:
                yield item
            elif item.text:
                yield item.text
    except grpc.RpcError as err:
        merge_trailers(session, err.trailing_metadata())
        raise error(err) from err
    else:
        trailing = ended_trailers(call)
        merge_trailers(session, await call.trailing_metadata() if trailing is None else trailing)
    finally:
        call.cancel()
        if scope is not None:
            scope.discard_child(call)
