"""The edge and the real backends together: the `openai` backend streaming from our own edge
in front of a markov model (a real OpenAI-compatible upstream on loopback), and the official
`openai` SDK through the edge in front of a local transformers model (issue 16)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import lazygrpc
from lazygrpc.backends import make_backend
from lazygrpc.server.model import ModelConfig
from tests.edges import Edges, running_edges
from tests.tiny_lm import build_tiny_lm


@pytest.fixture
def edges(servers: Any) -> Iterator[Edges]:
    with running_edges(servers) as e:
        yield e


def test_the_openai_backend_streams_from_our_edge_in_front_of_markov(
    servers: Any, edges: Edges
) -> None:
    markov = servers.model("markov")
    edge = edges.start(markov)
    backend = make_backend("openai", upstream=f"{edge.url}/v1", model="markov", api_key=None)
    try:
        relayed = servers.model_config(ModelConfig(backend, name="relayed"))
        llm = lazygrpc.LLM(relayed)
        question = "How does lazygrpc stream tokens?"
        streamed = list(llm.stream(question, max_tokens=10, seed=3))
        assert len(streamed) > 1  # token by token, as the upstream's SSE came
        assert "".join(streamed) == llm(question, max_tokens=10, seed=3)  # seeded: both ways
        chunks = list(llm.chunks(question, max_tokens=10, seed=3))
        assert chunks[-1].usage.completion_tokens == 10  # the upstream's own usage
    finally:
        servers.call(backend.aclose)


def test_the_openai_sdk_through_the_edge_in_front_of_a_transformers_model(
    servers: Any, edges: Edges, tmp_path: Path
) -> None:
    backend = make_backend("transformers", model=str(build_tiny_lm(tmp_path)), name="tiny")
    try:
        edge = edges.start(servers.model_config(ModelConfig(backend, name="tiny")))
        client = openai.OpenAI(base_url=f"{edge.url}/v1", api_key="unused", max_retries=0)
        hello = [{"role": "user", "content": "hello"}]
        whole = client.chat.completions.create(model="tiny", messages=hello, max_tokens=6, seed=1)
        assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 6
        stream = client.chat.completions.create(
            model="tiny", messages=hello, max_tokens=6, seed=1, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content  # seeded: the same answer both ways
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    finally:
        backend.close()
