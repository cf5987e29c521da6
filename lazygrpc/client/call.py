"""The client call lifecycle: one outgoing call from start to end, for every entry point.

    start    `OutgoingCall`: the session's id and globals, the trace context, and the parent
             call's remaining deadline, from the context the call is made in
    attach   register with the parent call, so that it is cancelled when the parent ends
    finish   unregister, and merge the `lazy-globals-update` trailer into the caller's
             session (on failure too: what the callee changed before it failed still counts)

`connect()` and `LLM()` drive it with the four drivers below (sync and asyncio, unary and
server-streaming) straight on plain stubs; the interceptors for raw stubs and channels
(`lazygrpc.client.interceptors`) drive the same steps around grpc's own call objects.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from lazygrpc.client import seams
from lazygrpc.core import baggage, context
from lazygrpc.core.context import CallScope, current_call
from lazygrpc.core.session import Session
from lazygrpc.core.trust import GlobalsPolicy

_log = logging.getLogger(__name__)

ErrorFactory = Callable[[grpc.RpcError], Exception]
Items = tuple[tuple[str, str | bytes], ...]


class OutgoingCall:
    """One outgoing call's lifecycle: its metadata and timeout, and the steps that end it.

    `with out.running(call): ...` is the whole of it for a driver that waits for the call:
    the block sets `out.trailing` once the call ended well; leaving the block, however it
    is left, cancels the call if it is still going and finishes it, and an `RpcError` leaves
    it as the error `error(rpc_error)` builds."""

    __slots__ = ("call", "error", "metadata", "scope", "session", "timeout", "trailing")

    def __init__(
        self,
        metadata: Any = None,
        timeout: float | None = None,
        error: ErrorFactory | None = None,
    ) -> None:
        """Start a call from the current context, with the caller's own `metadata` (kept,
        a session id or baggage of theirs included) and `timeout`. No I/O."""
        self.error = error
        self.call: Any = None
        self.trailing: Any = None
        self.scope: CallScope | None = current_call()
        self.session: Session = context.current()
        self.metadata: Items = outgoing_metadata(metadata, self.session, self.scope)
        if self.scope is not None:
            remaining = self.scope.time_remaining()
            if remaining is not None and (timeout is None or remaining < timeout):
                timeout = remaining
        self.timeout = timeout

    def attach(self, call: Any) -> bool:
        """Register `call` with the parent call; False (and `call` is cancelled) when the
        parent already ended."""
        return self.scope is None or self.scope.add_child(call)

    def running(self, call: Any) -> OutgoingCall:
        """`attach` `call`, for a `with` block that waits for it."""
        self.call = call
        self.attach(call)
        return self

    def __enter__(self) -> OutgoingCall:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        trailing = self.trailing
        try:
            if isinstance(exc, grpc.RpcError):
                trailing = exc.trailing_metadata()
                if self.error is not None:
                    raise _with_peer(self.error(exc), self.call) from exc
        finally:
            self.call.cancel()  # a no-op once the call ended
            self.finish(self.call, trailing)

    def finish(self, call: Any, trailing: Any) -> None:
        """`call` ended: unregister it and merge its trailers (None: there are none)."""
        if self.scope is not None:
            self.scope.discard_child(call)
        if trailing:
            merge_trailers(self.session, trailing, self.scope.policy if self.scope else None)

    def finish_ended(self, call: Any) -> None:
        """`finish` for a grpc.aio call that has ended, from its done callback: grpc.aio runs
        it before the awaiting caller resumes (and before a response stream ends for its
        reader), so the merged globals are there when the caller looks."""
        trailing = seams.ended_trailers(call)
        if trailing is not None:
            self.finish(call, trailing)
            return
        # The public route: the trailers are a coroutine away.
        task = asyncio.ensure_future(self._finish_later(call))
        _LATE.add(task)
        task.add_done_callback(_LATE.discard)

    async def _finish_later(self, call: Any) -> None:
        try:
            trailing = await call.trailing_metadata()
        except Exception:
            trailing = None
        self.finish(call, trailing)


def _with_peer(error: Exception, call: Any) -> Exception:
    """A failure with no chain from the other side (the connection broke, the peer is no
    lazygrpc server) names the address the call went to, in its one frame's `host`: behind
    a replica set (`dns:///`, `ipv4:a,b`) the target alone does not say which one failed."""
    chain = getattr(error, "chain", None)
    if chain and len(chain) == 1 and not chain[0].host:
        try:
            peer = call.peer()
        except Exception:  # no peer known (never connected)
            peer = None
        if peer:
            chain[0].host = peer
    return error


#: Trailer merges waiting for a coroutine (kept referenced until they ran).
_LATE: set[asyncio.Future[None]] = set()


def outgoing_metadata(md: Any, s: Session, scope: CallScope | None) -> Items:
    """The caller's metadata with the session's, and the trace context when there is one:
    the caller's own, else the current OpenTelemetry span's, else the incoming call's."""
    out: list[tuple[str, str | bytes]] = []
    caller_sid = None
    foreign: list[str] = []
    for key, value in md or ():
        if key == baggage.BAGGAGE_HEADER and isinstance(value, str):
            foreign.extend(baggage.parse_baggage(value).others)  # the caller's own entries
            continue
        if key == baggage.SESSION_HEADER:
            caller_sid = value
        out.append((key, value))
    if caller_sid is None:
        out.append((baggage.SESSION_HEADER, s.id))
    header = s.baggage()
    if foreign:
        header = ",".join(x for x in (",".join(foreign), header) if x)
    if header:
        out.append((baggage.BAGGAGE_HEADER, header))
    if "opentelemetry.trace" in sys.modules:  # only when the application uses it
        _inject_trace_context(out)
    if scope is not None and scope.trace_headers and not _has_traceparent(out):
        out.extend(scope.trace_headers)  # the incoming trace context goes on down
    return tuple(out)


def _has_traceparent(out: list[tuple[str, str | bytes]]) -> bool:
    return any(k == baggage.TRACEPARENT_HEADER for k, _ in out)


def _inject_trace_context(out: list[tuple[str, str | bytes]]) -> None:
    if _has_traceparent(out):
        return
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    out.extend(carrier.items())


def merge_trailers(s: Session, trailing: Any, policy: GlobalsPolicy | None = None) -> None:
    """Merge a callee's `lazy-globals-update` into the caller's session (with `policy`,
    only the changes it lets callees make)."""
    value = baggage.get_header(trailing, baggage.UPDATE_TRAILER)
    if not value:
        return
    try:
        # Flat values stay undecoded until code reads them: a hop that only passes `usage`
        # on never decodes it (checked here all the same).
        update = baggage.parse_baggage(value, defer=True, update=True)
    except (ValueError, RecursionError) as exc:
        # A peer's broken trailer must not fail a call that succeeded.
        _log.warning("a callee's %s was not merged: %s", baggage.UPDATE_TRAILER, exc)
        return
    if policy is not None:
        policy.from_callee(update.values, update.deleted)
    try:
        s.merge_update(update.values, update.deleted, update.entries)
    except (TypeError, ValueError, RecursionError) as exc:
        # e.g. the session would pass the baggage limits: the caller keeps what it had
        _log.warning("a callee's %s was not merged: %s", baggage.UPDATE_TRAILER, exc)


# -- the drivers lazygrpc's own clients use ------------------------------------------------


def unary(
    method: Any, request: Any, timeout: float | None, error: ErrorFactory, metadata: Any = None
) -> Any:
    """A sync unary call, cancellable by the parent call; `error` builds the raised error.
    `metadata` is the caller's own (its credentials for this target)."""
    out = OutgoingCall(metadata, timeout, error)
    future = method.future(request, metadata=out.metadata, timeout=out.timeout)
    with out.running(future):
        response = future.result()
        out.trailing = future.trailing_metadata()
    return response


async def aunary(
    method: Any, request: Any, timeout: float | None, error: ErrorFactory, metadata: Any = None
) -> Any:
    """The asyncio twin of `unary`; cancelling the awaiting task cancels the RPC."""
    out = OutgoingCall(metadata, timeout, error)
    call = method(request, metadata=seams.aio_metadata(out.metadata), timeout=out.timeout)
    with out.running(call):
        response = await call
        out.trailing = await seams.trailers(call)
    return response


def stream(
    method: Any,
    request: Any,
    timeout: float | None,
    error: ErrorFactory,
    metadata: Any = None,
    *,
    text: bool = False,
) -> Iterator[Any]:
    """A sync server stream; leaving the loop early cancels the RPC.

    `text=True` yields the non-empty `text` of each message instead of the message.
    """
    out = OutgoingCall(metadata, timeout, error)
    call = method(request, metadata=out.metadata, timeout=out.timeout)
    with out.running(call):
        yield from (_texts(call) if text else call)
        out.trailing = call.trailing_metadata()


def _texts(chunks: Iterator[Any]) -> Iterator[str]:
    return (chunk.text for chunk in chunks if chunk.text)


async def astream(
    method: Any,
    request: Any,
    timeout: float | None,
    error: ErrorFactory,
    metadata: Any = None,
    *,
    text: bool = False,
) -> AsyncIterator[Any]:
    """The asyncio twin of `stream`."""
    out = OutgoingCall(metadata, timeout, error)
    call = method(request, metadata=seams.aio_metadata(out.metadata), timeout=out.timeout)
    with out.running(call):
        # `read()` rather than `async for`: no generator of grpc's to resume per message.
        read = call.read
        while (item := await read()) is not grpc.aio.EOF:
            if not text:
                yield item
            elif item.text:
                yield item.text
        out.trailing = await seams.trailers(call)
