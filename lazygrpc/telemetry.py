"""OpenTelemetry spans for every hop (extra `otel`): one SERVER span per call, one trace.

The span is started from the caller's W3C `traceparent`, is current while the handler runs
(so the client interceptor's `traceparent` on child calls continues the trace), carries
`session.id` and the module or model name, and records a failure's `CallChain` as span
events, entry first.

Why not `opentelemetry-instrumentation-grpc`'s server interceptors: the aio one iterates
every response-streaming behavior with `async for`, which breaks `await context.write()`
handlers, the async health `Watch` included (opentelemetry-python-contrib #3066); and it
knows nothing of sessions or chains. Its sync client loses `.cancel()` on server streams
(#2014). So a span is `Hooks` of lazygrpc's own dispatcher (`lazygrpc.server.dispatch`),
which keeps each behavior's style: a coroutine stays a coroutine, an async generator an
async generator, sync ones stay sync.

Install it right after lazygrpc's own server interceptor (`Server(telemetry=True)` and
`server_interceptors(telemetry=True)` do): it then runs inside the call scope, so the
session and the module name are known, and inside a context that ends with the call.

Where spans go (`install_provider`): to the application's tracer provider when it set one;
else lazygrpc sets one up from the standard `OTEL_*` variables (`OTEL_TRACES_EXPORTER`:
`otlp`, the default, over gRPC to `OTEL_EXPORTER_OTLP_ENDPOINT`; `console`; `none`), with
batching, and `shutdown_provider` flushes it when the server stops (docs/telemetry.md).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "lazygrpc telemetry needs OpenTelemetry, which is not installed: "
        "pip install 'lazygrpc[otel]'"
    ) from exc

import grpc
import grpc.aio

from lazygrpc.core import chain
from lazygrpc.core.context import CallScope, current_call
from lazygrpc.core.errors import SERVER_FAULT_CODES
from lazygrpc.server.call import SKIP_PREFIXES
from lazygrpc.server.calllog import context_details
from lazygrpc.server.dispatch import (
    aborted_by_handler,
    aio_behavior,
    end_code,
    sync_behavior,
    wrap_handler,
)
from lazygrpc.v1 import chain_pb2
from lazygrpc.version import __version__

TRACER_NAME = "lazygrpc"
FRAME_EVENT = "lazygrpc.call_frame"
MODULE_SERVICE = "lazygrpc.v1.ModuleService"
MODEL_SERVICE = "lazygrpc.v1.ModelService"

#: Codes that mark a SERVER span as an error (OpenTelemetry semantic conventions for gRPC).
SERVER_ERROR_CODES = SERVER_FAULT_CODES

#: What `OTEL_TRACES_EXPORTER` may name (comma-separated, as the OpenTelemetry SDK reads it).
EXPORTERS = ("otlp", "console", "none")
#: Seconds a stopping server waits for its last spans to be exported.
FLUSH_TIMEOUT = 5.0

_PROPAGATOR = TraceContextTextMapPropagator()

Attributes = dict[str, str | int]


# -- pure helpers --------------------------------------------------------------------------


def trace_carrier(invocation_metadata: Any) -> dict[str, str]:
    """The W3C trace context headers of a call's metadata, as a propagator carrier.

    Several `tracestate` headers are one list; a `traceparent` sent twice names no one
    trace, so the carrier is empty and the trace restarts (W3C trace context).
    """
    carrier: dict[str, str] = {}
    for key, value in invocation_metadata or ():
        if key not in _PROPAGATOR.fields or not isinstance(value, str):
            continue
        if key not in carrier:
            carrier[key] = value
        elif key == "tracestate":
            carrier[key] = f"{carrier[key]},{value}"
        else:
            return {}
    return carrier


def start_attributes(full_method: str, scope: CallScope | None) -> Attributes:
    """Attributes known when the call starts: rpc.*, the serving name, `session.id`."""
    service, method = chain.split_method(full_method)
    attributes: Attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    if scope is not None:
        attributes["lazygrpc.service"] = scope.service
        attributes["session.id"] = scope.session.id
    return attributes


def end_attributes(full_method: str, scope: CallScope | None) -> Attributes:
    """Attributes known only once the handler ran: the module the request named (the module
    servicer writes it into `CallScope.method`) or the model that served it."""
    service, method = chain.split_method(full_method)
    if scope is None:
        return {}
    if service == MODULE_SERVICE and scope.method != method:
        return {"lazygrpc.module": scope.method}
    if service == MODEL_SERVICE:
        return {"lazygrpc.model": scope.service}
    return {}


def frame_event(index: int, frame: chain_pb2.CallFrame) -> tuple[Attributes, int | None]:
    """Attributes and timestamp (ns) of the span event for one frame of a `CallChain`."""
    attributes: Attributes = {
        "lazygrpc.frame.index": index,
        "lazygrpc.frame.service": frame.service,
        "lazygrpc.frame.method": frame.method,
        "lazygrpc.frame.host": frame.host,
        "lazygrpc.frame.pid": frame.pid,
        "lazygrpc.frame.session_id": frame.session_id,
        "lazygrpc.frame.trace_id": frame.trace_id,
        "exception.type": frame.error_type,
        "exception.message": frame.message,
    }
    if frame.traceback:
        attributes["exception.stacktrace"] = frame.traceback
    timestamp = frame.time.ToNanoseconds() if frame.HasField("time") else None
    return attributes, timestamp


# -- one span per call ---------------------------------------------------------------------


class HopSpan:
    """The SERVER span of one incoming call, current from `__init__` until the call ends."""

    __slots__ = ("full_method", "scope", "span", "sync")

    def __init__(self, tracer: trace.Tracer, full_method: str, context: Any, sync: bool) -> None:
        self.full_method = full_method
        self.sync = sync
        self.scope = current_call()
        parent = _PROPAGATOR.extract(trace_carrier(context.invocation_metadata()))
        self.span = tracer.start_span(
            full_method.lstrip("/"),
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes=start_attributes(full_method, self.scope),
        )
        # Not detached: this runs in the call's own context (the call's task in aio, the
        # per-call `ctx.run` of lazygrpc's interceptor otherwise), which ends with the call;
        # a generator may be closed from another context, where detaching would fail.
        otel_context.attach(trace.set_span_in_context(self.span))

    def end(self, context: Any, exc: BaseException | None = None) -> None:
        """Record the outcome (status, chain events) and end the span."""
        span = self.span
        try:
            span.set_attributes(end_attributes(self.full_method, self.scope))
            code = end_code(context, exc, sync=self.sync)
            if exc is None or aborted_by_handler(exc, context, sync=self.sync):
                description = context_details(context)
            elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
                description = "cancelled"
            else:
                description = chain.status_message(exc)
                self._record_chain(exc)
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in SERVER_ERROR_CODES:
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code.name}: {description}"))
        finally:
            span.end()

    def _record_chain(self, exc: BaseException) -> None:
        self.span.record_exception(exc, escaped=True)
        scope = self.scope
        call_chain = chain.failure_chain(  # as this hop sends it, minus the traceback
            exc,
            service=scope.service if scope is not None else "",
            method=scope.method if scope is not None else "",
            session_id=scope.session.id if scope is not None else "",
            trace_id=scope.trace_id if scope is not None else "",
        )
        if call_chain.elided_frames:
            self.span.set_attribute("lazygrpc.chain.elided_frames", call_chain.elided_frames)
        for index, frame in enumerate(call_chain.frames):
            attributes, timestamp = frame_event(index, frame)
            self.span.add_event(FRAME_EVENT, attributes, timestamp)


class SpanHooks:
    """A SERVER span around each call of one method (`lazygrpc.server.dispatch.Hooks`)."""

    __slots__ = ("full_method", "sync", "tracer")

    def __init__(self, tracer: trace.Tracer, full_method: str, sync: bool) -> None:
        self.tracer = tracer
        self.full_method = full_method
        self.sync = sync

    def start(self, context: Any) -> HopSpan:
        return HopSpan(self.tracer, self.full_method, context, self.sync)

    def error(self, hop: HopSpan, context: Any, exc: BaseException) -> None:
        hop.end(context, exc)
        return None  # the exception goes on to lazygrpc's lifecycle, or to grpc

    def leave(self, hop: HopSpan) -> None:
        pass

    def done(self, hop: HopSpan, context: Any) -> None:
        hop.end(context)
        return None


class _TracingBase:
    sync = False

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer(TRACER_NAME, __version__, tracer_provider)

    def hooks(self, method: str) -> SpanHooks | None:
        """The span hooks of one method (None: health and reflection go untraced)."""
        if method.startswith(SKIP_PREFIXES):
            return None
        return SpanHooks(self.tracer, method, self.sync)


class TracingServerInterceptor(_TracingBase, grpc.ServerInterceptor):  # type: ignore[misc]
    """A SERVER span per call on a sync `grpc.server`; goes right after lazygrpc's own."""

    sync = True

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """Implementation of grpc.ServerInterceptor; not part of the lazygrpc API."""
        handler = continuation(handler_call_details)
        hooks = self.hooks(handler_call_details.method)
        if handler is None or hooks is None:
            return handler
        return wrap_handler(handler, lambda b, streaming: sync_behavior(b, streaming, hooks))


