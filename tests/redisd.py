"""A real `redis-server` for the broker tests: ephemeral port, no persistence, ready on PING."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(
    host: str = "127.0.0.1", port: int | None = None, prefix: Sequence[str] = ()
) -> Iterator[str]:
    """Run redis-server on `host` (inside `prefix`, e.g. `ip netns exec NS`); yields its
    `redis://HOST:PORT/0` URL once it answers PING; stops it (and checks it stopped) after."""
    port = port or free_port(host if not prefix else "127.0.0.1")
    proc = subprocess.Popen(
        [*prefix, "redis-server", "--bind", host, "--port", str(port), "--save", "",
         "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        ping = [*prefix, "redis-cli", "-h", host, "-p", str(port), "PING"]
        t0 = time.monotonic()
        while subprocess.run(ping, capture_output=True, text=True).stdout.strip() != "PONG":
            if proc.poll() is not None or time.monotonic() - t0 > 20:
                raise RuntimeError(f"redis-server did not start: {proc.communicate()[0]}")
        yield f"redis://{host}:{port}/0"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def redis_cli(url: str, *args: str, prefix: Sequence[str] = ()) -> str:
    """One redis-cli command against `url` (a test's look at the server, not the client)."""
    host, _, port = url.removeprefix("redis://").partition("/")[0].partition(":")
    result = subprocess.run(
        [*prefix, "redis-cli", "-h", host, "-p", port, *args],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return result.stdout.strip()
