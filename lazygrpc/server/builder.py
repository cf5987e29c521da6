"""One builder for a `grpc.aio` server: health, reflection, interceptors, graceful shutdown."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from lazygrpc import broker
from lazygrpc.core.trust import GlobalsPolicy
from lazygrpc.server import broker_service, calllog, model, modules
from lazygrpc.server.admission import Limits
from lazygrpc.server.call import SKIP_PREFIXES, DrainGate, Lifecycle
from lazygrpc.server.dispatch import aio_behavior, wrap_handler
from lazygrpc.server.handlers import Handlers, Health
from lazygrpc.server.security import Authenticator, ServerTLS, TLSConfig
from lazygrpc.server.threads import THREADS, ModuleThreads

#: Options of every server lazygrpc builds. Metadata limits sit above lazygrpc's own checks
#: so that oversized headers get INVALID_ARGUMENT naming the header, not a broken call.
SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.so_reuseport", 0),
    ("grpc.max_metadata_size", 64 << 10),
    ("grpc.absolute_max_metadata_size", 64 << 10),
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # Clients' keepalive pings (ChannelPolicy.keepalive, >= 1 s) are welcome, also on an
    # idle connection (a health watch): grpc's default answers pings more often than every
    # 5 min with GOAWAY "too_many_pings".
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
)

HEALTH_SERVICE = "grpc.health.v1.Health"
SERVING_STATUS = health_pb2.HealthCheckResponse.SERVING
#: Health updates in flight (kept referenced until they ran).
_BACKGROUND: set[asyncio.Future[None]] = set()
_LOG = logging.getLogger("lazygrpc.server")

#: Seconds a draining server still admits new calls after it says NOT_SERVING: the time
#: a client's health watch (grpc's client-side health checking) needs to take it out of its
#: round_robin, so that no call lands on it in between (docs/deployment.md, "Draining").
DRAIN_NOTICE = 0.2
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
        redact: str = "short",
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
        grace: float = 5.0,
        drain_notice: float = DRAIN_NOTICE,
        topic_events: int = broker.DEFAULT_TOPIC_EVENTS,
        topic_bytes: int = broker.DEFAULT_TOPIC_BYTES,
        coalesce_bytes: int = broker.DEFAULT_COALESCE_BYTES,
        telemetry: bool = False,
        globals_policy: GlobalsPolicy | None = None,
        limits: Limits | None = None,
        threads: ModuleThreads = THREADS,
        reuse_port: bool = False,
        also_listen: Sequence[str] = (),
        broker_url: str | None = None,
        metrics_port: int | None = None,
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
        self.also_listen = tuple(also_listen)
        #: `redis://HOST:PORT/DB`: BrokerService's named topics live there (cross-host).
        self.broker_url = broker_url
        self._redis: Any = None
        self.drain_notice = drain_notice
        # Tracebacks leave a server only for callers it trusts: None decides per call, by
        # whether the caller is on loopback (docs/errors.md "Redaction by trust").
        self.expose_tracebacks = expose_tracebacks
        self.topic_options = {
            "max_events": topic_events,
            "max_bytes": topic_bytes,
            "coalesce_bytes": coalesce_bytes,
        }
        self._gate = DrainGate()
        self.auth = auth
        self.tls = ServerTLS(tls) if tls is not None else None
        self._lifecycle = Lifecycle(
            name,
            expose_tracebacks=expose_tracebacks,
            redact=redact,
            gate=self._gate,
            policy=globals_policy,
            limits=limits,
            auth=auth,
        )
        self._tracing: Any = None
        self._explicit_name = name
        self._provider: Any = None  # the tracer provider this server set up, if it did
        if telemetry:
            from lazygrpc.telemetry import exporter_names, server_interceptor

            exporter_names()  # a bad OTEL_TRACES_EXPORTER fails here, before anything binds
            # Spans go to the global provider, set up at `start` when the application has
            # none (its name is known only once the services are added).
            self._tracing = server_interceptor()
        #: Prometheus metrics (`lazygrpc.metrics`), served on `metrics_port` once started.
        self.metrics: Any = None
        self.requested_metrics_port = metrics_port
        self.metrics_port = 0
        if metrics_port is not None:
            from lazygrpc.metrics import Metrics

            self.metrics = Metrics()
        # lazygrpc's own layer (and tracing inside it) wraps each service's handlers once, at
        # registration: grpc's aio interceptor pipeline would add a coroutine and a rebuilt
        # handler to every call. Interceptors passed in still run, before ours.
        # SO_REUSEPORT is off unless asked for (`--workers`): grpc turns it on by default on
        # Linux, and then a second server on a port in use would start without an error.
        reuse = [("grpc.so_reuseport", 1)] if reuse_port else []
        base = [o for o in SERVER_OPTIONS if not (reuse and o[0] == "grpc.so_reuseport")]
        self._options = [*base, *reuse, *options]
        self._server = grpc.aio.server(
            interceptors=list(interceptors) or None, options=self._options
        )
        self._handlers = Handlers(self._wrap_method)
        self._server.add_generic_rpc_handlers((self._handlers,))
        self.health = Health()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._handlers)
        self.service_names: list[str] = [HEALTH_SERVICE]
        #: What this server serves, by name (modules and models), for its start line.
        self.served: list[str] = []
        self._stopped = asyncio.Event()
        #: Where `def` modules run: while all are busy, health says NOT_SERVING.
        self.threads = threads
        self._unwatch: Any = None  # stops the module threads' watch (`_threads_changed`)
        self._started = False

    def add_service(self, full_name: str, add_to_server: Any, servicer: Any) -> None:
        """Register a servicer (`add_XServicer_to_server`) under its full service name.

        Its handlers get lazygrpc's session, deadline, error-chain and drain handling.
        """
        add_to_server(servicer, self._handlers)
        self.service_names.append(full_name)

    def _wrap_method(self, full_method: str, handler: Any) -> Any:
        life = self._lifecycle
        hooks = life.hooks_for(full_method, handler.response_streaming)
        if hooks is None:  # health (and reflection without auth): as grpc ships them
            return handler
        if self._tracing is not None and not full_method.startswith(SKIP_PREFIXES):
            handler = self._tracing.wrap(handler, full_method)
        handler = wrap_handler(handler, lambda behavior, _streaming: aio_behavior(behavior, hooks))
        if self.metrics is not None:  # outside the lifecycle: it sees the codes callers get
            handler = self.metrics.wrap(handler, full_method)
        return handler

    def add_modules(self, callables: Any) -> modules.ModuleServicer:
        """Serve callables through `ModuleService` (see `lazygrpc.server.modules`)."""
        servicer = modules.ModuleServicer(
            callables, topic_options=self.topic_options, threads=self.threads
        )
        self.add_service(modules.SERVICE_NAME, modules.add_to_server, servicer)
        self.served.extend(servicer.modules)
        self._name_default(servicer.default_name())
        return servicer

    def add_model(self, config: model.ModelConfig) -> model.ModelServicer:
        """Serve a `lazygrpc.ModelConfig` through `ModelService`."""
        servicer = model.ModelServicer(config, topic_options=self.topic_options)
        self.add_service(model.SERVICE_NAME, model.add_to_server, servicer)
        self.served.append(f"model {config.name}")
        self._name_default(config.name)
        return servicer

    def _name_default(self, name: str) -> None:
        """Name the server after its first service when it was given no name."""
        if self.name is None:
            self.name = self._lifecycle.service = name

    async def start(self) -> int:
        """Bind, start serving and mark every service SERVING; returns the bound port."""
        if self.broker_url is not None:
            from lazygrpc.broker.redis_streams import RedisTopics

            self._redis = RedisTopics(self.broker_url, **self.topic_options)
            await self._redis.check()
        self.add_service(
            broker_service.SERVICE_NAME,
            broker_service.add_to_server,
            broker_service.BrokerServicer(self.topic_options, self._redis),
        )
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer([*self.service_names, reflection.SERVICE_NAME]),
            self._handlers,
        )
        address = f"{self.host}:{self.requested_port}"
        if self.requested_port:
            _check_port(
                self.host, self.requested_port, dict(self._options).get("grpc.so_reuseport")
            )
        try:
            self.port = (
                self._server.add_insecure_port(address)
                if self.tls is None
                else self._server.add_secure_port(address, self.tls.credentials)
            )
        except RuntimeError:  # grpc's "Failed to bind": taken since the check
            self.port = 0
        if not self.port:
            raise OSError(_cannot_listen(address, "the port is in use"))
        for address in self.also_listen:  # e.g. a worker's private unix socket
            if not self._server.add_insecure_port(address):
                raise OSError(f"could not bind {address}")
        if self._tracing is not None:
            from lazygrpc.telemetry import install_provider, service_name

            self._provider = install_provider(service_name(self._explicit_name, self.name))
        if self.metrics is not None:
            self.metrics_port = self.metrics.serve(self.host, self.requested_metrics_port or 0)
        await self._server.start()
        for name in ["", *self.service_names, reflection.SERVICE_NAME]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._started = True
        loop = asyncio.get_running_loop()
        self._unwatch = self.threads.watch(
            lambda exhausted: loop.call_soon_threadsafe(self._threads_changed, exhausted)
        )
        _LOG.info(
            "%s serving on %s (%s; TLS: no)",
            self.name or "server",
            self.address,
            ", ".join(self.served) or "no modules",
            extra={
                calllog.FIELDS: {
                    "service": self.name,
                    "address": self.address,
                    "modules": self.served,
                }
            },
        )
        return self.port

    def reload_tls(self) -> bool:
        """Re-read the TLS files for new connections (what SIGHUP does); False when there is
        no TLS or a file is bad (the current certificate stays, the error is logged)."""
        return self.tls is not None and self.tls.reload()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _threads_changed(self, exhausted: bool) -> None:
        """Every module thread is busy (NOT_SERVING: send calls elsewhere), or one is free."""
        if self._stopped.is_set():
            return
        status = health_pb2.HealthCheckResponse.NOT_SERVING if exhausted else SERVING_STATUS
        for name in ["", *self.service_names]:
            task = asyncio.ensure_future(self.health.set(name, status))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING, refuse new calls after `drain_notice`
        seconds, let in-flight calls finish within `grace` seconds, then cancel what is left.

        While draining, health and reflection still answer (health says NOT_SERVING).
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._unwatch is not None:
            self._unwatch()
        grace = self.grace if grace is None else grace
        deadline = time.monotonic() + grace
        result = self.health.enter_graceful_shutdown()
        if inspect.isawaitable(result):
            await result
        if self._started and grace > 0:
            if self.drain_notice > 0:
                await asyncio.sleep(min(self.drain_notice, grace))
            self._gate.draining = True
            await self._gate.wait_idle(grace)
        # Once lazygrpc's calls have drained, what is left are health and reflection calls:
        # an open health Watch would hold the stop for the whole grace otherwise. A short
        # grace, not none: grpc then closes idle connections with a clean GOAWAY (stop(0)
        # cancels with an error code that clients log).
        left = deadline - time.monotonic()
        if self._started and not self._gate.active:
            left = min(left, _HEALTH_GRACE)
        cancelled = self._gate.active
        await self._server.stop(max(0.0, left))
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
        if self._redis is not None:
            await self._redis.aclose()
        if self._provider is not None:  # the last spans out before the process ends
            from lazygrpc.telemetry import shutdown_provider

            shutdown_provider(self._provider)
        if self._started:
            left_over = f" ({cancelled} calls cancelled after the grace)" if cancelled else ""
            _LOG.info(
                "%s stopped on %s%s",
                self.name or "server",
                self.address,
                left_over,
                extra={calllog.FIELDS: {"service": self.name, "address": self.address}},
            )

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


def _cannot_listen(address: str, why: str) -> str:
    return f"cannot listen on {address}: {why}; pick another --port (0 picks a free one)"


def _check_port(host: str, port: int, reuseport: Any) -> None:
    """`OSError` naming the fix when `host:port` cannot be bound, before grpc tries: grpc
    would log its own error line and raise a `RuntimeError` that names no cause."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As grpc binds: SO_REUSEADDR (a port in TIME_WAIT is free), SO_REUSEPORT if asked.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport and hasattr(socket, "SO_REUSEPORT"):
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise OSError(_cannot_listen(f"{host}:{port}", exc.strerror or str(exc))) from None
