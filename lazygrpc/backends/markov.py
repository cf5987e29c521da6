"""A word-level Markov chain backend trained on lazygrpc's own documentation."""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lazygrpc.backends.base import SamplingParams

__all__ = [
    "CHECKOUT_ROOT",
    "STOPWORDS",
    "Document",
    "MarkovBackend",
    "default_corpus",
    "load_corpus",
    "normalize_word",
    "strip_markdown",
]

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CHECKOUT_ROOT = PACKAGE_DIR.parent
#: The documentation the package ships, which the model trains on and the demo indexes.
DOCS_DIR = PACKAGE_DIR / "docs"

# A word list reads better as one block than as a 120-line list literal.
STOPWORDS = frozenset(
    """a about above after again all also an and any are as at be because been before being
    both but by can could did do does doing down during each for from further had has have
    having he her here hers him his how i if in into is it its itself just me more most my no
    nor not now of off on once only or other our ours out over own same she should so some
    such than that the their theirs them then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would
    you your yours""".split()  # noqa: SIM905
)

_FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", re.DOTALL | re.MULTILINE)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_REF_DEFINITION = re.compile(r"^[ \t]*\[[^\]]+\]:[ \t]*\S+.*$", re.MULTILINE)
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]*", re.MULTILINE)
_LIST_MARKER = re.compile(r"^[ \t]*(?:[-*+]|\d+[.)])[ \t]+", re.MULTILINE)
_QUOTE_MARKER = re.compile(r"^[ \t]*>[ \t]?", re.MULTILINE)
_TABLE_RULE = re.compile(
    r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*\n?", re.MULTILINE
)
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
_EDGE_PUNCT = re.compile(r"^\W+|\W+$")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


@dataclass(frozen=True)
class Document:
    """One training text: where it came from and its plain (markdown-free) content."""

    source: str
    text: str


def strip_markdown(text: str) -> str:
    """Return `text` as plain prose: no code fences, headings marks, backticks or link targets.

    Paragraphs stay separated by blank lines.

    >>> strip_markdown("# Title\\n\\nSee [the `docs`](https://x.y) **now**.")
    'Title\\n\\nSee the docs now.'
    """
    text = _FENCE.sub("", text)
    text = _REF_DEFINITION.sub("", text)
    text = _IMAGE_OR_LINK.sub(r"\1", text)
    text = _HTML_TAG.sub("", text)
    text = _TABLE_RULE.sub("", text)
    text = _HEADING.sub("", text)
    text = _QUOTE_MARKER.sub("", text)
    text = _LIST_MARKER.sub("", text)
    text = _EMPHASIS.sub("", text)
    lines = []
    for line in text.splitlines():
        if line.strip().startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            line = "; ".join(cell for cell in cells if cell)
        lines.append(line.strip())
    paragraphs = "\n".join(lines).split("\n\n")
    return "\n\n".join(p.strip() for p in paragraphs if p.strip())


def normalize_word(word: str) -> str:
    """Case-fold `word` and drop punctuation at its edges (`"Backpressure,"` → `"backpressure"`)."""
    return _EDGE_PUNCT.sub("", word.casefold())


def default_corpus(root: Path | None = None, docs: Path | None = None) -> list[Path]:
    """The documentation the package ships (`docs/*.md`: package data, in a source checkout
    a link to its `docs/`), after the `README.md` of the checkout at `root` if it is one."""
    root = CHECKOUT_ROOT if root is None else root
    docs = DOCS_DIR if docs is None else docs
    # An installed package's parent is site-packages, whose README belongs to someone else.
    checkout = (root / "pyproject.toml").is_file() or (root / ".git").exists()
    paths = [root / "README.md"] if checkout and (root / "README.md").is_file() else []
    return paths + sorted(p for p in docs.glob("*.md") if p.is_file())


def load_corpus(paths: Sequence[Path] | None = None) -> list[Document]:
    """Read `paths` (default: `default_corpus()`) as plain text; the default corpus if they
    hold no text. Never docstrings: an installed package may have none (`-OO`, no sources)."""
    documents = _read(default_corpus() if paths is None else paths)
    if not documents and paths is not None:
        documents = _read(default_corpus())
    if not documents:
        raise ValueError(f"no documentation to train on in {str(DOCS_DIR)!r}: reinstall lazygrpc")
    return documents


def _read(paths: Sequence[Path]) -> list[Document]:
    documents = [Document(p.name, strip_markdown(p.read_text(encoding="utf-8"))) for p in paths]
    return [d for d in documents if d.text]


def _ends_sentence(word: str) -> bool:
    return _SENTENCE_END.search(word) is not None


