"""Client interceptors (sync `grpc.Channel` and `grpc.aio`) over one shared core.

Every outgoing call carries `lazy-session-id`, the session globals as `lazy.` baggage
entries, the W3C trace context when there is one (the current OpenTelemetry span's, else the
incoming call's, forwarded as it came), and the parent call's remaining deadline. The
call registers with the parent call so that it is cancelled when the parent ends early, and
its `lazy-globals-update` trailer is merged into the caller's session when it ends.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, NamedTuple

import grpc
import grpc.aio

from lazygrpc import metadata
from lazygrpc import session as sessions
from lazygrpc.calls import CallScope, current_call

_OWN_KEYS = (metadata.SESSION_HEADER, metadata.BAGGAGE_HEADER)


class OutgoingMetadata(grpc.aio.Metadata):  # type: ignore[misc]
    """Call metadata for grpc.aio that is read as it was built.

    grpc.aio turns a list into `Metadata` (a dict of lists) and back into a tuple on every
    call; measured, that was ~40 µs of a call's client CPU in a running process (cold
    caches), most of what sending any metadata costs. grpc.aio only takes `len()` and
    `tuple()` of a `Metadata` it is given, so this one answers both from its tuple, and
    builds the dict only if an interceptor reads or changes it by key.
    """

    def __init__(self, items: tuple[tuple[str, str | bytes], ...]) -> None:
        self._items = items
        self._dict: OrderedDict[str, list[str | bytes]] | None = None

    @property  # type: ignore[override]
    def _metadata(self) -> OrderedDict[str, list[str | bytes]]:
        if self._dict is None:
            d: OrderedDict[str, list[str | bytes]] = OrderedDict()
            for key, value in self._items:
                d.setdefault(key, []).append(value)
            self._dict = d
        return self._dict

    @_metadata.setter
    def _metadata(self, value: OrderedDict[str, list[str | bytes]]) -> None:
        self._dict = value

    def __len__(self) -> int:
        return len(self._items) if self._dict is None else super().__len__()

    def __iter__(self) -> Iterator[tuple[str, str | bytes]]:
        return iter(self._items) if self._dict is None else super().__iter__()

    def __add__(self, other: Any) -> grpc.aio.Metadata:
        # grpc's own only adds instances of its exact class: a plain Metadata works here too.
        if isinstance(other, grpc.aio.Metadata):
            return grpc.aio.Metadata(*tuple(self), *tuple(other))
        if isinstance(other, tuple):
            return grpc.aio.Metadata(*tuple(self), *other)
        return NotImplemented


#: What `prepare` returns: (metadata, timeout, session, parent call scope). A plain tuple:
#: building a NamedTuple runs a Python `__new__`, measurable on the per-call path.
Outgoing = tuple[
    tuple[tuple[str, str | bytes], ...], float | None, sessions.Session, CallScope | None
]


_bound_session = sessions._current.get


def prepare(md: Any, timeout: float | None) -> Outgoing:
    """(metadata, timeout, session, parent scope) for a call made from the current context.

    No I/O."""
    scope = current_call()
    s = _bound_session()  # `sessions.current()`, its common cases inline
    if s is None:
        s = scope.session if scope is not None else sessions.current()
    if not md and "opentelemetry.trace" not in sys.modules:  # lazygrpc's own clients
        baggage = s.baggage()
        items: tuple[tuple[str, str | bytes], ...] = (
            ((metadata.SESSION_HEADER, s.id), (metadata.BAGGAGE_HEADER, baggage))
            if baggage
            else ((metadata.SESSION_HEADER, s.id),)
        )
        if scope is not None and scope.trace_headers:
            items += scope.trace_headers  # the incoming trace context goes on down
    else:
        items = _merged(md, s, scope)
    if scope is not None:
        remaining = scope.time_remaining()
        if remaining is not None and (timeout is None or remaining < timeout):
            timeout = remaining
    return items, timeout, s, scope


def _merged(
    md: Any, s: sessions.Session, scope: CallScope | None
) -> tuple[tuple[str, str | bytes], ...]:
    """The caller's metadata with the session's, and the trace context when there is one:
    the caller's own, else the current OpenTelemetry span's, else the incoming call's."""
    out: list[tuple[str, str | bytes]]
    if not md:
        out = [(metadata.SESSION_HEADER, s.id)]
        baggage = s.baggage()
    else:
        out = []
        caller_sid = None
        foreign: list[str] = []
        for key, value in md:
            if key == metadata.BAGGAGE_HEADER and isinstance(value, str):
                _, others, _ = metadata.split_baggage(value)
                foreign.extend(others)
                continue
            if key == metadata.SESSION_HEADER:
                caller_sid = value
            out.append((key, value))
        if caller_sid is None:
            out.append((metadata.SESSION_HEADER, s.id))
        baggage = ",".join(x for x in (",".join(foreign), s.baggage()) if x)
    if baggage:
        out.append((metadata.BAGGAGE_HEADER, baggage))
    if "opentelemetry.trace" in sys.modules:
        _inject_trace_context(out)
    if scope is not None and scope.trace_headers and not _has_traceparent(out):
        out.extend(scope.trace_headers)
    return tuple(out)


