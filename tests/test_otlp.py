"""Traces that leave the process: OTLP/gRPC export to a real receiver started here.

The receiver is the collector's own `TraceService` (stubs from `opentelemetry-proto`) on a
plain grpc server; the services are real `lazygrpc` processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from conftest import ROOT, start_cli
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import lazygrpc
from lazygrpc import telemetry

FIXTURE = "tests/fixtures/cli_modules.py"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps every span it is sent, with its service.name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, Any]] = []  # (service.name, Span)

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((attributes.get("service.name", ""), span))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    """(the receiver, its `http://127.0.0.1:PORT` endpoint)."""
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"http://127.0.0.1:{port}"
    finally:
        server.stop(0)


def otel_env(endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, **extra}


def test_one_up_otel_call_is_one_trace_across_three_services(
    receiver: tuple[Receiver, str],
) -> None:
    collected, endpoint = receiver
    done = subprocess.run(
        [sys.executable, "-m", "lazygrpc", "up", "--otel", "--token-delay", "0", "--demo", "Hi?"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env=otel_env(endpoint),
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    # Each service flushed its spans when `up` stopped it, before `up` exited.
    services = {name for name, _ in collected.spans}
    assert services == {"gateway", "retriever", "model"}
    assert len({span.trace_id for _, span in collected.spans}) == 1
    by_service = {name: span for name, span in collected.spans}
    assert by_service["gateway"].name == "lazygrpc.v1.ModuleService/Stream"
    assert by_service["model"].name.startswith("lazygrpc.v1.ModelService/")
    # gateway -> retriever -> model: each hop's span is a child of the one above.
    ids = {span.span_id: name for name, span in collected.spans}
    parents = {name: ids.get(span.parent_span_id) for name, span in collected.spans}
    assert parents == {"gateway": None, "retriever": "gateway", "model": "retriever"}


def test_service_name_from_env_and_the_console_exporter(receiver: tuple[Receiver, str]) -> None:
    """OTEL_SERVICE_NAME names a server without --name; `console` writes spans to stderr;
    a set OTEL_TRACES_EXPORTER turns tracing on without --otel."""
    collected, endpoint = receiver
    # No scheme on a loopback endpoint: plaintext, as a local collector is.
    endpoint = endpoint.removeprefix("http://")
    for exporter, flags in (("otlp", ["--otel"]), ("console", [])):
        env = otel_env(endpoint, OTEL_SERVICE_NAME="named-by-env", OTEL_TRACES_EXPORTER=exporter)
        proc, address = start_cli("serve", f"{FIXTURE}:whoami", *flags, env=env)
        try:
            with lazygrpc.session("otlp-env-1"):
                out = lazygrpc.connect(f"grpc://{address}/whoami", timeout=10)()
                assert out["session_id"] == "otlp-env-1"
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        if exporter == "console":
            assert '"service.name": "named-by-env"' in err
            assert '"session.id": "otlp-env-1"' in err
    ((name, span),) = collected.spans
    assert name == "named-by-env"
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["session.id"].string_value == "otlp-env-1"


def test_an_unknown_exporter_is_one_line_naming_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lazygrpc", "serve", f"{FIXTURE}:whoami", "--otel"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "zipkin"},
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "OTEL_TRACES_EXPORTER='zipkin': unknown exporter 'zipkin'" in done.stderr


def test_a_collector_that_is_down_does_not_hold_the_stop() -> None:
    """The last spans are flushed at stop, within a bound: a missing collector costs at most
    telemetry.FLUSH_TIMEOUT, and the server still exits 0."""
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    proc, address = start_cli("serve", f"{FIXTURE}:whoami", "--otel", env=otel_env(endpoint))
    try:
        lazygrpc.connect(f"grpc://{address}/whoami", timeout=10)()
    finally:
        started = time.monotonic()
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < telemetry.FLUSH_TIMEOUT + 5
