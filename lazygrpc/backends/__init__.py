"""Model backends: async generators of text deltas (`base.Backend`), and the built-in ones."""

from __future__ import annotations

from typing import Any

from lazygrpc.backends.base import Backend

#: The backends `make_backend` knows; the last two need an extra (`lazygrpc[openai]`, ...).
KINDS = ("markov", "echo", "openai", "transformers")


def make_backend(kind: str, *, name: str | None = None, **options: Any) -> Backend:
    """A built-in backend by name, `options` as its constructor takes them:

    - `markov` (the default) and `echo`: `token_delay` (seconds between tokens);
    - `openai`: `upstream` (an OpenAI-style base URL), `model` (the upstream's model name),
      `api_key`, `api`, `connect_timeout`, `read_timeout` (`openai_compat.OpenAIBackend`);
    - `transformers`: `model`, a local model directory (`transformers_lm.TransformersBackend`).
    """
    if kind == "markov":
        from lazygrpc.backends.markov import MarkovBackend

        return MarkovBackend(name=name or "markov", **options)
    if kind == "echo":
        from lazygrpc.backends.echo import EchoBackend

        return EchoBackend(name=name or "echo", **options)
    if kind == "openai":
        from lazygrpc.backends.openai_compat import OpenAIBackend

        upstream, model = options.pop("upstream", None), options.pop("model", None)
        if not upstream or not model:
            raise ValueError("backend 'openai' needs an upstream URL and a model name")
        return OpenAIBackend(upstream, model, name=name, **options)
    if kind == "transformers":
        from lazygrpc.backends.transformers_lm import TransformersBackend

        path = options.pop("model", None)
        if not path:
            raise ValueError("backend 'transformers' needs a local model directory")
        return TransformersBackend(path, name=name, **options)
    raise ValueError(f"unknown backend {kind!r} (choose one of {', '.join(KINDS)})")