# Successor words sorted by (-count, word), with their counts.
_Dist = tuple[tuple[str, ...], tuple[int, ...]]


def _dist(counter: Counter[str]) -> _Dist:
    items = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return tuple(w for w, _ in items), tuple(c for _, c in items)


class MarkovBackend:
    """An order-2 word Markov chain (falling back to order 1, then unigrams).

    Trained at construction on `corpus` (default: the documentation the package ships, and
    the README in a source checkout). Deterministic when `params.seed` is set or
    `params.temperature` is 0.
    """

    def __init__(
        self,
        corpus: Sequence[Path] | None = None,
        token_delay: float = 0.0,
        name: str = "markov",
    ) -> None:
        self.name = name
        self.token_delay = token_delay
        documents = load_corpus(corpus)
        self.sources: tuple[str, ...] = tuple(d.source for d in documents)
        tokens: list[str] = []
        for document in documents:
            for paragraph in document.text.split("\n\n"):
                words = paragraph.split()
                if words and not _ends_sentence(words[-1]):
                    words[-1] += "."
                tokens.extend(words)
        self._tokens: tuple[str, ...] = tuple(tokens)
        order2: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        order1: defaultdict[str, Counter[str]] = defaultdict(Counter)
        positions: defaultdict[str, list[int]] = defaultdict(list)
        starts: list[int] = []
        prev = ""
        for i, word in enumerate(tokens):
            if i + 1 < len(tokens):
                order2[prev, word][tokens[i + 1]] += 1
                order1[word][tokens[i + 1]] += 1
            if i == 0 or _ends_sentence(prev):
                starts.append(i)
            if key := normalize_word(word):
                positions[key].append(i)
            prev = word
        self._order2 = {key: _dist(counter) for key, counter in order2.items()}
        self._order1 = {key: _dist(counter) for key, counter in order1.items()}
        self._unigram = _dist(Counter(tokens))
        self._positions = dict(positions)
        self._starts = tuple(starts)

    def count_tokens(self, text: str) -> int:
        """Whitespace-separated words in `text`; at least 1 for any non-empty string."""
        return max(len(text.split()), 1) if text else 0

    async def generate(self, prompt: str, params: SamplingParams) -> AsyncIterator[str]:
        """Yield words (`"first"`, `" next"`, …) continuing from the prompt's rarest known word.

        Stops at `params.max_tokens`, or at a sentence end once 60% of it is reached.
        """
        if params.max_tokens <= 0 or not self._tokens:
            return
        rng = random.Random(params.seed)
        prev, word = self._start(prompt, params, rng)
        early_end = math.ceil(0.6 * params.max_tokens)
        emitted = 0
        while True:
            yield word if emitted == 0 else " " + word
            emitted += 1
            if emitted >= params.max_tokens or (emitted >= early_end and _ends_sentence(word)):
                return
            if self.token_delay > 0:
                await asyncio.sleep(self.token_delay)
            prev, word = word, self._next(prev, word, params, rng)

    def _anchor(self, prompt: str) -> str | None:
        """The rarest corpus word in `prompt`, preferring non-stopwords; ties go to the earliest."""
        known = [w for w in map(normalize_word, prompt.split()) if w in self._positions]
        pool = [w for w in known if w not in STOPWORDS] or known
        return min(pool, key=lambda w: len(self._positions[w])) if pool else None

    def _start(self, prompt: str, params: SamplingParams, rng: random.Random) -> tuple[str, str]:
        anchor = self._anchor(prompt)
        candidates = self._starts if anchor is None else self._positions[anchor]
        pos = candidates[0] if params.temperature <= 0 else rng.choice(candidates)
        return (self._tokens[pos - 1] if pos > 0 else ""), self._tokens[pos]

    def _next(self, prev: str, word: str, params: SamplingParams, rng: random.Random) -> str:
        dist = self._order2.get((prev, word)) or self._order1.get(word) or self._unigram
        return _sample(dist, params, rng)


def _sample(dist: _Dist, params: SamplingParams, rng: random.Random) -> str:
    words, counts = dist
    if params.temperature <= 0 or len(words) == 1:
        return words[0]
    n = min(len(words), params.top_k) if params.top_k > 0 else len(words)
    # Scaled in log space so that tiny temperatures do not overflow `count ** (1 / t)`.
    top = math.log(counts[0])
    weights = [math.exp((math.log(c) - top) / params.temperature) for c in counts[:n]]
    if 0 < params.top_p < 1:
        threshold = params.top_p * sum(weights)
        total = 0.0
        for i, weight in enumerate(weights):
            total += weight
            if total >= threshold:
                n = i + 1
                break
    return rng.choices(words[:n], weights[:n])[0]
