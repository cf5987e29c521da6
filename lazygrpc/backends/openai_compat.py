"""A backend that streams from an OpenAI-compatible HTTP upstream (vLLM, Ollama, llama.cpp,
TGI, LiteLLM, OpenAI itself): `lazygrpc serve-model --backend openai` (docs/backends.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import grpc
import httpx
from httpx_sse import SSEError, aconnect_sse

from lazygrpc.backends.base import Finish, Prompt, SamplingParams, UpstreamError

__all__ = ["OpenAIBackend", "code_for_http_status", "request_body"]

Api = Literal["chat", "completions"]

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def code_for_http_status(status: int) -> grpc.StatusCode:
    """The gRPC status an upstream's HTTP error status becomes (5xx: UNAVAILABLE).

    >>> code_for_http_status(429).name, code_for_http_status(502).name
    ('RESOURCE_EXHAUSTED', 'UNAVAILABLE')
    """
    if status >= 500:
        return grpc.StatusCode.UNAVAILABLE
    return _CODES.get(status, grpc.StatusCode.UNKNOWN)


def request_body(model: str, api: Api, prompt: Prompt, params: SamplingParams) -> dict[str, Any]:
    """The JSON body of one streaming request: the effective params mapped onto OpenAI's
    names (`top_k` and `seed` only when set: OpenAI itself rejects `top_k`)."""
    body: dict[str, Any] = {"model": model, "stream": True}
    if api == "chat":
        body["messages"] = [{"role": m.role, "content": m.content} for m in prompt.messages]
    else:
        body["prompt"] = str(prompt)
    body["stream_options"] = {"include_usage": True}
    body["max_tokens"] = params.max_tokens
    body["temperature"] = params.temperature
    body["top_p"] = params.top_p
    if params.top_k > 0:
        body["top_k"] = params.top_k
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    return body


def _base_url(upstream: str) -> str:
    """`http://h:8000` and `http://h:8000/` mean `http://h:8000/v1`, as OpenAI SDKs' base_url."""
    parts = urlsplit(upstream)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"upstream {upstream!r} must be an http:// or https:// URL")
    base = upstream.rstrip("/")
    return base if parts.path.strip("/") else base + "/v1"


#: Bytes of an upstream's error body read for its message; the rest is not read.
MAX_ERROR_BODY = 64 * 1024


async def _error_message(response: httpx.Response) -> tuple[str, str]:
    """(error type, message) from an OpenAI-style error body, or the body's start."""
    data = b""
    async for part in response.aiter_bytes():
        data += part
        if len(data) >= MAX_ERROR_BODY:
            break
    text = data[:MAX_ERROR_BODY].decode(errors="replace")
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or ""
        return str(kind), str(error.get("message") or text[:200])
    if isinstance(error, str):  # some servers (TGI, Ollama) send {"error": "…"}
        return "", error
    return "", text[:200].strip() or response.reason_phrase


class OpenAIBackend:
    """Streams completions from `upstream` (an OpenAI-style base URL, e.g.
    `http://127.0.0.1:8000/v1`) for `model`.

    `api` picks `/chat/completions` (the chat goes as `messages`) or `/completions` (the
    prompt as text). Usage and finish reason come from the upstream (`stream_options:
    {include_usage: true}`); when it sends none, the server counts. Closing the generator
    (the caller left, a stop string) closes the upstream HTTP stream. One instance serves
    many calls on one event loop over a shared connection pool; `aclose()` releases it.
    """

    def __init__(
        self,
        upstream: str,
        model: str,
        *,
        api_key: str | None = None,
        name: str | None = None,
        api: Api = "chat",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if api not in ("chat", "completions"):
            raise ValueError(f"api {api!r} must be 'chat' or 'completions'")
        self.name = name or model
        self.model = model
        self.api: Api = api
        self.url = f"{_base_url(upstream)}/{'chat/completions' if api == 'chat' else 'completions'}"
        self._headers = {"Accept": "text/event-stream", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # never the key
        return f"OpenAIBackend(url={self.url!r}, model={self.model!r})"

    def count_tokens(self, text: str) -> int:
        """An estimate (whitespace-separated words), used only when the upstream sends no usage."""
        return max(len(text.split()), 1) if text else 0

    async def aclose(self) -> None:
        """Close the connection pool (a later call opens a new one)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, headers=self._headers)
        return self._client

    def _fail(self, code: grpc.StatusCode, message: str, error_type: str) -> UpstreamError:
        return UpstreamError(
            code,
            f"upstream {self.url}: {message}",
            upstream=self.url,
            method=f"POST {urlsplit(self.url).path}",
            error_type=error_type,
        )

    async def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[str | Finish]:
        """Yield the upstream's text deltas as they arrive, then a `Finish` with its usage."""
        body = request_body(self.model, self.api, prompt, params)
        finish = Finish()
        try:
            async with aconnect_sse(self._http(), "POST", self.url, json=body) as source:
                response = source.response
                if response.status_code >= 400:
                    kind, message = await _error_message(response)
                    raise self._fail(
                        code_for_http_status(response.status_code),
                        f"HTTP {response.status_code}: {message}",
                        f"HTTP {response.status_code}" + (f" {kind}" if kind else ""),
                    )
                async for event in source.aiter_sse():
                    if event.data == "[DONE]":
                        break
                    if not event.data:
                        continue
                    text, finish = self._read_chunk(event.data, finish)
                    if text:
                        yield text
        except httpx.TimeoutException as exc:
            phase = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for data"
            raise self._fail(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"timed out {phase}", type(exc).__name__
            ) from exc
        except (httpx.TransportError, SSEError) as exc:
            raise self._fail(
                grpc.StatusCode.UNAVAILABLE, f"{type(exc).__name__}: {exc}", type(exc).__name__
            ) from exc
        yield finish

    def _read_chunk(self, data: str, finish: Finish) -> tuple[str, Finish]:
        """One SSE event's text delta, and the finish so far updated from it."""
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise self._fail(
                grpc.StatusCode.UNAVAILABLE, f"malformed event {data[:80]!r}", "MalformedEvent"
            ) from exc
        if not isinstance(chunk, dict):
            raise self._fail(
                grpc.StatusCode.UNAVAILABLE, f"malformed event {data[:80]!r}", "MalformedEvent"
            )
        if "error" in chunk:  # an error after the stream began (vLLM, LiteLLM send these)
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise self._fail(
                grpc.StatusCode.UNAVAILABLE, f"error mid-stream: {message}", "HTTP 200"
            )
        text = ""
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") if self.api == "chat" else choice
            text = (delta or {}).get("content" if self.api == "chat" else "text") or ""
            if reason := choice.get("finish_reason"):  # "stop", "length", "tool_calls", "eos"…
                finish = Finish(
                    "length" if reason == "length" else "stop",
                    finish.prompt_tokens,
                    finish.completion_tokens,
                )
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            finish = Finish(
                finish.reason,
                _count(usage.get("prompt_tokens")),
                _count(usage.get("completion_tokens")),
            )
        return text, finish


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
