"""`lazygrpc serve` and `lazygrpc serve-model`: one server process, from flags to shutdown.

Whatever stops a server from starting (a port in use, a module file that is missing or does
not import, a name it lacks, a name served twice) is one line naming the fix and exit 1,
before anything listens: `Failed`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lazygrpc.commands.common import OK, Failed


def run_server(build: Callable[[], Any], add: Callable[[Any], Any]) -> int:
    """`build()` the server, `add(server)` its services, serve until a signal stops it."""

    async def run() -> int:
        server = build()
        try:
            add(server)
        except (TypeError, ValueError) as exc:  # not callable, no modules, ...
            raise Failed(str(exc)) from None
        try:
            port = await server.start()
        except OSError as exc:  # the port: one line, and nothing listens
            raise Failed(str(exc)) from None
        waiting = asyncio.ensure_future(server.wait())
        await asyncio.sleep(0)  # `wait` has installed its signal handlers: SIGTERM drains
        print(f"listening on {server.host}:{port}", flush=True)
        if server.metrics is not None:
            print(f"metrics on http://{server.host}:{server.metrics_port}/metrics", flush=True)
        await waiting
        return OK

    return asyncio.run(run())


def load_modules(targets: Sequence[str]) -> dict[str, Any]:
    """The callables `serve` names (`FILE.py:NAME` or `pkg.module:NAME`), each file imported
    once; `Failed` with one line naming what to fix."""
    from lazygrpc.server.module_spec import load_targets

    sys.path.insert(0, ".")
    try:
        return load_targets(targets)
    except ValueError as exc:
        raise Failed(str(exc)) from None
