"""The Python client: `connect(url)` for modules, `LLM(url)` for models, sync and asyncio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from lazygrpc import broker, chain, channels, invoke
from lazygrpc.calls import current_call
from lazygrpc.v1 import model_pb2, model_pb2_grpc, module_pb2, module_pb2_grpc
from lazygrpc.values import fill_struct, fill_value, from_value

EventKind = Literal["delta", "intermediate", "result"]


@dataclass(frozen=True)
class Event:
    """One event of a module stream: a `delta`, an `intermediate` from below, or the `result`."""

    kind: EventKind
    value: Any
    source: str
    seq: int

    @classmethod
    def from_pb(cls, ev: module_pb2.Event) -> Event:
        kind = ev.WhichOneof("body")
        if kind is None:
            raise ValueError(f"event {ev.seq} has no body")
        # Filled in directly: a frozen dataclass's __init__ sets each field through
        # object.__setattr__, four calls per event on a stream's path.
        event = _new_object(cls)
        event.__dict__.update(
            {"kind": kind, "value": from_value(getattr(ev, kind), where=kind),
             "source": ev.source, "seq": ev.seq}
        )  # fmt: skip
        return event


_new_object = object.__new__


def _relay_source(module: str, source: str) -> str:
    """Source path of an event relayed from `module`'s stream: `retriever/embedder`."""
    return module if not source or source == module else f"{module}/{source}"


def _relay_topic() -> broker.Topic | None:
    scope = current_call()
    topic = scope.topic if scope is not None else None
    return topic if topic is not None and topic.accepts_intermediate else None


_NO_RESULT = object()


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

    def __init__(self, url: str, *, timeout: float | None = None) -> None:
        self.url = url
        self.target, self.module = channels.parse_url(url)
        if not self.module:
            raise ValueError(
                f"invalid lazygrpc URL {url!r}: no module name (grpc://HOST:PORT/MODULE)"
            )
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"RemoteModule({self.url!r})"

    def _request(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> module_pb2.CallRequest:
        if len(args) > 1:
            raise TypeError(f"{self.module}() takes one positional input, got {len(args)}")
        request = module_pb2.CallRequest(module=self.module)
        if args:
            fill_value(request.input, args[0], where="input")
        if kwargs:
            fill_struct(request.kwargs, kwargs)
        return request

    def _error(self, err: grpc.RpcError) -> Exception:
        return chain.remote_error_from_rpc(err, service=self.target, method=self.module)

    def _relayed(self, ev: module_pb2.Event) -> broker.Item:
        v = ev.intermediate
        return (broker.INTERMEDIATE, _relay_source(self.module, ev.source), v, v.ByteSize() + 8)

    # -- sync ---------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the module and return its result. Raises `RemoteError` if it fails."""
        request = self._request(args, kwargs)
        if _relay_topic() is not None:
            # Read to the end, not just to the result: the trailers (globals) come after it.
            return _result_of(self.module, self._stream(request))
        stub = channels.stub(module_pb2_grpc.ModuleServiceStub, self.target)
        response = invoke.unary(stub.Call, request, self.timeout, self._error)
        return from_value(response.output, where="output")

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Event]:
        """Stream the module's events; the last one is the `result`.

        Under a streaming call, `intermediate` events go straight into the current stream
        instead of being yielded here.
        """
        return self._stream(self._request(args, kwargs))

    def _stream(self, request: module_pb2.CallRequest) -> Iterator[Event]:
        topic = _relay_topic()
        stub = channels.stub(module_pb2_grpc.ModuleServiceStub, self.target)
        for ev in invoke.stream(stub.Stream, request, self.timeout, self._error):
            if topic is not None and ev.HasField("intermediate"):
                topic.put(self._relayed(ev))
            else:
                yield Event.from_pb(ev)

    def list_modules(self) -> list[dict[str, Any]]:
        """The modules the server exposes: name, streaming, doc."""
        stub = channels.stub(module_pb2_grpc.ModuleServiceStub, self.target)
        request = module_pb2.ListModulesRequest()
        response = invoke.unary(stub.ListModules, request, self.timeout, self._error)
        return [{"name": m.name, "streaming": m.streaming, "doc": m.doc} for m in response.modules]

    # -- asyncio ------------------------------------------------------------------------

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """`await m.acall(x)`: the asyncio twin of `m(x)`."""
        request = self._request(args, kwargs)
        if _relay_topic() is not None:
            return await _aresult_of(self.module, self._astream(request))
        stub = channels.astub(module_pb2_grpc.ModuleServiceStub, self.target)
        response = await invoke.aunary(stub.Call, request, self.timeout, self._error)
        return from_value(response.output, where="output")

    def astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Event]:
        """`async for ev in m.astream(x)`: the asyncio twin of `m.stream(x)`."""
        return self._astream(self._request(args, kwargs))

    async def _astream(self, request: module_pb2.CallRequest) -> AsyncIterator[Event]:
        topic = _relay_topic()
        stub = channels.astub(module_pb2_grpc.ModuleServiceStub, self.target)
        async for ev in invoke.astream(stub.Stream, request, self.timeout, self._error):
            if topic is not None and ev.HasField("intermediate"):
                await broker.aput_from_anywhere(topic, self._relayed(ev))
            else:
                yield Event.from_pb(ev)


def connect(url: str, *, timeout: float | None = None) -> RemoteModule:
    """A remote module: `connect("grpc://127.0.0.1:50051/search")("query")`."""
    return RemoteModule(url, timeout=timeout)


