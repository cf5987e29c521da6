"""Server logs, read from the stderr of real `lazygrpc serve` processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest
from conftest import ROOT, start_cli

import lazygrpc
from lazygrpc.v1 import broker_pb2, broker_pb2_grpc, module_pb2, module_pb2_grpc

FIXTURE = "tests/fixtures/ops_modules.py"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def serve(*extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    return start_cli(
        "serve", f"{FIXTURE}:boom", f"{FIXTURE}:add", f"{FIXTURE}:count", *extra, env=env
    )


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM the server; its whole stderr."""
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def call(address: str, module: str, *, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.RpcError:
    with grpc.insecure_channel(address) as ch:
        stub = module_pb2_grpc.ModuleServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Call(module_pb2.CallRequest(module=module), metadata=metadata, timeout=10)
    return info.value


@pytest.fixture
def text_server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc, address = serve("--no-expose-tracebacks")
    yield proc, address
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_a_module_that_raises_leaves_one_error_record_with_its_traceback(
    text_server: tuple[subprocess.Popen[str], str],
) -> None:
    proc, address = text_server
    err = call(address, "boom", metadata=(("lazy-session-id", "sess-42"),))
    assert err.code() == grpc.StatusCode.INTERNAL  # redacted: peers get a plain internal error
    with pytest.raises(lazygrpc.RemoteError):  # NOT an error record: a caller's mistake...
        lazygrpc.connect(f"grpc://{address}/add")(1)
    stderr = stop(proc)
    records = [line for line in stderr.splitlines() if " lazygrpc." in line[:60]]
    errors = [line for line in records if " ERROR " in line]
    assert len(errors) == 1, stderr
    (error,) = errors
    for part in ("module=boom", "status=INTERNAL", "session=sess-42", "peer=ipv4:127.0.0.1:"):
        assert part in error
    # The whole traceback, down to the module's own line, though peers get none of it.
    tail = stderr[stderr.index(error) :]
    assert "Traceback (most recent call last):" in tail
    assert 'raise ValueError(f"boom: {reason}")' in tail
    assert "ValueError: boom: kaboom" in tail
    # ...but a warning: the caller sent too few arguments.
    assert sum(" WARNING lazygrpc.server: " in line for line in records) == 1
    assert "status=INVALID_ARGUMENT" in stderr
    # One line at start (address, modules, TLS), one at stop.
    start = next(line for line in records if "serving on" in line)
    assert f"serving on {address}" in start and "boom, add, count" in start
    assert "TLS: no" in start
    assert any(f"stopped on {address}" in line for line in records)


def test_json_records_carry_the_call_fields_and_the_traceback() -> None:
    proc, address = serve(env={"LAZYGRPC_LOG_FORMAT": "json"})
    try:
        call(
            address, "boom", metadata=(("lazy-session-id", "sess-j"), ("traceparent", TRACEPARENT))
        )
    finally:
        stderr = stop(proc)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert len(lines) == len(stderr.splitlines()), stderr  # every line is one JSON record
    errors = [r for r in lines if r["level"] == "error"]
    assert len(errors) == 1, stderr
    (error,) = errors
    assert error["logger"] == "lazygrpc.server"
    assert error["session"] == "sess-j" and error["module"] == "boom"
    assert error["status"] == "UNKNOWN" and error["trace_id"] == TRACE_ID
    assert isinstance(error["duration_ms"], float) and error["duration_ms"] >= 0
    assert error["peer"].startswith("ipv4:127.0.0.1:")
    assert "ValueError: boom: kaboom" in error["traceback"]
    assert [r["message"].split()[1:3] for r in lines if r["level"] == "info"] == [
        ["serving", "on"],
        ["stopped", "on"],
    ]


def test_debug_level_writes_an_access_line_per_call() -> None:
    proc, address = serve("--log-level", "debug", "--log-format", "json")
    try:
        assert lazygrpc.connect(f"grpc://{address}/add")(2, 3) == 5
        assert [e.value for e in lazygrpc.connect(f"grpc://{address}/count").stream(2)][-1] == [
            0,
            1,
        ]
    finally:
        stderr = stop(proc)
    access = [r for r in map(json.loads, stderr.splitlines()) if r["logger"] == "lazygrpc.access"]
    assert [(r["module"], r["status"]) for r in access] == [("add", "OK"), ("count", "OK")]
    assert all(r["level"] == "debug" and r["session"] and "trace_id" not in r for r in access)


def test_the_default_level_writes_no_access_line_and_warning_hides_the_start_line() -> None:
    proc, address = serve()
    assert lazygrpc.connect(f"grpc://{address}/add")(2, 3) == 5
    assert "lazygrpc.access" not in stop(proc)
    proc, address = serve(env={"LAZYGRPC_LOG_LEVEL": "warning"})
    assert "serving on" not in stop(proc)


def test_a_bad_log_setting_is_a_usage_error() -> None:
    env = {**os.environ, "LAZYGRPC_LOG_LEVEL": "loud"}
    result = subprocess.run(
        [sys.executable, "-m", "lazygrpc", "serve", f"{FIXTURE}:add"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lazygrpc: LAZYGRPC_LOG_LEVEL='loud' is not one of debug, info, warning, error: "
        "fix or unset it"
    ]


def test_importing_the_library_configures_no_logging() -> None:
    code = (
        "import logging, lazygrpc, lazygrpc.server.builder, lazygrpc.cli\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), root.level, logging.getLogger('lazygrpc').handlers)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    assert result.stdout.split() == ["0", str(30), "[]"], result.stderr


def _fails(x: object = None) -> None:
    raise KeyError("missing piece")


@pytest.mark.parametrize("kind", ["Server", "sync interceptors"])
def test_every_server_kind_logs_through_the_one_lifecycle(
    kind: str, servers: object, caplog: pytest.LogCaptureFixture
) -> None:
    """`lazygrpc.Server` and the interceptors for your own sync `grpc.server` log the same."""
    from hops import start_sync_server

    sync_server = None
    if kind == "Server":
        url = servers.modules({"fails": _fails}, name="leaf")  # type: ignore[attr-defined]
    else:
        sync_server, url = start_sync_server("leaf", {"fails": _fails})
    try:
        with (
            caplog.at_level("DEBUG", logger="lazygrpc"),
            pytest.raises(lazygrpc.RemoteError),
            lazygrpc.session("sess-k"),
        ):
            lazygrpc.connect(f"{url}/fails")(1)
    finally:
        if sync_server is not None:
            sync_server.stop(0)
    (record,) = [
        r for r in caplog.records if r.name == "lazygrpc.server" and r.levelname == "ERROR"
    ]
    fields = record.lazygrpc  # type: ignore[attr-defined]
    # A hand-written servicer's "module" is its RPC method: only ModuleService names modules.
    module = "fails" if kind == "Server" else "Call"
    assert (fields["service"], fields["module"], fields["session"]) == ("leaf", module, "sess-k")
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert not [r for r in caplog.records if r.name == "lazygrpc.access"]  # failed: no access line


def test_a_traced_server_logs_its_spans_trace_id(
    servers: object, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # as tests/test_telemetry.py sets it up
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    url = servers.modules({"fails": _fails}, name="traced", telemetry=True)  # type: ignore[attr-defined]
    with caplog.at_level("INFO", logger="lazygrpc"), pytest.raises(lazygrpc.RemoteError):
        lazygrpc.connect(f"{url}/fails")(1)
    memory.shutdown()
    (span,) = [s for s in memory.get_finished_spans() if s.kind is trace.SpanKind.SERVER]
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.lazygrpc["trace_id"] == format(span.context.trace_id, "032x")  # type: ignore[attr-defined]


def test_clients_that_cancel_streams_leave_no_error_records() -> None:
    """grpc.aio logs an ERROR per write to a cancelled stream (grpc #32551): not in our log."""
    from lazygrpc.core.values import to_value

    flood = "tests/fixtures/stream_flood.py"
    proc, address = start_cli("serve", f"{flood}:flood_sync", f"{flood}:flood_async")

    async def cancel_streams() -> None:
        options = [("grpc.http2.bdp_probe", 0)]  # a small window: the server's writes wait
        async with grpc.aio.insecure_channel(address, options=options) as ch:
            stub = module_pb2_grpc.ModuleServiceStub(ch)
            calls = []
            for i in range(8):
                request = module_pb2.CallRequest(module=("flood_sync", "flood_async")[i % 2])
                request.kwargs.fields["seconds"].CopyFrom(to_value(3.0))
                calls.append(stub.Stream(request))
            await asyncio.gather(*(call.read() for call in calls))  # then stop reading
            stats = broker_pb2_grpc.BrokerServiceStub(ch)
            # Until nothing moves: every producer blocked on a full topic, and every server
            # write waiting on a window the client no longer opens.
            before = None
            while True:
                now = await stats.GetBrokerStats(broker_pb2.GetBrokerStatsRequest())
                if now.blocked_producers == len(calls) and before == now.published_events:
                    break
                before = now.published_events
                await asyncio.sleep(0.05)
            for call in calls:
                call.cancel()
            while (await stats.GetBrokerStats(broker_pb2.GetBrokerStatsRequest())).open_topics:
                await asyncio.sleep(0.01)
            while (await stats.GetBrokerStats(broker_pb2.GetBrokerStatsRequest())).open_topics:
                await asyncio.sleep(0.01)

    asyncio.run(cancel_streams())
    stderr = stop(proc)
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr
