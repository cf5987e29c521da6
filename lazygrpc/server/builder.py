"""One builder for a `grpc.aio` server: health, reflection, interceptors, graceful shutdown."""

from __future__ import annotations

import asyncio
import inspect
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from lazygrpc import broker
from lazygrpc.server import broker_service, model, modules
from lazygrpc.server.call import SKIP_PREFIXES, DrainGate, Lifecycle
from lazygrpc.server.dispatch import aio_behavior, wrap_handler
from lazygrpc.server.security import Authenticator, ServerTLS, TLSConfig

#: Options of every server lazygrpc builds. Metadata limits sit above lazygrpc's own checks
#: so that oversized headers get INVALID_ARGUMENT naming the header, not a broken call.
SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.so_reuseport", 0),
    ("grpc.max_metadata_size", 64 << 10),
    ("grpc.absolute_max_metadata_size", 64 << 10),
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.max_send_message_length", 64 << 20),
)

HEALTH_SERVICE = "grpc.health.v1.Health"
#: Seconds a stop still gives health and reflection calls once lazygrpc's own have drained.
_HEALTH_GRACE = 0.1


class Server:
    """A lazygrpc server: add services, `await start()`, then `await wait()` or `stop()`.

    >>> server = Server(name="gateway")            # doctest: +SKIP
    >>> server.add_modules({"echo": lambda x: x})  # doctest: +SKIP
    >>> port = await server.start()                # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        expose_tracebacks: bool | None = None,
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
        grace: float = 5.0,
        topic_events: int = broker.DEFAULT_TOPIC_EVENTS,
        topic_bytes: int = broker.DEFAULT_TOPIC_BYTES,
        coalesce_bytes: int = broker.DEFAULT_COALESCE_BYTES,
        telemetry: bool = False,
        tls: TLSConfig | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        """`tls`: serve TLS (mTLS with a client CA) from files that `reload_tls()` and SIGHUP
        re-read; `auth`: the authenticator every call but health's passes
        (`lazygrpc.server.security`, docs/security.md)."""
        self.name = name
        self.host = host
        self.requested_port = port
        self.port = 0
        self.grace = grace
        # Tracebacks leave a server only where it opted in; loopback servers default to on.
        self.expose_tracebacks = (
            host in ("127.0.0.1", "localhost", "::1")
            if expose_tracebacks is None
            else expose_tracebacks
        )
        self.topic_options = {
            "max_events": topic_events,
            "max_bytes": topic_bytes,
            "coalesce_bytes": coalesce_bytes,
        }
        self._gate = DrainGate()
        self.auth = auth
        self.tls = ServerTLS(tls) if tls is not None else None
        self._lifecycle = Lifecycle(
            name, expose_tracebacks=self.expose_tracebacks, gate=self._gate, auth=auth
        )
        self._tracing: Any = None
        if telemetry:
            from lazygrpc.telemetry import server_interceptor

            self._tracing = server_interceptor()
        # lazygrpc's own layer (and tracing inside it) wraps each service's handlers once, at
        # registration: grpc's aio interceptor pipeline would add a coroutine and a rebuilt
        # handler to every call. Interceptors passed in still run, before ours.
        self._server = grpc.aio.server(
            interceptors=list(interceptors) or None, options=[*SERVER_OPTIONS, *options]
        )
        self._handlers = _Handlers(self._wrap_method)
        self._server.add_generic_rpc_handlers((self._handlers,))
        self.health = _Health()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._handlers)
        self.service_names: list[str] = [HEALTH_SERVICE]
        self._stopped = asyncio.Event()
        self._started = False

    def add_service(self, full_name: str, add_to_server: Any, servicer: Any) -> None:
        """Register a servicer (`add_XServicer_to_server`) under its full service name.

        Its handlers get lazygrpc's session, deadline, error-chain and drain handling.
        """
        add_to_server(servicer, self._handlers)
        self.service_names.append(full_name)

    def _wrap_method(self, full_method: str, handler: Any) -> Any:
        hooks = self._lifecycle.hooks_for(full_method)
        if hooks is None:  # health (and reflection without auth): as grpc ships them
            return handler
        if self._tracing is not None and not full_method.startswith(SKIP_PREFIXES):
            handler = self._tracing.wrap(handler, full_method)
        return wrap_handler(handler, lambda behavior, _streaming: aio_behavior(behavior, hooks))

    def add_modules(self, callables: Any) -> modules.ModuleServicer:
        """Serve callables through `ModuleService` (see `lazygrpc.server.modules`)."""
        servicer = modules.ModuleServicer(callables, topic_options=self.topic_options)
        self.add_service(modules.SERVICE_NAME, modules.add_to_server, servicer)
        self._name_default(servicer.default_name())
        return servicer

    def add_model(self, config: model.ModelConfig) -> model.ModelServicer:
        """Serve a `lazygrpc.ModelConfig` through `ModelService`."""
        servicer = model.ModelServicer(config, topic_options=self.topic_options)
        self.add_service(model.SERVICE_NAME, model.add_to_server, servicer)
        self._name_default(config.name)
        return servicer

    def _name_default(self, name: str) -> None:
        """Name the server after its first service when it was given no name."""
        if self.name is None:
            self.name = self._lifecycle.service = name

    async def start(self) -> int:
        """Bind, start serving and mark every service SERVING; returns the bound port."""
        self.add_service(
            broker_service.SERVICE_NAME,
            broker_service.add_to_server,
            broker_service.BrokerServicer(self.topic_options),
        )
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer([*self.service_names, reflection.SERVICE_NAME]),
            self._handlers,
        )
        address = f"{self.host}:{self.requested_port}"
        if self.tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, self.tls.credentials)
        if not self.port:
            raise OSError(f"could not bind {self.host}:{self.requested_port}")
        await self._server.start()
        for name in ["", *self.service_names, reflection.SERVICE_NAME]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._started = True
        return self.port

    def reload_tls(self) -> bool:
        """Re-read the TLS files for new connections (what SIGHUP does); False when there is
        no TLS or a file is bad (the current certificate stays, the error is logged)."""
        return self.tls is not None and self.tls.reload()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING, refuse new calls, let in-flight calls
        finish within `grace` seconds, then cancel what is left.

        While draining, health and reflection still answer (health says NOT_SERVING).
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.grace if grace is None else grace
        deadline = time.monotonic() + grace
        result = self.health.enter_graceful_shutdown()
        if inspect.isawaitable(result):
            await result
        if self._started and grace > 0:
            self._gate.draining = True
            await self._gate.wait_idle(grace)
        # Once lazygrpc's calls have drained, what is left are health and reflection calls:
        # an open health Watch would hold the stop for the whole grace otherwise. A short
        # grace, not none: grpc then closes idle connections with a clean GOAWAY (stop(0)
        # cancels with an error code that clients log).
        left = deadline - time.monotonic()
        if self._started and not self._gate.active:
            left = min(left, _HEALTH_GRACE)
        await self._server.stop(max(0.0, left))

    async def wait(self) -> None:
        """Serve until `stop()` or SIGTERM/SIGINT (then shut down gracefully); SIGHUP
        re-reads the TLS files (`reload_tls`)."""
        loop = asyncio.get_running_loop()
        stop_task: list[asyncio.Task[None]] = []

        def on_signal() -> None:
            if not stop_task:
                stop_task.append(loop.create_task(self.stop()))

        installed = []
        if sys.platform != "win32":
            handlers: list[tuple[signal.Signals, Callable[[], Any]]] = [
                (signal.SIGTERM, on_signal),
                (signal.SIGINT, on_signal),
            ]
            if self.tls is not None:
                handlers.append((signal.SIGHUP, self.reload_tls))
            for sig, handler in handlers:
                try:
                    loop.add_signal_handler(sig, handler)
                    installed.append(sig)
                except (RuntimeError, ValueError):  # not the main thread
                    pass
        try:
            await self._server.wait_for_termination()
            if stop_task:
                await stop_task[0]
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(0)


class _Health(health.aio.HealthServicer):  # type: ignore[misc]
    """grpcio-health-checking's servicer with `List`, which its aio servicer leaves
    unimplemented (UNIMPLEMENTED) although reflection shows it."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Implementation of grpc.health.v1.Health; not part of the lazygrpc API."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )


class _Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every handler of a `Server`, wrapped once, in one dict that grpc reads per call.

    It stands in for the server in `add_XServicer_to_server`, which registers each service
    twice: as a generic handler and by `add_registered_method_handlers`. Handlers reach grpc
    only as this one generic handler: on grpc.aio (1.85) each method registered with grpc
    itself costs every call the server takes some instructions, whichever service it is for
    (docs/performance.md, "One generic handler"); a generic lookup is one dict access.
    """

    def __init__(self, wrap: Any) -> None:
        self._wrap = wrap
        self._methods: dict[str, Any] = {}
        self._generic: list[Any] = []  # the same services' generic handlers, and others'

    def service(self, handler_call_details: Any) -> Any:
        """Implementation of grpc.GenericRpcHandler; not part of the lazygrpc API."""
        method = handler_call_details.method
        handler = self._methods.get(method)
        if handler is None:
            for generic in self._generic:
                found = generic.service(handler_call_details)
                if found is not None:
                    handler = self._methods[method] = self._wrap(method, found)
                    break
        return handler

    def add_generic_rpc_handlers(self, generic_handlers: Any) -> None:
        """What `add_XServicer_to_server` calls; not part of the lazygrpc API."""
        self._generic.extend(generic_handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """What `add_XServicer_to_server` calls; not part of the lazygrpc API."""
        for name, handler in handlers.items():
            full_method = f"/{service}/{name}"
            if full_method not in self._methods:
                self._methods[full_method] = self._wrap(full_method, handler)
