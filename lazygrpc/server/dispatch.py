"""One dispatcher over the four handler styles, driving a server call lifecycle's hooks.

A grpc handler's behavior is an async generator, a coroutine (unary, or streaming through
`await context.write()`), a sync generator or a sync function. `aio_behavior` and
`sync_behavior` wrap any of them in a behavior of the same style that runs `Hooks` around
it: lazygrpc's own lifecycle (`lazygrpc.server.call`) and the tracing one
(`lazygrpc.telemetry`) are both `Hooks`, so the styles are written once, here.

Dispatching on the behavior itself rather than on `response_streaming` is what
OpenTelemetry's aio interceptor gets wrong (opentelemetry-python-contrib #3066): a streaming
handler may be a coroutine that writes, and must then be awaited, not iterated.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable
from typing import Any, Protocol

import grpc
import grpc.aio

#: What the wrappers catch; KeyboardInterrupt and SystemExit are left alone.
HANDLED = (Exception, asyncio.CancelledError, GeneratorExit)
_FIELDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


class Hooks(Protocol):
    """What a lifecycle does around one call of one method."""

    def start(self, context: Any) -> Any:
        """Per-call state, or a `grpc.Status` that refuses the call. Runs in the call's own
        context (its task in aio, the copied context on a sync server)."""

    def error(self, state: Any, context: Any, exc: BaseException) -> grpc.Status | None:
        """The status to end a failed call with; None lets `exc` propagate."""

    def leave(self, state: Any) -> None:
        """The behavior has ended (either way): runs before `error`'s status is sent."""

    def done(self, state: Any, context: Any) -> grpc.Status | None:
        """After a successful behavior: a status to end with instead (None: none)."""


def aborted_by_handler(exc: BaseException, context: Any) -> bool:
    """Whether `exc` is the handler's own `context.abort()`: aio raises `AbortError`; the sync
    server raises a bare `Exception` after setting the code."""
    if isinstance(exc, grpc.aio.AbortError):
        return True
    return type(exc) is Exception and context.code() is not None


def wrap_handler(handler: Any, wrap: Callable[[Callable[..., Any], bool], Any]) -> Any:
    """`handler` (a `grpc.RpcMethodHandler`) with each behavior replaced by
    `wrap(behavior, response_streaming)`."""
    changes = {}
    for field in _FIELDS:
        behavior = getattr(handler, field)
        if behavior is not None:
            changes[field] = wrap(behavior, handler.response_streaming)
    return handler._replace(**changes)


# -- grpc.aio ------------------------------------------------------------------------------


async def _refuse(context: Any, status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _end(hooks: Hooks, state: Any, context: Any, status: grpc.Status | None) -> None:
    if status is None:
        status = hooks.done(state, context)
    if status is not None:
        await _refuse(context, status)


def aio_behavior(behavior: Callable[..., Any], hooks: Hooks) -> Any:
    """`behavior` of any style, for a grpc.aio server, with `hooks` around every call."""
    if inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: Any) -> Any:
            state = hooks.start(context)
            if isinstance(state, grpc.Status):
                await _refuse(context, state)
                return
            status = None
            inner = behavior(request, context)
            try:
                async for item in inner:
                    yield item
            except HANDLED as exc:
                if (status := hooks.error(state, context, exc)) is None:
                    raise
            finally:
                hooks.leave(state)
                await inner.aclose()  # closed with us, not whenever it is collected
            await _end(hooks, state, context, status)

        return agen

    if inspect.iscoroutinefunction(behavior):  # unary, or streaming by `context.write()`

        async def coroutine(request: Any, context: Any) -> Any:
            state = hooks.start(context)
            if isinstance(state, grpc.Status):
                return await _refuse(context, state)
            status = response = None
            try:
                response = await behavior(request, context)
            except HANDLED as exc:
                if (status := hooks.error(state, context, exc)) is None:
                    raise
            finally:
                hooks.leave(state)
            await _end(hooks, state, context, status)
            return response

        return coroutine

    if inspect.isgeneratorfunction(behavior):

        async def sync_gen(request: Any, context: Any) -> Any:
            state = hooks.start(context)
            if isinstance(state, grpc.Status):
                await _refuse(context, state)
                return
            # A sync behavior runs in a thread: carry the call's context there (grpc #37881).
            ctx = contextvars.copy_context()
            loop = asyncio.get_running_loop()
            done = object()
            iterator = ctx.run(behavior, request, context)
            step: asyncio.Future[Any] | None = None
            status = None

            def close() -> None:
                ctx.run(iterator.close)

            try:
                while True:
                    step = loop.run_in_executor(None, ctx.run, next, iterator, done)  # type: ignore[arg-type]
                    item = await step
                    if item is done:
                        break
                    yield item
            except HANDLED as exc:
                if (status := hooks.error(state, context, exc)) is None:
                    raise
            finally:
                hooks.leave(state)
                if step is not None and not step.done():
                    # The generator is still running in its thread: close it after that
                    # step, never concurrently (one context cannot be entered twice).
                    step.add_done_callback(lambda _: loop.run_in_executor(None, close))
                else:
                    await loop.run_in_executor(None, close)
            await _end(hooks, state, context, status)

        return sync_gen

    async def function(request: Any, context: Any) -> Any:
        state = hooks.start(context)
        if isinstance(state, grpc.Status):
            return await _refuse(context, state)
        ctx = contextvars.copy_context()  # a thread again (grpc #37881)
        status = response = None
        try:
            loop = asyncio.get_running_loop()
            response = await loop.run_in_executor(None, ctx.run, behavior, request, context)
        except HANDLED as exc:
            if (status := hooks.error(state, context, exc)) is None:
                raise
        finally:
            hooks.leave(state)
        await _end(hooks, state, context, status)
        return response

    return function


# -- sync grpc.server ----------------------------------------------------------------------


def sync_behavior(behavior: Callable[..., Any], streaming: bool, hooks: Hooks) -> Any:
    """`behavior` (a function, or one returning a response iterator when `streaming`) for a
    sync `grpc.server`, with `hooks` around every call. Each call runs in a context of its
    own, so the hooks' bindings hold for its every step."""

    def begin(context: Any) -> tuple[Any, contextvars.Context]:
        ctx = contextvars.copy_context()
        state = ctx.run(hooks.start, context)
        if isinstance(state, grpc.Status):
            context.abort_with_status(state)  # raises
        return state, ctx

    def end(state: Any, context: Any, status: grpc.Status | None) -> None:
        if status is None:
            status = hooks.done(state, context)
        if status is not None:
            context.abort_with_status(status)

    if not streaming:

        def unary(request: Any, context: Any) -> Any:
            state, ctx = begin(context)
            status = response = None
            try:
                response = ctx.run(behavior, request, context)
            except Exception as exc:
                if (status := hooks.error(state, context, exc)) is None:
                    raise
            finally:
                hooks.leave(state)
            end(state, context, status)
            return response

        return unary

    def stream(request: Any, context: Any) -> Any:
        state, ctx = begin(context)
        status = iterator = None
        done = object()
        try:
            iterator = ctx.run(behavior, request, context)
            while (item := ctx.run(next, iterator, done)) is not done:
                yield item
        except Exception as exc:
            if (status := hooks.error(state, context, exc)) is None:
                raise
        finally:
            hooks.leave(state)
            close = getattr(iterator, "close", None)
            if close is not None:
                ctx.run(close)
        end(state, context, status)

    return stream
