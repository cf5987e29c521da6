"""Server interceptors (sync `grpc.server` and `grpc.aio.server`) over one shared core.

For every call they bind the session and the call scope (deadline, child calls, topic) for
the whole call — every step of a streaming response too, in both aio handler styles (async
generator and `await context.write()`, grpc #28728) — turn an escaping exception into a
status with a `CallChain`, and return changed globals in the `lazy-globals-update` trailer.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc
import grpc.aio

from lazygrpc import chain, metadata
from lazygrpc import session as sessions
from lazygrpc.calls import CallScope, bind_call
from lazygrpc.errors import InvalidArgument, RemoteError, ResourceExhausted

_SKIP_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
# The per-call header loop reads these as plain globals.
_SESSION_HEADER = metadata.SESSION_HEADER
_BAGGAGE_HEADER = metadata.BAGGAGE_HEADER
_TRACEPARENT_HEADER = metadata.TRACEPARENT_HEADER
_OWN_HEADERS = frozenset(
    {_SESSION_HEADER, _BAGGAGE_HEADER, _TRACEPARENT_HEADER, metadata.TRACESTATE_HEADER}
)
_MAX_HEADER = metadata.MAX_HEADER_BYTES
_bound_session = sessions._current.get
_MAX_SID = metadata.MAX_SESSION_ID
_KNOWN_HEADERS = metadata._KNOWN
_FIELDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


class ServerCore:
    """Decisions shared by the sync and asyncio interceptors; no I/O."""

    def __init__(self, service: str | None = None, *, expose_tracebacks: bool = False) -> None:
        self.service = service
        self.expose_tracebacks = expose_tracebacks
        self._names: dict[str, tuple[str, str]] = {}

    def begin(
        self, full_method: str, invocation_metadata: Any, time_remaining: float | None
    ) -> CallScope:
        """Scope for a new call; `InvalidArgument` names a bad header."""
        sid = baggage = traceparent = tracestate = None
        for key, value in invocation_metadata or ():
            if len(value) > _MAX_HEADER and type(value) is str:  # -bin values are bytes
                raise InvalidArgument(f"{key}: {len(value)} bytes, over the limit of {_MAX_HEADER}")
            if key not in _OWN_HEADERS:
                continue
            if key == _SESSION_HEADER:
                if sid is not None:
                    raise InvalidArgument(f"{key}: sent more than once (a call has one session)")
                sid = value
            elif key == _BAGGAGE_HEADER:
                # W3C baggage may come in several headers: they are one list (empty ones
                # add nothing, RFC 9110 5.3), and the limits apply to all of it.
                if not baggage or baggage.isspace():
                    baggage = value
                elif value and not value.isspace():
                    baggage = f"{baggage},{value}"
            elif key == _TRACEPARENT_HEADER:
                # Sent twice, it names no one trace: W3C says to restart it ("" forwards none).
                traceparent = value if traceparent is None else ""
            else:
                tracestate = value if tracestate is None else f"{tracestate},{value}"
        if sid is None and not baggage:
            args = None
        elif (sid is None or (sid.isalnum() and sid.isascii() and len(sid) <= _MAX_SID)) and (
            not baggage or baggage in _KNOWN_HEADERS
        ):
            args = (sid, baggage, True)  # `sessions.check_headers`' common case, inline
        else:
            try:
                args = sessions.check_headers(sid, baggage)
            except ValueError as exc:  # a bad baggage header or session id, named
                raise InvalidArgument(str(exc)) from None
        names = self._names.get(full_method)
        if names is None:
            service, method = chain.split_method(full_method)
            names = self._names[full_method] = (service.rsplit(".", 1)[-1], method)
        # The session itself is made when code first asks for it (`CallScope.session`).
        scope = CallScope(None, self.service or names[0], names[1], time_remaining)
        scope._session_args = args
        if traceparent is not None:
            scope.trace_headers = metadata.trace_headers(traceparent, tracestate)
            if scope.trace_headers:
                scope.trace_id = traceparent[3:35]
        return scope

    def trailers(
        self, scope: CallScope, existing: Sequence[tuple[str, Any]] = ()
    ) -> tuple[Any, ...]:
        """`existing` plus the globals update; on a failing call an oversize update is left
        out (the error matters more, and the caller keeps the globals it had)."""
        try:
            update = scope.update_trailer()
        except ResourceExhausted:
            update = ""
        extra = ((metadata.UPDATE_TRAILER, update),) if update else ()
        return (*tuple(existing or ()), *extra)

    def failure(self, scope: CallScope, exc: BaseException) -> grpc.Status:
        """Status (code, message, details and globals trailers) for an escaping exception."""
        if isinstance(exc, grpc.RpcError):
            # A child call made with a raw stub failed: read its status like a lazygrpc client.
            exc = chain.remote_error_from_rpc(exc)
        frame = chain.make_frame(
            exc,
            service=scope.service,
            method=scope.method,
            session_id=scope.session.id,
            trace_id=scope.trace_id,
            expose_traceback=self.expose_tracebacks,
        )
        below = exc.chain if isinstance(exc, RemoteError) else []
        elided = exc.elided_frames if isinstance(exc, RemoteError) else 0
        status = chain.to_grpc_status(
            exc,
            chain.extend_chain(frame, below, elided),
            service=scope.service,
            method=scope.method,
            session_id=scope.session.id,
        )
        return _Status(status.code, status.details, self.trailers(scope, status.trailing_metadata))

    def rejection(self, full_method: str, exc: InvalidArgument) -> grpc.Status:
        """The status for a call refused before it started (bad headers), with its chain."""
        service, method = chain.split_method(full_method)
        scope = CallScope(
            sessions.Session(), self.service or service.rsplit(".", 1)[-1], method, None
        )
        return self.failure(scope, exc)

    def skips(self, full_method: str) -> bool:
        return full_method.startswith(_SKIP_PREFIXES)


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


_SHUTTING_DOWN = _Status(grpc.StatusCode.UNAVAILABLE, "server is shutting down", ())


def _enter(scope: CallScope) -> None:
    # The call's session is the scope's (`sessions.current()`); one bound around the server
    # (a server started inside `with session()`) must not stand in for it.
    if _bound_session() is not None:
        sessions.bind(None)
    bind_call(scope)
    if scope.trace_headers and "opentelemetry.trace" in sys.modules:
        _continue_trace(scope)


def _continue_trace(scope: CallScope) -> None:
    """Make the incoming trace context OpenTelemetry's current context for the call.

    A span that the handler, our tracing or an OpenTelemetry client interceptor starts then
    continues the caller's trace, and what OpenTelemetry injects downstream is one
    consistent traceparent/tracestate pair. The context belongs to the call's task (aio) or
    to the copy the handler runs in (sync), so nothing is detached.
    """
    from opentelemetry import context as otel_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    otel_context.attach(TraceContextTextMapPropagator().extract(dict(scope.trace_headers)))


def _existing_trailers(context: Any) -> Any:
    getter = getattr(context, "trailing_metadata", None)
    return (getter() if getter else ()) or ()


def _update_error(scope: CallScope, context: Any) -> ResourceExhausted | None:
    """Add `lazy-globals-update` to a successful call's trailers when it changed a global;
    the error to answer with instead when the update is too large to send."""
    try:
        update = scope.update_trailer()
    except ResourceExhausted as exc:
        return exc
    if update:
        existing = tuple(_existing_trailers(context))
        context.set_trailing_metadata((*existing, (metadata.UPDATE_TRAILER, update)))
    return None


def _wrap_handler(handler: Any, wrap: Callable[[Callable[..., Any], bool], Any]) -> Any:
    changes = {}
    for field in _FIELDS:
        behavior = getattr(handler, field)
        if behavior is not None:
            changes[field] = wrap(behavior, handler.response_streaming)
    return handler._replace(**changes)


class ServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """lazygrpc's interceptor for a sync `grpc.server`."""

    def __init__(self, service: str | None = None, *, expose_tracebacks: bool = False) -> None:
        self.core = ServerCore(service, expose_tracebacks=expose_tracebacks)

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """Implementation of grpc.ServerInterceptor; not part of the lazygrpc API."""
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or self.core.skips(method):
            return handler
        # This runs on grpc's polling thread under a lock: only build wrappers here.
        return _wrap_handler(handler, lambda b, streaming: self._wrap(b, streaming, method))

    def _start(self, method: str, context: Any) -> tuple[CallScope, contextvars.Context]:
        try:
            scope = self.core.begin(method, context.invocation_metadata(), context.time_remaining())
        except Exception as exc:
            context.abort_with_status(self.core.rejection(method, _as_invalid(exc)))
        ctx = contextvars.copy_context()
        ctx.run(_enter, scope)
        context.add_callback(scope.cancel)
        return scope, ctx

    def _fail(self, scope: CallScope, context: Any, exc: Exception) -> None:
        if type(exc) is Exception and context.code() is not None:
            raise exc  # the handler called context.abort() itself
        context.abort_with_status(self.core.failure(scope, exc))

    def _succeed(self, scope: CallScope, context: Any) -> None:
        if (error := _update_error(scope, context)) is not None:
            context.abort_with_status(self.core.failure(scope, error))

    def _wrap(self, behavior: Callable[..., Any], streaming: bool, method: str) -> Any:
        if not streaming:

            def unary(request: Any, context: Any) -> Any:
                scope, ctx = self._start(method, context)
                try:
                    response = ctx.run(behavior, request, context)
                except Exception as exc:
                    self._fail(scope, context, exc)
                self._succeed(scope, context)
                return response

            return unary

        def stream(request: Any, context: Any) -> Any:
            scope, ctx = self._start(method, context)
            iterator = None
            try:
                iterator = ctx.run(behavior, request, context)
                while True:
                    try:
                        item = ctx.run(next, iterator)
                    except StopIteration:
                        break
                    yield item
            except Exception as exc:
                self._fail(scope, context, exc)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    ctx.run(close)
            self._succeed(scope, context)

        return stream


