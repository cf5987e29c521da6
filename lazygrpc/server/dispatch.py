"""One dispatcher over the four handler styles, driving a server call lifecycle's hooks.

A grpc handler's behavior is an async generator, a coroutine (unary, or streaming through
`await context.write()`), a sync generator or a sync function. `aio_behavior` and
`sync_behavior` wrap any of them so that `Hooks` run around every call (on grpc.aio a sync
style becomes its async twin over a worker thread): lazygrpc's own lifecycle
(`lazygrpc.server.call`) and the tracing one (`lazygrpc.telemetry`) are both `Hooks`, so
the styles are written once, here.

Dispatching on the behavior itself rather than on `response_streaming` is what
OpenTelemetry's aio interceptor gets wrong (opentelemetry-python-contrib #3066): a streaming
handler may be a coroutine that writes, and must then be awaited, not iterated.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import grpc
import grpc.aio

from lazygrpc.core.errors import InvalidArgument, status_code_of
from lazygrpc.core.values import MAX_DEPTH

#: What the wrappers catch; KeyboardInterrupt and SystemExit are left alone.
HANDLED = (Exception, asyncio.CancelledError, GeneratorExit)
_FIELDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class Refused(NamedTuple):
    """What `Hooks.start` returns to refuse a call: the status to answer with."""

    status: grpc.Status


class Hooks(Protocol):
    """What a lifecycle does around one call of one method."""

    def start(self, context: Any) -> Any:
        """Per-call state, or `Refused(status)`. Runs in the call's own context (its task in
        aio, the copied context on a sync server)."""

    def error(self, state: Any, context: Any, exc: BaseException) -> grpc.Status | None:
        """The status to end a failed call with; None lets `exc` propagate."""

    def leave(self, state: Any) -> None:
        """The behavior has ended (either way): runs before an end status is sent."""

    def done(self, state: Any, context: Any) -> grpc.Status | None:
        """After a successful behavior: a status to end with instead (None: none)."""


def aborted_by_handler(exc: BaseException, context: Any, *, sync: bool) -> bool:
    """Whether `exc` is the handler's own `context.abort()`: aio raises `AbortError`; a sync
    server (`sync=True`) raises a bare `Exception` after setting the code."""
    if isinstance(exc, grpc.aio.AbortError):
        return True
    return sync and type(exc) is Exception and context.code() is not None


class Undecodable(NamedTuple):
    """A request whose bytes did not parse: what `checked_deserializer` hands the behavior,
    which answers INVALID_ARGUMENT (grpc itself would answer UNKNOWN "Unexpected
    DecodeError" and log a traceback)."""

    type_name: str
    reason: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            f"request is not a valid {self.type_name} ({self.reason}; values nest at most "
            f"{MAX_DEPTH} levels)"
        )


#: Requests larger than this are parsed on a worker thread, not on the event loop (and a
#: module's are turned into arguments there too). grpc itself refuses requests over
#: `grpc.max_receive_message_length` (16 MiB, `Server`).
OFF_LOOP_BYTES = 256 << 10


class Deferred(NamedTuple):
    """A large request's bytes, parsed by the driver on a worker thread (`parse`)."""

    deserialize: Callable[[bytes], Any]
    data: bytes

    def parse(self) -> Any:
        return self.deserialize(self.data)


