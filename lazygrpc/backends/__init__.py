"""Model backends: async generators of text deltas (`base.Backend`), and the built-in ones."""

from __future__ import annotations

from lazygrpc.backends.base import Backend


def make_backend(kind: str, *, token_delay: float = 0.0, name: str | None = None) -> Backend:
    """A built-in backend by name: `markov` (the default) or `echo`."""
    if kind == "markov":
        from lazygrpc.backends.markov import MarkovBackend

        return MarkovBackend(token_delay=token_delay, name=name or "markov")
    if kind == "echo":
        from lazygrpc.backends.echo import EchoBackend

        return EchoBackend(token_delay=token_delay, name=name or "echo")
    raise ValueError(f"unknown backend {kind!r} (choose markov or echo)")
