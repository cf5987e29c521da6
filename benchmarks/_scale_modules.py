"""Modules bench_scale serves with `lazygrpc serve … --workers N`."""

from __future__ import annotations

from collections.abc import Iterator


def spin(n: int) -> int:
    """CPU-bound: the sum of the first `n` squares, one Python step at a time."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def ticks(n: int) -> Iterator[int]:
    """A stream of `n` small events, as fast as the client takes them."""
    yield from range(n)
