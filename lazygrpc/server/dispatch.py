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

from lazygrpc.core.errors import status_code_of

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
    `wrap(behavior, response_streaming)`."""
    changes = {}
    for field in _FIELDS:
        behavior = getattr(handler, field)
        if behavior is not None:
            changes[field] = wrap(behavior, handler.response_streaming)
    return handler._replace(**changes)


def _failed(hooks: Hooks, state: Any, context: Any, exc: BaseException) -> grpc.Status | None:
    """A call's behavior raised `exc`: the status to end the call with instead (None: `exc`
    propagates). Every driver ends a failed call here, and an ended one in `_ended`."""
    try:
        return hooks.error(state, context, exc) if isinstance(exc, HANDLED) else None
    finally:
        hooks.leave(state)  # however the error hook ends


def _ended(hooks: Hooks, state: Any, context: Any) -> grpc.Status | None:
    """A call's behavior ended well: the status to end the call with instead, if any."""
    hooks.leave(state)
    return hooks.done(state, context)


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
            try:
                inner = behavior(request, context)
                try:
                    async for item in inner:
                        yield item
                finally:
                    await inner.aclose()  # closed with us, not whenever it is collected
            except BaseException as exc:
                status = _failed(hooks, state, context, exc)
                if status is None:
                    raise
            else:
                status = _ended(hooks, state, context)
            if status is not None:
                await _abort(context, status)

        return agen

    if inspect.iscoroutinefunction(behavior):  # unary, or streaming by `context.write()`

        async def coroutine(request: Any, context: Any) -> Any:
            state = hooks.start(context)
            if type(state) is Refused:
                return await _abort(context, state.status)  # raises
            response = None
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                status = _failed(hooks, state, context, exc)
                if status is None:
                    raise
            else:
                status = _ended(hooks, state, context)
            if status is not None:
                await _abort(context, status)
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

    def started(context: Any, ctx: contextvars.Context) -> Any:
        state = ctx.run(hooks.start, context)
        if type(state) is Refused:
            context.abort_with_status(state.status)  # raises
        return state

    def end(status: grpc.Status | None, context: Any) -> None:
        if status is not None:
            context.abort_with_status(status)  # raises

    if not streaming:

        def unary(request: Any, context: Any) -> Any:
            ctx = contextvars.copy_context()
            state = started(context, ctx)
            response = None
            try:
                response = ctx.run(behavior, request, context)
            except BaseException as exc:
                status = _failed(hooks, state, context, exc)
                if status is None:
                    raise
            else:
                status = _ended(hooks, state, context)
            end(status, context)
            return response

        return unary

    def stream(request: Any, context: Any) -> Any:
        ctx = contextvars.copy_context()
        state = started(context, ctx)
        done = object()
        try:
            iterator = ctx.run(behavior, request, context)
            try:
                while (item := ctx.run(next, iterator, done)) is not done:
                    yield item
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    ctx.run(close)
        except BaseException as exc:
            status = _failed(hooks, state, context, exc)
            if status is None:
                raise
        else:
            status = _ended(hooks, state, context)
        end(status, context)

    return stream
