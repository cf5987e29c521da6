"""Server interceptors for your own servers (sync `grpc.server` and `grpc.aio.server`).

They run lazygrpc's call lifecycle (`lazygrpc.server.call`) around every handler, as
`lazygrpc.Server` does: the session and call scope bound for the whole call — every step of
a streaming response too, in both aio handler styles (async generator and `await
context.write()`, grpc #28728) — an escaping exception turned into a status with a
`CallChain`, and changed globals returned in the `lazy-globals-update` trailer.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from lazygrpc.server.call import DrainGate, Lifecycle
from lazygrpc.server.dispatch import aio_behavior, sync_behavior, wrap_handler
from lazygrpc.server.security import Authenticator


class ServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """lazygrpc's interceptor for a sync `grpc.server`."""

    def __init__(
        self,
        service: str | None = None,
        *,
        expose_tracebacks: bool | None = None,
        redact: str = "short",
        auth: Authenticator | None = None,
    ) -> None:
        self.lifecycle = Lifecycle(
            service, expose_tracebacks=expose_tracebacks, redact=redact, sync=True, auth=auth
        )

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """Implementation of grpc.ServerInterceptor; not part of the lazygrpc API."""
        handler = continuation(handler_call_details)
        hooks = self.lifecycle.hooks_for(handler_call_details.method)
        if handler is None or hooks is None:
            return handler
        # This runs on grpc's polling thread under a lock: only build wrappers here.
        return wrap_handler(handler, lambda b, streaming: sync_behavior(b, streaming, hooks))


class AioServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """lazygrpc's interceptor for a `grpc.aio.server`."""

    def __init__(
        self,
        service: str | None = None,
        *,
        expose_tracebacks: bool | None = None,
        redact: str = "short",
        gate: DrainGate | None = None,
        auth: Authenticator | None = None,
        metrics: Any = None,
    ) -> None:
        #: Counts the calls in flight; set `gate.draining` to refuse new ones (UNAVAILABLE).
        self.gate = gate or DrainGate()
        #: `lazygrpc.metrics.Metrics` counting every call from outside the lifecycle.
        self.metrics = metrics
        self.lifecycle = Lifecycle(
            service,
            expose_tracebacks=expose_tracebacks,
            redact=redact,
            gate=self.gate,
            auth=auth,
        )
        # grpc.aio asks the interceptor for every call: a method's wrapped handler is kept.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """Implementation of grpc.aio.ServerInterceptor; not part of the lazygrpc API."""
        handler = await continuation(handler_call_details)
        return self.wrap(handler, handler_call_details.method)

    def wrap(self, handler: Any, full_method: str) -> Any:
        """`handler` with lazygrpc's call lifecycle around each of its calls."""
        kept = self._wrapped.get(full_method)
        if kept is not None and kept[0] is handler:
            return kept[1]
        hooks = self.lifecycle.hooks_for(full_method)
        if handler is None or hooks is None:
            return handler
        wrapped = wrap_handler(handler, lambda b, _streaming: aio_behavior(b, hooks))
        if self.metrics is not None:  # as `lazygrpc.Server` does: it sees what callers get
            wrapped = self.metrics.wrap(wrapped, full_method)
        self._wrapped[full_method] = (handler, wrapped)
        return wrapped


def server_interceptors(
    service: str | None = None,
    *,
    aio: bool = True,
    expose_tracebacks: bool | None = None,
    redact: str = "short",
    telemetry: bool = False,
    auth: Authenticator | None = None,
    metrics: Any = None,
) -> list[Any]:
    """The lazygrpc interceptors for your own server (`grpc.server` when `aio=False`).

    `expose_tracebacks` None trusts callers on loopback only; `redact` is what a caller not
    trusted sees of the chain (docs/errors.md "Redaction by trust"). `telemetry=True` adds a
    span per call (extra `otel`; see `lazygrpc.telemetry`); `auth` is the server's
    authenticator (`lazygrpc.server.security`, docs/security.md). `metrics` (a
    `lazygrpc.metrics.Metrics`, extra `metrics`; aio only) counts every call as
    `lazygrpc.Server(metrics_port=...)` does; serve it with `metrics.serve(host, port)`
    (docs/metrics.md).
    """
    if aio:
        first: Any = AioServerInterceptor(
            service, expose_tracebacks=expose_tracebacks, redact=redact, auth=auth, metrics=metrics
        )
    elif metrics is not None:
        raise ValueError("metrics: counted on grpc.aio servers only; use aio=True")
    else:
        first = ServerInterceptor(
            service, expose_tracebacks=expose_tracebacks, redact=redact, auth=auth
        )
    interceptors: list[Any] = [first]
    if telemetry:
        from lazygrpc.telemetry import server_interceptor

        interceptors.append(server_interceptor(aio=aio))
    return interceptors
