"""Tests for the BM25 documentation retriever (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazygrpc.backends import markov
from lazygrpc.backends.markov import Document
from lazygrpc.demo.retrieval import MAX_WORDS, DocIndex, Passage, split_passages, terms


@pytest.fixture(scope="module")
def index() -> DocIndex:
    return DocIndex()


def test_slow_clients_find_backpressure(index: DocIndex) -> None:
    results = index.search("What happens when a client is slow?")
    assert len(results) == 3
    assert any("backpressure" in p.text.casefold() for p in results)
    assert any(p.source == "streaming.md" for p in results)


def test_results_are_ranked_and_deterministic(index: DocIndex) -> None:
    results = index.search("session id and globals in baggage", k=5)
    assert [p.score for p in results] == sorted((p.score for p in results), reverse=True)
    assert results == DocIndex().search("session id and globals in baggage", k=5)
    assert all(isinstance(p, Passage) and p.score > 0 for p in results)


def test_no_match_returns_nothing(index: DocIndex) -> None:
    assert index.search("xylophone quux") == []
    assert index.search("the and of") == []
    assert index.search("deadline", k=0) == []


def test_passages_have_sources_and_bounded_size(index: DocIndex) -> None:
    assert len(index) > 10
    for passage in index.passages:
        assert passage.source.endswith(".md")
        assert "`" not in passage.text
        assert len(passage.text.split()) <= MAX_WORDS + 60


def test_ranking_on_controlled_corpus(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(
        "# Cats\n\nCats purr and sleep all day long.\n", encoding="utf-8"
    )
    (tmp_path / "b.md").write_text("Dogs bark at the mail carrier.\n", encoding="utf-8")
    index = DocIndex([tmp_path / "a.md", tmp_path / "b.md"])
    assert [p.source for p in index.search("why do dogs bark?")] == ["b.md"]
    assert index.search("sleeping cat")[0].source == "a.md"


def test_long_paragraphs_are_split() -> None:
    sentence = "Every stream has a bounded window of flow control credit. "
    passages = split_passages(Document("long.md", sentence * 40))
    assert len(passages) > 1
    assert all(len(p.text.split()) <= MAX_WORDS for p in passages)
    assert all(p.source == "long.md" for p in passages)


def test_short_paragraphs_are_merged() -> None:
    text = "\n\n".join(f"Paragraph {i} has five words." for i in range(20))
    passages = split_passages(Document("short.md", text))
    assert all(len(p.text.split()) >= 40 for p in passages)


def test_terms_fold_case_stopwords_and_plurals() -> None:
    assert terms("The Slow CLIENTS of the Queries") == ["slow", "client", "query"]


def test_an_installed_package_indexes_its_shipped_docs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(markov, "CHECKOUT_ROOT", tmp_path)  # as site-packages would be
    index = DocIndex()
    assert len(index) > 0
    assert all(p.source.endswith(".md") and p.source != "README.md" for p in index.passages)
    assert any(p.source == "streaming.md" for p in index.search("slow client backpressure"))
