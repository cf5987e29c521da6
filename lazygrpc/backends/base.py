"""The model backend interface: an async generator of text deltas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    """Effective generation parameters after server presets and caller overrides."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None


class Backend(Protocol):
    """What `ModelService` drives. One instance serves many concurrent calls."""

    name: str

    def count_tokens(self, text: str) -> int:
        """Tokens `text` costs as a prompt (for `Usage.prompt_tokens`)."""
        ...

    def generate(self, prompt: str, params: SamplingParams) -> AsyncIterator[str]:
        """Yield text deltas (one token each) until done or `params.max_tokens`.

        The server enforces `max_tokens` and `stop`; a backend may stop earlier.
        """
        ...