def _has_traceparent(out: list[tuple[str, str | bytes]]) -> bool:
    return any(k == metadata.TRACEPARENT_HEADER for k, _ in out)


def _inject_trace_context(out: list[tuple[str, str | bytes]]) -> None:
    if _has_traceparent(out):
        return
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    out.extend(carrier.items())


def ended_trailers(call: Any) -> Any:
    """The trailing metadata of a grpc.aio call that has ended, without awaiting; None when
    that is not known here (then await `call.trailing_metadata()`).

    grpc.aio's `trailing_metadata()` is a coroutine that wraps the status the call already
    holds in a new `Metadata`; reading the status directly saves both on every call. The
    attributes are grpc's own (grpcio 1.85); a call that grpc's interceptor path wrapped is
    unwrapped to the call inside. Anything else gets None and takes the public route.
    """
    for _ in range(_MAX_WRAPPING):
        try:
            return call._cython_call._status.trailing_metadata()
        except AttributeError:
            pass
        task = getattr(call, "_interceptors_task", None)
        if task is not None:  # grpc's InterceptedCall: the call its interceptors returned
            if not task.done() or task.cancelled():
                return None
            error = task.exception()
            if error is not None:
                return (
                    error.trailing_metadata() if isinstance(error, grpc.aio.AioRpcError) else None
                )
            call = task.result()
            continue
        inner = getattr(call, "_call", None)  # a response iterator an interceptor returned
        if inner is None or inner is call:
            return None
        call = inner
    return None


#: How deep `ended_trailers` unwraps calls (grpc nests one wrapper per interceptor at most).
_MAX_WRAPPING = 16


def merge_trailers(s: sessions.Session, trailing: Any) -> None:
    """Merge a callee's `lazy-globals-update` into the caller's session."""
    if not trailing:
        return
    value = metadata.get_header(trailing, metadata.UPDATE_TRAILER)
    if value:
        try:
            # Flat values stay undecoded until code reads them: a hop that only passes
            # `usage` on never decodes it (checked here all the same).
            update = metadata.parse_baggage(value, defer=True)
        except (ValueError, RecursionError):
            return  # a peer's broken trailer must not fail a call that succeeded
        try:
            s.merge_update(update.values, update.deleted, update.entries)
        except (TypeError, ValueError):
            return  # e.g. a global over the size limit: keep what the caller had


# -- sync ---------------------------------------------------------------------------------


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):  # type: ignore[misc]
    pass


