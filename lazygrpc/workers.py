"""`--workers N`: N copies of one server on one port (SO_REUSEPORT), under a `Supervisor`.

The kernel spreads new connections over the workers' listening sockets; a connection (and
so every call and stream on it) stays with the worker that accepted it. Each worker is a
whole server with its own broker, sessions and streams: nothing is shared, so nothing needs
to be. What a module keeps itself (a cache, a counter) is per worker (docs/deployment.md).
Each worker also listens on a private unix socket, where the supervisor reads its health:
through the shared port a health check would reach whichever worker the kernel picks.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lazygrpc.supervisor import Child, Supervisor, python_argv

#: Seconds past the server's drain grace before the supervisor kills a worker still running.
STOP_MARGIN = 5.0


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` with SO_REUSEPORT, never listening: it keeps a port
    picked for the workers (`port` 0) from going to anyone else, and takes no connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind {host}:{port} for the workers: {exc.strerror}") from None
    return sock


def worker_children(argv: Sequence[str], n: int, port: int, run_dir: str) -> list[Child]:
    """The `n` workers: this command line again, one worker each, on `port`."""
    children = []
    for i in range(n):
        health = f"unix:{Path(run_dir) / f'worker-{i}.sock'}"
        args = [*argv, "--workers", "1", "--port", str(port), "--worker-socket", health]
        children.append(
            Child(
                f"worker-{i}",
                python_argv(*args),
                env={"LAZYGRPC_WORKER": str(i)},
                health_target=health,
                stdout=False,  # each would print its own "listening on" line
            )
        )
    return children


def run_workers(argv: Sequence[str], n: int, host: str, port: int, grace: float) -> int:
    """Run `lazygrpc ARGV` as `n` workers on `host:port`; prints `listening on HOST:PORT`
    once every worker is SERVING, returns when they have drained (SIGTERM) or given up."""
    with reserve_port(host, port) as sock, tempfile.TemporaryDirectory(prefix="lazygrpc-") as d:
        port = sock.getsockname()[1]
        supervisor = Supervisor(worker_children(argv, n, port, d), stop_timeout=grace + STOP_MARGIN)

        def ready() -> None:
            print(f"listening on {host}:{port}", flush=True)

        return asyncio.run(supervisor.arun(on_ready=ready))