def checked_deserializer(
    deserialize: Callable[[bytes], Any], *, streaming: bool = False
) -> Callable[[bytes], Any]:
    """`deserialize` returning an `Undecodable` for bytes it cannot parse, instead of raising;
    for a request stream (`streaming`), raising its `InvalidArgument`: a streamed request is
    deserialized as the handler reads it, so the error escapes the handler like its own."""
    cls = getattr(deserialize, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", None) or "request message"

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, or whatever a custom one raises
            bad = Undecodable(type_name, str(exc)[:200] or type(exc).__name__)
            if streaming:
                raise bad.error() from None
            return bad

    def checked(data: bytes) -> Any:
        if len(data) > OFF_LOOP_BYTES and not streaming:
            return Deferred(parse, data)
        return parse(data)

    checked.checks = True  # type: ignore[attr-defined]
    return checked


def context_code(context: Any) -> grpc.StatusCode | None:
    """The code set on a call's context so far (None: none yet)."""
    code = context.code()
    if isinstance(code, int):  # grpc.aio keeps the raw integer
        return _CODES_BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    return code if isinstance(code, grpc.StatusCode) else None


def end_code(context: Any, exc: BaseException | None, *, sync: bool) -> grpc.StatusCode:
    """The code a call ends with, as hooks see it: `exc` is what the behavior raised (None:
    it ended well), and what an inner lifecycle answered with is on the context."""
    if exc is None:
        return context_code(context) or grpc.StatusCode.OK
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    if aborted_by_handler(exc, context, sync=sync):
        return context_code(context) or grpc.StatusCode.UNKNOWN
    code = status_code_of(exc)
    return grpc.StatusCode.UNKNOWN if code == grpc.StatusCode.OK else code


def wrap_handler(handler: Any, wrap: Callable[[Callable[..., Any], bool], Any]) -> Any:
    """`handler` (a `grpc.RpcMethodHandler`) with each behavior replaced by
    `wrap(behavior, response_streaming)`, and its request deserializer by
    `checked_deserializer`'s (bad bytes get INVALID_ARGUMENT)."""
    changes = {}
    for field in _FIELDS:
        behavior = getattr(handler, field)
        if behavior is not None:
            changes[field] = wrap(behavior, handler.response_streaming)
    deserialize = handler.request_deserializer
    if deserialize is not None and not getattr(deserialize, "checks", False):
        changes["request_deserializer"] = checked_deserializer(
            deserialize, streaming=handler.request_streaming
        )
    return handler._replace(**changes)


class _Call:
    """One admitted call's run through `hooks`, as a context manager around its behavior,
    for every driver: leaving the block runs `leave` and decides how the call ends. An
    exception propagates, or is replaced by `status`, which the driver then sends."""

    __slots__ = ("context", "hooks", "state", "status")

    def __init__(self, hooks: Hooks, context: Any, state: Any) -> None:
        self.hooks = hooks
        self.context = context
        self.state = state  # what `hooks.start` made of the call
        self.status: grpc.Status | None = None

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        hooks, state = self.hooks, self.state
        if exc is None:
            hooks.leave(state)
            self.status = hooks.done(state, self.context)
            return False
        try:
            if isinstance(exc, HANDLED):
                self.status = hooks.error(state, self.context, exc)
            return self.status is not None  # else `exc` propagates
        finally:
            hooks.leave(state)  # however the error hook ends


async def _abort(context: Any, status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


# -- grpc.aio ------------------------------------------------------------------------------


def aio_behavior(behavior: Callable[..., Any], hooks: Hooks) -> Any:
    """`behavior` of any style, for a grpc.aio server, with `hooks` around every call.

    A sync behavior runs in a thread in a copy of the call's context (made once the hooks
    have bound the call: grpc #37881), as a coroutine or an async generator over it."""
    if inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: Any) -> Any:
            state = hooks.start(context)
            if type(state) is Refused:
                await _abort(context, state.status)  # raises
                return
            call = _Call(hooks, context, state)
            with call:
                if type(request) is Deferred:
                    request = await asyncio.to_thread(request.parse)
                if type(request) is Undecodable:
                    raise request.error()
                inner = behavior(request, context)
                try:
                    async for item in inner:
                        yield item
                finally:
                    await inner.aclose()  # closed with us, not whenever it is collected
            if call.status is not None:
                await _abort(context, call.status)

        return agen

    if inspect.iscoroutinefunction(behavior):  # unary, or streaming by `context.write()`

        async def coroutine(request: Any, context: Any) -> Any:
            state = hooks.start(context)
            if type(state) is Refused:
                return await _abort(context, state.status)  # raises
            response = None
            call = _Call(hooks, context, state)
            with call:
                if type(request) is Deferred:
                    request = await asyncio.to_thread(request.parse)
                if type(request) is Undecodable:
                    raise request.error()
                response = await behavior(request, context)
            if call.status is not None:
                await _abort(context, call.status)
            return response

        return coroutine

    if inspect.isgeneratorfunction(behavior):
        return aio_behavior(_stepped(behavior), hooks)
    return aio_behavior(_in_thread(behavior), hooks)


def _in_thread(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def in_thread(request: Any, context: Any) -> Any:
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, ctx.run, behavior, request, context)

    return in_thread


def _stepped(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def stepped(request: Any, context: Any) -> Any:
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        done = object()
        iterator = ctx.run(behavior, request, context)
        step: asyncio.Future[Any] | None = None

        def close() -> None:
            ctx.run(iterator.close)

        try:
            while True:
                step = loop.run_in_executor(None, ctx.run, next, iterator, done)  # type: ignore[arg-type]
                item = await step
                if item is done:
                    break
                yield item
        finally:
            if step is not None and not step.done():
                # The generator is still running in its thread: close it after that step,
                # never concurrently (one context cannot be entered twice).
                step.add_done_callback(lambda _: loop.run_in_executor(None, close))
            else:
                await loop.run_in_executor(None, close)

    return stepped


# -- sync grpc.server ----------------------------------------------------------------------


def sync_behavior(behavior: Callable[..., Any], streaming: bool, hooks: Hooks) -> Any:
    """`behavior` (a function, or one returning a response iterator when `streaming`) for a
    sync `grpc.server`, with `hooks` around every call. Each call runs in a context of its
    own, so the hooks' bindings hold for its every step."""

    def started(context: Any, ctx: contextvars.Context) -> _Call:
        state = ctx.run(hooks.start, context)
        if type(state) is Refused:
            context.abort_with_status(state.status)  # raises
        return _Call(hooks, context, state)

    def end(call: _Call) -> None:
        if call.status is not None:
            call.context.abort_with_status(call.status)  # raises

    if not streaming:

        def unary(request: Any, context: Any) -> Any:
            ctx = contextvars.copy_context()
            call = started(context, ctx)
            response = None
            with call:
                if type(request) is Deferred:
                    request = request.parse()
                if type(request) is Undecodable:
                    raise request.error()
                response = ctx.run(behavior, request, context)
            end(call)
            return response

        return unary

    def stream(request: Any, context: Any) -> Any:
        ctx = contextvars.copy_context()
        call = started(context, ctx)
        done = object()
        with call:
            if type(request) is Deferred:
                request = request.parse()
            if type(request) is Undecodable:
                raise request.error()
            iterator = ctx.run(behavior, request, context)
            try:
                while (item := ctx.run(next, iterator, done)) is not done:
                    yield item
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    ctx.run(close)
        end(call)

    return stream
