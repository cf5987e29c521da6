"""`--backend openai`: a lazygrpc model service in front of a real OpenAI-compatible HTTP
upstream on 127.0.0.1 (`tests/upstream.py`), called through lazygrpc clients and raw grpcio."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from conftest import ROOT, start_cli
from upstream import Upstream

import lazygrpc
from lazygrpc.backends import make_backend
from lazygrpc.backends.base import SamplingParams
from lazygrpc.backends.openai_compat import OpenAIBackend
from lazygrpc.server.model import KNOWN_PARAMS, ModelConfig
from lazygrpc.v1 import model_pb2, model_pb2_grpc

ALL_PARAMS = dict(KNOWN_PARAMS)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    u = Upstream()
    yield u
    u.close()


@pytest.fixture
def serve(servers: Any, upstream: Upstream) -> Iterator[Callable[..., str]]:
    """serve(model, **backend_options) -> the grpc:// URL of a model service in front of it."""
    backends: list[OpenAIBackend] = []

    def start(model: str, *, presets: SamplingParams | None = None, **options: Any) -> str:
        backend = OpenAIBackend(options.pop("upstream", upstream.base_url), model, **options)
        backends.append(backend)
        config = ModelConfig(backend, presets=presets or SamplingParams(), settable=ALL_PARAMS)
        return str(servers.model_config(config))

    yield start
    for backend in backends:
        servers.call(backend.aclose)


def test_recorded_openai_stream_arrives_as_chunks_with_the_upstreams_usage(
    serve: Callable[..., str], upstream: Upstream
) -> None:
    url = serve("replay:openai_chat")
    chunks = list(lazygrpc.LLM(url).chunks("Say hello"))
    # The role-only first chunk, the empty delta and the usage-only chunk carry no text.
    assert "".join(c.text for c in chunks) == "Hello world!"
    assert all(c.text for c in chunks[:-1])
    assert [c.index for c in chunks] == list(range(len(chunks)))
    last = chunks[-1]
    assert last.finish_reason == model_pb2.FINISH_REASON_STOP
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (9, 3)
    assert last.usage.total_tokens == 12
    seen = upstream.requests[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.body["messages"] == [{"role": "user", "content": "Say hello"}]
    assert seen.body["stream"] is True
    assert seen.body["stream_options"] == {"include_usage": True}
    assert "Authorization" not in seen.headers  # no key configured: none sent


def test_quirky_stream_crlf_comments_null_content_and_length(serve: Callable[..., str]) -> None:
    url = serve("replay:ollama_chat")
    chunks = list(lazygrpc.LLM(url).chunks("hi"))
    assert "".join(c.text for c in chunks) == "Grpc streams tokens"
    assert chunks[-1].finish_reason == model_pb2.FINISH_REASON_LENGTH
    assert chunks[-1].usage.prompt_tokens == 21


def test_completions_api_sends_the_prompt_as_text(
    serve: Callable[..., str], upstream: Upstream
) -> None:
    url = serve("replay:vllm_completions", api="completions")
    with lazygrpc.session() as s:
        assert lazygrpc.LLM(url)("Tell a story") == "Once upon a time"
        usage = s.get("usage")
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["calls"]) == (5, 4, 1)
    seen = upstream.requests[-1]
    assert seen.path == "/v1/completions"
    assert seen.body["prompt"] == "Tell a story"
    assert "messages" not in seen.body


def test_params_and_chat_messages_map_onto_openai_names(
    serve: Callable[..., str], upstream: Upstream
) -> None:
    url = serve("replay:openai_chat", presets=SamplingParams(top_k=20))
    request = model_pb2.GenerateRequest(
        messages=[
            model_pb2.ChatMessage(role="system", content="Be brief."),
            model_pb2.ChatMessage(role="user", content="Hi"),
        ],
        input="And then?",
        params=model_pb2.GenerationParams(
            max_tokens=7, temperature=0.5, top_p=0.9, stop=["\n\n"], seed=42
        ),
    )
    target = url.removeprefix("grpc://")
    with grpc.insecure_channel(target) as channel:
        chunks = list(model_pb2_grpc.ModelServiceStub(channel).Generate(request, timeout=10))
    assert "".join(c.text for c in chunks) == "Hello world!"
    body = upstream.requests[-1].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "And then?"},
    ]
    assert {k: body[k] for k in ("max_tokens", "temperature", "top_p", "stop", "seed")} == {
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 42,
    }
    assert body["top_k"] == 20  # a preset: sent only when set (OpenAI itself rejects it)


def test_max_tokens_reached_keeps_the_upstreams_usage(serve: Callable[..., str]) -> None:
    url = serve("replay:openai_chat")
    chunks = list(lazygrpc.LLM(url).chunks("Say hello", max_tokens=3))
    assert "".join(c.text for c in chunks) == "Hello world!"
    # The server cut at max_tokens, then took the backend's Finish: the upstream's counts.
    assert chunks[-1].usage.prompt_tokens == 9
    assert chunks[-1].finish_reason == model_pb2.FINISH_REASON_STOP


