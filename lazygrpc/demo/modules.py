"""The demo mesh's modules: gateway `ask` → retriever `rag` → model `Generate`.

`rag` finds the passages of lazygrpc's own docs that best match the question, emits them as
intermediate results, then streams the model's answer built on them. A question containing
the word "explode" makes the retriever fail, to show an exception chain across the mesh.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import lru_cache

import lazygrpc
from lazygrpc.demo.retrieval import DocIndex

MODEL_URL_ENV = "LAZYGRPC_MODEL_URL"
RETRIEVER_URL_ENV = "LAZYGRPC_RETRIEVER_URL"
PROMPT = "Answer the question from these notes.\nNotes: {notes}\nQuestion: {input}\nAnswer:"


class RetrievalError(RuntimeError):
    """The retriever could not serve the question."""


@lru_cache(maxsize=1)
def _index() -> DocIndex:
    return DocIndex()


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise lazygrpc.FailedPrecondition(f"{name} is not set: this module needs its upstream URL")
    return value


def rag(question: str, k: int = 3, max_tokens: int = 60) -> Iterator[str]:
    """Retrieve the most relevant passages of lazygrpc's docs, then stream the model's answer."""
    if "explode" in question.lower():
        raise RetrievalError(
            f"the retriever refuses questions that ask it to explode: {question!r}"
        )
    passages = _index().search(question, k)
    lazygrpc.emit(
        {
            "passages": [
                {"source": p.source, "score": round(p.score, 2), "text": _clip(p.text, 160)}
                for p in passages
            ]
        }
    )
    lazygrpc.emit("generating…")
    notes = " ".join(p.text for p in passages)
    llm = lazygrpc.LLM(_env(MODEL_URL_ENV), prompt=PROMPT.replace("{notes}", notes))
    yield from llm.stream(question, max_tokens=max_tokens)


def ask(question: str, max_tokens: int = 60) -> Iterator[str]:
    """Answer a question about lazygrpc from its docs, streaming the tokens."""
    if not isinstance(question, str) or not question.strip():
        raise lazygrpc.InvalidArgument("question: expected a non-empty string")
    lazygrpc.globals["question"] = question
    lazygrpc.emit("retrieving…")
    retriever = lazygrpc.connect(_env(RETRIEVER_URL_ENV) + "/rag")
    for event in retriever.stream(question, max_tokens=max_tokens):
        if event.kind == "delta":
            yield event.value


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"
