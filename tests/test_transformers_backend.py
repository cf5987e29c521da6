"""`--backend transformers`: a tiny local causal LM (`tests/tiny_lm.py`) served through
ModelService and streamed over gRPC; nothing is downloaded."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import start_cli
from tiny_lm import build_tiny_lm

import lazygrpc
from lazygrpc.backends import make_backend
from lazygrpc.backends.base import SamplingParams
from lazygrpc.backends.transformers_lm import TransformersBackend
from lazygrpc.server.model import KNOWN_PARAMS, ModelConfig
from lazygrpc.v1 import model_pb2, model_pb2_grpc


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> Iterator[TransformersBackend]:
    # Loaded on the test's thread, off the servers' event loop.
    b = make_backend("transformers", model=str(model_dir), name="tiny")
    assert isinstance(b, TransformersBackend)
    yield b
    b.close()


@pytest.fixture
def serve(servers: Any) -> Callable[..., str]:
    def start(backend: TransformersBackend, presets: SamplingParams | None = None) -> str:
        presets = presets or SamplingParams(max_tokens=16)
        return str(
            servers.model_config(ModelConfig(backend, presets=presets, settable=KNOWN_PARAMS))
        )

    return start


def _templated(model_dir: Path, messages: list[dict[str, str]]) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _wait_idle(backend: TransformersBackend, within: float) -> float:
    """Seconds until the worker has no generation running (a hang fails at `within`)."""
    started = time.monotonic()
    while backend.running:
        assert time.monotonic() - started < within, "generation did not stop"
        time.sleep(0.002)
    return time.monotonic() - started


def test_tokens_stream_while_the_model_generates(
    backend: TransformersBackend, serve: Callable[..., str]
) -> None:
    url = serve(backend)
    chunks = lazygrpc.LLM(url).chunks("hello", max_tokens=2000, temperature=0)
    first = next(chunks)
    assert first.text
    assert backend.running == 1  # the first token is here, the generation goes on
    chunks.close()
    _wait_idle(backend, 5)


def test_usage_counts_the_real_tokens_and_max_tokens_is_honoured(
    backend: TransformersBackend, serve: Callable[..., str], model_dir: Path
) -> None:
    url = serve(backend)
    prompt_ids = _templated(model_dir, [{"role": "user", "content": "hello there"}])
    for max_tokens in (1, 5, 12):
        chunks = list(lazygrpc.LLM(url).chunks("hello there", max_tokens=max_tokens, seed=7))
        last = chunks[-1]
        assert last.usage.completion_tokens == max_tokens
        assert last.usage.prompt_tokens == len(prompt_ids)
        assert last.usage.total_tokens == len(prompt_ids) + max_tokens
        assert last.finish_reason == model_pb2.FINISH_REASON_LENGTH
        assert len(chunks) - 1 <= max_tokens  # at most one text chunk per token


def test_chat_messages_go_through_the_chat_template(
    backend: TransformersBackend, serve: Callable[..., str], model_dir: Path
) -> None:
    url = serve(backend)
    request = model_pb2.GenerateRequest(
        messages=[
            model_pb2.ChatMessage(role="system", content="be brief"),
            model_pb2.ChatMessage(role="user", content="hi"),
        ],
        params=model_pb2.GenerationParams(max_tokens=3, temperature=0),
    )
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        chunks = list(model_pb2_grpc.ModelServiceStub(channel).Generate(request, timeout=30))
    expected = _templated(
        model_dir, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    )
    assert chunks[-1].usage.prompt_tokens == len(expected)


def test_without_a_chat_template_the_prompt_is_the_text(
    serve: Callable[..., str], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    plain_dir = build_tiny_lm(tmp_path / "plain", chat_template=False)
    plain = TransformersBackend(plain_dir)
    try:
        url = serve(plain)
        last = list(lazygrpc.LLM(url).chunks("hello there", max_tokens=2, temperature=0))[-1]
        tokenizer = AutoTokenizer.from_pretrained(plain_dir, local_files_only=True)
        assert last.usage.prompt_tokens == len(tokenizer("hello there")["input_ids"])
    finally:
        plain.close()


def test_seed_makes_sampling_reproducible_and_greedy_is_deterministic(
    backend: TransformersBackend, serve: Callable[..., str]
) -> None:
    llm = lazygrpc.LLM(serve(backend))
    a = [llm("sessions", max_tokens=12, temperature=1.0, seed=s) for s in (1, 1, 2)]
    assert a[0] == a[1]
    assert a[0] != a[2]
    top = llm("sessions", max_tokens=12, temperature=1.0, seed=1, top_p=0.5, top_k=5)
    assert top == llm("sessions", max_tokens=12, temperature=1.0, seed=1, top_p=0.5, top_k=5)
    assert llm("sessions", max_tokens=8, temperature=0) == llm(
        "sessions", max_tokens=8, temperature=0
    )


def test_stop_string_ends_the_answer_before_it(
    backend: TransformersBackend, serve: Callable[..., str]
) -> None:
    llm = lazygrpc.LLM(serve(backend))
    sampled = {"max_tokens": 12, "temperature": 1.0, "seed": 5}
    full = "".join(c.text for c in llm.chunks("grpc", **sampled))
    # One character, first seen past the start: no stop string straddles text already sent.
    at = next(i for i, ch in enumerate(full) if ch != full[0])
    stop = full[at]
    chunks = list(llm.chunks("grpc", **sampled, stop=[stop]))
    text = "".join(c.text for c in chunks)
    assert text == full[: full.index(stop)]
    assert chunks[-1].finish_reason == model_pb2.FINISH_REASON_STOP
    _wait_idle(backend, 5)  # the stop string closed the stream: the generation stopped too


def test_cancel_stops_the_generation_at_the_next_token(
    backend: TransformersBackend, serve: Callable[..., str]
) -> None:
    target = serve(backend).removeprefix("grpc://")
    request = model_pb2.GenerateRequest(
        input="cancel", params=model_pb2.GenerationParams(max_tokens=4000, temperature=0)
    )
    with grpc.insecure_channel(target) as channel:
        call = model_pb2_grpc.ModelServiceStub(channel).Generate(request, timeout=60)
        assert next(call).text
        assert backend.running == 1
        call.cancel()
        # 4000 tokens take seconds; a cancelled one stops within a token or a grace period.
        assert _wait_idle(backend, 1.0) < 1.0
    # The worker is free again: the next call runs at once.
    assert lazygrpc.LLM(f"grpc://{target}")("again", max_tokens=2, temperature=0)


async def test_asyncio_client_streams_and_completes(
    backend: TransformersBackend, serve: Callable[..., str]
) -> None:
    llm = lazygrpc.LLM(serve(backend))
    deltas = [d async for d in llm.astream("baggage", max_tokens=6, temperature=0)]
    assert "".join(deltas) == await llm.acall("baggage", max_tokens=6, temperature=0)


def test_a_prompt_over_the_context_is_invalid_argument_naming_the_model(
    backend: TransformersBackend, serve: Callable[..., str]
) -> None:
    url = serve(backend)
    with pytest.raises(lazygrpc.RemoteError) as info:
        lazygrpc.LLM(url)("lazygrpc streams tokens over grpc " * 1200, max_tokens=2)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the model's context of 4200" in info.value.message
    assert info.value.chain[-1].service == "tiny"
    assert lazygrpc.LLM(url)("short", max_tokens=2, temperature=0)  # still serving


def test_model_path_must_be_a_local_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a local directory"):
        make_backend("transformers", model="gpt2")  # a hub name: never fetched
    with pytest.raises(ValueError, match="needs a local model directory"):
        make_backend("transformers")
    with pytest.raises(ValueError, match=r"holds no config\.json"):
        make_backend("transformers", model=str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot load a model from") as info:
        make_backend("transformers", model=str(tmp_path))
    assert "\n" not in str(info.value)


def test_cli_serves_a_local_model_directory(model_dir: Path) -> None:
    proc, address = start_cli(
        "serve-model", "--backend", "transformers", "--model", str(model_dir), "--model-name", "t"
    )
    try:
        llm = lazygrpc.LLM(f"grpc://{address}")
        assert llm.info()["name"] == "t"
        assert llm("hello", max_tokens=3, temperature=0)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert "Loading weights" not in err  # no progress bars in a server's log