class _TrackedCall:
    """Wraps a sync call/future/iterator: merges trailers before the caller sees the end.

    grpcio runs done-callbacks after waking the caller (grpc/_channel.py), so a callback
    alone would race with code that reads `lazygrpc.globals` right after the call returns.
    Everything else is delegated untouched.
    """

    __slots__ = ("_call", "_lock", "_merged", "_scope", "_session")

    def __init__(self, call: Any, out: Outgoing) -> None:
        self._call = call
        _, _, self._session, self._scope = out
        self._merged = False
        self._lock = threading.Lock()
        # Another interceptor may hand back a bare iterator without the Call/Future API
        # (OpenTelemetry's sync client does for streams, opentelemetry-python-contrib #2014):
        # then trailers are merged when iteration ends, and the call cannot be cancelled.
        if self._scope is not None and hasattr(call, "cancel"):
            self._scope.add_child(call)
        if hasattr(call, "add_done_callback"):
            call.add_done_callback(lambda _: self._finish())

    def _finish(self) -> None:
        with self._lock:
            if self._merged:
                return
            self._merged = True
        if self._scope is not None:
            self._scope.discard_child(self._call)
        try:
            trailing = self._call.trailing_metadata()  # AttributeError on a bare iterator
        except Exception:
            return
        merge_trailers(self._session, trailing)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._call.result(timeout)
        finally:
            if getattr(self._call, "done", lambda: True)():
                self._finish()

    def exception(self, timeout: float | None = None) -> Any:
        exc = self._call.exception(timeout)
        self._finish()
        return exc

    def __iter__(self) -> _TrackedCall:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except (StopIteration, grpc.RpcError):
            self._finish()
            raise


class ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """lazygrpc's interceptor for sync channels: `grpc.intercept_channel(ch, ClientInterceptor())`."""

    def _details(self, details: Any) -> tuple[Any, Outgoing]:
        out = prepare(details.metadata, details.timeout)
        new = _ClientCallDetails(
            details.method,
            out[1],
            list(out[0]),  # a list, as interceptors after ours may append to it
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )
        return new, out

    def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
        new, out = self._details(details)
        return _TrackedCall(continuation(new, request), out)

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        """Implementation of grpc.UnaryUnaryClientInterceptor; not part of the lazygrpc API."""
        return self._intercept(continuation, client_call_details, request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        """Implementation of grpc.UnaryStreamClientInterceptor; not part of the lazygrpc API."""
        return self._intercept(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """Implementation of grpc.StreamUnaryClientInterceptor; not part of the lazygrpc API."""
        return self._intercept(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """Implementation of grpc.StreamStreamClientInterceptor; not part of the lazygrpc API."""
        return self._intercept(continuation, client_call_details, request_iterator)


# -- asyncio ------------------------------------------------------------------------------


def _aio_details(details: Any) -> tuple[Any, Outgoing]:
    out = prepare(details.metadata, details.timeout)
    md = OutgoingMetadata(out[0])
    if type(details) is grpc.aio.ClientCallDetails:  # grpc's own: build it, no _replace()
        new = grpc.aio.ClientCallDetails(
            details.method, out[1], md, details.credentials, details.wait_for_ready
        )
        return new, out
    return details._replace(metadata=md, timeout=out[1]), out


async def _finish_aio(call: Any, session: sessions.Session) -> None:
    trailing = ended_trailers(call)
    if trailing is None:
        try:
            trailing = await call.trailing_metadata()
        except Exception:
            return
    merge_trailers(session, trailing)


async def _intercepted(continuation: Any, details: Any, request: Any) -> Any:
    """One call through grpc's interceptor path: the session's metadata go in, and the
    trailers are merged when the call ends (`_watch_aio`), for every call kind alike."""
    new, out = _aio_details(details)
    call = await continuation(new, request)
    _watch_aio(call, out[2], out[3])
    return call


def _aio_interceptor(base: type, method: str) -> type:
    """A grpc.aio client interceptor class for one call kind (grpc.aio files an interceptor
    under the first call kind it implements, so each kind needs a class of its own)."""

    async def intercept(
        self: Any, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await _intercepted(continuation, client_call_details, request)

    intercept.__doc__ = f"Implementation of grpc.aio.{base.__name__}; not part of the lazygrpc API."
    return type(f"_Aio{base.__name__}", (base,), {method: intercept})


_AIO_INTERCEPTORS = [
    _aio_interceptor(grpc.aio.UnaryUnaryClientInterceptor, "intercept_unary_unary"),
    _aio_interceptor(grpc.aio.UnaryStreamClientInterceptor, "intercept_unary_stream"),
    _aio_interceptor(grpc.aio.StreamUnaryClientInterceptor, "intercept_stream_unary"),
    _aio_interceptor(grpc.aio.StreamStreamClientInterceptor, "intercept_stream_stream"),
]


def aio_client_interceptors() -> list[Any]:
    """Interceptors for `grpc.aio.insecure_channel(target, interceptors=...)`.

    `intercept_aio_channel(channel)` does the same for a channel you already have, and
    costs less per call."""
    return [cls() for cls in _AIO_INTERCEPTORS]


# -- asyncio without grpc's interceptor path ----------------------------------------------


#: Trailer merges that had to wait for a coroutine (kept referenced until they ran).
_LATE_MERGES: set[asyncio.Future[None]] = set()


def _watch_aio(call: Any, session: sessions.Session, scope: CallScope | None) -> None:
    """Register `call` with the parent call and merge its trailers when it ends.

    grpc.aio runs a call's done callbacks when its status arrives, before the awaiting
    caller resumes (and before a response stream ends for its reader), so the merged
    globals are there when the caller looks."""
    if scope is not None and not scope.add_child(call):
        return  # the parent call already ended: add_child cancelled this one

    def done(call: Any) -> None:
        if scope is not None:
            scope.discard_child(call)
        trailing = ended_trailers(call)
        if trailing is not None:
            merge_trailers(session, trailing)
        else:  # not grpc's own call object: the public route, a moment later
            task = asyncio.ensure_future(_finish_aio(call, session))
            _LATE_MERGES.add(task)
            task.add_done_callback(_LATE_MERGES.discard)

    call.add_done_callback(done)


class _AioCallable:
    """A grpc.aio multi-callable whose calls carry the session (`intercept_aio_channel`)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, *args: Any, **kw: Any) -> Any:
        if len(args) > 1:  # a request stream's call takes the options by position too
            kw.update(zip(_CALL_OPTIONS, args[1:], strict=False))
            args = args[:1]
        items, timeout, session, scope = prepare(kw.pop("metadata", None), kw.pop("timeout", None))
        call = self._inner(*args, timeout=timeout, metadata=OutgoingMetadata(items), **kw)
        _watch_aio(call, session, scope)
        return call


#: The options of a grpc.aio multi-callable after the request, in their positional order.
_CALL_OPTIONS = ("timeout", "metadata", "credentials", "wait_for_ready", "compression")


class _AioChannel(grpc.aio.Channel):  # type: ignore[misc]
    """What `intercept_aio_channel` returns: the channel, its calls carrying the session."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _AioCallable(self._channel.unary_unary(*args, **kwargs))

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _AioCallable(self._channel.unary_stream(*args, **kwargs))

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _AioCallable(self._channel.stream_unary(*args, **kwargs))

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _AioCallable(self._channel.stream_stream(*args, **kwargs))

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    async def __aenter__(self) -> _AioChannel:
        await self._channel.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._channel.__aexit__(*exc)


def intercept_aio_channel(channel: grpc.aio.Channel) -> grpc.aio.Channel:
    """A grpc.aio channel whose calls carry the session, globals, trace context and the
    parent's deadline, are cancelled with the parent call, and merge `lazy-globals-update`
    before the caller sees the response: what `aio_client_interceptors()` do, without
    grpc's interceptor path (a task and a second call object per call). Calls return
    grpc's own call objects; errors stay `grpc.aio.AioRpcError`.

    >>> channel = intercept_aio_channel(grpc.aio.insecure_channel("localhost:50051"))
    >>> stub = module_pb2_grpc.ModuleServiceStub(channel)  # doctest: +SKIP
    """
    return _AioChannel(channel)


def intercept_channel(channel: grpc.Channel) -> grpc.Channel:
    """A sync channel with lazygrpc's client interceptor."""
    return grpc.intercept_channel(channel, ClientInterceptor())
