"""Prometheus metrics (docs/metrics.md): a real server with `metrics_port`, real calls, and
the `/metrics` endpoint scraped over HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from conftest import ROOT, start_cli
from prometheus_client.parser import text_string_to_metric_families

import lazygrpc
from lazygrpc.v1 import module_pb2, module_pb2_grpc

MODULES = "lazygrpc.v1.ModuleService"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of `/metrics`, keyed by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def until(port: int, predicate: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    """Scrape until `predicate` holds: a cancelled call ends on the server a little after
    the client has left."""
    deadline = time.monotonic() + timeout
    while not predicate(samples := scrape(port)):
        assert time.monotonic() < deadline, f"condition not reached: {samples}"
        time.sleep(0.01)
    return samples


def ok(x: Any) -> Any:
    return x


def fails(x: Any) -> Any:
    raise ValueError("no")


def counts(n: int) -> Iterator[int]:
    yield from range(n)


held = threading.Event()


async def holds(x: Any) -> Any:
    yield "first"
    held.set()
    await asyncio.sleep(60)  # until the client cancels
    yield "never"


async def slow(x: Any) -> Any:
    await asyncio.sleep(60)


@pytest.fixture
def metered(servers: Any) -> tuple[str, int]:
    url = servers.modules(
        {"ok": ok, "fails": fails, "counts": counts, "holds": holds, "slow": slow},
        name="leaf",
        metrics_port=0,
    )
    return url, servers.started[-1].metrics_port


def test_calls_are_counted_by_code_timed_and_held_in_flight(metered: tuple[str, int]) -> None:
    url, port = metered
    for _ in range(3):
        assert lazygrpc.connect(f"{url}/ok")(1) == 1
    with pytest.raises(lazygrpc.RemoteError) as failed:
        lazygrpc.connect(f"{url}/fails")(1)
    assert [ev.value for ev in lazygrpc.connect(f"{url}/counts").stream(3)][:3] == [0, 1, 2]

    held.clear()
    stream = lazygrpc.connect(f"{url}/holds").stream(None)
    assert next(stream).value == "first"
    assert held.wait(10)
    during = scrape(port)
    streams = {"grpc_service": MODULES, "grpc_method": "Stream"}
    assert value(during, "lazygrpc_server_in_flight", **streams) == 1
    assert value(during, "lazygrpc_server_streams_in_flight") == 1
    assert value(during, "lazygrpc_broker_open_topics") >= 1
    stream.close()  # the client leaves: the call is cancelled

    code = "lazygrpc_server_handled_total"
    after = until(port, lambda s: value(s, code, **streams, grpc_code="CANCELLED") == 1)
    unary = {"grpc_service": MODULES, "grpc_method": "Call"}
    assert value(after, code, **unary, grpc_code="OK") == 3
    assert failed.value.code != grpc.StatusCode.OK
    assert value(after, code, **unary, grpc_code=failed.value.code.name) == 1
    assert value(after, code, **streams, grpc_code="OK") == 1
    assert value(after, "lazygrpc_server_handling_seconds_count", **unary) == 4
    assert value(after, "lazygrpc_server_handling_seconds_bucket", **unary, le="+Inf") == 4
    assert value(after, "lazygrpc_server_handling_seconds_sum", **unary) > 0
    assert value(after, "lazygrpc_server_in_flight", **unary) == 0
    assert value(after, "lazygrpc_server_streams_in_flight") == 0
    assert value(after, "lazygrpc_broker_open_topics") == 0
    assert value(after, "lazygrpc_broker_published_events_total") >= 4
    assert ("lazygrpc_broker_queued_bytes", ()) in after
    assert ("lazygrpc_broker_blocked_producers", ()) in after
    assert value(after, "lazygrpc_server_refused_total", **unary, grpc_code="OK") == 0


def test_a_call_past_its_deadline_counts_as_deadline_exceeded(metered: tuple[str, int]) -> None:
    url, port = metered
    with pytest.raises(lazygrpc.RemoteError) as late:
        lazygrpc.connect(f"{url}/slow", timeout=0.05)(1)
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    labels = {"grpc_service": MODULES, "grpc_method": "Call", "grpc_code": "DEADLINE_EXCEEDED"}
    until(port, lambda s: value(s, "lazygrpc_server_handled_total", **labels) == 1)


def test_calls_the_lifecycle_refuses_are_counted_as_refused(metered: tuple[str, int]) -> None:
    url, port = metered
    address = url.removeprefix("grpc://")
    with grpc.insecure_channel(address) as channel:
        stub = module_pb2_grpc.ModuleServiceStub(channel)
        request = module_pb2.CallRequest(module="ok")
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Call(request, metadata=(("lazy-session-id", "not a valid id"),), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    labels = {"grpc_service": MODULES, "grpc_method": "Call", "grpc_code": "INVALID_ARGUMENT"}
    # grpc.aio sends an abort's status before the exception leaves the handler, so the
    # client can hear the refusal a moment before the server has counted it.
    samples = until(port, lambda s: value(s, "lazygrpc_server_refused_total", **labels) == 2)
    assert value(samples, "lazygrpc_server_handled_total", **labels) == 2


def test_health_is_not_counted_and_the_endpoint_stops_with_the_server(servers: Any) -> None:
    servers.modules({"ok": ok}, metrics_port=0)
    server = servers.started[-1]
    samples = scrape(server.metrics_port)
    assert not any("grpc.health" in str(labels) for _, labels in samples)
    servers.stop_all()
    with pytest.raises(OSError):
        scrape(server.metrics_port)


def test_the_cli_serves_metrics_on_the_port_it_prints() -> None:
    proc, _ = start_cli("serve", "tests/fixtures/cli_modules.py:whoami", "--metrics-port", "0")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("metrics on http://127.0.0.1:")
        assert line.rstrip().endswith("/metrics")
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        samples = scrape(port)
        assert ("lazygrpc_server_streams_in_flight", ()) in samples
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_up_serves_metrics_for_each_of_its_services() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazygrpc", "up", "--token-delay", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        urls = []
        for line in proc.stdout:
            if line.strip().startswith("metrics "):
                urls.append(line.split()[-1])
            if line.startswith("Ctrl-C or SIGTERM stops the mesh"):
                break
        assert len(urls) == 3  # model, retriever, gateway
        for url in urls:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            assert ("lazygrpc_broker_open_topics", ()) in scrape(port)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_a_taken_metrics_port_fails_the_start_naming_it(servers: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def start() -> None:
            server = lazygrpc.Server(metrics_port=port)
            server.add_modules({"ok": ok})
            await server.start()

        with pytest.raises(OSError, match=f"metrics port 127.0.0.1:{port}"):
            servers.call(start)


async def test_own_aio_server_with_server_interceptors_gets_the_same_metrics() -> None:
    """`server_interceptors(metrics=...)` on a plain grpc.aio server: the names and labels
    `lazygrpc.Server(metrics_port=...)` gives, scraped from the real endpoint."""
    from lazygrpc.metrics import Metrics

    async def say(request: bytes, context: Any) -> bytes:
        if request == b"fail":
            raise ValueError("no")
        return request

    metrics = Metrics()
    server = grpc.aio.server(interceptors=lazygrpc.server_interceptors("own", metrics=metrics))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(
            "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
        ),)
    )  # fmt: skip
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    metrics_port = metrics.serve("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/test.Echo/Say")
            assert await call(b"hi", timeout=10) == b"hi"
            assert await call(b"again", timeout=10) == b"again"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"fail", timeout=10)
            assert info.value.code() == grpc.StatusCode.UNKNOWN
        labels = {"grpc_service": "test.Echo", "grpc_method": "Say"}
        samples = await asyncio.to_thread(scrape, metrics_port)
        assert value(samples, "lazygrpc_server_handled_total", grpc_code="OK", **labels) == 2
        assert value(samples, "lazygrpc_server_handled_total", grpc_code="UNKNOWN", **labels) == 1
        assert value(samples, "lazygrpc_server_handling_seconds_count", **labels) == 3
        assert value(samples, "lazygrpc_server_in_flight", **labels) == 0
        assert ("lazygrpc_broker_open_topics", ()) in samples
    finally:
        await asyncio.to_thread(metrics.close)
        await server.stop(None)


def test_metrics_on_a_sync_server_are_refused_naming_aio() -> None:
    from lazygrpc.metrics import Metrics

    with pytest.raises(ValueError, match="aio=True"):
        lazygrpc.server_interceptors(aio=False, metrics=Metrics())
