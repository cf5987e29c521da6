"""How lazygrpc's own clients make a call: the interceptors' core, without their machinery.

`connect()` and `LLM()` pass session metadata and the inherited deadline straight to plain
stubs and merge the `lazy-globals-update` trailer themselves. grpc's aio interceptor path
costs an extra task and a second call object per RPC (measured: +65-90 µs of client CPU per
unary call); raw-stub users still get the same behaviour from `lazygrpc.intercept_channel`
and `aio_client_interceptors()`, which share `prepare()` and `merge_trailers()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from lazygrpc.client_interceptors import Outgoing, OutgoingMetadata, merge_trailers, prepare

ErrorFactory = Callable[[grpc.RpcError], Exception]


def _track(out: Outgoing, call: Any) -> None:
    if out.scope is not None:
        out.scope.add_child(call)


def _untrack(out: Outgoing, call: Any) -> None:
    if out.scope is not None:
        out.scope.discard_child(call)


def unary(method: Any, request: Any, timeout: float | None, error: ErrorFactory) -> Any:
    """A sync unary call, cancellable by the parent call; `error` builds the raised error."""
    out = prepare(None, timeout)
    future = method.future(request, metadata=out.metadata, timeout=out.timeout)
    _track(out, future)
    try:
        response = future.result()
    except grpc.RpcError as err:
        merge_trailers(out.session, err.trailing_metadata())
        raise error(err) from err
    except BaseException:
        future.cancel()
        raise
    finally:
        _untrack(out, future)
    merge_trailers(out.session, future.trailing_metadata())
    return response


async def aunary(method: Any, request: Any, timeout: float | None, error: ErrorFactory) -> Any:
    """The asyncio twin of `unary`; cancelling the awaiting task cancels the RPC."""
    out = prepare(None, timeout)
    call = method(request, metadata=OutgoingMetadata(out.metadata), timeout=out.timeout)
    _track(out, call)
    try:
        response = await call
    except grpc.RpcError as err:
        merge_trailers(out.session, err.trailing_metadata())
        raise error(err) from err
    finally:
        _untrack(out, call)
    merge_trailers(out.session, await call.trailing_metadata())
    return response


def stream(
    method: Any, request: Any, timeout: float | None, error: ErrorFactory, *, text: bool = False
) -> Iterator[Any]:
    """A sync server stream; leaving the loop early cancels the RPC.

    `text=True` yields the non-empty `text` of each message instead of the message.
    """
    out = prepare(None, timeout)
    call = method(request, metadata=out.metadata, timeout=out.timeout)
    _track(out, call)
    try:
        if text:
            for item in call:
                if item.text:
                    yield item.text
        else:
            yield from call
    except grpc.RpcError as err:
        merge_trailers(out.session, err.trailing_metadata())
        raise error(err) from err
    else:
        merge_trailers(out.session, call.trailing_metadata())
    finally:
        call.cancel()  # a no-op once the stream ended
        _untrack(out, call)


async def astream(
    method: Any, request: Any, timeout: float | None, error: ErrorFactory, *, text: bool = False
) -> AsyncIterator[Any]:
    """The asyncio twin of `stream` (one generator layer on the stream, not two)."""
    out = prepare(None, timeout)
    call = method(request, metadata=OutgoingMetadata(out.metadata), timeout=out.timeout)
    _track(out, call)
    try:
        async for item in call:
            if not text:
                yield item
            elif item.text:
                yield item.text
    except grpc.RpcError as err:
        merge_trailers(out.session, err.trailing_metadata())
        raise error(err) from err
    else:
        merge_trailers(out.session, await call.trailing_metadata())
    finally:
        call.cancel()
        _untrack(out, call)