def test_api_key_is_sent_as_a_bearer_token(serve: Callable[..., str], upstream: Upstream) -> None:
    url = serve("replay:openai_chat", api_key="sk-test-key")
    assert lazygrpc.LLM(url)("hi") == "Hello world!"
    assert upstream.requests[-1].headers["Authorization"] == "Bearer sk-test-key"
    backend = make_backend("openai", upstream="http://h:1/v1", model="m", api_key="sk-test-key")
    assert "sk-test-key" not in repr(backend)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.UNAUTHENTICATED),
        (403, grpc.StatusCode.PERMISSION_DENIED),
        (404, grpc.StatusCode.NOT_FOUND),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (500, grpc.StatusCode.UNAVAILABLE),
        (503, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_upstream_http_errors_become_grpc_statuses_with_the_upstream_in_the_chain(
    serve: Callable[..., str], upstream: Upstream, status: int, code: grpc.StatusCode
) -> None:
    url = serve(f"error:{status}")
    with pytest.raises(lazygrpc.RemoteError) as info:
        list(lazygrpc.LLM(url).stream("hi"))
    err = info.value
    assert err.code == code
    assert f"HTTP {status}" in err.message
    assert f"upstream says {status}" in err.message
    assert err.remote_type == "UpstreamError"
    # This service's frame (named after its model), then the upstream's.
    assert [(f.service, f.method) for f in err.chain] == [
        (f"error:{status}", "Generate"),
        (f"{upstream.base_url}/chat/completions", "POST /v1/chat/completions"),
    ]
    upstream_frame = err.chain[-1]
    assert upstream_frame.error_type.startswith(f"HTTP {status}")
    # The service keeps serving.
    assert lazygrpc.LLM(serve("replay:openai_chat"))("hi") == "Hello world!"


def test_unknown_upstream_model_is_not_found_with_the_upstreams_message(
    serve: Callable[..., str],
) -> None:
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.LLM(serve("no-such-model"))("hi")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "The model `no-such-model` does not exist" in info.value.message


def test_connection_refused_is_unavailable(serve: Callable[..., str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = serve("m", upstream=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.LLM(url)("hi")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "ConnectError" in info.value.message
    assert info.value.chain[-1].service == f"http://127.0.0.1:{port}/v1/chat/completions"


def test_read_timeout_is_deadline_exceeded(serve: Callable[..., str], upstream: Upstream) -> None:
    upstream.release.clear()
    url = serve("stall", read_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.LLM(url)("hi")
    upstream.release.set()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timed out waiting for data" in info.value.message
    assert time.monotonic() - started < 2.0


def test_error_mid_stream_ends_the_stream_after_its_tokens(serve: Callable[..., str]) -> None:
    got: list[str] = []
    with pytest.raises(lazygrpc.RemoteError) as info:
        for delta in lazygrpc.LLM(serve("broken")).stream("hi"):
            got.append(delta)
    assert got == ["partial"]
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "model worker crashed" in info.value.message


def test_cancel_closes_the_upstream_http_stream_sync_client(
    serve: Callable[..., str], upstream: Upstream
) -> None:
    upstream.closed.clear()
    stream = lazygrpc.LLM(serve("slow")).stream("hi")
    assert next(stream) == " t0"
    assert next(stream) == " t1"
    stream.close()  # cancels the call
    started = time.monotonic()
    assert upstream.closed.wait(5)
    assert time.monotonic() - started < 1.0


def test_cancel_closes_the_upstream_http_stream_raw_grpcio(
    serve: Callable[..., str], upstream: Upstream
) -> None:
    upstream.closed.clear()
    target = serve("slow").removeprefix("grpc://")
    with grpc.insecure_channel(target) as channel:
        call = model_pb2_grpc.ModelServiceStub(channel).Generate(
            model_pb2.GenerateRequest(input="hi"), timeout=30
        )
        assert next(call).text == " t0"
        call.cancel()
        started = time.monotonic()
        assert upstream.closed.wait(5)
        assert time.monotonic() - started < 1.0


async def test_cancel_closes_the_upstream_http_stream_asyncio_client(
    serve: Callable[..., str], upstream: Upstream
) -> None:
    upstream.closed.clear()
    url = serve("slow")
    got: list[str] = []
    two = asyncio.Event()

    async def read() -> None:
        async for delta in lazygrpc.LLM(url).astream("hi"):
            got.append(delta)
            if len(got) == 2:
                two.set()

    task = asyncio.create_task(read())
    await asyncio.wait_for(two.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(upstream.closed.wait, 5)


def test_cli_reads_the_key_from_the_named_env_var_and_never_prints_it(
    upstream: Upstream,
) -> None:
    secret = "sk-cli-secret-4242"
    proc, address = start_cli(
        "serve-model",
        "--backend",
        "openai",
        "--upstream",
        upstream.base_url,
        "--model",
        "replay:openai_chat",
        "--api-key-env",
        "LAZY_TEST_UPSTREAM_KEY",
        env={"LAZY_TEST_UPSTREAM_KEY": secret},
    )
    try:
        assert lazygrpc.LLM(f"grpc://{address}")("hi") == "Hello world!"
        assert upstream.requests[-1].headers["Authorization"] == f"Bearer {secret}"
        with pytest.raises(lazygrpc.RemoteError):
            lazygrpc.LLM(f"grpc://{address}")("hi", temperature=5.0)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert secret not in out + err
    assert secret not in " ".join(proc.args)


@pytest.mark.parametrize(
    ("args", "env", "message", "exit_code"),
    [
        (["--model", "m"], {}, "--backend openai needs --upstream URL", 2),
        (["--upstream", "http://127.0.0.1:9/v1"], {}, "--backend openai needs --model", 2),
        (
            ["--upstream", "http://127.0.0.1:9/v1", "--model", "m", "--api-key-env", "NOPE_KEY"],
            {},
            "set the environment variable NOPE_KEY",
            1,
        ),
        (["--upstream", "ftp://x", "--model", "m"], {}, "must be an http:// or https:// URL", 2),
    ],
)
def test_cli_names_a_missing_or_bad_flag(
    args: list[str], env: dict[str, str], message: str, exit_code: int
) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "NOPE_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "lazygrpc", "serve-model", "--backend", "openai", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environ,
        timeout=30,
    )
    assert done.returncode == exit_code
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
