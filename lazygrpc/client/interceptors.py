"""Client interceptors for raw stubs (sync `grpc.Channel` and `grpc.aio`), over the one
client call lifecycle (`lazygrpc.client.call.OutgoingCall`).

Every outgoing call carries `lazy-session-id`, the session globals as `lazy.` baggage
entries, the W3C trace context when there is one, and the parent call's remaining deadline;
it registers with the parent call so that it is cancelled when the parent ends early, and
its `lazy-globals-update` trailer is merged into the caller's session when it ends.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import grpc
import grpc.aio

from lazygrpc.client import seams
from lazygrpc.client.call import OutgoingCall

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

    __slots__ = ("_call", "_finished", "_lock", "_out")

    def __init__(self, call: Any, out: OutgoingCall) -> None:
        self._call = call
        self._out = out
        self._finished = False
        self._lock = threading.Lock()
        # Another interceptor may hand back a bare iterator without the Call/Future API
        # (OpenTelemetry's sync client does for streams, opentelemetry-python-contrib #2014):
        # then trailers are merged when iteration ends, and the call cannot be cancelled.
        if hasattr(call, "cancel"):
            out.attach(call)
        if hasattr(call, "add_done_callback"):
            call.add_done_callback(lambda _: self._finish())

    def _finish(self) -> None:
        with self._lock:  # the done callback's thread and the caller's may both get here
            if self._finished:
                return
            self._finished = True
        try:
            trailing = self._call.trailing_metadata()  # AttributeError on a bare iterator
        except Exception:
            trailing = None
        self._out.finish(self._call, trailing)

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

    def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
        out = OutgoingCall(details.metadata, details.timeout)
        new = _ClientCallDetails(
            details.method,
            out.timeout,
            list(out.metadata),  # a list, as interceptors after ours may append to it
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )
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


async def _intercepted(continuation: Any, details: Any, request: Any) -> Any:
    """One call through grpc's interceptor path: the session's metadata go in, and the
    trailers are merged when the call ends (`_watch`), for every call kind alike."""
    out = OutgoingCall(details.metadata, details.timeout)
    md = seams.aio_metadata(out.metadata)
    if type(details) is grpc.aio.ClientCallDetails:
        new = grpc.aio.ClientCallDetails(
            details.method, out.timeout, md, details.credentials, details.wait_for_ready
        )
    else:  # another interceptor's own details type
        new = details._replace(metadata=md, timeout=out.timeout)
    call = await continuation(new, request)
    _watch(call, out)
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


def _watch(call: Any, out: OutgoingCall) -> None:
    """Register a grpc.aio call with the parent call and finish it when it ends."""
    if out.attach(call):  # else the parent call already ended: attach cancelled this one
        call.add_done_callback(out.finish_ended)


class _AioCallable:
    """A grpc.aio multi-callable whose calls carry the session (`intercept_aio_channel`)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, *args: Any, **kw: Any) -> Any:
        if len(args) > 1:  # a request stream's call takes the options by position too
            kw.update(zip(_CALL_OPTIONS, args[1:], strict=False))
            args = args[:1]
        out = OutgoingCall(kw.pop("metadata", None), kw.pop("timeout", None))
        call = self._inner(
            *args, timeout=out.timeout, metadata=seams.aio_metadata(out.metadata), **kw
        )
        _watch(call, out)
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
