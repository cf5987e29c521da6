"""The HTTP/SSE edge: OpenAI's API and a module API in front of lazygrpc services.

A lazygrpc client like any other (it imports the core and the client, never the server);
docs/edge.md describes the routes, the headers and the limits. Needs the `edge` extra
(`pip install 'lazygrpc[edge]'`: starlette and uvicorn), loaded only when `Edge` is first
used, so that `lazygrpc edge --help` and the rest of the CLI work without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Edge"]


def __getattr__(name: str) -> Any:
    if name == "Edge":
        return importlib.import_module("lazygrpc.edge.app").Edge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from lazygrpc.edge.app import Edge
