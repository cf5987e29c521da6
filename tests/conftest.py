"""Test helpers: real lazygrpc servers on 127.0.0.1 ephemeral ports, run on a background loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

import lazygrpc
from lazygrpc.backends import make_backend
from lazygrpc.client import channels
from lazygrpc.server.model import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class LoopThread:
    """An event loop on its own thread, where servers live while sync and async tests call them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="server-loop", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def server_loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


class Servers:
    """Starts servers on the shared loop; stops them when the test ends."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.started: list[lazygrpc.Server] = []

    def start(self, server: lazygrpc.Server) -> lazygrpc.Server:
        self.lt.run(server.start())
        self.started.append(server)
        return server

    def modules(self, modules: Any, **options: Any) -> str:
        """Serve `modules`; returns the `grpc://127.0.0.1:PORT` base URL."""

        async def build() -> lazygrpc.Server:
            s = lazygrpc.Server(**options)
            s.add_modules(modules)
            await s.start()
            return s

        s = self.lt.run(build())
        self.started.append(s)
        return f"grpc://127.0.0.1:{s.port}"

    def model(self, backend: str = "echo", *, token_delay: float = 0.0, **config: Any) -> str:
        server_name = config.pop("server_name", None)
        backend_ = make_backend(backend, token_delay=token_delay)
        return self.model_config(ModelConfig(backend_, **config), server_name=server_name)

    def model_config(self, config: ModelConfig, *, server_name: str | None = None) -> str:
        """Serve `config` (any backend); returns the `grpc://127.0.0.1:PORT` URL."""

        async def build() -> lazygrpc.Server:
            s = lazygrpc.Server(name=server_name)
            s.add_model(config)
            await s.start()
            return s

        s = self.lt.run(build())
        self.started.append(s)
        return f"grpc://127.0.0.1:{s.port}"

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return self.lt.run(fn())

    def stop_all(self) -> None:
        for s in reversed(self.started):
            self.lt.run(s.stop(0))
        self.started.clear()


@pytest.fixture
def servers(server_loop: LoopThread) -> Iterator[Servers]:
    sv = Servers(server_loop)
    yield sv
    sv.stop_all()


@pytest.fixture(scope="session")
def exporter() -> Any:
    """An in-memory span exporter on the process's SDK tracer provider (set up here first,
    so a `Server(telemetry=True)` in this process uses it rather than exporting by OTLP)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


@pytest.fixture(autouse=True)
def _fresh_channels() -> Iterator[None]:
    yield
    channels.close_all()


def start_cli(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """Run `python -m lazygrpc ARGS` and wait for its `listening on HOST:PORT` line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazygrpc", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"server did not start: {line!r} {err}")
    return proc, line.split()[-1]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m lazygrpc ARGS` to its end (`env` on top of this process's)."""
    return subprocess.run(
        [sys.executable, "-m", "lazygrpc", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def wait_ready(address: str, timeout: float = 10) -> None:
    with grpc.insecure_channel(address) as ch:
        grpc.channel_ready_future(ch).result(timeout)
