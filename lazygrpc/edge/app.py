"""`Edge`: the HTTP/SSE server in front of lazygrpc services (docs/edge.md).

Each request is an incoming call like any hop's: its `lazy-session-id` (or `x-session-id`)
and `baggage` headers are checked and make its session, `x-request-timeout` (or the
edge's default) its deadline, and a `CallScope` bound for the request carries both to the
gRPC calls it makes. The edge is a lazygrpc client: it imports the core and the client,
never the server.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from lazygrpc.core import baggage
from lazygrpc.core.context import CallScope, bind_call, unbind_call
from lazygrpc.core.errors import RemoteError
from lazygrpc.edge import answers, errors, incoming, openai, upstream
from lazygrpc.edge.answers import Extras
from lazygrpc.edge.errors import HTTPProblem
from lazygrpc.edge.incoming import MAX_TIMEOUT
from lazygrpc.edge.sse import ClientLeft, EventStream, Failure, until_left
from lazygrpc.edge.upstream import Catalog, Entry

log = logging.getLogger("lazygrpc.edge")
STATIC = Path(__file__).with_name("static")
UPDATE_HEADER = baggage.UPDATE_TRAILER

Handler = Callable[[Request], Awaitable[Response]]
#: uvicorn's HTTP/1.1 implementations (`Edge(http=…)`, `lazygrpc edge --http`).
HTTP_IMPLEMENTATIONS = ("auto", "httptools", "h11")


class Edge:
    """An OpenAI-compatible HTTP/SSE edge in front of lazygrpc services.

    >>> edge = Edge(["grpc://127.0.0.1:50051"], port=8080)   # doctest: +SKIP
    >>> await edge.start(); await edge.wait()                # doctest: +SKIP
    """

    def __init__(
        self,
        upstream: str | Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "edge",
        max_body_bytes: int = 1 << 20,
        max_streams: int = 256,
        request_timeout: float = 600.0,
        expose_tracebacks: bool = False,
        grace: float = 5.0,
        http: str = "auto",
    ) -> None:
        """`upstream`: one or more `grpc://HOST:PORT` (or `dns:///NAME:PORT`) URLs.

        `max_streams` bounds the upstream calls in flight (streams or not; past it: 429
        with `Retry-After`); `request_timeout` is the deadline of a request without an
        `x-request-timeout` header; tracebacks the services sent reach HTTP clients only
        with `expose_tracebacks` (a public edge redacts them). `http` is uvicorn's HTTP/1.1
        implementation: "httptools" (C, the edge extra installs it), "h11" (pure Python,
        the fallback), or "auto" (httptools when it is installed)."""
        self.catalog = Catalog([upstream] if isinstance(upstream, str) else list(upstream))
        if max_body_bytes < 1 or max_streams < 1 or not 0 < request_timeout <= MAX_TIMEOUT:
            raise ValueError(
                "max_body_bytes and max_streams must be ≥ 1, request_timeout in (0, 86400]"
            )
        if http not in HTTP_IMPLEMENTATIONS:
            raise ValueError(f"http must be one of {', '.join(HTTP_IMPLEMENTATIONS)}: {http!r}")
        if http == "httptools" and importlib.util.find_spec("httptools") is None:
            raise ValueError("http='httptools' needs the httptools package: pip install httptools")
        self.http = http
        self.host = host
        self.requested_port = port
        self.port = 0
        self.name = name
        self.max_body_bytes = max_body_bytes
        self.max_streams = max_streams
        self.request_timeout = request_timeout
        self.expose_tracebacks = expose_tracebacks
        self.grace = grace
        self.active = 0
        self.app = self._build_app()
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> int:
        """Bind and start serving; returns the port (connections made meanwhile wait)."""
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio turns Nagle off only on sockets that say so, and with
        # it on, a token written right after the headers waits ~40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.requested_port))
        sock.listen(512)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            http=self.http,
            timeout_graceful_shutdown=math.ceil(self.grace),
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._serve(self._server, sock))
        log.info("edge listening on %s in front of %s", self.url, ", ".join(self.catalog.targets))
        return self.port

    @staticmethod
    async def _serve(server: Any, sock: socket.socket) -> None:
        # `uvicorn.Server.serve` without its signal handlers: the edge may run beside
        # other servers in one process, whose owner decides what a signal stops.
        config = server.config
        if not config.loaded:
            config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        if not server.should_exit:
            await server.main_loop()
        await server.shutdown(sockets=[sock])

    async def wait(self) -> None:
        """Until the edge stops (SIGINT / SIGTERM stop it when it runs the main thread)."""
        if self._task is not None:
            await self._task

    def close(self) -> None:
        """Begin stopping, from a signal handler too (`wait()` returns once stopped)."""
        if self._server is not None:
            self._server.should_exit = True

    async def stop(self) -> None:
        """Stop accepting, give streams `grace` seconds, then end them."""
        if self._server is None or self._task is None:
            return
        self.close()
        await self._task
        self._server = self._task = None

    async def __aenter__(self) -> Edge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the application -----------------------------------------------------------------

    def _build_app(self) -> Starlette:
        routes = [
            Route("/", self._page, methods=["GET"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/v1/models", self._answers(self.models), methods=["GET"]),
            Route("/v1/chat/completions", self._answers(self.chat), methods=["POST"]),
            Route("/v1/completions", self._answers(self.completions), methods=["POST"]),
            Route("/v1/modules/{name}", self._answers(self.module_call), methods=["POST"]),
            Route("/v1/modules/{name}/stream", self._answers(self.module_stream), methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})

    async def _page(self, request: Request) -> Response:
        return FileResponse(STATIC / "chat.html", headers={"cache-control": "no-cache"})

    async def _health(self, request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "upstreams": self.catalog.targets, "calls_in_flight": self.active}
        )

    def _answers(self, handler: Handler) -> Handler:
        """`handler` with every refusal and failure answered in OpenAI's error JSON."""

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPProblem as problem:
                return _problem_response(problem)
            except RemoteError as exc:
                failure = self._remote_failure(exc, request.url.path, exc.session_id)
                return JSONResponse(failure.body, failure.status, headers=failure.headers)
            except Exception:
                log.exception("edge: %s %s failed", request.method, request.url.path)
                return JSONResponse(errors.internal_body(), 500)

        return run

    def _remote_failure(self, exc: RemoteError, route: str, session_id: str) -> Failure:
        status, body = errors.remote_body(
            exc,
            edge=self.name,
            route=route,
            session_id=session_id,
            expose_tracebacks=self.expose_tracebacks,
        )
        return Failure(status, body, errors.headers_for(status))

    def _stream_failure(self, route: str, scope: CallScope) -> Callable[[BaseException], Failure]:
        def fail(exc: BaseException) -> Failure:
            if isinstance(exc, RemoteError):
                return self._remote_failure(exc, route, scope.session.id)
            if isinstance(exc, HTTPProblem):
                return Failure(exc.status, errors.problem_body(exc), errors.headers_for(exc.status))
            log.error("edge: %s failed", route, exc_info=exc)
            return Failure(500, errors.internal_body(), {})

        return fail

    # -- request plumbing ----------------------------------------------------------------

    async def _json(self, request: Request) -> Any:
        return await incoming.read_json(request, self.max_body_bytes)

    def _scope(self, request: Request) -> CallScope:
        return incoming.call_scope(request, self.name, self.request_timeout)

    @contextmanager
    def _slot(self) -> Any:
        """One of `max_streams` upstream calls in flight, or 429."""
        self._take_slot()
        try:
            yield
        finally:
            self.active -= 1

    def _take_slot(self) -> None:
        if self.active >= self.max_streams:
            raise HTTPProblem(
                429,
                f"the edge has {self.active} calls in flight, its limit (max_streams={self.max_streams}); retry shortly",
                code="too_many_streams",
            )
        self.active += 1

    def _release_slot(self) -> None:
        self.active -= 1

    async def _entry(self, name: str) -> Entry:
        entry = await self.catalog.lookup(name)
        if entry is None:
            known = ", ".join(sorted(self.catalog.entries)) or "none"
            raise HTTPProblem(
                404,
                f"model {name!r} not found (this edge serves: {known})",
                param="model",
                code="model_not_found",
            )
        return entry

    async def _whole(
        self, request: Request, scope: CallScope, work: Callable[[], Coroutine[Any, Any, Any]]
    ) -> Response:
        """Await `work()` under `scope`, cancelled if the client leaves; the JSON answer
        carries the changed globals."""
        token = bind_call(scope)
        try:
            with self._slot():
                body = await until_left(work(), request.receive)
        except ClientLeft:
            return Response(status_code=499)  # nobody reads it (nginx's "client closed")
        except RemoteError as exc:
            failure = self._remote_failure(exc, scope.method, scope.session.id)
            return JSONResponse(failure.body, failure.status, headers=failure.headers)
        finally:
            scope.cancel()
            unbind_call(token)
        headers = {baggage.SESSION_HEADER: scope.session.id}
        update = scope.update_trailer()
        if update:
            headers[UPDATE_HEADER] = update
        return JSONResponse(body, headers=headers)

    def _stream(self, scope: CallScope, make: Callable[[], Any]) -> Response:
        """An `EventStream` of the frames `make()` produces, run under `scope`."""
        self._take_slot()
        token = bind_call(scope)
        try:
            context = contextvars.copy_context()
            frames = context.run(make)
        finally:
            unbind_call(token)

        def closed() -> None:
            scope.cancel()
            self._release_slot()

        return EventStream(
            frames,
            context=context,
            fail=self._stream_failure(scope.method, scope),
            closed=closed,
            headers={baggage.SESSION_HEADER: scope.session.id},
        )

    # -- the routes ----------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        entries = await self.catalog.all()
        data = [
            openai.model_json(e.name, f"lazygrpc {e.kind}", {**e.details, "target": e.target})
            for e in entries
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        return await self._openai(request, openai.chat_request(await self._json(request)))

    async def completions(self, request: Request) -> Response:
        return await self._openai(request, openai.completion_request(await self._json(request)))

    async def _openai(self, request: Request, ask: openai.Ask) -> Response:
        scope = self._scope(request)
        extras = Extras.parse(request.headers.get("x-lazy-events"))
        entry = await self._entry(ask.model)
        reply = openai.Reply(ask, os.urandom(12).hex())
        if entry.kind == "module":
            answers.module_args(entry, ask)  # refuse a param before anything is sent
        if ask.stream:
            return self._stream(
                scope, lambda: answers.openai_stream(entry, ask, reply, scope, extras)
            )
        return await self._whole(
            request, scope, lambda: answers.openai_whole(entry, ask, reply, scope)
        )

    async def _module_request(
        self, request: Request
    ) -> tuple[Entry, tuple[Any, ...], dict[str, Any]]:
        args, kwargs = incoming.module_body(await self._json(request))
        name = request.path_params["name"]
        entry = await self.catalog.lookup(name)
        if entry is None or entry.kind != "module":
            modules = sorted(n for n, e in self.catalog.entries.items() if e.kind == "module")
            raise HTTPProblem(
                404,
                f"module {name!r} not found (this edge serves: {', '.join(modules) or 'none'})",
                code="module_not_found",
            )
        return entry, args, kwargs

    async def module_call(self, request: Request) -> Response:
        entry, args, kwargs = await self._module_request(request)
        scope = self._scope(request)
        return await self._whole(request, scope, lambda: _output(entry, args, kwargs))

    async def module_stream(self, request: Request) -> Response:
        entry, args, kwargs = await self._module_request(request)
        scope = self._scope(request)
        return self._stream(scope, lambda: answers.module_events(entry, args, kwargs, scope))


async def _output(entry: Entry, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return {"output": await upstream.module_call(entry, args, kwargs)}


def _problem_response(problem: HTTPProblem) -> Response:
    return JSONResponse(
        errors.problem_body(problem), problem.status, headers=errors.headers_for(problem.status)
    )


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return _problem_response(HTTPProblem(exc.status_code, message, code="no_route"))
