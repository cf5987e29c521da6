"""`connect(url)`: a module served by a lazygrpc `ModuleService`, called like a local function."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from lazygrpc import broker
from lazygrpc.client import call, channels, credentials
from lazygrpc.client.credentials import AuthCallback
from lazygrpc.client.service_config import DEFAULT_POLICY, ChannelPolicy
from lazygrpc.core.events import Event, relay_source
from lazygrpc.core.values import fill_list, fill_struct, fill_value, from_value
from lazygrpc.v1 import module_pb2, module_pb2_grpc

_NO_RESULT = object()


class _EventStreamStub:
    """`ModuleService.Stream` with its events left serialized: `Event.from_wire` reads
    them, so that a relaying module can send them on as they came."""

    def __init__(self, channel: Any) -> None:
        self.Stream = channel.unary_stream(
            "/lazygrpc.v1.ModuleService/Stream",
            request_serializer=module_pb2.CallRequest.SerializeToString,
            response_deserializer=None,
        )


def _result_of(module: str, events: Iterable[Event]) -> Any:
    """The `result` of a stream read to its end (its trailers carry the globals)."""
    result = _NO_RESULT
    for ev in events:
        if ev.kind == "result":
            result = ev.value
    if result is _NO_RESULT:
        raise RuntimeError(f"stream of {module!r} ended without a result")
    return result


async def _aresult_of(module: str, events: AsyncIterator[Event]) -> Any:
    result = _NO_RESULT
    async for ev in events:
        if ev.kind == "result":
            result = ev.value
    if result is _NO_RESULT:
        raise RuntimeError(f"stream of {module!r} ended without a result")
    return result


class RemoteModule:
    """A module served by a lazygrpc `ModuleService`, called like a local function.

    Under a streaming call, calls use the streaming RPC and re-publish the intermediate
    events from below into the current stream, so progress from any depth reaches the entry.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float | None = None,
        policy: ChannelPolicy | None = None,
        idempotent: bool | None = None,
        token: str | None = None,
        auth: AuthCallback | None = None,
    ) -> None:
        self.url = url
        if idempotent is not None:
            policy = replace(policy or DEFAULT_POLICY, idempotent=idempotent)
        self.target, self.module, self.policy = channels.parse_endpoint(url, policy)
        if not self.module:
            raise ValueError(
                f"invalid lazygrpc URL {url!r}: no module name (grpc://HOST:PORT/MODULE)"
            )
        self.timeout = timeout
        #: This target's credentials, per call (docs/security.md): never the caller's.
        self._credentials = credentials.metadata_source(self.target, token, auth)
        self._error = credentials.rpc_error(self.target, self.module)

    def __repr__(self) -> str:
        return f"RemoteModule({self.url!r})"

    def _request(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> module_pb2.CallRequest:
        request = module_pb2.CallRequest(module=self.module)
        if len(args) == 1:  # the one-argument shorthand every client knows
            fill_value(request.input, args[0], where="input")
        elif args:
            fill_list(request.args, args)
        if kwargs:
            fill_struct(request.kwargs, kwargs)
        return request

    def _relayed(self, ev: Event) -> broker.Item:
        """An intermediate from below, as an item of the current stream: its bytes as is."""
        assert ev.wire is not None
        return broker.Item.relayed(
            broker.INTERMEDIATE, relay_source(self.module, ev.source), ev.wire
        )

    # -- sync ---------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the module and return its result. Raises `RemoteError` if it fails."""
        request = self._request(args, kwargs)
        if broker.current_topic() is not None:
            # Read to the end, not just to the result: the trailers (globals) come after it.
            return _result_of(self.module, self._stream(request))
        stub = channels.stub(module_pb2_grpc.ModuleServiceStub, self.target, self.policy)
        response = call.unary(stub.Call, request, self.timeout, self._error, self._credentials())
        return from_value(response.output, where="output")

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Event]:
        """Stream the module's events; the last one is the `result`.

        Under a streaming call, `intermediate` events go straight into the current stream
        instead of being yielded here.
        """
        return self._stream(self._request(args, kwargs))

    def _stream(self, request: module_pb2.CallRequest) -> Iterator[Event]:
        topic = broker.current_topic()
        stub = channels.stub(_EventStreamStub, self.target, self.policy)
        for data in call.stream(
            stub.Stream, request, self.timeout, self._error, self._credentials()
        ):
            ev = Event.from_wire(data)
            if topic is not None and ev.kind == "intermediate":
                topic.put(self._relayed(ev))
            else:
                yield ev

    def list_modules(self) -> list[dict[str, Any]]:
        """The modules the server exposes: name, streaming, doc."""
        stub = channels.stub(module_pb2_grpc.ModuleServiceStub, self.target, self.policy)
        request = module_pb2.ListModulesRequest()
        response = call.unary(
            stub.ListModules, request, self.timeout, self._error, self._credentials()
        )
        return [{"name": m.name, "streaming": m.streaming, "doc": m.doc} for m in response.modules]

    # -- asyncio ------------------------------------------------------------------------

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """`await m.acall(x)`: the asyncio twin of `m(x)`."""
        request = self._request(args, kwargs)
        if broker.current_topic() is not None:
            return await _aresult_of(self.module, self._astream(request))
        stub = channels.astub(module_pb2_grpc.ModuleServiceStub, self.target, self.policy)
        response = await call.aunary(
            stub.Call, request, self.timeout, self._error, self._credentials()
        )
        return from_value(response.output, where="output")

    def astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Event]:
        """`async for ev in m.astream(x)`: the asyncio twin of `m.stream(x)`."""
        return self._astream(self._request(args, kwargs))

    async def _astream(self, request: module_pb2.CallRequest) -> AsyncIterator[Event]:
        topic = broker.current_topic()
        stub = channels.astub(_EventStreamStub, self.target, self.policy)
        async for data in call.astream(
            stub.Stream, request, self.timeout, self._error, self._credentials()
        ):
            ev = Event.from_wire(data)
            if topic is not None and ev.kind == "intermediate":
                await broker.aput_from_anywhere(topic, self._relayed(ev))
            else:
                yield ev


def connect(
    url: str,
    *,
    timeout: float | None = None,
    policy: ChannelPolicy | None = None,
    idempotent: bool | None = None,
    token: str | None = None,
    auth: AuthCallback | None = None,
) -> RemoteModule:
    """A remote module: `connect("grpc://127.0.0.1:50051/search")("query")`.

    `policy` sets balancing, health checks and retries (`ChannelPolicy`; a URL's
    `?lb=…` applies on top); `idempotent=True` lets grpc retry `Call` on UNAVAILABLE,
    for a module whose calls may safely run twice. `token` is sent as
    `authorization: Bearer <token>` on every call; `auth()` is called before every call
    and returns the metadata to send instead (docs/security.md).
    """
    return RemoteModule(
        url, timeout=timeout, policy=policy, idempotent=idempotent, token=token, auth=auth
    )
