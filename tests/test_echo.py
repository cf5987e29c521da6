"""Tests for the echo backend (no server)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lazygrpc.backends.base import SamplingParams
from lazygrpc.backends.echo import EchoBackend, split_tokens


def run(backend: EchoBackend, prompt: str, **params: Any) -> list[str]:
    async def collect() -> list[str]:
        return [delta async for delta in backend.generate(prompt, SamplingParams(**params))]

    return asyncio.run(collect())


def test_round_trip() -> None:
    prompt = "  Hello,  gRPC\nworld!\t bye "
    deltas = run(EchoBackend(), prompt)
    assert deltas == ["Hello,", "  gRPC", "\nworld!", "\t bye"]
    assert "".join(deltas) == prompt.strip()


@given(st.text())
def test_split_tokens_joins_back_to_stripped_prompt(prompt: str) -> None:
    tokens = split_tokens(prompt)
    assert "".join(tokens) == prompt.strip()
    assert all(len(token.split()) == 1 for token in tokens)
    assert len(tokens) == len(prompt.split())


def test_max_tokens_truncates() -> None:
    backend = EchoBackend()
    assert run(backend, "a b c d e", max_tokens=3) == ["a", " b", " c"]
    assert run(backend, "a b c", max_tokens=0) == []


def test_empty_prompt_yields_nothing() -> None:
    assert run(EchoBackend(), "   ") == []


def test_deterministic_regardless_of_sampling() -> None:
    backend = EchoBackend()
    assert run(backend, "same words", seed=1, temperature=2.0) == run(backend, "same words")


def test_token_delay_and_name() -> None:
    backend = EchoBackend(token_delay=0.02, name="parrot")
    assert backend.name == "parrot"
    start = time.perf_counter()
    assert len(run(backend, "one two three")) == 3
    assert time.perf_counter() - start >= 0.035


def test_count_tokens() -> None:
    backend = EchoBackend()
    assert backend.count_tokens("") == 0
    assert backend.count_tokens("\n") == 1
    assert backend.count_tokens("three small words") == 3
