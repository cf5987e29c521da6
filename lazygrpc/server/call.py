"""The server call lifecycle: one incoming call from start to end, for every server.

    admit    a draining server refuses new calls (UNAVAILABLE); the gate counts the rest;
             the server's authenticator refuses calls without valid credentials
             (UNAUTHENTICATED, PERMISSION_DENIED: `lazygrpc.server.security`)
    bind     the call's scope from its headers (session, deadline, trace context), bound for
             the whole call; a bad header refuses it (INVALID_ARGUMENT, naming the header)
    run      the handler, in whichever of the four styles (`lazygrpc.server.dispatch`)
    failure  an escaping exception becomes a status with this hop's `CallFrame` in front of
             the chain from below
    leave    the drain gate counts the call out
    trailer  changed globals go back in `lazy-globals-update`
    log      a failed call is logged with its traceback, any call at debug as an access line
             (`lazygrpc.server.calllog`)

`Lifecycle.hooks(full_method)` is these steps for one method, as the dispatcher's `Hooks`:
`lazygrpc.Server`, and the interceptors for your own servers, wrap each handler with it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import grpc

from lazygrpc.core import baggage, chain, redaction
from lazygrpc.core.context import CallScope, bind_call
from lazygrpc.core.errors import InvalidArgument, ResourceExhausted, StatusError
from lazygrpc.core.session import Session, check_arrival
from lazygrpc.core.trust import GlobalsPolicy
from lazygrpc.server import calllog
from lazygrpc.server.admission import Limits
from lazygrpc.server.dispatch import Refused, aborted_by_handler, context_code
from lazygrpc.server.security import Authenticator, authorize

SKIP_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
HEALTH_PREFIX = "/grpc.health."
_OWN_HEADERS = frozenset(
    {
        baggage.SESSION_HEADER,
        baggage.BAGGAGE_HEADER,
        baggage.TRACEPARENT_HEADER,
        baggage.TRACESTATE_HEADER,
    }
)


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


#: The one logging check a call that succeeds pays (`Logger.isEnabledFor`, a cached lookup).
_ACCESS_ON = calllog.ACCESS_LOG.isEnabledFor
_DEBUG = logging.DEBUG

_SHUTTING_DOWN = Refused(_Status(grpc.StatusCode.UNAVAILABLE, "server is shutting down", ()))


class DrainGate:
    """Counts calls in flight; once draining, new calls are refused with UNAVAILABLE.

    grpc's own `stop(grace)` closes the listener and sends GOAWAY at once, so no client could
    ever read the NOT_SERVING that a graceful shutdown sets. `Server.stop()` drains here
    first (health and reflection keep answering), then stops grpc.
    """

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self.streams = 0  # of them, server-streaming calls (`Limits.max_streams`)
        self._idle: asyncio.Event | None = None  # made only while a drain waits

    def leave(self, streaming: bool = False) -> None:
        self.active -= 1
        if streaming:
            self.streams -= 1
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


def incoming_scope(
    service: str,
    method: str,
    invocation_metadata: Any,
    time_remaining: float | None,
    policy: GlobalsPolicy | None = None,
) -> CallScope:
    """The scope of a new call from its headers; `InvalidArgument` names a bad one. With a
    `policy`, only the globals it accepts arrive."""
    sid = header = traceparent = tracestate = None
    for key, value in invocation_metadata or ():
        if type(value) is str and len(value) > baggage.MAX_HEADER_BYTES:  # -bin are bytes
            raise InvalidArgument(
                f"{key}: {len(value)} bytes, over the limit of {baggage.MAX_HEADER_BYTES}"
            )
        if key not in _OWN_HEADERS:
            continue
        if key == baggage.SESSION_HEADER:
            if sid is not None:
                raise InvalidArgument(f"{key}: sent more than once (a call has one session)")
            sid = value
        elif key == baggage.BAGGAGE_HEADER:
            # W3C baggage may come in several headers: they are one list (empty ones add
            # nothing, RFC 9110 5.3), and the limits apply to all of it.
            if not header or header.isspace():
                header = value
            elif value and not value.isspace():
                header = f"{header},{value}"
        elif key == baggage.TRACEPARENT_HEADER:
            # Sent twice, it names no one trace: W3C says to restart it ("" forwards none).
            traceparent = value if traceparent is None else ""
        else:
            tracestate = value if tracestate is None else f"{tracestate},{value}"
    if policy is not None:
        header = policy.incoming(header)
    try:
        flat = check_arrival(sid, header)
    except ValueError as exc:  # a bad baggage header or session id, named
        raise InvalidArgument(str(exc)) from None
    scope = CallScope(None, service, method, time_remaining, sid, header, flat, policy)
    if traceparent is not None:
        scope.trace_headers = baggage.trace_headers(traceparent, tracestate)
        if scope.trace_headers:
            scope.trace_id = traceparent[3:35]
    return scope


class Lifecycle:
    """lazygrpc's call lifecycle for one server: its name, its traceback policy, its gate.

    `service` names this server in call chains (None: each method's service name, until
    `Server` learns its name). `expose_tracebacks` says whether callers are trusted with
    tracebacks, host names, pids and exception text: None (the default) trusts a call's
    peer when it is on loopback (`lazygrpc.core.redaction`); a caller not trusted gets its
    chain redacted by `redact` ("short" or "drop"). `sync=True` is for a sync
    `grpc.server`, where the end of a call is seen through `context.add_callback` rather
    than as a cancelled task. `auth` is the server's authenticator (None: every caller is
    admitted).
    """

    def __init__(
        self,
        service: str | None = None,
        *,
        expose_tracebacks: bool | None = None,
        redact: str = "short",
        gate: DrainGate | None = None,
        sync: bool = False,
        policy: GlobalsPolicy | None = None,
        limits: Limits | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self.service = service
        self.policy = policy
        #: Admission limits, counted in `gate` (`lazygrpc.server.admission`).
        self.limits = limits
        self.expose_tracebacks = expose_tracebacks
        self.redact = redaction.check_mode(redact)
        self.gate = gate
        self.sync = sync
        self.auth = auth

    def trusts(self, context: Any) -> bool:
        """Whether the caller of a call (its `ServicerContext`; None: unknown) is trusted."""
        if self.expose_tracebacks is not None:
            return self.expose_tracebacks
        try:
            peer = context.peer()
        except Exception:  # no context, or one without a peer: not trusted
            return False
        return isinstance(peer, str) and redaction.is_loopback_peer(peer)

    def hooks(self, full_method: str, streaming: bool = False) -> MethodCalls:
        """The lifecycle of the calls of one method (`lazygrpc.server.dispatch.Hooks`);
        `streaming`: its responses stream."""
        return MethodCalls(self, *chain.split_method(full_method), streaming)

    def hooks_for(self, full_method: str, streaming: bool = False) -> MethodCalls | Guard | None:
        """What runs around one method's calls: the whole lifecycle, or for health and
        reflection (as grpc ships them) the authenticator alone for reflection, nothing for
        health (open for probes) or when there is no authenticator (None)."""
        if not full_method.startswith(SKIP_PREFIXES):
            return self.hooks(full_method, streaming)
        if self.auth is None or full_method.startswith(HEALTH_PREFIX):
            return None
        return Guard(self, self.auth, full_method)

    def failure(self, scope: CallScope, exc: BaseException, context: Any = None) -> grpc.Status:
        """Status (code, message, details and globals trailers) for an escaping exception,
        redacted unless the caller (`context`'s peer) is trusted."""
        if isinstance(exc, grpc.RpcError):  # a child call made with a raw stub failed
            exc = chain.remote_error_from_rpc(exc)
        trusted = self.trusts(context)
        call_chain = chain.failure_chain(
            exc,
            service=scope.service,
            method=scope.method,
            session_id=scope.session.id,
            trace_id=scope.trace_id,
            expose_traceback=trusted,
        )
        status = chain.to_grpc_status(
            exc,
            call_chain,
            service=scope.service,
            method=scope.method,
            session_id=scope.session.id,
            redact=None if trusted else self.redact,
        )
        return _Status(status.code, status.details, trailers(scope, status.trailing_metadata))


def trailers(scope: CallScope, existing: Sequence[tuple[str, Any]] = ()) -> tuple[Any, ...]:
    """`existing` plus the globals update; on a failing call an update that would take the
    trailers past `chain.TRAILER_BUDGET_BYTES` is left out (the error matters more, and the
    caller keeps the globals it had)."""
    try:
        update = scope.update_trailer()
    except (ResourceExhausted, TypeError, ValueError):
        update = ""
    extra = ((baggage.UPDATE_TRAILER, update),) if update else ()
    out = (*tuple(existing or ()), *extra)
    if extra and not chain.fits_trailer_budget(out):
        return out[: -len(extra)]
    return out


class MethodCalls:
    """The lifecycle's steps for the calls of one method."""

    __slots__ = ("full_method", "lifecycle", "method", "service", "streaming")

    def __init__(
        self, lifecycle: Lifecycle, service: str, method: str, streaming: bool = False
    ) -> None:
        self.lifecycle = lifecycle
        self.full_method = f"/{service}/{method}"
        self.service = service.rsplit(".", 1)[-1]  # `ModuleService` until the server is named
        self.method = method
        self.streaming = streaming

    def start(self, context: Any) -> CallScope | Refused:
        """Admit the call and bind its scope, or the status that refuses it."""
        life, gate, limits = self.lifecycle, self.lifecycle.gate, self.lifecycle.limits
        remaining = context.time_remaining()
        if gate is not None:  # the gate counts the call in
            if gate.draining:
                return _SHUTTING_DOWN
            if limits is not None:
                busy = limits.refusal(gate.active, gate.streams, self.streaming)
                if busy is not None:
                    return self._refused(context, busy)
            gate.active += 1
            if self.streaming:
                gate.streams += 1
        if limits is not None:
            remaining = limits.deadline(remaining)
        try:
            metadata = context.invocation_metadata()
            if life.auth is not None:
                authorize(life.auth, metadata, self.full_method)
            scope = incoming_scope(
                life.service or self.service, self.method, metadata, remaining, life.policy
            )
        except Exception as exc:
            if gate is not None:
                gate.leave(self.streaming)
            if not isinstance(exc, StatusError):
                exc = InvalidArgument(f"request metadata: {exc}")
            return self._refused(context, exc)
        # In aio the wrapper and the handler share one task, so the binding holds for the
        # whole call, across every await and every yield; on a sync server this runs in the
        # call's own copied context.
        bind_call(scope)
        if scope.trace_headers and "opentelemetry.trace" in sys.modules:
            _continue_trace(scope)
        if life.sync:
            context.add_callback(scope.cancel)
        return scope

    def _refused(self, context: Any, exc: Exception) -> Refused:
        return _refusal(self.lifecycle, self.service, self.method, exc, context)

    def error(self, scope: CallScope, context: Any, exc: BaseException) -> grpc.Status | None:
        """Re-raise what must propagate (None); answer anything else with its status."""
        if aborted_by_handler(exc, context, sync=self.lifecycle.sync):
            code = context_code(context) or grpc.StatusCode.UNKNOWN
            calllog.failed(
                scope, context, _Status(code, calllog.context_details(context), ()), None
            )
            return None
        if _rpc_cancelled(exc, context, sync=self.lifecycle.sync):
            scope.cancel()  # the RPC itself was cancelled: stop its child calls
            if _ACCESS_ON(_DEBUG):
                calllog.access(scope, context, grpc.StatusCode.CANCELLED)
            return None
        # Any other CancelledError is one the RPC did not get (a task the handler awaited
        # was cancelled): re-raising it would leave the client waiting (grpc #29248).
        status = self.lifecycle.failure(scope, exc, context)
        calllog.failed(scope, context, status, exc)
        return status

    def leave(self, scope: CallScope) -> None:
        if self.lifecycle.gate is not None:
            self.lifecycle.gate.leave(self.streaming)

    def done(self, scope: CallScope, context: Any) -> grpc.Status | None:
        """Add `lazy-globals-update` to the trailers when the call changed a global; the
        error to answer with instead when the update is too large to send."""
        try:
            update = scope.update_trailer()
        except (ResourceExhausted, TypeError) as exc:  # too large, or changed into non-JSON
            status = self.lifecycle.failure(scope, exc, context)
            calllog.failed(scope, context, status, exc)
            return status
        if update:
            getter = getattr(context, "trailing_metadata", None)
            existing = tuple((getter() if getter else ()) or ())
            context.set_trailing_metadata((*existing, (baggage.UPDATE_TRAILER, update)))
        if _ACCESS_ON(_DEBUG):
            calllog.access(scope, context, context_code(context) or grpc.StatusCode.OK)
        return None


def _rpc_cancelled(exc: BaseException, context: Any, *, sync: bool) -> bool:
    """Whether `exc` ends a call whose client is gone: its task was cancelled by grpc, or
    (aio) whatever the handler raised after the client cancelled, such as the failure of a
    `context.write()`; grpc sends nothing more for it."""
    if isinstance(exc, GeneratorExit):
        return True
    if sync:
        return False
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0
    return bool(context.cancelled())


def _refusal(
    life: Lifecycle, service: str, method: str, exc: BaseException, context: Any
) -> Refused:
    """A call refused before its handler runs: its status, logged."""
    scope = CallScope(Session(), life.service or service, method, None)
    status = life.failure(scope, exc, context)
    calllog.failed(scope, context, status, exc)
    return Refused(status)


class Guard:
    """The lifecycle's authenticator alone, as `Hooks`: for the services that otherwise run
    as grpc ships them (reflection), so that they follow the server's auth."""

    __slots__ = ("auth", "full_method", "lifecycle")

    def __init__(self, lifecycle: Lifecycle, auth: Authenticator, full_method: str) -> None:
        self.lifecycle = lifecycle
        self.auth = auth
        self.full_method = full_method

    def start(self, context: Any) -> Refused | None:
        try:
            authorize(self.auth, context.invocation_metadata(), self.full_method)
        except StatusError as exc:
            service, method = chain.split_method(self.full_method)
            return _refusal(self.lifecycle, service, method, exc, context)
        return None

    def error(self, state: Any, context: Any, exc: BaseException) -> grpc.Status | None:
        return None

    def leave(self, state: Any) -> None:
        pass

    def done(self, state: Any, context: Any) -> grpc.Status | None:
        return None


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
