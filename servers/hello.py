"""Example modules for `lazygrpc serve servers/hello.py:greet servers/hello.py:count`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import lazygrpc


def greet(name: str, punctuation: str = "!") -> str:
    """Greet someone; records who was greeted in the session globals."""
    lazygrpc.globals["greeted"] = name
    return f"hello {name}{punctuation}"


def count(n: int) -> Iterator[str]:
    """Stream the numbers below n, emitting progress as intermediate events."""
    for i in range(n):
        lazygrpc.emit({"progress": i / n})
        yield f"{i} "


async def countdown(n: int) -> AsyncIterator[int]:
    """Stream n, n-1, …, 1 asynchronously, one every 10 ms."""
    for i in range(n, 0, -1):
        yield i
        await asyncio.sleep(0.01)
