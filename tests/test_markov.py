"""Tests for the Markov chain backend and its corpus loading (no server)."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lazygrpc.backends import markov
from lazygrpc.backends.base import SamplingParams
from lazygrpc.backends.markov import (
    MarkovBackend,
    default_corpus,
    load_corpus,
    normalize_word,
    strip_markdown,
)


def run(backend: MarkovBackend, prompt: str = "", **params: Any) -> list[str]:
    async def collect() -> list[str]:
        return [delta async for delta in backend.generate(prompt, SamplingParams(**params))]

    return asyncio.run(collect())


@pytest.fixture(scope="module")
def backend() -> MarkovBackend:
    return MarkovBackend()


@pytest.fixture
def tiny(tmp_path: Path) -> MarkovBackend:
    text = (
        "# Tiny corpus\n\n"
        "The alpha service streams tokens. The alpha service answers calls. "
        "The alpha service is fast. A zeppelin hovers over the alpha service. "
        "The omega relay drops nothing.\n"
    )
    path = tmp_path / "tiny.md"
    path.write_text(text, encoding="utf-8")
    return MarkovBackend([path])


def test_default_corpus_is_our_docs(backend: MarkovBackend) -> None:
    assert backend.sources
    assert all(source.endswith(".md") for source in backend.sources)
    assert {p.name for p in default_corpus()} == set(backend.sources)


def test_training_is_fast() -> None:
    """Training on the shipped docs takes about 0.1 s of CPU (the bound is 10x), measured in
    a fresh process: in the suite's own, collecting its large heap would be counted too."""
    code = (
        "import time; from lazygrpc.backends.markov import MarkovBackend; "
        "s = time.thread_time(); MarkovBackend(); print(time.thread_time() - s)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 1.0


def test_seed_is_deterministic(backend: MarkovBackend) -> None:
    first = run(backend, "how do sessions work", seed=7, temperature=1.0, max_tokens=40)
    second = run(backend, "how do sessions work", seed=7, temperature=1.0, max_tokens=40)
    assert first == second
    assert first


def test_different_seeds_differ(backend: MarkovBackend) -> None:
    outputs = {"".join(run(backend, seed=seed, max_tokens=40)) for seed in range(5)}
    assert len(outputs) > 1


def test_temperature_zero_is_deterministic_without_seed(backend: MarkovBackend) -> None:
    for prompt in ("", "tell me about deadlines"):
        first = run(backend, prompt, temperature=0.0, max_tokens=30)
        assert run(backend, prompt, temperature=0.0, max_tokens=30) == first


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 17, 64])
def test_max_tokens_respected(backend: MarkovBackend, max_tokens: int) -> None:
    for seed in range(3):
        deltas = run(backend, seed=seed, max_tokens=max_tokens)
        assert math.ceil(0.6 * max_tokens) <= len(deltas) <= max_tokens


def test_zero_max_tokens_yields_nothing(backend: MarkovBackend) -> None:
    assert run(backend, "anything", max_tokens=0) == []


def test_delta_format(backend: MarkovBackend) -> None:
    deltas = run(backend, seed=3, max_tokens=30)
    assert deltas[0] and not deltas[0][0].isspace()
    for delta in deltas[1:]:
        assert delta.startswith(" ")
        assert len(delta.split()) == 1


def test_prompt_conditions_on_corpus_word(backend: MarkovBackend) -> None:
    words = [normalize_word(w) for d in load_corpus() for w in d.text.split()]
    bigrams = set(itertools.pairwise(words))
    for params in ({"temperature": 0.0}, {"seed": 11}):
        deltas = run(backend, "What is backpressure?", max_tokens=20, **params)
        assert normalize_word(deltas[0]) == "backpressure"
        assert (normalize_word(deltas[0]), normalize_word(deltas[1])) in bigrams


def test_prompt_prefers_rarest_word(tiny: MarkovBackend) -> None:
    deltas = run(tiny, "alpha and omega", temperature=0.0, max_tokens=3)
    assert deltas == ["omega", " relay", " drops"]
    # A word seen once has one successor, so sampling cannot leave the transition.
    assert run(tiny, "zeppelin?", seed=5, max_tokens=2) == ["zeppelin", " hovers"]


def test_top_k_one_follows_most_frequent(tiny: MarkovBackend) -> None:
    greedy = run(tiny, "omega", temperature=0.0, max_tokens=12)
    for seed in range(3):
        assert run(tiny, "omega", seed=seed, top_k=1, max_tokens=12) == greedy


def test_low_top_p_and_temperature_do_not_break(backend: MarkovBackend) -> None:
    deltas = run(backend, seed=1, temperature=0.01, top_p=0.1, max_tokens=10)
    assert deltas
    assert run(backend, seed=1, temperature=5.0, top_k=3, max_tokens=10)


def test_global_random_untouched(backend: MarkovBackend) -> None:
    random.seed(1234)
    state = random.getstate()
    run(backend, "streaming", seed=9, max_tokens=20)
    run(backend, "streaming", max_tokens=20)
    assert random.getstate() == state


def test_token_delay() -> None:
    slow = MarkovBackend(token_delay=0.02)
    start = time.perf_counter()
    deltas = run(slow, seed=1, max_tokens=4)
    assert time.perf_counter() - start >= 0.02 * (len(deltas) - 1) * 0.9


def test_count_tokens(backend: MarkovBackend) -> None:
    assert backend.count_tokens("") == 0
    assert backend.count_tokens("   ") == 1
    assert backend.count_tokens("one") == 1
    assert backend.count_tokens(" two  words\n and three ") == 4


def test_outside_a_checkout_the_corpus_is_the_shipped_docs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(markov, "CHECKOUT_ROOT", tmp_path)  # as site-packages would be
    shipped = default_corpus()
    assert shipped and all(p.parent == markov.DOCS_DIR for p in shipped)
    assert "streaming.md" in {p.name for p in shipped}
    installed = MarkovBackend()
    assert set(installed.sources) == {p.name for p in shipped}
    assert run(installed, seed=1, max_tokens=10)


def test_a_corpus_without_text_falls_back_to_the_shipped_docs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.md"
    empty.write_text("```\ncode only\n```\n", encoding="utf-8")
    for corpus in ([], [empty]):
        assert set(MarkovBackend(corpus).sources) == {p.name for p in default_corpus()}


def test_no_docs_at_all_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(markov, "CHECKOUT_ROOT", tmp_path)
    monkeypatch.setattr(markov, "DOCS_DIR", tmp_path / "docs")
    with pytest.raises(ValueError, match="no documentation to train on"):
        MarkovBackend()


def test_strip_markdown() -> None:
    text = (
        "# Title\n\nSee [the `docs`](https://example.invalid/x) and **bold** text.\n\n"
        "```python\nprint('hidden')\n```\n\n- item one\n- item two\n\n"
        "| a | b |\n|---|---|\n| c | d |\n"
    )
    plain = strip_markdown(text)
    assert plain.split("\n\n") == [
        "Title",
        "See the docs and bold text.",
        "item one\nitem two",
        "a; b\nc; d",
    ]