class AioTracingServerInterceptor(_TracingBase, grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A SERVER span per call on a `grpc.aio.server`; goes right after lazygrpc's own."""

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """Implementation of grpc.aio.ServerInterceptor; not part of the lazygrpc API."""
        handler = await continuation(handler_call_details)
        return self.wrap(handler, handler_call_details.method)

    def wrap(self, handler: Any, full_method: str) -> Any:
        """`handler` with a span around each of its calls."""
        hooks = self.hooks(full_method)
        if handler is None or hooks is None:
            return handler
        return wrap_handler(handler, lambda b, _streaming: aio_behavior(b, hooks))


def server_interceptor(
    *, aio: bool = True, tracer_provider: trace.TracerProvider | None = None
) -> TracingServerInterceptor | AioTracingServerInterceptor:
    """The tracing interceptor; put it right after lazygrpc's own server interceptor.

    Spans go to `tracer_provider`, or to the global one (`trace.set_tracer_provider`).
    """
    cls = AioTracingServerInterceptor if aio else TracingServerInterceptor
    return cls(tracer_provider)


# -- where spans go ------------------------------------------------------------------------


def exporter_names(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters `OTEL_TRACES_EXPORTER` names (default `otlp`; `none`: no exporter).

    `ValueError` names an exporter lazygrpc does not know.
    """
    raw = environ.get("OTEL_TRACES_EXPORTER", "otlp")
    names = [n.strip().lower() for n in raw.split(",") if n.strip()] or ["otlp"]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={raw!r}: unknown exporter {unknown[0]!r} "
            f"(use {', '.join(EXPORTERS)})"
        )
    return [] if "none" in names else names


def service_name(
    explicit: str | None, default: str | None, environ: Mapping[str, str] = os.environ
) -> str:
    """`service.name`: the server's `--name`, else `OTEL_SERVICE_NAME`, else the server's
    default name (its first module or model), else `lazygrpc`."""
    return explicit or environ.get("OTEL_SERVICE_NAME") or default or TRACER_NAME


def install_provider(name: str, environ: Mapping[str, str] = os.environ) -> Any:
    """Set up the process's tracer provider from `OTEL_*` unless the application has one.

    Returns the provider lazygrpc created (its owner shuts it down: `shutdown_provider`),
    or None when the application had set a provider. `OTEL_RESOURCE_ATTRIBUTES` adds to the
    resource; `service.name` is `name`.
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None  # the application chose one (an SDK one, or deliberately none)
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    for exporter in exporter_names(environ):
        if exporter == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError as exc:  # pragma: no cover - the `otel` extra installs it
                raise ImportError(
                    "OTLP export needs opentelemetry-exporter-otlp-proto-grpc: "
                    "pip install 'lazygrpc[otel]'"
                ) from exc
            insecure = True if _plain_loopback(environ) else None  # None: as the SDK reads it
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(insecure=insecure)))
        else:  # console: stderr, as stdout carries the server's `listening on` line
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(provider)
    return provider


def _plain_loopback(environ: Mapping[str, str]) -> bool:
    """An endpoint with no scheme on a loopback host (`127.0.0.1:4317`), no `*_INSECURE` set:
    plaintext, where the SDK would try TLS on a local collector (an `http://` endpoint is
    plaintext and an `https://` one TLS in the SDK already)."""
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", ""
    )
    if "://" in endpoint or any(
        key in environ
        for key in ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")
    ):
        return False
    host = endpoint.rpartition(":")[0].strip("[]") if ":" in endpoint else endpoint
    return host in ("localhost", "127.0.0.1", "::1")


def shutdown_provider(provider: Any, timeout: float = FLUSH_TIMEOUT) -> None:
    """Export what is left and shut `provider` down, waiting at most `timeout` seconds.

    The SDK's own shutdown waits up to 30 s for an exporter that cannot reach its endpoint;
    it runs on a daemon thread here so a stopping server never hangs on a missing collector.
    """
    done = threading.Thread(target=provider.shutdown, name="lazygrpc-otel-flush", daemon=True)
    done.start()
    done.join(timeout)
