"""A backend that streams the prompt back, one word at a time."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from lazygrpc.backends.base import SamplingParams

__all__ = ["EchoBackend", "split_tokens"]

_TOKEN = re.compile(r"\s*\S+")


def split_tokens(prompt: str) -> list[str]:
    """Split `prompt` into words, each carrying the whitespace before it (the first carries none).

    `"".join(split_tokens(p)) == p.strip()` holds for every string `p`.

    >>> split_tokens("  hello  grpc\\nworld ")
    ['hello', '  grpc', '\\nworld']
    """
    return _TOKEN.findall(prompt.strip())


class EchoBackend:
    """Streams the prompt back as `split_tokens(prompt)`, up to `params.max_tokens` of them.

    Deterministic: sampling parameters other than `max_tokens` are ignored.
    """

    def __init__(self, token_delay: float = 0.0, name: str = "echo") -> None:
        self.name = name
        self.token_delay = token_delay

    def count_tokens(self, text: str) -> int:
        """Whitespace-separated words in `text`; at least 1 for any non-empty string."""
        return max(len(text.split()), 1) if text else 0

    async def generate(self, prompt: str, params: SamplingParams) -> AsyncIterator[str]:
        """Yield the prompt's tokens in order, sleeping `token_delay` seconds between them."""
        for i, token in enumerate(split_tokens(prompt)[: max(params.max_tokens, 0)]):
            if i and self.token_delay > 0:
                await asyncio.sleep(self.token_delay)
            yield token
