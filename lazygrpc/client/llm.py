"""`LLM(url)`: a model served by a lazygrpc `ModelService`, sync and asyncio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from lazygrpc.client import call, channels, credentials
from lazygrpc.client.credentials import AuthCallback
from lazygrpc.client.service_config import ChannelPolicy
from lazygrpc.core.events import async_stream
from lazygrpc.v1 import model_pb2, model_pb2_grpc

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
        self,
        url: str,
        *,
        prompt: str | None = None,
        timeout: float | None = None,
        policy: ChannelPolicy | None = None,
        token: str | None = None,
        auth: AuthCallback | None = None,
        **params: Any,
    ) -> None:
        self.url = url
        self.target, path, self.policy = channels.parse_endpoint(url, policy)
        if path:
            raise ValueError(f"invalid lazygrpc URL {url!r}: a model URL has no path")
        self.prompt = prompt
        self.timeout = timeout
        self._token, self._auth = token, auth
        #: This target's credentials, per call (docs/security.md): never the caller's.
        self._credentials = credentials.metadata_source(self.target, token, auth)
        _params_message(params)  # validate names and types now
        self.params: dict[str, Any] = dict(params)
        #: What a failed call raises, per method: the error with this model in its chain.
        self._errors = {
            method: credentials.rpc_error(self.target, method)
            for method in ("Complete", "Generate", "GetModelInfo")
        }

    def __repr__(self) -> str:
        return f"LLM({self.url!r}, prompt={self.prompt!r}, params={self.params!r})"

    def share(self, prompt: str | None = None, **params: Any) -> LLM:
        """A new instance sharing this one's channel, with its own prompt and params."""
        return LLM(
            self.url,
            prompt=self.prompt if prompt is None else prompt,
            timeout=self.timeout,
            policy=self.policy,
            token=self._token,
            auth=self._auth,
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

    def _stub(self) -> Any:
        return channels.stub(model_pb2_grpc.ModelServiceStub, self.target, self.policy)

    def _astub(self) -> Any:
        return channels.astub(model_pb2_grpc.ModelServiceStub, self.target, self.policy)

    def __call__(self, text: str, **params: Any) -> str:
        """The whole answer (`Complete`)."""
        request = self._request(text, params)
        response = call.unary(
            self._stub().Complete,
            request,
            self.timeout,
            self._errors["Complete"],
            self._credentials(),
        )
        return str(response.text)

    def stream(self, text: str, **params: Any) -> Iterator[str]:
        """The answer's text deltas as they are generated (`Generate`).

        A generator function, so that `add_modules({"chat": llm.stream})` serves it as a
        streaming module.
        """
        request = self._request(text, params)
        method = self._stub().Generate
        error = self._errors["Generate"]
        yield from call.stream(method, request, self.timeout, error, self._credentials(), text=True)

    def chunks(self, text: str, **params: Any) -> Iterator[model_pb2.GenerateChunk]:
        """The raw `GenerateChunk`s; the last carries `finish_reason` and `usage`."""
        request = self._request(text, params)
        method = self._stub().Generate
        error = self._errors["Generate"]
        return call.stream(method, request, self.timeout, error, self._credentials())

    async def acall(self, text: str, **params: Any) -> str:
        """`await llm.acall(x)`: the asyncio twin of `llm(x)`."""
        request = self._request(text, params)
        method = channels.astub(model_pb2_grpc.ModelServiceStub, self.target).Complete
        error = self._errors["Complete"]
        response = await call.aunary(method, request, self.timeout, error, self._credentials())
        return str(response.text)

    @async_stream  # served as a streaming module, like an async generator function
    def astream(self, text: str, **params: Any) -> AsyncIterator[str]:
        """`async for delta in llm.astream(x)`: the asyncio twin of `llm.stream(x)`.

        The request is built (and `params` checked) at once; the call starts at the first
        step. It is the stream itself, not a generator around it: one layer less per token.
        So `inspect.isasyncgenfunction(llm.astream)` is False; served as a module (also
        through `functools.partial`) it streams all the same (`async_stream`).
        """
        request = self._request(text, params)
        error = self._errors["Generate"]
        return call.astream(
            self._agenerate, request, self.timeout, error, self._credentials(), text=True
        )

    def _agenerate(
        self, request: model_pb2.GenerateRequest, metadata: Any = None, timeout: Any = None
    ) -> Any:
        # The stub belongs to the loop that iterates, which need not run yet at astream().
        return channels.astub(model_pb2_grpc.ModelServiceStub, self.target).Generate(
            request, metadata=metadata, timeout=timeout
        )

    def info(self) -> dict[str, Any]:
        """Name, backend and the params a caller may set, with their ranges."""
        request = model_pb2.GetModelInfoRequest()
        method = self._stub().GetModelInfo
        error = self._errors["GetModelInfo"]
        info = call.unary(method, request, self.timeout, error, self._credentials())
        return {
            "name": info.name,
            "backend": info.backend,
            "settable_params": {p.name: (p.min, p.max) for p in info.settable_params},
        }
