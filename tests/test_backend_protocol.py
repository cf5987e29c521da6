"""The backend protocol's extensions (docs/backends.md, "Writing a backend"): `Prompt`
carries the chat, `Finish` carries a backend's own account, `UpstreamError` becomes a
status with the upstream's frame; served through ModelService and called over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import lazygrpc
from lazygrpc.backends.base import Finish, Message, Prompt, SamplingParams, UpstreamError
from lazygrpc.backends.openai_compat import OpenAIBackend, code_for_http_status
from lazygrpc.server.model import ModelConfig
from lazygrpc.v1 import model_pb2, model_pb2_grpc


class Scripted:
    """Yields `script` (texts, then maybe a Finish or an error), recording what it was given
    and whether it was closed."""

    def __init__(self, *script: Any, forever: bool = False) -> None:
        self.name = "scripted"
        self.script = script
        self.forever = forever
        self.prompts: list[Prompt] = []
        self.closed = asyncio.Event()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[str | Finish]:
        self.prompts.append(prompt)
        try:
            for item in self.script:
                if isinstance(item, Exception):
                    raise item
                yield item
            n = 0
            while self.forever:  # ignores max_tokens: the server cuts it
                n += 1
                yield f" {n}"
        finally:
            self.closed.set()


def _serve(servers: Any, backend: Any, **presets: Any) -> str:
    return str(servers.model_config(ModelConfig(backend, presets=SamplingParams(**presets))))


def test_a_finish_overrides_the_servers_counts_and_reason(servers: Any) -> None:
    url = _serve(servers, Scripted("a", " b", Finish("length", 11, 42)))
    last = list(lazygrpc.LLM(url).chunks("x y z"))[-1]
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (11, 42)
    assert last.usage.total_tokens == 53
    assert last.finish_reason == model_pb2.FINISH_REASON_LENGTH


def test_without_a_finish_the_server_counts(servers: Any) -> None:
    url = _serve(servers, Scripted("a", " b"))
    last = list(lazygrpc.LLM(url).chunks("x y z"))[-1]
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 2)
    assert last.finish_reason == model_pb2.FINISH_REASON_STOP


def test_a_finish_right_after_max_tokens_is_taken(servers: Any) -> None:
    url = _serve(servers, Scripted("a", " b", Finish("stop", 7, 2)), max_tokens=2)
    last = list(lazygrpc.LLM(url).chunks("q"))[-1]
    assert (last.usage.prompt_tokens, last.finish_reason) == (7, model_pb2.FINISH_REASON_STOP)


def test_a_backend_that_overruns_max_tokens_is_cut_and_closed(servers: Any) -> None:
    backend = Scripted("a", forever=True)
    url = _serve(servers, backend, max_tokens=4)
    chunks = list(lazygrpc.LLM(url).chunks("q"))
    assert "".join(c.text for c in chunks) == "a 1 2 3"
    assert chunks[-1].finish_reason == model_pb2.FINISH_REASON_LENGTH
    assert chunks[-1].usage.completion_tokens == 4
    assert backend.closed.is_set()


def test_the_prompt_carries_the_chat_and_stays_a_string(servers: Any) -> None:
    backend = Scripted("ok")
    url = _serve(servers, backend)
    request = model_pb2.GenerateRequest(
        messages=[model_pb2.ChatMessage(role="system", content="terse")], input="why?"
    )
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        list(stub.Generate(request, timeout=10))
        list(stub.Generate(model_pb2.GenerateRequest(input="plain"), timeout=10))
    chat, plain = backend.prompts
    assert chat == "system: terse\nwhy?"
    assert chat.messages == (Message("system", "terse"), Message("user", "why?"))
    assert plain == "plain"
    assert plain.messages == (Message("user", "plain"),)


def test_an_upstream_error_after_tokens_is_its_status_with_the_upstreams_frame(
    servers: Any,
) -> None:
    failure = UpstreamError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "quota gone",
        upstream="http://up.example/v1/chat/completions",
        method="POST /v1/chat/completions",
        error_type="HTTP 429",
    )
    url = _serve(servers, Scripted("a", failure))
    got: list[str] = []
    with pytest.raises(lazygrpc.RemoteError) as info:
        got.extend(lazygrpc.LLM(url).stream("q"))
    assert got == ["a"]
    err = info.value
    assert (err.code, err.message, err.remote_type) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "quota gone",
        "UpstreamError",
    )
    assert [(f.service, f.method, f.error_type) for f in err.chain][-1] == (
        "http://up.example/v1/chat/completions",
        "POST /v1/chat/completions",
        "HTTP 429",
    )
    assert "HTTP 429" in err.report()


@pytest.mark.parametrize(
    ("upstream", "url"),
    [
        ("http://h:1", "http://h:1/v1/chat/completions"),
        ("http://h:1/", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1/", "http://h:1/v1/chat/completions"),
        ("https://gw.example/openai/v1", "https://gw.example/openai/v1/chat/completions"),
    ],
)
def test_upstream_base_urls_read_as_openai_sdks_read_them(upstream: str, url: str) -> None:
    assert OpenAIBackend(upstream, "m").url == url


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (408, grpc.StatusCode.DEADLINE_EXCEEDED),
        (422, grpc.StatusCode.INVALID_ARGUMENT),
        (418, grpc.StatusCode.UNKNOWN),
        (502, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_other_http_statuses_map_to_a_grpc_code(status: int, code: grpc.StatusCode) -> None:
    assert code_for_http_status(status) == code