_PARAMS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed")


def _params_message(params: Mapping[str, Any]) -> model_pb2.GenerationParams:
    msg = model_pb2.GenerationParams()
    for key, value in params.items():
        if key not in _PARAMS:
            raise TypeError(f"unknown generation param {key!r} (known: {', '.join(_PARAMS)})")
        if value is None:
            continue
        if key == "stop":
            msg.stop.extend([value] if isinstance(value, str) else list(value))
        else:
            try:
                setattr(msg, key, value)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"generation param {key!r}: {value!r} ({exc})") from None
    return msg


class LLM:
    """A model served by a lazygrpc `ModelService`.

    `share(prompt=..., **params)` gives a new instance on the same channel and service
    with its own prompt template and params; the server's presets stay on the server.
    """

    def __init__(
        self, url: str, *, prompt: str | None = None, timeout: float | None = None, **params: Any
    ) -> None:
        self.url = url
        self.target, path = channels.parse_url(url)
        if path:
            raise ValueError(f"invalid lazygrpc URL {url!r}: a model URL has no path")
        self.prompt = prompt
        self.timeout = timeout
        _params_message(params)  # validate names and types now
        self.params: dict[str, Any] = dict(params)

    def __repr__(self) -> str:
        return f"LLM({self.url!r}, prompt={self.prompt!r}, params={self.params!r})"

    def share(self, prompt: str | None = None, **params: Any) -> LLM:
        """A new instance sharing this one's channel, with its own prompt and params."""
        return LLM(
            self.url,
            prompt=self.prompt if prompt is None else prompt,
            timeout=self.timeout,
            **{**self.params, **params},
        )

    def _request(self, text: str, params: Mapping[str, Any]) -> model_pb2.GenerateRequest:
        request = model_pb2.GenerateRequest()
        if self.params or params:
            request.params.CopyFrom(_params_message({**self.params, **params}))
        if self.prompt is None:
            request.input = text
        elif "{input}" in self.prompt:
            request.input = self.prompt.replace("{input}", text)
        else:  # a template without a slot acts as the system prompt
            request.messages.add(role="system", content=self.prompt)
            request.messages.add(role="user", content=text)
        return request

    def _error(self, method: str) -> Callable[[grpc.RpcError], Exception]:
        def build(err: grpc.RpcError) -> Exception:
            return chain.remote_error_from_rpc(err, service=self.target, method=method)

        return build

    def _stub(self) -> Any:
        return channels.stub(model_pb2_grpc.ModelServiceStub, self.target)

    def _astub(self) -> Any:
        return channels.astub(model_pb2_grpc.ModelServiceStub, self.target)

    def __call__(self, text: str, **params: Any) -> str:
        """The whole answer (`Complete`)."""
        request = self._request(text, params)
        response = invoke.unary(
            self._stub().Complete, request, self.timeout, self._error("Complete")
        )
        return str(response.text)

    def stream(self, text: str, **params: Any) -> Iterator[str]:
        """The answer's text deltas as they are generated (`Generate`).

        A generator function, so that `add_modules({"chat": llm.stream})` serves it as a
        streaming module.
        """
        request = self._request(text, params)
        method = self._stub().Generate
        yield from invoke.stream(method, request, self.timeout, self._error("Generate"), text=True)

    def chunks(self, text: str, **params: Any) -> Iterator[model_pb2.GenerateChunk]:
        """The raw `GenerateChunk`s; the last carries `finish_reason` and `usage`."""
        request = self._request(text, params)
        return invoke.stream(self._stub().Generate, request, self.timeout, self._error("Generate"))

    async def acall(self, text: str, **params: Any) -> str:
        """`await llm.acall(x)`: the asyncio twin of `llm(x)`."""
        request = self._request(text, params)
        method = self._astub().Complete
        response = await invoke.aunary(method, request, self.timeout, self._error("Complete"))
        return str(response.text)

    @invoke.async_stream  # served as a streaming module, like an async generator function
    def astream(self, text: str, **params: Any) -> AsyncIterator[str]:
        """`async for delta in llm.astream(x)`: the asyncio twin of `llm.stream(x)`.

        The request is built (and `params` checked) at once; the call starts at the first
        step. It is the stream itself, not a generator around it: one layer less per token.
        So `inspect.isasyncgenfunction(llm.astream)` is False; served as a module (also
        through `functools.partial`) it streams all the same (`invoke.async_stream`).
        """
        request = self._request(text, params)
        return invoke.astream(
            self._agenerate, request, self.timeout, self._error("Generate"), text=True
        )

    def achunks(self, text: str, **params: Any) -> AsyncIterator[model_pb2.GenerateChunk]:
        """The asyncio twin of `chunks`."""
        request = self._request(text, params)
        return invoke.astream(self._agenerate, request, self.timeout, self._error("Generate"))

    def _agenerate(
        self, request: model_pb2.GenerateRequest, metadata: Any = None, timeout: Any = None
    ) -> Any:
        # The stub belongs to the loop that iterates, which need not run yet at astream().
        return self._astub().Generate(request, metadata=metadata, timeout=timeout)

    def info(self) -> dict[str, Any]:
        """Name, backend and the params a caller may set, with their ranges."""
        request = model_pb2.GetModelInfoRequest()
        method = self._stub().GetModelInfo
        info = invoke.unary(method, request, self.timeout, self._error("GetModelInfo"))
        return {
            "name": info.name,
            "backend": info.backend,
            "settable_params": {p.name: (p.min, p.max) for p in info.settable_params},
        }