class DrainGate:
    """Counts calls in flight; once draining, new calls are refused with UNAVAILABLE.

    grpc's own `stop(grace)` closes the listener and sends GOAWAY at once, so no client could
    ever read the NOT_SERVING that a graceful shutdown sets. `Server.stop()` drains here
    first (health and reflection keep answering), then stops grpc. Per call it is two
    integer updates; the idle event exists only while a drain waits for it.
    """

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> bool:
        if self.draining:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1
        if self._idle is not None and not self.active:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) until no call is in flight."""
        if not self.active:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass


class AioServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """lazygrpc's interceptor for a `grpc.aio.server`."""

    def __init__(
        self,
        service: str | None = None,
        *,
        expose_tracebacks: bool = False,
        gate: DrainGate | None = None,
    ) -> None:
        self.core = ServerCore(service, expose_tracebacks=expose_tracebacks)
        self.gate = gate or DrainGate()
        self._cache: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """Implementation of grpc.aio.ServerInterceptor; not part of the lazygrpc API."""
        handler = await continuation(handler_call_details)
        return self.wrap(handler, handler_call_details.method)

    def wrap(self, handler: Any, full_method: str) -> Any:
        """`handler` with lazygrpc's per-call layer; the same wrapper is reused per handler
        (a call of a method seen before is one dict lookup here)."""
        cached = self._cache.get(full_method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if handler is None or self.core.skips(full_method):
            return handler
        wrapped = _wrap_handler(handler, lambda b, streaming: self._wrap(b, streaming, full_method))
        self._cache[full_method] = (handler, wrapped)
        return wrapped

    def _admit(self, method: str, context: Any) -> CallScope | grpc.Status:
        """Admit the call (counted by the gate until the wrapper ends) and bind its scope, or
        the status that refuses it (`_refuse` sends it). No await on the way in."""
        gate = self.gate  # `gate.enter()`, inline
        if gate.draining:
            return _SHUTTING_DOWN
        gate.active += 1
        try:
            scope = self.core.begin(method, context.invocation_metadata(), context.time_remaining())
        except Exception as exc:
            self.gate.leave()
            return self.core.rejection(method, _as_invalid(exc))
        # In aio the interceptor's wrapper and the handler share one task, so these bindings
        # hold for the whole call, across every await and every yield (`_enter`, inline).
        if _bound_session() is not None:
            sessions.bind(None)
        bind_call(scope)
        if scope.trace_headers and "opentelemetry.trace" in sys.modules:
            _continue_trace(scope)
        return scope

    @staticmethod
    async def _refuse(context: Any, status: grpc.Status) -> NoReturn:
        await context.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("unreachable: abort() raises")

    async def _fail(self, scope: CallScope, context: Any, exc: BaseException) -> None:
        status = self.core.failure(scope, exc)
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def _on_error(self, scope: CallScope, context: Any, exc: BaseException) -> None:
        """Re-raise what must propagate; answer anything else with its status."""
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        if isinstance(exc, GeneratorExit | asyncio.CancelledError):
            task = asyncio.current_task()
            if isinstance(exc, GeneratorExit) or (task is not None and task.cancelling()):
                scope.cancel()  # the RPC itself was cancelled: stop its child calls
                raise exc
            # A CancelledError the RPC did not get (a task the handler awaited was
            # cancelled): re-raising it would leave the client waiting (grpc #29248).
        await self._fail(scope, context, exc)

    def _wrap(self, behavior: Callable[..., Any], streaming: bool, method: str) -> Any:
        if not streaming:
            is_async = inspect.iscoroutinefunction(behavior)

            async def unary(request: Any, context: Any) -> Any:
                scope = self._admit(method, context)
                if not isinstance(scope, CallScope):
                    await self._refuse(context, scope)
                try:
                    if is_async:
                        response = await behavior(request, context)
                    else:  # a sync handler runs in a thread: carry the context (#37881)
                        ctx = contextvars.copy_context()
                        loop = asyncio.get_running_loop()
                        response = await loop.run_in_executor(
                            None, ctx.run, behavior, request, context
                        )
                except _HANDLED as exc:
                    await self._on_error(scope, context, exc)
                finally:
                    self.gate.leave()
                if (error := _update_error(scope, context)) is not None:
                    await self._fail(scope, context, error)
                return response

            return unary

        if inspect.isasyncgenfunction(behavior):

            async def agen_stream(request: Any, context: Any) -> Any:
                scope = self._admit(method, context)
                if not isinstance(scope, CallScope):
                    await self._refuse(context, scope)
                inner = behavior(request, context)
                try:
                    async for item in inner:
                        yield item
                except _HANDLED as exc:
                    await self._on_error(scope, context, exc)
                finally:
                    self.gate.leave()
                    await inner.aclose()  # closed with us, not whenever it is collected
                if (error := _update_error(scope, context)) is not None:
                    await self._fail(scope, context, error)

            return agen_stream

        if inspect.isgeneratorfunction(behavior):

            async def sync_gen_stream(request: Any, context: Any) -> Any:
                scope = self._admit(method, context)
                if not isinstance(scope, CallScope):
                    await self._refuse(context, scope)
                ctx = contextvars.copy_context()
                loop = asyncio.get_running_loop()
                done = object()
                iterator = ctx.run(behavior, request, context)
                step: asyncio.Future[Any] | None = None

                def next_item() -> Any:
                    return ctx.run(next, iterator, done)

                def close() -> None:
                    ctx.run(iterator.close)

                try:
                    while True:
                        step = loop.run_in_executor(None, next_item)
                        item = await step
                        if item is done:
                            break
                        yield item
                except _HANDLED as exc:
                    await self._on_error(scope, context, exc)
                finally:
                    self.gate.leave()
                    if step is not None and not step.done():
                        # The generator is still running in its thread: close it after that
                        # step, never concurrently (one context cannot be entered twice).
                        step.add_done_callback(lambda _: loop.run_in_executor(None, close))
                    else:
                        await loop.run_in_executor(None, close)
                if (error := _update_error(scope, context)) is not None:
                    await self._fail(scope, context, error)

            return sync_gen_stream

        async def write_stream(request: Any, context: Any) -> None:
            scope = self._admit(method, context)
            if not isinstance(scope, CallScope):
                await self._refuse(context, scope)
            try:
                await behavior(request, context)
            except _HANDLED as exc:
                await self._on_error(scope, context, exc)
            finally:
                self.gate.leave()
            if (error := _update_error(scope, context)) is not None:
                await self._fail(scope, context, error)

        return write_stream


#: What the aio wrappers catch; KeyboardInterrupt and SystemExit are left alone.
_HANDLED = (Exception, asyncio.CancelledError, GeneratorExit)


def _as_invalid(exc: Exception) -> InvalidArgument:
    return exc if isinstance(exc, InvalidArgument) else InvalidArgument(f"request metadata: {exc}")


def server_interceptors(
    service: str | None = None,
    *,
    aio: bool = True,
    expose_tracebacks: bool = False,
    telemetry: bool = False,
) -> list[Any]:
    """The lazygrpc interceptors for your own server (`grpc.server` when `aio=False`).

    `telemetry=True` adds a span per call (extra `otel`; see `lazygrpc.telemetry`).
    """
    cls = AioServerInterceptor if aio else ServerInterceptor
    interceptors: list[Any] = [cls(service, expose_tracebacks=expose_tracebacks)]
    if telemetry:
        from lazygrpc.telemetry import server_interceptor

        interceptors.append(server_interceptor(aio=aio))
    return interceptors
