"""A tiny deterministic BM25 retriever over lazygrpc's own documentation."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lazygrpc.backends.markov import STOPWORDS, Document, load_corpus

__all__ = ["DocIndex", "Passage", "split_passages", "terms"]

MIN_WORDS = 40
MAX_WORDS = 120

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Passage:
    """A chunk of a document, where it came from and how well it matched a query."""

    source: str
    text: str
    score: float = 0.0


def _stem(word: str) -> str:
    # Just enough folding for "clients" to meet "client"; no full stemmer needed here.
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and len(word) > 3 and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def terms(text: str) -> list[str]:
    """Case-folded, lightly stemmed index terms of `text`, stopwords removed.

    >>> terms("The slow clients stall")
    ['slow', 'client', 'stall']
    """
    return [_stem(w) for w in _WORD.findall(text.casefold()) if w not in STOPWORDS]


def _pieces(paragraph: str) -> list[str]:
    """`paragraph` itself, or sentence groups of at most `MAX_WORDS` words when it is longer."""
    if len(paragraph.split()) <= MAX_WORDS:
        return [paragraph]
    pieces: list[str] = []
    current: list[str] = []
    for sentence in _SENTENCE.split(paragraph):
        if current and len(" ".join([*current, sentence]).split()) > MAX_WORDS:
            pieces.append(" ".join(current))
            current = []
        current.append(sentence)
    if current:
        pieces.append(" ".join(current))
    return pieces


def split_passages(document: Document) -> list[Passage]:
    """Pack `document`'s paragraphs into passages of about `MIN_WORDS` to `MAX_WORDS` words."""
    pieces = [p for para in document.text.split("\n\n") for p in _pieces(" ".join(para.split()))]
    texts: list[str] = []
    current = ""
    for piece in pieces:
        current = f"{current} {piece}".strip()
        if len(current.split()) >= MIN_WORDS:
            texts.append(current)
            current = ""
    if current:
        if texts and len(texts[-1].split()) + len(current.split()) <= MAX_WORDS:
            texts[-1] = f"{texts[-1]} {current}"
        else:
            texts.append(current)
    return [Passage(document.source, text) for text in texts]


class DocIndex:
    """BM25 index over passages of `paths` (default: the same corpus as `MarkovBackend`).

    >>> DocIndex().search("slow clients", k=1)[0].source  # doctest: +SKIP
    'streaming.md'
    """

    k1 = 1.5
    b = 0.75

    def __init__(self, paths: Sequence[Path] | None = None) -> None:
        self.passages: tuple[Passage, ...] = tuple(
            passage for document in load_corpus(paths) for passage in split_passages(document)
        )
        self._tf = [Counter(terms(p.text)) for p in self.passages]
        self._lengths = [sum(tf.values()) for tf in self._tf]
        self._avg_length = sum(self._lengths) / len(self._lengths) if self._lengths else 0.0
        df: Counter[str] = Counter(term for tf in self._tf for term in tf)
        n = len(self.passages)
        self._idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}

    def __len__(self) -> int:
        return len(self.passages)

    def search(self, query: str, k: int = 3) -> list[Passage]:
        """The `k` best passages for `query`, best first; ties keep corpus order; no zero scores."""
        query_terms = [t for t in dict.fromkeys(terms(query)) if t in self._idf]
        scored: list[tuple[float, int]] = []
        for i, tf in enumerate(self._tf):
            score = 0.0
            norm = self.k1 * (1 - self.b + self.b * self._lengths[i] / self._avg_length)
            for term in query_terms:
                if freq := tf.get(term, 0):
                    score += self._idf[term] * freq * (self.k1 + 1) / (freq + norm)
            if score > 0:
                scored.append((score, i))
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [
            Passage(self.passages[i].source, self.passages[i].text, score)
            for score, i in scored[: max(k, 0)]
        ]
